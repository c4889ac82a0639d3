use std::path::PathBuf;
use thiserror::Error;

/// Everything a `corral` command can fail with, worded to say what to do next.
#[derive(Debug, Error)]
pub enum CliError {
    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "could not open the store: {0}\n  hint: check --database-url / CORRAL_DATABASE_URL and that the data dir is writable"
    )]
    Store(#[from] corral_store::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Api(#[from] corral_api::ApiError),
}

impl CliError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Io { context, source }
    }
}
