//! SQLite backend, the default: one file in the data directory, WAL mode so readers
//! never block the writer. See `migrations/sqlite/` for how values are stored. The
//! store itself is `crate::sql`; this is how SQLite opens and where its SQL differs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteRow, SqliteSynchronous,
};

use crate::sql::{Dialect, SqlStore, forward_to_sqlx};
use crate::{Error, Result};

/// SQLite has one writer at a time, so more connections only buy concurrent readers;
/// each costs a page cache, and the server must idle small.
const MAX_CONNECTIONS: u32 = 4;
/// How long a writer waits for the lock before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
    /// Opens (creating it and its parent folders if needed) the database file and
    /// brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: PathBuf::from(dir),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable against corruption in WAL mode; FULL would fsync on
            // every commit for little gain here.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // One connection stays open so the WAL is not checkpointed and removed
            // every time the server goes quiet.
            .min_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqlStore::new(pool))
    }
}

impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";
    /// `GLOB` rather than `LIKE`: SQLite's LIKE ignores ASCII case, and a prefix filter
    /// on action names must not.
    const PREFIX_MATCH: &'static str = " AND action GLOB ";
    /// SQLite's two-argument `MAX` is the scalar maximum.
    const GREATEST: &'static str = "MAX";
    const LOCK_ACTIVE_ADMINS: Option<&'static str> = None;

    /// Metacharacters in the prefix are bracketed to match literally.
    fn prefix_pattern(prefix: &str) -> String {
        let mut pattern = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            match c {
                '*' | '?' | '[' => {
                    pattern.push('[');
                    pattern.push(c);
                    pattern.push(']');
                }
                _ => pattern.push(c),
            }
        }
        pattern.push('*');
        pattern
    }

    /// Times are integer microseconds; integer division rounds a non-negative
    /// difference down.
    fn whole_seconds_between(from: &str, to: &str) -> String {
        format!("({to} - {from}) / 1000000")
    }

    forward_to_sqlx!(SqlitePool, SqliteRow, SqliteQueryResult);
}
