//! Argon2id hashing. Hashing is CPU- and memory-heavy by design, so it runs on the
//! blocking pool and never stalls the async workers.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::OnceLock;

use crate::error::{ApiError, ApiResult};
use crate::settings::Argon2Params;

fn argon2(p: Argon2Params) -> ApiResult<Argon2<'static>> {
    let params =
        Params::new(p.memory_kib, p.iterations, p.parallelism, None).map_err(ApiError::internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub async fn hash(password: String, p: Argon2Params) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2(p)?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Verifies with the parameters recorded in the hash itself, so raising the cost
/// later does not invalidate existing hashes.
pub async fn verify(password: String, phc: String) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc).map_err(ApiError::internal)?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(ApiError::internal)?
}

/// Burns the same time as a real verification, for logins to unknown addresses:
/// the response time must not reveal whether an account exists.
pub async fn verify_dummy(password: String, p: Argon2Params) -> ApiResult<()> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = match DUMMY.get() {
        Some(phc) => phc.clone(),
        None => {
            let phc = hash("dummy-password-for-timing".into(), p).await?;
            DUMMY.get_or_init(|| phc).clone()
        }
    };
    verify(password, phc).await.map(|_| ())
}
