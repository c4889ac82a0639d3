//! Sending one webhook delivery: the URL checks (at registration and again at delivery
//! time, on the resolved address) and the signed JSON POST. The signing scheme and the
//! retry schedule are pure rules in `corral_core::webhook`; queueing and retrying
//! deliveries is the outbound job queue's work.

use std::time::Duration;

use corral_core::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use corral_guard::net::{self, Refused};

use crate::error::{ApiError, ApiResult};

/// Longest URL accepted for an endpoint.
pub const URL_MAX: usize = 2048;
/// A receiver that takes longer than this fails the attempt (it is retried later).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The guard's refusal in the words of this setting (the guard's own text names the
/// model-source setting).
fn refusal_message(url: &str, refused: &Refused) -> String {
    match refused {
        Refused::Internal { host, addr } => format!(
            "{url}: {host} is {addr}, an internal address (loopback, link-local, private \
             or reserved); set allow_private_webhooks to deliver to it"
        ),
        Refused::LocalName(name) => {
            format!("{url}: {name} names a local host; set allow_private_webhooks to deliver to it")
        }
        Refused::BadUrl(m) => m.clone(),
    }
}

/// The registration check (400 `invalid_webhook_url`): an http(s) URL without spaces,
/// and unless `allow_private`, not an internal IP literal nor a local name. Names are
/// resolved only at delivery time, where [`Sender`] checks every address again.
pub fn check_url(url: &str, allow_private: bool) -> ApiResult<()> {
    let invalid = |m: String| ApiError::bad_request("invalid_webhook_url", m);
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > URL_MAX || url.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "url must be an http(s) URL without spaces, at most {URL_MAX} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(format!("url: {e}")))?;
    if parsed.host().is_none() {
        return Err(invalid("url has no host".into()));
    }
    if !allow_private && let Err(refused) = net::check_url(url) {
        return Err(invalid(refusal_message(url, &refused)));
    }
    Ok(())
}

/// Sends deliveries: one HTTP client for all of them, guarded unless private targets
/// are allowed.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(allow_private: bool) -> Result<Self, String> {
        let builder = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .user_agent(concat!("corral-webhooks/", env!("CARGO_PKG_VERSION")));
        let client = net::guard(builder, allow_private)
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        Ok(Sender {
            client,
            allow_private,
        })
    }

    /// POSTs `body` (JSON) to `url`, signed with `secret` at `timestamp` (unix seconds).
    /// Ok with the status for a 2xx answer; otherwise why the attempt failed, in words
    /// fit for the deliveries list (never the secret).
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        body: &[u8],
        timestamp: i64,
    ) -> Result<u16, String> {
        // IP literals never reach the guarded resolver, so they are checked here; names
        // are checked by the resolver on the addresses actually connected to.
        if !self.allow_private
            && let Err(refused) = net::check_url(url)
        {
            return Err(refusal_message(url, &refused));
        }
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, sign(secret, timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| match net::refusal(&e) {
                Some(refused) => refusal_message(url, refused),
                None => format!("{url}: {}", error_chain(&e)),
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("{url} answered HTTP {}", status.as_u16()))
        }
    }
}

/// reqwest's top-level message is vague ("error sending request"); the causes say why.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cause = err.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        match check_url(url, false) {
            Err(ApiError::BadRequest { code, message, .. }) => {
                assert_eq!(code, "invalid_webhook_url");
                message
            }
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn registration_refuses_bad_and_internal_urls() {
        for url in [
            "ftp://example.com/",
            "example.com",
            "https://exa mple.com",
            "http://",
        ] {
            refused(url);
        }
        let metadata = refused("http://169.254.169.254/latest/meta-data/");
        assert!(metadata.contains("allow_private_webhooks"), "{metadata}");
        for url in [
            "http://127.0.0.1:8080/",
            "http://10.0.0.5/",
            "http://[::1]/",
            "http://localhost/",
        ] {
            assert!(refused(url).contains("allow_private_webhooks"), "{url}");
        }
        assert!(check_url("https://hooks.example.com/corral", false).is_ok());
    }

    #[test]
    fn the_flag_allows_private_targets_but_not_other_schemes() {
        assert!(check_url("http://127.0.0.1:9/", true).is_ok());
        assert!(check_url("http://169.254.169.254/", true).is_ok());
        assert!(check_url("file:///etc/passwd", true).is_err());
    }
}
