//! Replica health: a replica is routable once its Ollama-compatible API answers
//! `GET /api/version` (both corral-runner and `ollama serve` do, and cheaply).

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct HealthChecker {
    client: reqwest::Client,
}

impl HealthChecker {
    pub fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Endpoints are loopback or private addresses; a proxy from the environment
            // would only get in the way.
            .no_proxy()
            .build()
            .expect("a client without TLS roots or proxies always builds");
        HealthChecker { client }
    }

    /// Ok when the replica answers with a success status; the error says what went wrong.
    pub async fn check(&self, endpoint: &str) -> Result<(), String> {
        let url = format!("{}/api/version", endpoint.trim_end_matches('/'));
        match self.client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("GET {url} answered {}", resp.status())),
            Err(e) if e.is_timeout() => Err(format!("GET {url} timed out")),
            Err(e) if e.is_connect() => Err(format!("GET {url}: connection refused")),
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    }
}
