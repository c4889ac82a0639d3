//! Amazon Cognito as Corral's account store (auth mode `cognito`): the `/api/auth/*`
//! routes call the user pool's public API (SignUp, ConfirmSignUp, InitiateAuth, ...)
//! with the app client, and bearer tokens the pool issued are accepted everywhere,
//! verified by `oidc::Verifier` against the pool's JWKS.
//!
//! The calls Corral makes are the ones a browser could make itself: they need no AWS
//! credentials, only the app client id (and its secret, for a client that has one).

use aws_sdk_cognitoidentityprovider::Client;
use aws_sdk_cognitoidentityprovider::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cognitoidentityprovider::types::{
    AttributeType, AuthFlowType, AuthenticationResultType, ChallengeNameType,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use corral_core::User;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};

use super::oidc::{self, OidcConfig, RoleMapping, Verifier};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Where accounts live: Corral's own tables (default) or an Amazon Cognito user pool.
#[derive(Debug, Clone, Default)]
pub enum AuthMode {
    #[default]
    Builtin,
    Cognito(Box<CognitoSettings>),
}

/// `[auth.cognito]`.
#[derive(Debug, Clone)]
pub struct CognitoSettings {
    pub region: String,
    /// `REGION_xxxxxxxxx`.
    pub user_pool_id: String,
    /// The app client Corral signs users in with; it needs the USER_PASSWORD_AUTH flow.
    pub client_id: String,
    /// Only for an app client with a secret: every call then carries a SECRET_HASH.
    pub client_secret: Option<String>,
    /// The tokens' `iss`. Default: `https://cognito-idp.{region}.amazonaws.com/{pool}`.
    pub issuer: Option<String>,
    /// Default: `{endpoint}/{pool}/.well-known/jwks.json` when an endpoint override is
    /// set (moto serves it there), else `{issuer}/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Overrides the Cognito endpoint (default: `AWS_ENDPOINT_URL`, else AWS's own).
    pub endpoint_url: Option<String>,
    pub roles: RoleMapping,
    /// Least time between JWKS fetches caused by unknown key ids.
    pub jwks_refetch_interval: Duration,
}

impl CognitoSettings {
    pub const DEFAULT_JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

    /// Tokens of the pool carry this `iss`.
    pub fn issuer(&self) -> String {
        if let Some(issuer) = &self.issuer {
            return issuer.trim_end_matches('/').to_string();
        }
        format!(
            "https://cognito-idp.{}.amazonaws.com/{}",
            self.region, self.user_pool_id
        )
    }

    pub fn jwks_url(&self) -> String {
        if let Some(url) = &self.jwks_url {
            return url.clone();
        }
        match self.endpoint() {
            Some(endpoint) => format!(
                "{}/{}/.well-known/jwks.json",
                endpoint.trim_end_matches('/'),
                self.user_pool_id
            ),
            None => format!("{}/.well-known/jwks.json", self.issuer()),
        }
    }

    fn endpoint(&self) -> Option<String> {
        self.endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|url| !url.is_empty())
    }

    /// What is missing or malformed, as one sentence per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.region) {
            problems.push("[auth.cognito] region is missing or not a region name".into());
        }
        match self.user_pool_id.split_once('_') {
            Some((region, id)) if region == self.region && name_ok(id) => {}
            _ => problems.push(format!(
                "[auth.cognito] user_pool_id {:?} is not of the form {}_xxxxxxxxx",
                self.user_pool_id, self.region
            )),
        }
        if !name_ok(&self.client_id) {
            problems.push("[auth.cognito] client_id is missing or malformed".into());
        }
        if self.client_secret.as_deref() == Some("") {
            problems.push("[auth.cognito] client_secret is empty; leave it out instead".into());
        }
        for url in self
            .jwks_url
            .iter()
            .chain(&self.endpoint_url)
            .chain(&self.issuer)
        {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                problems.push(format!("[auth.cognito] {url:?} is not an http(s) URL"));
            }
        }
        problems
    }
}

/// Tokens of a successful sign-in or refresh.
pub struct Tokens {
    pub access_token: String,
    pub id_token: String,
    /// Absent on refresh, unless the pool rotates refresh tokens.
    pub refresh_token: Option<String>,
    pub expires_in: u64,
}

pub enum SignIn {
    Tokens(Tokens),
    /// The account has TOTP MFA: answer with a code and this session.
    Mfa {
        session: String,
    },
}

/// A failed Cognito call: refused by the pool (with its error code) or not made at all.
pub enum Failure {
    Rejected { code: String, message: String },
    Unreachable(String),
}

impl Failure {
    pub fn code(&self) -> Option<&str> {
        match self {
            Failure::Rejected { code, .. } => Some(code),
            Failure::Unreachable(_) => None,
        }
    }
}

/// The general answer to a failure that the route did not expect.
impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Rejected { code, message } => match code.as_str() {
                "TooManyRequestsException"
                | "LimitExceededException"
                | "TooManyFailedAttemptsException" => ApiError::TooManyRequests {
                    message: "too many attempts; retry later".into(),
                    retry_after: Duration::from_secs(60),
                },
                "InvalidParameterException" => ApiError::bad_request("invalid_value", message),
                _ => {
                    tracing::error!(%code, %message, "Amazon Cognito refused a request");
                    ApiError::Unavailable(format!(
                        "the identity provider refused the request ({code}); try again later"
                    ))
                }
            },
            Failure::Unreachable(why) => {
                tracing::error!(error = %why, "Amazon Cognito cannot be reached");
                ApiError::Unavailable(
                    "the identity provider cannot be reached; try again later".into(),
                )
            }
        }
    }
}

fn failure<E, R>(op: &str, e: SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => Failure::Rejected {
            code: service.code().unwrap_or("Unknown").to_string(),
            message: service.message().unwrap_or_default().to_string(),
        },
        None => Failure::Unreachable(format!("{op}: {}", DisplayErrorContext(&e))),
    }
}

/// Most entries kept in the subject → e-mail cache for access tokens.
const EMAIL_CACHE_MAX: usize = 10_000;

pub struct Cognito {
    settings: CognitoSettings,
    pub verifier: Verifier,
    client: OnceCell<Client>,
    /// Access tokens carry no e-mail: the address of a subject, learned at sign-in or
    /// from GetUser, so that only its first request asks Cognito.
    emails: Mutex<HashMap<String, String>>,
}

impl Cognito {
    pub fn new(settings: CognitoSettings) -> Self {
        let verifier = Verifier::new(OidcConfig {
            issuer: settings.issuer(),
            client_id: settings.client_id.clone(),
            jwks_url: settings.jwks_url(),
            roles: settings.roles.clone(),
            refetch_interval: settings.jwks_refetch_interval,
        });
        Cognito {
            settings,
            verifier,
            client: OnceCell::new(),
            emails: Mutex::new(HashMap::new()),
        }
    }

    /// How the pool's groups map to roles, for messages that tell where roles are set.
    pub fn roles(&self) -> &RoleMapping {
        &self.settings.roles
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.settings.region.clone()))
                    .http_client(http);
                if let Some(url) = &self.settings.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    /// SECRET_HASH = Base64(HMAC-SHA256(client secret, username + client id)), for app
    /// clients with a secret.
    fn secret_hash(&self, username: &str) -> Option<String> {
        let secret = self.settings.client_secret.as_deref()?;
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
        mac.update(username.as_bytes());
        mac.update(self.settings.client_id.as_bytes());
        Some(STANDARD.encode(mac.finalize().into_bytes()))
    }

    pub async fn sign_up(&self, email: &str, password: &str) -> Result<(), Failure> {
        let attribute = AttributeType::builder()
            .name("email")
            .value(email)
            .build()
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        self.client()
            .await
            .sign_up()
            .client_id(&self.settings.client_id)
            .username(email)
            .password(password)
            .user_attributes(attribute)
            .set_secret_hash(self.secret_hash(email))
            .send()
            .await
            .map_err(|e| failure("SignUp", e))?;
        Ok(())
    }

    pub async fn confirm_sign_up(&self, email: &str, code: &str) -> Result<(), Failure> {
        self.client()
            .await
            .confirm_sign_up()
            .client_id(&self.settings.client_id)
            .username(email)
            .confirmation_code(code)
            .set_secret_hash(self.secret_hash(email))
            .send()
            .await
            .map_err(|e| failure("ConfirmSignUp", e))?;
        Ok(())
    }

    pub async fn resend_confirmation(&self, email: &str) -> Result<(), Failure> {
        self.client()
            .await
            .resend_confirmation_code()
            .client_id(&self.settings.client_id)
            .username(email)
            .set_secret_hash(self.secret_hash(email))
            .send()
            .await
            .map_err(|e| failure("ResendConfirmationCode", e))?;
        Ok(())
    }

    /// InitiateAuth with USER_PASSWORD_AUTH.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<SignIn, Failure> {
        let mut call = self
            .client()
            .await
            .initiate_auth()
            .client_id(&self.settings.client_id)
            .auth_flow(AuthFlowType::UserPasswordAuth)
            .auth_parameters("USERNAME", email)
            .auth_parameters("PASSWORD", password);
        if let Some(hash) = self.secret_hash(email) {
            call = call.auth_parameters("SECRET_HASH", hash);
        }
        let out = call.send().await.map_err(|e| failure("InitiateAuth", e))?;
        match (out.challenge_name(), out.authentication_result()) {
            (_, Some(result)) => tokens(result),
            (Some(ChallengeNameType::SoftwareTokenMfa), None) => match out.session() {
                Some(session) if !session.is_empty() => Ok(SignIn::Mfa {
                    session: session.to_string(),
                }),
                _ => Err(Failure::Rejected {
                    code: "UnsupportedChallenge".into(),
                    message: "an MFA challenge without a session".into(),
                }),
            },
            (other, None) => Err(Failure::Rejected {
                code: "UnsupportedChallenge".into(),
                message: format!("Corral cannot answer the sign-in challenge {other:?}"),
            }),
        }
    }

    /// RespondToAuthChallenge SOFTWARE_TOKEN_MFA.
    pub async fn answer_mfa(
        &self,
        username: &str,
        session: &str,
        code: &str,
    ) -> Result<Tokens, Failure> {
        let mut call = self
            .client()
            .await
            .respond_to_auth_challenge()
            .client_id(&self.settings.client_id)
            .challenge_name(ChallengeNameType::SoftwareTokenMfa)
            .session(session)
            .challenge_responses("USERNAME", username)
            .challenge_responses("SOFTWARE_TOKEN_MFA_CODE", code);
        if let Some(hash) = self.secret_hash(username) {
            call = call.challenge_responses("SECRET_HASH", hash);
        }
        let out = call
            .send()
            .await
            .map_err(|e| failure("RespondToAuthChallenge", e))?;
        match out.authentication_result().map(tokens) {
            Some(Ok(SignIn::Tokens(t))) => Ok(t),
            Some(Err(e)) => Err(e),
            _ => Err(Failure::Rejected {
                code: "UnsupportedChallenge".into(),
                message: "Cognito asked for another challenge after the MFA code".into(),
            }),
        }
    }

    /// InitiateAuth with REFRESH_TOKEN_AUTH. `username` is Cognito's user name (not an
    /// alias): the SECRET_HASH of a refresh is computed over it.
    pub async fn refresh(&self, username: &str, refresh_token: &str) -> Result<Tokens, Failure> {
        let mut call = self
            .client()
            .await
            .initiate_auth()
            .client_id(&self.settings.client_id)
            .auth_flow(AuthFlowType::RefreshTokenAuth)
            .auth_parameters("REFRESH_TOKEN", refresh_token);
        if let Some(hash) = self.secret_hash(username) {
            call = call.auth_parameters("SECRET_HASH", hash);
        }
        let out = call.send().await.map_err(|e| failure("InitiateAuth", e))?;
        match out.authentication_result().map(tokens) {
            Some(Ok(SignIn::Tokens(t))) => Ok(t),
            Some(Err(e)) => Err(e),
            _ => Err(Failure::Rejected {
                code: "NotAuthorizedException".into(),
                message: "no tokens in the refresh answer".into(),
            }),
        }
    }

    pub async fn forgot_password(&self, email: &str) -> Result<(), Failure> {
        self.client()
            .await
            .forgot_password()
            .client_id(&self.settings.client_id)
            .username(email)
            .set_secret_hash(self.secret_hash(email))
            .send()
            .await
            .map_err(|e| failure("ForgotPassword", e))?;
        Ok(())
    }

    pub async fn confirm_forgot_password(
        &self,
        email: &str,
        code: &str,
        password: &str,
    ) -> Result<(), Failure> {
        self.client()
            .await
            .confirm_forgot_password()
            .client_id(&self.settings.client_id)
            .username(email)
            .confirmation_code(code)
            .password(password)
            .set_secret_hash(self.secret_hash(email))
            .send()
            .await
            .map_err(|e| failure("ConfirmForgotPassword", e))?;
        Ok(())
    }

    /// RevokeToken: ends the refresh token and the access tokens issued with it.
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), Failure> {
        self.client()
            .await
            .revoke_token()
            .client_id(&self.settings.client_id)
            .token(refresh_token)
            .set_client_secret(self.settings.client_secret.clone())
            .send()
            .await
            .map_err(|e| failure("RevokeToken", e))?;
        Ok(())
    }

    /// GlobalSignOut: ends every refresh token of the access token's user.
    pub async fn sign_out_everywhere(&self, access_token: &str) -> Result<(), Failure> {
        self.client()
            .await
            .global_sign_out()
            .access_token(access_token)
            .send()
            .await
            .map_err(|e| failure("GlobalSignOut", e))?;
        Ok(())
    }

    /// The e-mail address of a verified token's subject: from the token, the cache, or
    /// (access tokens, first time) GetUser, which also proves the token is not revoked.
    pub async fn email_of(&self, identity: &oidc::Identity, token: &str) -> ApiResult<String> {
        if let Some(email) = &identity.email {
            self.remember(&identity.subject, email).await;
            return Ok(email.clone());
        }
        if let Some(email) = self.emails.lock().await.get(&identity.subject) {
            return Ok(email.clone());
        }
        if !identity.is_access {
            return Err(ApiError::Unauthorized(
                "the token carries no e-mail address".into(),
            ));
        }
        let out = match self
            .client()
            .await
            .get_user()
            .access_token(token)
            .send()
            .await
            .map_err(|e| failure("GetUser", e))
        {
            Ok(out) => out,
            Err(Failure::Rejected { code, .. }) if code == "NotAuthorizedException" => {
                return Err(ApiError::Unauthorized(
                    "the token was revoked; log in again".into(),
                ));
            }
            Err(other) => return Err(other.into()),
        };
        let attribute = |name: &str| {
            out.user_attributes()
                .iter()
                .find(|a| a.name() == name)
                .and_then(|a| a.value())
        };
        if attribute("email_verified") == Some("false") {
            return Err(ApiError::denied(
                axum::http::StatusCode::FORBIDDEN,
                "email_not_verified",
                "the identity provider has not verified this account's e-mail address yet",
            ));
        }
        let email = attribute("email")
            .map(corral_core::user::normalize_email)
            .ok_or_else(|| {
                ApiError::Unauthorized("the account has no e-mail address at the provider".into())
            })?;
        self.remember(&identity.subject, &email).await;
        Ok(email)
    }

    async fn remember(&self, subject: &str, email: &str) {
        let mut emails = self.emails.lock().await;
        if emails.len() >= EMAIL_CACHE_MAX && !emails.contains_key(subject) {
            // Crude but bounded: the cache refills from tokens and GetUser.
            emails.clear();
        }
        emails.insert(subject.to_string(), email.to_string());
    }
}

fn tokens(result: &AuthenticationResultType) -> Result<SignIn, Failure> {
    match (result.access_token(), result.id_token()) {
        (Some(access), Some(id)) => Ok(SignIn::Tokens(Tokens {
            access_token: access.to_string(),
            id_token: id.to_string(),
            refresh_token: result.refresh_token().map(str::to_string),
            expires_in: u64::try_from(result.expires_in()).unwrap_or_default(),
        })),
        _ => Err(Failure::Rejected {
            code: "IncompleteTokens".into(),
            message: "Cognito answered without an access or ID token".into(),
        }),
    }
}

/// The refresh token Corral hands out: Cognito's, prefixed with the user name that its
/// SECRET_HASH needs (`base64url(username).token`), since a refresh carries nothing else.
pub fn wrap_refresh(username: &str, refresh_token: &str) -> String {
    format!("{}.{refresh_token}", URL_SAFE_NO_PAD.encode(username))
}

/// (username, Cognito refresh token), or None for a token Corral did not hand out.
pub fn unwrap_refresh(token: &str) -> Option<(String, &str)> {
    let (name, rest) = token.split_once('.')?;
    let name = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
    (!name.is_empty() && !rest.is_empty()).then_some((name, rest))
}

/// The local user of a Cognito bearer token, or None when `token` is not one (an API key
/// or one of Corral's own tokens), so the caller tries those.
pub async fn user_for_bearer(state: &AppState, token: &str) -> ApiResult<Option<User>> {
    let Some(cognito) = &state.cognito else {
        return Ok(None);
    };
    if !Verifier::claims_token(token) {
        return Ok(None);
    }
    let identity = cognito.verifier.verify(token).await?;
    let email = cognito.email_of(&identity, token).await?;
    oidc::local_user(state, &identity, &email).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CognitoSettings {
        CognitoSettings {
            region: "eu-west-1".into(),
            user_pool_id: "eu-west-1_AbC123".into(),
            client_id: "client123".into(),
            client_secret: None,
            issuer: None,
            jwks_url: None,
            endpoint_url: Some("http://127.0.0.1:5000/".into()),
            roles: RoleMapping::default(),
            jwks_refetch_interval: CognitoSettings::DEFAULT_JWKS_REFETCH_INTERVAL,
        }
    }

    #[test]
    fn urls_and_validation() {
        let s = settings();
        assert_eq!(
            s.issuer(),
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123"
        );
        assert_eq!(
            s.jwks_url(),
            "http://127.0.0.1:5000/eu-west-1_AbC123/.well-known/jwks.json"
        );
        assert!(s.problems().is_empty());
        let explicit = CognitoSettings {
            jwks_url: Some("https://keys.example/jwks.json".into()),
            issuer: Some("https://issuer.example/pool/".into()),
            ..settings()
        };
        assert_eq!(explicit.jwks_url(), "https://keys.example/jwks.json");
        assert_eq!(explicit.issuer(), "https://issuer.example/pool");
        let bad = CognitoSettings {
            user_pool_id: "us-east-1_AbC".into(),
            client_id: String::new(),
            client_secret: Some(String::new()),
            ..settings()
        };
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
    }

    #[test]
    fn secret_hash_matches_the_documented_construction() {
        let c = Cognito::new(CognitoSettings {
            client_secret: Some("secret".into()),
            ..settings()
        });
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"alice@example.comclient123");
        assert_eq!(
            c.secret_hash("alice@example.com").unwrap(),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let plain = Cognito::new(settings());
        assert_eq!(plain.secret_hash("alice@example.com"), None);
    }

    #[test]
    fn refresh_wrapping_round_trips() {
        let wrapped = wrap_refresh("user-sub-1", "eyJ.a.b.c.d");
        assert_eq!(
            unwrap_refresh(&wrapped),
            Some(("user-sub-1".to_string(), "eyJ.a.b.c.d"))
        );
        assert_eq!(unwrap_refresh("no-dot"), None);
        assert_eq!(unwrap_refresh("!!!.token"), None);
        assert_eq!(unwrap_refresh(".token"), None);
    }
}
