use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A unique constraint was violated (e.g. e-mail already registered).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A row cannot be deleted while others still refer to it (a user who owns
    /// instances, a catalog model that instances run). The text is a whole sentence
    /// saying what to do first, fit for a 409 response.
    #[error("{0}")]
    InUse(&'static str),
    /// The change would leave no active admin (role admin, not disabled): the last
    /// one cannot be demoted, disabled or deleted.
    #[error("this is the last active admin: make another user an admin first")]
    LastAdmin,
    /// A new row refers to a row that does not exist (an instance for an unknown owner
    /// or model, a replica or event of a deleted instance).
    #[error("{0} does not exist")]
    UnknownReference(&'static str),
    /// A value the schema cannot hold or refuses (a count beyond `i64::MAX`,
    /// `min_replicas > max_replicas`). Callers should validate first; this is the
    /// store's last line of defence, not a user-facing message.
    #[error("invalid value: {0}")]
    Invalid(String),
    /// A change was refused by a quota or by the host's capacity; nothing was written.
    #[error("{0}")]
    Refused(corral_core::Refusal),
    /// A stored value could not be decoded (corrupt row or schema drift).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A failure of a backend that is not built on sqlx (the DynamoDB store lives in
    /// its own crate, `corral-store-dynamodb`): the service refused or could not be
    /// reached. The text carries the service's own error.
    #[error("database error: {0}")]
    Backend(String),
    /// The SQLite file's folder could not be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The store URL names no backend this build knows.
    #[error(
        "unsupported store URL ({0}): use sqlite://PATH, a plain file path, or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
