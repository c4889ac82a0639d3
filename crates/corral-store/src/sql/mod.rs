//! The SQL store, written once (`store.rs`) over the few things SQLite and PostgreSQL
//! do differently (`Dialect`, implemented on sqlx's database types in `crate::sqlite` and
//! `crate::postgres`):
//!
//! * how ids and times are stored: the `DbId`/`DbTime` newtypes (`value.rs`);
//! * the case-sensitive prefix match, `GREATEST`, whole seconds between two times;
//! * opening the database and its migrations (inherent `open`/`connect` there).
//!
//! Values are bound with `.param(..)`/`.push_param(..)` (`QueryExt`, `BuilderExt`)
//! rather than sqlx's `.bind(..)`: a `Param` names both databases, so the generic store
//! needs no bound per column type. Rows are decoded by `rows.rs` the same way.
//!
//! Adding a store method: declare it on `Store` (`lib.rs`), write it once in
//! `store.rs` with `#[instrument(skip_all)]`, binding ids as `DbId(id)` and times as
//! `DbTime(at)` / `DbTime::opt(at)`, and decoding rows with a function of `rows.rs`
//! (`row.id(..)`, `row.time(..)`, `row.get::<T>(..)`); add a check to `conformance.rs`
//! and implement it in `corral-store-dynamodb`. Only SQL that really differs between
//! the databases goes into `Dialect`.

use futures_util::future::BoxFuture;
use sqlx::{Database, Encode, Pool, Postgres, QueryBuilder, Sqlite, Type};

mod rows;
mod store;
mod value;

/// A store on one SQL database: `SqlStore<Sqlite>` (alias `SqliteStore`) or
/// `SqlStore<Postgres>` (alias `PostgresStore`).
pub struct SqlStore<DB: Dialect> {
    pool: Pool<DB>,
}

impl<DB: Dialect> SqlStore<DB> {
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        SqlStore { pool }
    }
}

/// A bound value either database encodes (strings, numbers, booleans, `DbId`,
/// `DbTime`, and `Option`s of them).
pub trait Param<'q>:
    Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres> + Send + 'q
{
}

impl<'q, T> Param<'q> for T where
    T: Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres> + Send + 'q
{
}

/// What differs between the SQL databases, and nothing else.
pub trait Dialect: Database<Row: rows::RowExt> + Sized {
    /// `Store::backend`.
    const BACKEND: &'static str;
    /// ` AND action <operator> `: the case-sensitive pattern match `prefix_pattern`
    /// feeds.
    const PREFIX_MATCH: &'static str;
    /// The function of the larger of two values (`MAX` is an aggregate on
    /// PostgreSQL, `GREATEST` does not exist on SQLite).
    const GREATEST: &'static str;
    /// A statement that, as the first of a transaction, makes concurrent transactions
    /// that may remove an active admin wait for each other (the last-admin check).
    /// None where the guarded statement itself already runs alone (SQLite has one
    /// writer, and its transaction takes the write lock with its first write).
    const LOCK_ACTIVE_ADMINS: Option<&'static str>;

    /// A pattern for `PREFIX_MATCH` that matches `prefix` literally, then anything.
    fn prefix_pattern(prefix: &str) -> String;
    /// SQL for the whole seconds from the time `from` to the time `to` (both SQL
    /// expressions of stored times), rounded down.
    fn whole_seconds_between(from: &str, to: &str) -> String;
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// Runs a `QueryBuilder`'s query. Written per database only because sqlx's
    /// generic `build()` borrows the builder for as long as its arguments live.
    #[doc(hidden)]
    fn fetch_all<'e, 'q: 'e>(
        builder: QueryBuilder<'q, Self>,
        pool: &'e Pool<Self>,
    ) -> BoxFuture<'e, sqlx::Result<Vec<Self::Row>>>;
    #[doc(hidden)]
    fn bind<'q, T: Param<'q>>(query: Query<'q, Self>, value: T) -> Query<'q, Self>;
    #[doc(hidden)]
    fn push_bind<'q, T: Param<'q>>(builder: &mut QueryBuilder<'q, Self>, value: T);
}

pub type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// `.param(value)`: sqlx's `.bind` for the generic store.
pub trait QueryExt<'q> {
    fn param<T: Param<'q>>(self, value: T) -> Self;
}

impl<'q, DB: Dialect> QueryExt<'q> for Query<'q, DB> {
    fn param<T: Param<'q>>(self, value: T) -> Self {
        DB::bind(self, value)
    }
}

/// `.push_param(value)`: sqlx's `QueryBuilder::push_bind` for the generic store.
pub trait BuilderExt<'q> {
    fn push_param<T: Param<'q>>(&mut self, value: T) -> &mut Self;
}

impl<'q, DB: Dialect> BuilderExt<'q> for QueryBuilder<'q, DB> {
    fn push_param<T: Param<'q>>(&mut self, value: T) -> &mut Self {
        DB::push_bind(self, value);
        self
    }
}

/// The `Dialect` methods that only hand the call to sqlx's concrete types: the same
/// text for every database (`$pool`, `$row`, `$result` are its pool, row and query
/// result types).
macro_rules! forward_to_sqlx {
    ($pool:ty, $row:ty, $result:ty) => {
        fn rows_affected(done: &$result) -> u64 {
            done.rows_affected()
        }

        fn fetch_all<'e, 'q: 'e>(
            mut builder: sqlx::QueryBuilder<'q, Self>,
            pool: &'e $pool,
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<Vec<$row>>> {
            Box::pin(async move { builder.build().fetch_all(pool).await })
        }

        fn bind<'q, T: $crate::sql::Param<'q>>(
            query: $crate::sql::Query<'q, Self>,
            value: T,
        ) -> $crate::sql::Query<'q, Self> {
            query.bind(value)
        }

        fn push_bind<'q, T: $crate::sql::Param<'q>>(
            builder: &mut sqlx::QueryBuilder<'q, Self>,
            value: T,
        ) {
            builder.push_bind(value);
        }
    };
}
pub(crate) use forward_to_sqlx;
