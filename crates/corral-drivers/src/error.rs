use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// The spec cannot be launched by this driver (missing weights, no runtime binary).
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The cloud provider refused or failed a call.
    #[error("{0}")]
    Provider(String),
}
