use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A unique constraint was violated (e.g. e-mail already registered).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A stored value could not be decoded (corrupt row or schema drift).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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
