use std::time::Duration;

use corral_core::State;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What `Control`'s callers (the API, the gateway) can get wrong or wait in vain for.
/// Each message is fit to show a user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such instance")]
    NotFound,
    #[error("the instance is stopped; start it first")]
    Stopped,
    #[error("the instance is being deleted")]
    Deleted,
    #[error("the instance is sleeping and does not wake on request; start it first")]
    WakeDisabled,
    #[error("the instance failed: {0}")]
    Failed(String),
    #[error("the instance did not become ready within {} s", .0.as_secs())]
    Timeout(Duration),
    /// `restart` of an instance that is not failed.
    #[error("the instance is {}, not failed", .0.as_str())]
    NotFailed(State),
    /// `desired` kept changing under a compare-and-set (should not happen in practice).
    #[error("the instance is being changed by other requests; try again")]
    Contended,
    #[error(transparent)]
    Store(#[from] corral_store::Error),
}
