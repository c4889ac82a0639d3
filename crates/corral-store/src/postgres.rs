//! PostgreSQL backend, for deployments that outgrow one file or run several servers
//! against one database. The store itself is `crate::sql`; this is how PostgreSQL
//! connects and where its SQL differs.

use sqlx::Postgres;
use sqlx::postgres::{PgPool, PgPoolOptions, PgQueryResult, PgRow};

use crate::Result;
use crate::sql::{Dialect, SqlStore, forward_to_sqlx};

/// Enough for the API's concurrent requests; each server connection costs the
/// database a process, so stay well below its usual `max_connections` of 100.
const MAX_CONNECTIONS: u32 = 8;

pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(SqlStore::new(pool))
    }
}

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";
    /// `LIKE` is case-sensitive on PostgreSQL.
    const PREFIX_MATCH: &'static str = " AND action LIKE ";
    /// `MAX` is only an aggregate on PostgreSQL.
    const GREATEST: &'static str = "GREATEST";
    /// Row locks on every active admin, in id order (no deadlock between two such
    /// transactions). A second transaction waits here, then re-reads the rows under
    /// READ COMMITTED and no longer counts an admin the first one removed.
    const LOCK_ACTIVE_ADMINS: Option<&'static str> =
        Some("SELECT id FROM users WHERE role = 'admin' AND NOT disabled ORDER BY id FOR UPDATE");

    /// `%`, `_` and `\` are escaped with `\`, PostgreSQL's default escape.
    fn prefix_pattern(prefix: &str) -> String {
        let mut pattern = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        pattern
    }

    /// Times are `timestamptz`: their difference is an interval.
    fn whole_seconds_between(from: &str, to: &str) -> String {
        format!("FLOOR(EXTRACT(EPOCH FROM ({to} - {from})))::BIGINT")
    }

    forward_to_sqlx!(PgPool, PgRow, PgQueryResult);
}
