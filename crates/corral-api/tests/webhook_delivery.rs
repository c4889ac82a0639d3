//! Webhook deliveries against a real HTTP receiver on loopback: the signature verifies
//! with the documented scheme, failures are reported with the receiver's status, and
//! the guard refuses internal targets at delivery time unless private targets are
//! allowed.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use corral_api::webhook::Sender;
use corral_core::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};

#[derive(Default)]
struct Received {
    /// (timestamp header, signature header, body) per request.
    requests: Vec<(String, String, Vec<u8>)>,
    /// Answers still to give 500 before answering 200.
    fail_next: u32,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut r = shared.lock().unwrap();
    r.requests.push((
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        body.to_vec(),
    ));
    if r.fail_next > 0 {
        r.fail_next -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn receiver(fail_first: u32) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Received {
        fail_next: fail_first,
        ..Default::default()
    }));
    let app = Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), shared)
}

#[tokio::test]
async fn signed_delivery_verifies_and_failures_name_the_status() {
    let (url, shared) = receiver(2).await;
    let sender = Sender::new(true).unwrap();
    let body = br#"{"event":"instance.ready","data":{"instance_id":"x"}}"#;
    let ts = chrono::Utc::now().timestamp();

    let first = sender.send(&url, "whsec", body, ts).await.unwrap_err();
    assert!(first.contains("HTTP 500"), "{first}");
    assert!(sender.send(&url, "whsec", body, ts + 60).await.is_err());
    assert_eq!(sender.send(&url, "whsec", body, ts + 120).await, Ok(204));

    let r = shared.lock().unwrap();
    assert_eq!(r.requests.len(), 3);
    for (i, (ts_header, sig, got)) in r.requests.iter().enumerate() {
        let sent_at: i64 = ts_header.parse().unwrap();
        assert_eq!(sent_at, ts + 60 * i as i64);
        assert_eq!(got.as_slice(), body);
        assert!(verify("whsec", sent_at, got, sig, sent_at), "attempt {i}");
        assert!(!verify("wrong", sent_at, got, sig, sent_at));
        assert!(!first.contains("whsec"));
    }
}

#[tokio::test]
async fn the_guard_refuses_internal_targets_at_delivery_time() {
    let (url, shared) = receiver(0).await;
    let guarded = Sender::new(false).unwrap();
    let ts = chrono::Utc::now().timestamp();
    // IP literals are checked before connecting, local names too; other names are
    // checked by corral-guard's resolver on the addresses it found (tested there).
    let by_name = url.replace("127.0.0.1", "localhost.");
    for target in [
        url.as_str(),
        by_name.as_str(),
        "http://169.254.169.254/latest/",
    ] {
        let err = guarded.send(target, "s", b"{}", ts).await.unwrap_err();
        assert!(err.contains("allow_private_webhooks"), "{target}: {err}");
    }
    assert!(
        shared.lock().unwrap().requests.is_empty(),
        "nothing reached the receiver"
    );
}
