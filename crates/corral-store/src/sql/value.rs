//! The two values whose column type differs between the databases, as newtypes that
//! own their encoding, so the store binds and reads `DbId`/`DbTime` the same way on
//! both (see `migrations/README.md`):
//!
//! | value     | SQLite                          | PostgreSQL    |
//! |-----------|---------------------------------|---------------|
//! | `DbId`    | hyphenated UUID as `TEXT`       | `UUID`        |
//! | `DbTime`  | `INTEGER` µs since epoch (UTC)  | `TIMESTAMPTZ` |

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// An id column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbId(pub Uuid);

/// A time column, kept to the microsecond (PostgreSQL's precision, which SQLite's
/// integer matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTime(pub DateTime<Utc>);

impl DbTime {
    pub(crate) fn opt(at: Option<DateTime<Utc>>) -> Option<DbTime> {
        at.map(DbTime)
    }
}

impl DbId {
    pub(crate) fn opt(id: Option<Uuid>) -> Option<DbId> {
        id.map(DbId)
    }
}

/// A SQLite time column whose integer is beyond what `DateTime` holds: the row is
/// corrupt, and `rows` reports it as `Error::Corrupt` (not a database failure).
#[derive(Debug, thiserror::Error)]
#[error("timestamp {0} out of range")]
pub(crate) struct TimeOutOfRange(pub i64);

// --- SQLite ---

impl Type<Sqlite> for DbId {
    fn type_info() -> SqliteTypeInfo {
        <Hyphenated as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <Hyphenated as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for DbId {
    fn encode_by_ref(
        &self,
        args: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        <Hyphenated as Encode<'q, Sqlite>>::encode(self.0.hyphenated(), args)
    }
}

impl<'r> Decode<'r, Sqlite> for DbId {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbId(
            <Hyphenated as Decode<'r, Sqlite>>::decode(value)?.into_uuid(),
        ))
    }
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for DbTime {
    fn encode_by_ref(
        &self,
        args: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<'q, Sqlite>>::encode(self.0.timestamp_micros(), args)
    }
}

impl<'r> Decode<'r, Sqlite> for DbTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros = <i64 as Decode<'r, Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros)
            .map(DbTime)
            .ok_or_else(|| TimeOutOfRange(micros).into())
    }
}

// --- PostgreSQL: the native types ---

impl Type<Postgres> for DbId {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <Uuid as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for DbId {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbId {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbId(<Uuid as Decode<'r, Postgres>>::decode(value)?))
    }
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbTime(<DateTime<Utc> as Decode<'r, Postgres>>::decode(
            value,
        )?))
    }
}
