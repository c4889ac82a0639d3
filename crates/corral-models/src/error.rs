use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why weights could not be resolved, imported or fetched. Every message is fit to show
/// an admin as is (the reconciler puts it on the instance timeline).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model id could be a path or is otherwise unusable as a file name.
    #[error("{0}")]
    InvalidId(String),
    /// The catalog entry's source cannot be used (bad Ollama name, malformed SHA-256).
    #[error("weights source of {model} is invalid: {reason}")]
    InvalidSource { model: String, reason: String },
    #[error(
        "weights of {model} not found at {}: import the GGUF or fix the catalog entry",
        path.display()
    )]
    Missing { model: String, path: PathBuf },
    #[error("{} is not a GGUF file (it does not start with the GGUF magic bytes)", path.display())]
    NotGguf { path: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Connection-level failure. `reason` carries the whole cause chain, because
    /// reqwest's own message ("error sending request") hides the useful part.
    #[error("fetching {url}: {reason}")]
    Http { url: String, reason: String },
    /// The target is on an internal address and private sources are not allowed.
    #[error("refusing to fetch {url}: {reason}")]
    Refused { url: String, reason: String },
    #[error("{url} answered HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("the registry manifest of {name} {reason}")]
    Manifest { name: String, reason: String },
    #[error(
        "SHA-256 mismatch for the weights of {model}: expected {expected}, got {actual}; \
         the download was deleted"
    )]
    DigestMismatch {
        model: String,
        expected: String,
        actual: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn http(url: &str, err: &reqwest::Error) -> Error {
        // Refused by the guard (resolver or redirect): final, not a network moment.
        if let Some(refused) = corral_guard::net::refusal(err) {
            return Error::Refused {
                url: url.to_owned(),
                reason: refused.to_string(),
            };
        }
        let mut reason = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(c) = cause {
            reason.push_str(": ");
            reason.push_str(&c.to_string());
            cause = c.source();
        }
        Error::Http {
            url: url.to_owned(),
            reason,
        }
    }

    /// Worth another attempt (resuming from what is on disk): the network or the server
    /// had a moment, as opposed to a wrong name, a wrong digest or a full disk.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Http { .. } => true,
            Error::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            _ => false,
        }
    }
}
