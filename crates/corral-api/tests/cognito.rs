//! Auth mode `cognito` against a real moto server (the AWS emulator) through the real
//! SDK: the user pool, its app client and groups are made here with the admin API, then
//! the real server signs users up and in through the brief's `/api/auth/*` paths and
//! accepts the pool's tokens on every route.
//!
//! Run with `scripts/with-moto.sh cargo test -p corral-api --test cognito`, which starts
//! moto and sets `AWS_ENDPOINT_URL`. Without it these tests fail, unless
//! `CORRAL_SKIP_MOTO=1`.
//!
//! What moto does not check, and so these tests cannot: the confirmation and reset codes
//! (moto accepts any code it did not hand out itself) and TOTP codes (any code, unless
//! moto's TOTP emulation is switched on).

mod common;

use aws_sdk_cognitoidentityprovider::Client as Cognito;
use aws_sdk_cognitoidentityprovider::types::{ExplicitAuthFlowsType, SoftwareTokenMfaSettingsType};
use common::{Backend, PASSWORD, TestApp, spawn_app, spawn_app_with};
use corral_api::auth::cognito::{AuthMode, CognitoSettings};
use corral_api::auth::oidc::RoleMapping;
use corral_core::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REGION: &str = "us-east-1";

/// A throwaway RSA key made for this test (openssl genrsa 2048): the test JWKS server
/// publishes its public half, so tokens it signs pass everything but the check under test.
const TEST_KEY_PEM: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAkQsP6W4I/gNKSRofX3nR0n0S9s377k4/qLVy/wHlglmqehMw
oa9JTjr0NAo04mPoHojYx87KcA4Tfo7q+FCCta3t84l6kc3coM8T21/T6toplwvH
ukYauN55N0mhILmVZvYr02vdW8vCu58p9Ej2BDXpZLGeGrJuOEkYZuSldJ3YsvuC
X64e4Z+JHIKy5stBaOMnGWd7NMMYSfrKiSlDWx51kT6rgGDdfYkh1CJQUXxe0+D3
qUSgTwsFrDJS54c+CU1bSIru3Fl4Irrgx2yp2NdBsK+is/l/aFD6fKtLkXZq3ino
eeuhCL+kMA/tDNQ9AYhxfIwAHft6DXlr+OtkPwIDAQABAoIBAAg/l80Pm+VOLJhR
qv0UAXG1+TEd77jSrF4cy4hjBDlQfhhpJPfc7w9K3P5kojNJuTabU7CxOuP6ePNW
j1hFw9kvJfwWkmjeSzC99gQgw/10IK9dVSNrvzNKO5yATHB+/VcYos9oL/N7d/yR
haJFz+/XXQmD7FjaUthSl9eqIxqplXBJ/Hu63/kjW057Gf+xJxA0lCh1PSF0mUAP
7sfNvhG5EChNiLmY03ctqBocgNLVgRuxGaVjEOtS9c6VM0dweWgEtHotXFfaNM5S
PjsyG8GPRFk6ANj1HswsO0dnCW2dqDnGtkkJVLjOV1LALbpUAMCFwbvf5Orkqq19
wiJN23kCgYEAxM1iP6g1FK7g8FjkHHdFYg3Ey3hpRNzwsqi0RwREINk/TTiUCWeN
z9u74bhZzm0KdHTuw178Lt2Oa93G3drGTgvejppIbNdQV8U2nxPgzuWdWEguuzUR
89p6tRvk9kaUiX7idScQ7NQt9Lr2kF8btH+6kVC4BXDMMW8tcna+NlMCgYEAvKwC
TNVT1NOoYUaCvG8rSjW1TyAJ2Uq4ly1i5IZNNK16vnkbwqVkDJn2gzuLT5bxRFaw
clnB7lwiD6M266FGIk3tbRM+Aebpn0OvxFDRghc3lSmy1dh5zHGsRYpgwVzN1ZjG
c0WxTTuSKEXx1WWvh5P4uCbFS1Ssqyy5w4P2hOUCgYBSPnKcn7LvHdYrGzrZGo8I
VzCyx3NWr+52+0G7m/DMuX1WzBoxg/EjuHRf9CazuaXw3R0a0IsbGsP2GAyPkmnl
G9i6R4eU1LZit6wH9sqwLA0BY8kDuz3xZpB5N1sMAJr6iugghV7xWgqKh8eateRi
Hi7do5oDzAvJbOjVOQJsuQKBgCAfUQzvzSQRHTvim2OlscMivcnI9KRQOnlSuuGZ
lA+B8cH4MKfFLPGQTQ4u1xsn4c/2ynfNnF0OxqXO7gzUGnLAvcmyWv5L6D67cXOF
JwZ1GXuF6/LItoP+XoxAcRS6zjitmCwME5HIsKu2rOPeOjJlGRWRVEntErDaHo6R
KymZAoGBAKWqGkeaZxTYJ9NPtxLnIMehdhWcGtWN2PzBfrvugkt0EvwlNqu2VTle
iRDexIyd0MpYO85QQ+qNulu4ciCZ1wEfrpSDKBfVRztHGRtbFlh+F5frU2rGOIGx
E7AZDyQzTYZHmKd8kx5hL9ZrHHvQ1RorHPsoAPBmjZaUsx4uOzJQ
-----END RSA PRIVATE KEY-----
";
const TEST_KEY_N: &str = "kQsP6W4I_gNKSRofX3nR0n0S9s377k4_qLVy_wHlglmqehMwoa9JTjr0NAo04mPoHojYx87KcA4Tfo7q-FCCta3t84l6kc3coM8T21_T6toplwvHukYauN55N0mhILmVZvYr02vdW8vCu58p9Ej2BDXpZLGeGrJuOEkYZuSldJ3YsvuCX64e4Z-JHIKy5stBaOMnGWd7NMMYSfrKiSlDWx51kT6rgGDdfYkh1CJQUXxe0-D3qUSgTwsFrDJS54c-CU1bSIru3Fl4Irrgx2yp2NdBsK-is_l_aFD6fKtLkXZq3inoeeuhCL-kMA_tDNQ9AYhxfIwAHft6DXlr-OtkPw";

/// moto's endpoint, or None when the caller chose to skip these tests.
fn moto() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_string()),
        _ if std::env::var("CORRAL_SKIP_MOTO").as_deref() == Ok("1") => {
            eprintln!("CORRAL_SKIP_MOTO=1: skipping the moto tests");
            None
        }
        _ => panic!(
            "these tests need a moto server: run them as `scripts/with-moto.sh cargo test -p \
             corral-api --test cognito` (moto comes from `scripts/venv.sh`), or set \
             CORRAL_SKIP_MOTO=1"
        ),
    }
}

/// A fresh pool with an app client and the three role groups.
struct Pool {
    endpoint: String,
    admin: Cognito,
    id: String,
    client_id: String,
}

impl Pool {
    async fn new(endpoint: &str) -> Pool {
        // Plain HTTP to moto; the SDK crates are built without a default client.
        let http = aws_smithy_http_client::Builder::new().build_http();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .http_client(http)
            .endpoint_url(endpoint)
            .load()
            .await;
        let admin = Cognito::new(&sdk);
        let pool = admin
            .create_user_pool()
            .pool_name(format!("corral-{}", uuid::Uuid::now_v7().simple()))
            .send()
            .await
            .expect("CreateUserPool")
            .user_pool
            .expect("a pool");
        let id = pool.id.expect("a pool id");
        let client_id = admin
            .create_user_pool_client()
            .user_pool_id(&id)
            .client_name("corral")
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
            .send()
            .await
            .expect("CreateUserPoolClient")
            .user_pool_client
            .and_then(|c| c.client_id)
            .expect("a client id");
        for group in ["admin", "user", "viewer"] {
            admin
                .create_group()
                .user_pool_id(&id)
                .group_name(group)
                .send()
                .await
                .expect("CreateGroup");
        }
        Pool {
            endpoint: endpoint.to_string(),
            admin,
            id,
            client_id,
        }
    }

    fn settings(&self) -> CognitoSettings {
        CognitoSettings {
            region: REGION.into(),
            user_pool_id: self.id.clone(),
            client_id: self.client_id.clone(),
            client_secret: None,
            issuer: None,
            jwks_url: None,
            endpoint_url: Some(self.endpoint.clone()),
            roles: RoleMapping::default(),
            jwks_refetch_interval: CognitoSettings::DEFAULT_JWKS_REFETCH_INTERVAL,
        }
    }

    fn issuer(&self) -> String {
        format!("https://cognito-idp.{REGION}.amazonaws.com/{}", self.id)
    }

    async fn add_to_group(&self, email: &str, group: &str) {
        self.admin
            .admin_add_user_to_group()
            .user_pool_id(&self.id)
            .username(email)
            .group_name(group)
            .send()
            .await
            .expect("AdminAddUserToGroup");
    }

    /// The pool's own tokens for a confirmed user, straight from moto (not through Corral).
    async fn tokens(&self, email: &str) -> (String, String) {
        let out = self
            .admin
            .initiate_auth()
            .client_id(&self.client_id)
            .auth_flow(aws_sdk_cognitoidentityprovider::types::AuthFlowType::UserPasswordAuth)
            .auth_parameters("USERNAME", email)
            .auth_parameters("PASSWORD", PASSWORD)
            .send()
            .await
            .expect("InitiateAuth");
        let result = out.authentication_result.expect("tokens");
        (
            result.access_token.expect("an access token"),
            result.id_token.expect("an ID token"),
        )
    }

    async fn jwks(&self) -> Value {
        reqwest::get(format!(
            "{}/{}/.well-known/jwks.json",
            self.endpoint, self.id
        ))
        .await
        .expect("moto's JWKS")
        .json()
        .await
        .expect("JWKS JSON")
    }
}

async fn cognito_app(backend: Backend, settings: CognitoSettings) -> TestApp {
    spawn_app_with(backend, |s| s.auth = AuthMode::Cognito(Box::new(settings))).await
}

/// Signs `email` up and confirms it through Corral's routes.
async fn sign_up(app: &TestApp, email: &str) {
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"email": email, "password": PASSWORD, "confirmPassword": PASSWORD}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app
        .post(
            "/api/auth/verify",
            None,
            json!({"email": email, "code": "123456"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    app.post(
        "/api/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn cognito_sign_up_login_and_roles(backend: Backend) {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let app = cognito_app(backend, pool.settings()).await;
    let alice = "alice@example.com";

    // The brief's password policy answers first, in the usual shape.
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"email": alice, "password": "short", "confirmPassword": "short"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "weak_password"),
        "{body}"
    );

    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"email": alice, "password": PASSWORD, "confirmPassword": PASSWORD}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // A second sign-up with the address reads the same (Cognito's UsernameExists is hidden).
    let (status, _) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"email": alice, "password": PASSWORD, "confirmPassword": PASSWORD}),
        )
        .await;
    assert_eq!(status, 202);

    let (status, body) = login(&app, alice, PASSWORD).await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "email_not_verified"),
        "unconfirmed: {body}"
    );
    let (status, body) = app
        .post("/api/auth/verify", None, json!({"code": "123456"}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_email"),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/api/auth/verify",
            None,
            json!({"email": alice, "code": "123456"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = login(&app, alice, "WrongPass123!").await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "invalid_credentials"),
        "{body}"
    );

    // No group: the default role, `user`.
    let (status, body) = login(&app, alice, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user"]["email"], alice);
    assert_eq!(body["user"]["role"], "user");
    let access = body["access_token"].as_str().unwrap().to_string();
    let id_token = body["id_token"].as_str().unwrap().to_string();
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        jsonwebtoken::decode_header(&access).unwrap().alg,
        Algorithm::RS256,
        "the pool's own token"
    );
    for token in [&access, &id_token] {
        let (status, profile) = app.get("/api/user/profile", Some(token)).await;
        assert_eq!(status, 200, "{profile}");
        assert_eq!(profile["email"], alice);
        assert_eq!(profile["role"], "user");
    }
    // The gateway takes the pool's tokens too.
    let (status, models) = app.get("/v1/models", Some(&access)).await;
    assert_eq!(status, 200, "{models}");
    let local = app.state.store.user_by_email(alice).await.unwrap().unwrap();
    assert!(corral_api::auth::oidc::is_external(&local));
    assert_eq!(local.role, Role::User);
    let (status, _) = app.get("/api/admin/users", Some(&access)).await;
    assert_eq!(status, 403, "not an admin yet");

    // Built-in password and MFA routes are not for provider accounts.
    let (status, body) = app
        .post("/api/auth/mfa/enroll", Some(&access), json!({}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "managed_by_provider"),
        "{body}"
    );
    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&access),
            json!({"current_password": PASSWORD, "new_password": "OtherPass123!",
                   "confirmPassword": "OtherPass123!"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "managed_by_provider"),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/api/auth/setup",
            None,
            json!({"setup_token": "x", "email": alice, "password": PASSWORD,
                   "confirmPassword": PASSWORD}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "setup_closed"), "{body}");

    // Group admin: the next sign-in (here a refresh) makes the local row an admin.
    pool.add_to_group(alice, "admin").await;
    let (status, body) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["role"], "admin");
    let admin_access = body["access_token"].as_str().unwrap().to_string();
    let (status, users) = app.get("/api/admin/users", Some(&admin_access)).await;
    assert_eq!(status, 200, "{users}");
    // API keys stay Corral's own, and act as their owner.
    let (status, key) = app
        .post(
            "/api/keys",
            Some(&admin_access),
            json!({"name": "ci", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (status, profile) = app.get("/api/user/profile", key["key"].as_str()).await;
    assert_eq!((status, profile["role"].as_str()), (200, Some("admin")));

    // Group viewer: reads, but no changes.
    let bob = "bob@example.com";
    sign_up(&app, bob).await;
    pool.add_to_group(bob, "viewer").await;
    let (status, body) = login(&app, bob, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["role"], "viewer");
    let viewer = body["access_token"].as_str().unwrap().to_string();
    let (status, _) = app.get("/api/keys", Some(&viewer)).await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post(
            "/api/models/start",
            Some(&viewer),
            json!({"model_id": "smollm2:135m"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");

    // Password reset through ForgotPassword / ConfirmForgotPassword.
    let (status, body) = app
        .post("/api/auth/reset-password", None, json!({"email": bob}))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app
        .post(
            "/api/auth/reset-password",
            None,
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(status, 202, "unknown addresses read the same: {body}");
    let new_password = "NewSecure456?";
    let (status, body) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            json!({"email": bob, "code": "123456", "password": new_password,
                   "confirmPassword": new_password}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(login(&app, bob, PASSWORD).await.0, 401, "old password");
    let (status, body) = login(&app, bob, new_password).await;
    assert_eq!(status, 200, "{body}");
    let bob_refresh = body["refresh_token"].as_str().unwrap().to_string();
    let bob_access = body["access_token"].as_str().unwrap().to_string();

    // Logging out everywhere (GlobalSignOut) ends the refresh token.
    let (status, body) = app
        .post("/api/auth/logout", Some(&bob_access), json!({"all": true}))
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = app
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": bob_refresh}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "invalid_refresh_token"),
        "{body}"
    );
    let (status, _) = app
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": "not-one-of-ours"}),
        )
        .await;
    assert_eq!(status, 401);
}

both_backends!(cognito_sign_up_login_and_roles);

/// TOTP MFA set up in the pool: login answers the MFA step, which the code completes.
#[tokio::test]
async fn cognito_mfa_step() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let app = cognito_app(Backend::Sqlite, pool.settings()).await;
    let carol = "carol@example.com";
    sign_up(&app, carol).await;
    let (access, _) = pool.tokens(carol).await;
    pool.admin
        .associate_software_token()
        .access_token(&access)
        .send()
        .await
        .expect("AssociateSoftwareToken");
    pool.admin
        .verify_software_token()
        .access_token(&access)
        .user_code("123456")
        .send()
        .await
        .expect("VerifySoftwareToken");
    pool.admin
        .admin_set_user_mfa_preference()
        .user_pool_id(&pool.id)
        .username(carol)
        .software_token_mfa_settings(
            SoftwareTokenMfaSettingsType::builder()
                .enabled(true)
                .preferred_mfa(true)
                .build(),
        )
        .send()
        .await
        .expect("AdminSetUserMfaPreference");

    let (status, body) = login(&app, carol, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mfa_required"], true, "{body}");
    let mfa_token = body["mfa_token"].as_str().unwrap();
    let (status, body) = app
        .post(
            "/api/auth/mfa/verify",
            None,
            json!({"mfa_token": "garbage", "code": "123456"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "invalid_mfa_token"),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/api/auth/mfa/verify",
            None,
            json!({"mfa_token": mfa_token, "code": "123456"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["email"], carol);
    let (status, _) = app
        .get("/api/user/profile", body["access_token"].as_str())
        .await;
    assert_eq!(status, 200);
}

/// A JWKS server under the test's control: what it publishes, and how often it was asked.
struct KeyServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn key_server(keys: Vec<Value>) -> KeyServer {
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (served, counted) = (served.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let keys = served.lock().unwrap().clone();
                axum::Json(json!({ "keys": keys }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    KeyServer { url, keys, fetches }
}

fn test_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": TEST_KEY_N, "e": "AQAB"})
}

fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(TEST_KEY_PEM.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// The claims of a valid ID token of `pool` for `email`, signed by the test key.
fn id_claims(pool: &Pool, email: &str, groups: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": pool.issuer(),
        "sub": uuid::Uuid::now_v7().to_string(),
        "aud": pool.client_id,
        "token_use": "id",
        "email": email,
        "cognito:username": email,
        "cognito:groups": groups,
        "iat": now,
        "exp": now + 600,
    })
}

/// Key rotation (an unknown kid refetches the JWKS, at most once per interval) and every
/// way a token can be wrong: each is 401, next to a control token that passes.
#[tokio::test]
async fn cognito_tokens_are_verified() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    // At first the published keys are only the test key: moto's key is "rotated in" later.
    let keys = key_server(vec![test_jwk("test-1")]).await;
    // Long enough that the steps between a fetch and the check "not asked again" fit in
    // it on a loaded CI machine.
    let interval = Duration::from_secs(3);
    let app = cognito_app(
        Backend::Sqlite,
        CognitoSettings {
            jwks_url: Some(keys.url.clone()),
            jwks_refetch_interval: interval,
            ..pool.settings()
        },
    )
    .await;
    let profile = |token: String| {
        let app = &app;
        async move { app.get("/api/user/profile", Some(&token)).await }
    };

    // A control token: signed by the published test key, everything right.
    let good = id_claims(&pool, "forged@example.com", &["viewer"]);
    let (status, body) = profile(sign(Algorithm::RS256, "test-1", &good)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "viewer");
    assert_eq!(
        keys.fetches.load(Ordering::SeqCst),
        1,
        "fetched once, then cached"
    );

    // Rotation: moto's tokens name a kid the cached JWKS lacks.
    let dave = "dave@example.com";
    sign_up_direct(&pool, dave).await;
    let (access, _) = pool.tokens(dave).await;
    tokio::time::sleep(interval).await;
    let (status, body) = profile(access.clone()).await;
    assert_eq!(status, 401, "moto's key is not published yet: {body}");
    assert_eq!(
        keys.fetches.load(Ordering::SeqCst),
        2,
        "the unknown kid refetched"
    );
    let moto_keys = pool.jwks().await["keys"].as_array().unwrap().clone();
    keys.keys.lock().unwrap().extend(moto_keys);
    let (status, _) = profile(access.clone()).await;
    assert_eq!(
        status, 401,
        "within the interval the JWKS is not asked again"
    );
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 2);
    tokio::time::sleep(interval).await;
    let (status, body) = profile(access.clone()).await;
    assert_eq!(
        status, 200,
        "after the interval the new key is fetched: {body}"
    );
    assert_eq!(
        body["email"], dave,
        "the e-mail of an access token comes from GetUser"
    );
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 3);

    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };
    let now = chrono::Utc::now().timestamp();
    let mut refused = vec![
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                "test-1",
                &with(&|c| c["iss"] = json!("https://cognito-idp.us-east-1.amazonaws.com/other")),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                "test-1",
                &with(&|c| c["aud"] = json!("other-client")),
            ),
        ),
        (
            "access token of another client",
            sign(
                Algorithm::RS256,
                "test-1",
                &with(&|c| {
                    c["token_use"] = json!("access");
                    c["client_id"] = json!("other-client");
                }),
            ),
        ),
        (
            "unknown token_use",
            sign(
                Algorithm::RS256,
                "test-1",
                &with(&|c| c["token_use"] = json!("refresh")),
            ),
        ),
        (
            "expired beyond the leeway",
            sign(
                Algorithm::RS256,
                "test-1",
                &with(&|c| c["exp"] = json!(now - 120)),
            ),
        ),
        (
            "alg differs from the key's",
            sign(Algorithm::RS512, "test-1", &good),
        ),
        ("unknown kid", sign(Algorithm::RS256, "test-2", &good)),
    ];
    let control = sign(Algorithm::RS256, "test-1", &good);
    let parts: Vec<&str> = control.split('.').collect();
    // A flipped byte in the signature.
    let mut signature = data_encoding::BASE64URL_NOPAD
        .decode(parts[2].as_bytes())
        .unwrap();
    signature[10] ^= 0x01;
    refused.push((
        "tampered signature",
        format!("{}.{}.{}", parts[0], parts[1], b64(&signature)),
    ));
    // A changed claim under the original signature.
    refused.push((
        "tampered claims",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(with(&|c| c["cognito:groups"] = json!(["admin"]))
                .to_string()
                .as_bytes()),
            parts[2]
        ),
    ));
    // alg none, unsigned.
    refused.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"test-1"}"#),
            parts[1]
        ),
    ));
    // HS256 with the published public key (its modulus) as the HMAC secret.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("test-1".into());
    refused.push((
        "HS256 with the public key",
        jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(TEST_KEY_N.as_bytes())).unwrap(),
    ));
    for (what, token) in refused {
        let (status, body) = profile(token).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    // A row an administrator disabled refuses the provider's tokens too.
    let forged = app
        .state
        .store
        .user_by_email("forged@example.com")
        .await
        .unwrap()
        .unwrap();
    let patch = corral_store::UserPatch {
        disabled: Some(true),
        ..Default::default()
    };
    app.state
        .store
        .update_user(forged.id, &patch, chrono::Utc::now())
        .await
        .unwrap();
    let (status, body) = profile(control.clone()).await;
    assert_eq!(status, 401, "disabled: {body}");
    let (status, body) = profile(sign(
        Algorithm::RS256,
        "test-1",
        &id_claims(&pool, "other@example.com", &[]),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let within_leeway = sign(
        Algorithm::RS256,
        "test-1",
        &with(&|c| {
            c["exp"] = json!(now - 5);
            c["email"] = json!("other@example.com");
        }),
    );
    assert_eq!(
        profile(within_leeway).await.0,
        200,
        "a few seconds of skew are tolerated"
    );
}

/// A confirmed pool user made with the admin API, bypassing Corral (whose login would
/// need the pool's key to be published already).
async fn sign_up_direct(pool: &Pool, email: &str) {
    let sdk_client = &pool.admin;
    sdk_client
        .sign_up()
        .client_id(&pool.client_id)
        .username(email)
        .password(PASSWORD)
        .user_attributes(
            aws_sdk_cognitoidentityprovider::types::AttributeType::builder()
                .name("email")
                .value(email)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("SignUp");
    sdk_client
        .admin_confirm_sign_up()
        .user_pool_id(&pool.id)
        .username(email)
        .send()
        .await
        .expect("AdminConfirmSignUp");
}

/// Another provider's claim names: groups in `groups`, and accounts in no group refused.
#[tokio::test]
async fn cognito_group_claim_and_no_default_role() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let keys = key_server(vec![test_jwk("test-1")]).await;
    let app = cognito_app(
        Backend::Sqlite,
        CognitoSettings {
            jwks_url: Some(keys.url.clone()),
            roles: RoleMapping {
                groups_claim: "groups".into(),
                admin_group: "corral-admins".into(),
                default_role: None,
                ..RoleMapping::default()
            },
            ..pool.settings()
        },
    )
    .await;
    let mut claims = id_claims(&pool, "erin@example.com", &["admin"]);
    let (status, body) = app
        .get(
            "/api/user/profile",
            Some(&sign(Algorithm::RS256, "test-1", &claims)),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "no_role"),
        "cognito:groups is not the configured claim: {body}"
    );
    claims["groups"] = json!(["user", "corral-admins"]);
    let (status, body) = app
        .get(
            "/api/user/profile",
            Some(&sign(Algorithm::RS256, "test-1", &claims)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin", "admin wins over user");
}

/// The built-in mode is unaffected: the pool's tokens mean nothing there, and the
/// built-in sign-up and login work as before.
#[tokio::test]
async fn builtin_mode_refuses_provider_tokens() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let frank = "frank@example.com";
    sign_up_direct(&pool, frank).await;
    let (access, id_token) = pool.tokens(frank).await;
    let app = spawn_app(Backend::Sqlite).await;
    for token in [&access, &id_token] {
        let (status, body) = app.get("/api/user/profile", Some(token)).await;
        assert_eq!(status, 401, "{body}");
    }
    let (_, token) = app.user_with_role(Role::User).await;
    let (status, _) = app.get("/api/user/profile", Some(&token)).await;
    assert_eq!(status, 200);
}

/// An app client with a secret: every call carries SECRET_HASH, which moto checks on
/// refresh (computed over the pool's user name, carried inside Corral's refresh token).
#[tokio::test]
async fn cognito_client_with_secret() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let client = pool
        .admin
        .create_user_pool_client()
        .user_pool_id(&pool.id)
        .client_name("corral-confidential")
        .generate_secret(true)
        .send()
        .await
        .expect("CreateUserPoolClient")
        .user_pool_client
        .expect("a client");
    let settings = CognitoSettings {
        client_id: client.client_id.clone().expect("a client id"),
        client_secret: client.client_secret.clone(),
        ..pool.settings()
    };
    assert!(settings.client_secret.is_some());
    let app = cognito_app(Backend::Sqlite, settings.clone()).await;
    let grace = "grace@example.com";
    sign_up(&app, grace).await;
    let (status, body) = login(&app, grace, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    let (status, body) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["refresh_token"],
        refresh.as_str(),
        "the pool keeps its refresh token"
    );

    // The same refresh token with a wrong secret: moto refuses the SECRET_HASH.
    let wrong = cognito_app(
        Backend::Sqlite,
        CognitoSettings {
            client_secret: Some("not-the-secret".into()),
            ..settings
        },
    )
    .await;
    let (status, body) = wrong
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "invalid_refresh_token"),
        "{body}"
    );
}

/// Without the provider's keys no token can be checked: 503, not 401 or a pass; and
/// sign-in through an unreachable pool is 503 as well.
#[tokio::test]
async fn cognito_provider_unreachable() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    // Nothing listens on a port just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let app = cognito_app(
        Backend::Sqlite,
        CognitoSettings {
            jwks_url: Some(format!("{closed}/jwks.json")),
            endpoint_url: Some(closed.clone()),
            ..pool.settings()
        },
    )
    .await;
    let token = sign(
        Algorithm::RS256,
        "test-1",
        &id_claims(&pool, "henry@example.com", &[]),
    );
    let (status, body) = app.get("/api/user/profile", Some(&token)).await;
    assert_eq!((status, error_code(&body)), (503, "unavailable"), "{body}");
    let (status, body) = login(&app, "henry@example.com", PASSWORD).await;
    assert_eq!((status, error_code(&body)), (503, "unavailable"), "{body}");
}

/// `GET /api/auth/config` tells the sign-in screens the mode without a token, names
/// nothing secret, and is in the OpenAPI document.
#[tokio::test]
async fn auth_config_in_both_modes() {
    let builtin = spawn_app_with(Backend::Sqlite, |s| {
        s.setup_token = Some("setup-secret-token".into());
        s.signup_enabled = false;
    })
    .await;
    let (status, body) = builtin.get("/api/auth/config", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"mode": "builtin", "signup_enabled": false, "setup_available": true})
    );
    assert!(!body.to_string().contains("setup-secret-token"));
    let (_, doc) = builtin.get("/api/openapi.json", None).await;
    assert!(
        doc["paths"]["/api/auth/config"]["get"].is_object(),
        "documented"
    );

    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let app = cognito_app(Backend::Sqlite, pool.settings()).await;
    let (status, body) = app.get("/api/auth/config", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"mode": "cognito", "signup_enabled": true, "setup_available": false})
    );
    let text = body.to_string();
    assert!(!text.contains(&pool.id) && !text.contains(&pool.client_id));
}

/// In cognito mode an account's role follows its groups, so an admin's role change in
/// Corral is refused (409) instead of being silently undone at the next request; locking,
/// and "changing" to the role it has, still work, as do role changes of Corral's own rows.
#[tokio::test]
async fn cognito_role_change_is_refused() {
    let Some(endpoint) = moto() else { return };
    let pool = Pool::new(&endpoint).await;
    let app = cognito_app(Backend::Sqlite, pool.settings()).await;
    let (admin, carol) = ("admin-r@example.com", "carol-r@example.com");
    sign_up(&app, admin).await;
    pool.add_to_group(admin, "admin").await;
    sign_up(&app, carol).await;
    let (status, body) = login(&app, admin, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(login(&app, carol, PASSWORD).await.0, 200);
    let carol_id = app
        .state
        .store
        .user_by_email(carol)
        .await
        .unwrap()
        .unwrap()
        .id;

    let path = format!("/api/admin/users/{carol_id}");
    let (status, body) = app.put(&path, Some(&token), json!({"role": "admin"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "role_managed_by_provider"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"admin\" group"),
        "names the group to use: {body}"
    );
    let row = app.state.store.user_by_id(carol_id).await.unwrap().unwrap();
    assert_eq!(row.role, Role::User, "unchanged");

    let (status, body) = app
        .put(
            &path,
            Some(&token),
            json!({"role": "user", "disabled": true}),
        )
        .await;
    assert_eq!(status, 200, "same role, and a lock: {body}");
    assert_eq!(body["disabled"], true);
    let (status, body) = app
        .post(&format!("{path}/unlock"), Some(&token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let unknown = format!("/api/admin/users/{}", uuid::Uuid::now_v7());
    let (status, _) = app
        .put(&unknown, Some(&token), json!({"role": "viewer"}))
        .await;
    assert_eq!(status, 404);

    // The way that works: the group in the pool, seen at carol's next request.
    pool.add_to_group(carol, "viewer").await;
    let (status, body) = login(&app, carol, PASSWORD).await;
    assert_eq!(
        (status, body["user"]["role"].as_str()),
        (200, Some("viewer"))
    );

    // A row of Corral's own (made before the switch to cognito) keeps an editable role.
    let hash = app.state.passwords.hash(PASSWORD.into()).await.unwrap();
    let local = corral_core::User::new("local-r@example.com", hash, Role::User, chrono::Utc::now());
    app.state.store.create_user(&local).await.unwrap();
    let (status, body) = app
        .put(
            &format!("/api/admin/users/{}", local.id),
            Some(&token),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(
        (status, body["role"].as_str()),
        (200, Some("viewer")),
        "{body}"
    );
    // Accounts are added in the pool, not here: one made here could not sign in.
    let (status, body) = app
        .post(
            "/api/admin/users",
            Some(&token),
            json!({"email": "new-r@example.com", "password": PASSWORD, "role": "user"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "users_managed_by_provider"),
        "{body}"
    );
    assert!(
        app.state
            .store
            .user_by_email("new-r@example.com")
            .await
            .unwrap()
            .is_none()
    );
}
