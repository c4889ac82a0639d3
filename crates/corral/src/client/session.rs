//! The client's side of signing in: the saved credentials and an HTTP client that
//! sends them, refreshing the access token when it expires.
//!
//! Credentials live in `~/.config/corral/credentials.json` (or `$XDG_CONFIG_HOME`, or
//! the file `CORRAL_CREDENTIALS` names), mode 0600. Refresh tokens are single use and a
//! reused one signs the whole login out, so two `corral` processes must never refresh
//! with the same token: refreshing holds an exclusive lock on `credentials.json.lock`
//! and re-reads the file under it, taking the tokens another process just saved.
//!
//! Programs can skip the login with `CORRAL_API_KEY=crl_...` (and `CORRAL_URL`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CliError;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Refresh this long before the access token expires, so a request never races it.
const EXPIRY_MARGIN_SECS: i64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    pub url: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
}

impl Credentials {
    /// From a token pair (`/api/auth/login`, `/mfa/verify`, `/refresh`).
    pub fn from_pair(url: &str, pair: &Value) -> Result<Self, CliError> {
        let field = |name: &str| {
            pair[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| CliError::Invalid(format!("the server's answer has no {name}")))
        };
        Ok(Credentials {
            url: url.to_string(),
            email: pair["user"]["email"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            access_token: field("access_token")?,
            refresh_token: field("refresh_token")?,
            expires_at: Utc::now() + Duration::seconds(pair["expires_in"].as_i64().unwrap_or(0)),
        })
    }
}

pub fn credentials_path() -> Result<PathBuf, CliError> {
    if let Some(path) = std::env::var_os("CORRAL_CREDENTIALS") {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
            CliError::Invalid("HOME is not set; set CORRAL_CREDENTIALS to a file path".into())
        })?)
        .join(".config"),
    };
    Ok(base.join("corral").join("credentials.json"))
}

pub fn load(path: &Path) -> Result<Option<Credentials>, CliError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CliError::Invalid(format!(
                "{} is not valid ({e}); run `corral login` to replace it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::io(format!("reading {}", path.display()))(e)),
    }
}

/// Writes the file with mode 0600 (its folder 0700) through a temporary file and a
/// rename, so a crash never leaves half a file and no other user can read the tokens.
pub fn save(path: &Path, creds: &Credentials) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(CliError::io(format!("creating {}", dir.display())))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(creds).expect("credentials serialize");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(CliError::io(format!("creating {}", tmp.display())))?;
    // `mode` applies to new files only; an older file keeps its bits without this.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(&json))
        .and_then(|()| file.sync_all())
        .map_err(CliError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(CliError::io(format!("writing {}", path.display())))
}

/// Holds the refresh lock until dropped.
struct RefreshLock(fs::File);

impl RefreshLock {
    fn take(creds_path: &Path) -> Result<RefreshLock, CliError> {
        let path = creds_path.with_extension("json.lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(CliError::io(format!("opening {}", path.display())))?;
        file.lock()
            .map_err(CliError::io(format!("locking {}", path.display())))?;
        Ok(RefreshLock(file))
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

enum Auth {
    Key(String),
    Session { path: PathBuf, creds: Credentials },
}

/// An API client for one server with one identity.
pub struct Api {
    pub url: String,
    http: reqwest::Client,
    auth: Auth,
}

/// An answer that was not a success, as the API words it.
pub fn api_error(status: StatusCode, body: &Value, url: &str) -> CliError {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the server answered {status}"));
    let hint = match status {
        StatusCode::UNAUTHORIZED => "\n  hint: run `corral login` (or set CORRAL_API_KEY)",
        StatusCode::FORBIDDEN => "\n  hint: your role does not allow this; ask an admin",
        StatusCode::NOT_FOUND => {
            "\n  hint: `corral ps` lists your instances, `corral models` the models"
        }
        StatusCode::TOO_MANY_REQUESTS => "\n  hint: wait a moment and try again",
        s if s.is_server_error() => "\n  hint: the server log has the details",
        _ => "",
    };
    let details = body["error"]["details"]
        .as_object()
        .map(|d| format!(" ({})", Value::Object(d.clone())))
        .unwrap_or_default();
    CliError::Invalid(format!("{message}{details} [{url}]{hint}"))
}

pub fn connect_error(url: &str, e: &reqwest::Error) -> CliError {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = format!("{cause}: {s}");
        source = s.source();
    }
    CliError::Invalid(format!(
        "cannot reach Corral at {url}: {cause}\n  hint: is `corral serve` running there? \
         Choose the server with `corral login --url URL` or CORRAL_URL"
    ))
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("corral-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("the HTTP client builds with the compiled-in TLS roots")
}

impl Api {
    /// The signed-in identity: `CORRAL_API_KEY` when set, else the saved login.
    pub fn from_env() -> Result<Api, CliError> {
        let env_url = std::env::var("CORRAL_URL").ok().filter(|u| !u.is_empty());
        let path = credentials_path()?;
        if let Some(key) = std::env::var("CORRAL_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
        {
            let url = match env_url {
                Some(url) => url,
                None => load(&path)?.map_or_else(|| DEFAULT_URL.to_string(), |c| c.url),
            };
            return Ok(Api {
                url: url.trim_end_matches('/').to_string(),
                http: http_client(),
                auth: Auth::Key(key),
            });
        }
        let creds = load(&path)?.ok_or_else(|| {
            CliError::Invalid(
                "not logged in: run `corral login --url URL` (or set CORRAL_API_KEY)".into(),
            )
        })?;
        if let Some(url) = env_url
            && url.trim_end_matches('/') != creds.url
        {
            return Err(CliError::Invalid(format!(
                "CORRAL_URL is {url} but you are logged in to {}; run `corral login --url {url}`",
                creds.url
            )));
        }
        Ok(Api {
            url: creds.url.clone(),
            http: http_client(),
            auth: Auth::Session { path, creds },
        })
    }

    fn token(&self) -> &str {
        match &self.auth {
            Auth::Key(key) => key,
            Auth::Session { creds, .. } => &creds.access_token,
        }
    }

    /// The bearer token to send now, refreshed first when it is about to expire.
    pub async fn bearer(&mut self) -> Result<String, CliError> {
        if let Auth::Session { creds, .. } = &self.auth
            && creds.expires_at - Duration::seconds(EXPIRY_MARGIN_SECS) <= Utc::now()
        {
            self.refresh().await?;
        }
        Ok(self.token().to_string())
    }

    /// Trades the refresh token for a new pair, under the lock (see the module doc).
    async fn refresh(&mut self) -> Result<(), CliError> {
        let Auth::Session { path, creds } = &mut self.auth else {
            return Ok(());
        };
        let _lock = RefreshLock::take(path)?;
        // Another process may have refreshed while this one waited for the lock.
        if let Some(saved) = load(path)?
            && saved.url == creds.url
            && saved.refresh_token != creds.refresh_token
        {
            *creds = saved;
            if creds.expires_at - Duration::seconds(EXPIRY_MARGIN_SECS) > Utc::now() {
                return Ok(());
            }
        }
        let url = format!("{}/api/auth/refresh", creds.url);
        let resp = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "refresh_token": creds.refresh_token }))
            .send()
            .await
            .map_err(|e| connect_error(&creds.url, &e))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(CliError::Invalid(format!(
                "your session has ended ({}); run `corral login` again",
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("refresh refused")
            )));
        }
        let mut next = Credentials::from_pair(&creds.url, &body)?;
        if next.email.is_empty() {
            next.email = creds.email.clone();
        }
        save(path, &next)?;
        *creds = next;
        Ok(())
    }

    /// Sends a request built by `build` with the bearer token; on 401 refreshes once
    /// and sends it again. Connection failures say how to reach the server.
    pub async fn send(
        &mut self,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<Response, CliError> {
        for attempt in 0..2 {
            let token = self.bearer().await?;
            let resp = build(&self.http, &self.url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| connect_error(&self.url, &e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && matches!(self.auth, Auth::Session { .. })
            {
                self.refresh().await?;
                continue;
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// A JSON call; a non-success answer becomes the API's error message with a hint.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let resp = self
            .send(|http, base| {
                let req = http.request(method.clone(), format!("{base}{path}"));
                match &body {
                    Some(b) => req.json(b),
                    None => req,
                }
            })
            .await?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| connect_error(&self.url, &e))?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_error(status, &value, &format!("{method} {path}")))
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Value, CliError> {
        self.json(Method::GET, path, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/corral/credentials.json");
        assert_eq!(load(&path).unwrap(), None);
        let creds = Credentials {
            url: "http://127.0.0.1:1".into(),
            email: "a@example.com".into(),
            access_token: "a".into(),
            refresh_token: "r".into(),
            expires_at: Utc::now(),
        };
        save(&path, &creds).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap(), Some(creds));
        fs::write(&path, "{").unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .to_string()
                .contains("corral login")
        );
    }
}
