//! Issue 13, memory: Argon2 work in flight is bounded, callers beyond the bound queue,
//! and beyond the queue they get 503 with Retry-After, against the real server.

mod common;

use common::{Backend, TestApp, spawn_app_with};
use corral_api::settings::HashLimits;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const SCRAPE: &str = "scrape-token";

/// A login to an address of its own (no account, so the dummy verification runs and no
/// lockout or per-account limit gets in the way): status, Retry-After and body.
async fn login_unknown(app: &TestApp) -> (u16, Option<String>, Value) {
    let email = format!("nobody-{}@example.com", Uuid::now_v7().simple());
    let resp = app
        .http
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": email, "password": "Wrong-Pass1!"}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(SCRAPE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

async fn password_hashing_is_bounded_and_refuses_beyond_the_queue(backend: Backend) {
    let app = Arc::new(
        spawn_app_with(backend, |s| {
            s.password_hashing = HashLimits {
                in_flight: 1,
                queued: 2,
            };
            s.metrics_token = Some(SCRAPE.into());
        })
        .await,
    );
    // The first unknown login also makes the dummy hash; later ones only verify.
    assert_eq!(login_unknown(&app).await.0, 401);

    // With the one worker slot taken, two logins wait in the queue and four are refused.
    let held = app.state.passwords.hold_all().await.unwrap();
    let logins: Vec<_> = (0..6)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { login_unknown(&app).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.state.passwords.stats().refused < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no refusals came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    let mut statuses = Vec::new();
    for login in logins {
        let (status, retry, body) = login.await.unwrap();
        if status == 503 {
            let secs: u64 = retry.expect("503 without Retry-After").parse().unwrap();
            assert!((1..=60).contains(&secs), "Retry-After {secs}");
            assert_eq!(body["error"]["code"], "busy", "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [401, 401, 503, 503, 503, 503]);

    // A real burst: every answer is a 401 or a 503, and Argon2 never ran twice at once.
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { login_unknown(&app).await.0 })
        })
        .collect();
    let mut refused = 0;
    for login in burst {
        match login.await.unwrap() {
            401 => {}
            503 => refused += 1,
            other => panic!("login answered {other}"),
        }
    }
    assert_eq!(
        metric(&app, "corral_password_hashes_in_flight_limit").await,
        1.0
    );
    assert_eq!(
        metric(&app, "corral_password_hashes_in_flight_peak").await,
        1.0
    );
    assert_eq!(metric(&app, "corral_password_hashes_in_flight").await, 0.0);
    assert_eq!(
        metric(&app, "corral_password_hashes_refused_total").await,
        f64::from(4 + refused)
    );
}

both_backends!(password_hashing_is_bounded_and_refuses_beyond_the_queue);
