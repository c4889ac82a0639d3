//! The model catalog: `GET /api/models` for everyone signed in (with whether each
//! model's weights are on this machine), and for admins adding and removing entries and
//! pulling weights ahead of a deploy (`POST /api/models/{id}/pull`, progress on
//! `GET /api/models/{id}`). The built-in entries (the standard models and the demo model)
//! are written at every server start, so they cannot be removed.

use axum::extract::State;
use axum::http::StatusCode;
use corral_core::catalog::normalize_model_id;
use corral_core::{CatalogModel, ModelSource};
use corral_models::{OllamaRef, Phase, parse_digest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::audit::Audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, delete_model))
        .routes(routes!(pull_model))
}

/// Longest family or size label.
const LABEL_MAX: usize = 64;
/// 1 TiB in MiB: more than any host Corral runs on.
const MEMORY_MAX: u32 = 1 << 20;

/// A catalog entry with where its weights stand on this machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    #[serde(flatten)]
    model: CatalogModel,
    /// The weights are on this machine and verified (deploys skip the download).
    present: bool,
    /// The latest fetch of the weights since the server started (a pull, or a deploy
    /// that needed them); null when there was none.
    pull: Option<PullView>,
}

/// Progress of fetching a model's weights.
#[derive(Debug, Serialize, ToSchema)]
pub struct PullView {
    /// manifest, downloading, verifying, ready or failed.
    #[schema(value_type = String)]
    phase: Phase,
    done_bytes: u64,
    /// Unknown until the server says.
    total_bytes: Option<u64>,
    percent: Option<u8>,
    /// Why it failed.
    error: Option<String>,
}

async fn view(state: &AppState, model: CatalogModel) -> ModelView {
    // Presence first: a pull announces Ready before it makes the model present, so this
    // order never pairs `present` with a stale phase.
    let present = state.weights.present(&model).await;
    let pull = state
        .weights
        .progress(&model.id)
        .ok()
        .map(|rx| rx.borrow().clone())
        .filter(|p| p.phase != Phase::Idle)
        .map(|p| PullView {
            percent: p.percent(),
            phase: p.phase,
            done_bytes: p.done,
            total_bytes: p.total,
            error: p.error,
        });
    ModelView {
        present,
        pull,
        model,
    }
}

/// The catalog, ordered by id: what can be deployed, how much memory it needs, how long
/// a deploy takes, where its weights come from and whether they are here already.
#[utoipa::path(get, path = "/api/models", tag = "models",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [ModelView]),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn list_models(
    State(state): State<AppState>,
    _principal: Principal,
) -> ApiResult<Json<Vec<ModelView>>> {
    let mut views = Vec::new();
    for model in state.store.list_models().await? {
        views.push(view(&state, model).await);
    }
    Ok(Json(views))
}

/// One catalog entry, with the progress of a pull.
#[utoipa::path(get, path = "/api/models/{id}", tag = "models",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "model id, e.g. `llama2:7b`")),
    responses(
        (status = 200, body = ModelView),
        (status = 401, description = "missing or invalid credentials"),
        (status = 404, description = "no such model"),
    ))]
async fn get_model(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelView>> {
    let model = existing(&state, &id).await?;
    Ok(Json(view(&state, model).await))
}

async fn existing(state: &AppState, raw: &str) -> ApiResult<CatalogModel> {
    let id = normalize_model_id(raw).map_err(|_| ApiError::NotFound("model"))?;
    state
        .store
        .model(&id)
        .await?
        .ok_or(ApiError::NotFound("model"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    /// The name users deploy, e.g. `phi3:mini`: letters, digits, `.`, `-`, `_` and one `:`.
    id: String,
    /// Default: the id's part before `:`.
    family: Option<String>,
    /// Default: the id's tag, e.g. `MINI`.
    size: Option<String>,
    /// Default true.
    cpu_supported: Option<bool>,
    /// Default true.
    gpu_supported: Option<bool>,
    /// Memory the model needs to run, in MiB; deploys with less are refused.
    memory_required: u32,
    /// Typical deploy-to-ready time in seconds; default 60.
    expected_deploy_seconds: Option<u32>,
    /// `{"kind": "ollama", "name": "library/phi3:mini"}`,
    /// `{"kind": "url", "url": "https://…/model.gguf", "sha256": "<64 hex>"}` or
    /// `{"kind": "file", "path": "/srv/models/model.gguf"}` (absolute, or relative to the
    /// data dir).
    source: ModelSource,
    /// Size of the weights in bytes, when known.
    weights_bytes: Option<u64>,
}

/// Adds a model to the catalog. Its weights are fetched at the first deploy, or ahead of
/// it with `POST /api/models/{id}/pull`.
#[utoipa::path(post, path = "/api/models", tag = "models",
    security(("bearer" = [])),
    request_body = CreateModel,
    responses(
        (status = 201, body = ModelView),
        (status = 400, description = "invalid_model_id, invalid_source or invalid_field"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 409, description = "a model with that id exists"),
    ))]
async fn create_model(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Json(body): Json<CreateModel>,
) -> ApiResult<(StatusCode, Json<ModelView>)> {
    audit.action("models.create");
    principal.require_admin()?;
    let id =
        normalize_model_id(&body.id).map_err(|m| ApiError::bad_request("invalid_model_id", m))?;
    audit.target(&id);
    // `/api/models/start` is the deploy route: a model of that name could not be
    // reached under `/api/models/{id}`.
    if id == "start" {
        return Err(ApiError::bad_request(
            "invalid_model_id",
            "\"start\" is reserved; choose another id",
        ));
    }
    let (family, tag) = id.split_once(':').unwrap_or((&id, "latest"));
    let model = CatalogModel {
        family: label("family", body.family.as_deref().unwrap_or(family))?,
        size: label(
            "size",
            body.size.as_deref().unwrap_or(&tag.to_ascii_uppercase()),
        )?,
        cpu_supported: body.cpu_supported.unwrap_or(true),
        gpu_supported: body.gpu_supported.unwrap_or(true),
        memory_required: body.memory_required,
        expected_deploy_seconds: body.expected_deploy_seconds.unwrap_or(60),
        source: check_source(body.source, state.settings.allow_private_model_sources)?,
        weights_bytes: body.weights_bytes,
        builtin: false,
        id,
    };
    if !model.cpu_supported && !model.gpu_supported {
        return Err(ApiError::bad_request(
            "invalid_field",
            "a model must run on CPU, GPU or both",
        ));
    }
    if !(1..=MEMORY_MAX).contains(&model.memory_required) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("memory_required is in MiB: 1 to {MEMORY_MAX}"),
        ));
    }
    if state.store.model(&model.id).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "model {} already exists; delete it first to replace it",
            model.id
        )));
    }
    state.store.upsert_model(&model).await?;
    Ok((StatusCode::CREATED, Json(view(&state, model).await)))
}

fn label(name: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    let len = value.chars().count();
    if len == 0 || len > LABEL_MAX || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{name} must be 1 to {LABEL_MAX} printable characters"),
        ));
    }
    Ok(value.to_string())
}

/// Checks a source the way the weights manager will use it, so a bad one is refused now
/// rather than failing the first deploy. A URL on an internal address is refused here
/// cheaply (no DNS); the weights manager checks the resolved address when it fetches.
fn check_source(source: ModelSource, allow_private: bool) -> ApiResult<ModelSource> {
    let invalid = |m: String| ApiError::bad_request("invalid_source", m);
    Ok(match source {
        ModelSource::Ollama { name } => {
            let name = name.trim().to_string();
            OllamaRef::parse(&name).map_err(|m| invalid(format!("Ollama name: {m}")))?;
            ModelSource::Ollama { name }
        }
        ModelSource::Url { url, sha256 } => {
            let url = url.trim().to_string();
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || url.len() > 2048 || url.chars().any(|c| c.is_whitespace()) {
                return Err(invalid(
                    "url must be an http(s) URL without spaces, at most 2048 characters".into(),
                ));
            }
            if !allow_private && let Err(refused) = corral_guard::net::check_url(&url) {
                return Err(invalid(format!("url: {refused}")));
            }
            let sha256 = parse_digest(&sha256)
                .map_err(|m| invalid(format!("sha256 must be 64 hex digits: {m}")))?;
            ModelSource::Url { url, sha256 }
        }
        ModelSource::File { path } => {
            if path.trim().is_empty() || path.chars().any(char::is_control) {
                return Err(invalid(
                    "path must name a GGUF file (absolute, or relative to the data dir)".into(),
                ));
            }
            ModelSource::File { path }
        }
    })
}

/// Removes a catalog entry. Refused while any instance (in any state) is of this model,
/// and for built-in entries. Weights already on disk stay.
#[utoipa::path(delete, path = "/api/models/{id}", tag = "models",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "model id")),
    responses(
        (status = 204, description = "removed"),
        (status = 400, description = "builtin_model: built-in entries cannot be removed"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such model"),
        (status = 409, description = "instances of this model exist; delete them first"),
    ))]
async fn delete_model(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    audit.action("models.delete");
    audit.target(&id);
    principal.require_admin()?;
    let model = existing(&state, &id).await?;
    if model.builtin {
        return Err(ApiError::bad_request(
            "builtin_model",
            format!(
                "{} is built in and is restored at every start; it cannot be removed",
                model.id
            ),
        ));
    }
    if state.store.delete_model(&model.id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("model"))
    }
}

/// Starts fetching a model's weights (Ollama registry or URL; resumable, SHA-256
/// verified) so the first deploy does not wait for them. Answers at once; follow
/// `pull` on `GET /api/models/{id}`. Pulling a model that is present changes nothing.
#[utoipa::path(post, path = "/api/models/{id}/pull", tag = "models",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "model id")),
    responses(
        (status = 202, body = ModelView, description = "fetching (or already present)"),
        (status = 400, description = "file_source: local files are imported, not pulled"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such model"),
    ))]
async fn pull_model(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ModelView>)> {
    audit.action("models.pull");
    audit.target(&id);
    principal.require_admin()?;
    let model = existing(&state, &id).await?;
    if let ModelSource::File { path } = &model.source {
        return Err(ApiError::bad_request(
            "file_source",
            format!(
                "{} comes from the local file {path}; put the GGUF there or run \
                 `corral models import FILE --name {}`",
                model.id, model.id
            ),
        ));
    }
    let busy = state.weights.progress(&model.id).is_ok_and(|rx| {
        matches!(
            rx.borrow().phase,
            Phase::Manifest | Phase::Downloading | Phase::Verifying
        )
    });
    if !busy && !state.weights.present(&model).await {
        let (weights, entry) = (state.weights.clone(), model.clone());
        // Outlives the request on purpose: the download goes on while the admin polls.
        tokio::spawn(async move {
            if let Err(e) = weights.resolve(&entry).await {
                tracing::warn!(model = %entry.id, error = %e, "pull failed");
            }
        });
        // Let the task publish its first phase, so the answer already shows the pull.
        tokio::task::yield_now().await;
    }
    Ok((StatusCode::ACCEPTED, Json(view(&state, model).await)))
}
