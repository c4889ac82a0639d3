mod common;

use common::{Backend, spawn_app};

async fn health_is_public_and_reports_store(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app.get("/api/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"]["reachable"], true);
    assert!(body["version"].is_string());
}

async fn unknown_route_is_json_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app.get("/api/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

both_backends!(
    health_is_public_and_reports_store,
    unknown_route_is_json_404
);

#[tokio::test]
async fn openapi_document_lists_routes() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, body) = app.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["info"]["title"], "Corral API");
    assert!(body["paths"]["/api/health"].is_object(), "{body}");
    // The snapshot (and the UI's types) come from `openapi_document()`: it must be what
    // the server serves.
    let built = serde_json::to_value(corral_api::openapi_document()).unwrap();
    assert_eq!(body, built);
}
