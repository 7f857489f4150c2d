//! Errors of the store and its repositories. No HTTP here: the server maps
//! each variant to a status and a stable code with an exhaustive match.

use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist in the caller's tenant (which, by design,
    /// is indistinguishable from "exists in another tenant").
    #[error("{entity} not found")]
    NotFound { entity: &'static str },

    /// A unique constraint refused the write; `field` names the input that
    /// clashed so the client can say which one.
    #[error("a {entity} with this {field} already exists")]
    Conflict {
        entity: &'static str,
        field: &'static str,
    },

    /// The row is still referenced (a site with devices) and cannot go.
    #[error("the {entity} is still in use by {by}")]
    InUse {
        entity: &'static str,
        by: &'static str,
    },

    /// A value was refused before it reached the database.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// The embedded SQLite store serves exactly one tenant.
    #[error(
        "multi-tenant operation needs Postgres: the embedded SQLite store serves exactly one tenant \
         (start the server with --database-url postgres://...)"
    )]
    MultiTenantRequiresPostgres,

    /// The tenant is closed to everyone but system tasks: suspended by the
    /// platform operator, or signed up and not verified yet. Its data is
    /// kept.
    #[error("{0}")]
    TenantBlocked(crate::platform::TenantBlock),

    /// The request-path database role could read across tenants.
    #[error("refusing to serve requests as database role `{role}`: {problem}")]
    UnsafeRequestRole { role: String, problem: String },

    /// The database could not be reached: connection refused or lost, or
    /// no pooled connection came free in time. Nothing is wrong with the
    /// request, so it is worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),

    /// A failure on our side that the caller cannot fix: a sealed secret
    /// that will not open, a crypto library error, a panicked blocking
    /// task, a failed file-system call. `context` says what we were doing;
    /// the cause is kept whole for the log.
    #[error("{context}: {source}")]
    Internal {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("database error: {0}")]
    Database(DbErr),
}

impl StoreError {
    /// For `map_err`: wraps any error as [`StoreError::Internal`].
    pub fn internal<E>(context: &'static str) -> impl FnOnce(E) -> StoreError
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        move |source| StoreError::Internal {
            context,
            source: source.into(),
        }
    }
}

/// Sorts database errors: an unreachable database is
/// [`StoreError::Unavailable`] (retryable), everything else
/// [`StoreError::Database`].
impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            StoreError::Unavailable(err)
        } else {
            StoreError::Database(err)
        }
    }
}

fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 (connection exception), 57P01-57P03
            // (administrator shutdown, crash shutdown, cannot connect now),
            // 53300 (too many connections).
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        },
        _ => false,
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Turns a unique-constraint violation into [`StoreError::Conflict`] and
/// passes every other database error through.
pub(crate) fn conflict_on(
    entity: &'static str,
    field: &'static str,
) -> impl Fn(DbErr) -> StoreError {
    move |err| match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => StoreError::Conflict { entity, field },
        _ => err.into(),
    }
}

/// Turns a foreign-key violation into [`StoreError::InUse`].
pub(crate) fn in_use_by(entity: &'static str, by: &'static str) -> impl Fn(DbErr) -> StoreError {
    move |err| match err.sql_err() {
        Some(SqlErr::ForeignKeyConstraintViolation(_)) => StoreError::InUse { entity, by },
        _ => err.into(),
    }
}

/// Refuses text holding a NUL character. Postgres stores no `\0` in
/// `text` or `jsonb`, so such a value would fail in the database as an
/// internal error; it is the client's mistake and is refused as one.
pub fn no_nul(field: &'static str, value: &str) -> StoreResult<()> {
    if value.contains('\0') {
        return Err(StoreError::Invalid {
            field,
            reason: "must not contain NUL characters".into(),
        });
    }
    Ok(())
}

/// [`no_nul`] for every string (and object key) in a JSON value.
pub fn no_nul_in_json(field: &'static str, value: &serde_json::Value) -> StoreResult<()> {
    use serde_json::Value;
    match value {
        Value::String(s) => no_nul(field, s),
        Value::Array(items) => items.iter().try_for_each(|v| no_nul_in_json(field, v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            no_nul(field, k)?;
            no_nul_in_json(field, v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Trims a display name and checks its length (1 to 200 characters) and
/// that it holds no NUL.
pub(crate) fn valid_name(field: &'static str, value: &str) -> StoreResult<String> {
    no_nul(field, value)?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(StoreError::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    if trimmed.chars().count() > 200 {
        return Err(StoreError::Invalid {
            field,
            reason: "must be at most 200 characters".into(),
        });
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::ConnAcquireErr;

    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_not_a_database_error() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let conn = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(refused))));
        assert!(matches!(StoreError::from(conn), StoreError::Unavailable(_)));
        let pool = DbErr::ConnectionAcquire(ConnAcquireErr::Timeout);
        assert!(matches!(StoreError::from(pool), StoreError::Unavailable(_)));
        let other = DbErr::RecordNotFound("x".into());
        assert!(matches!(StoreError::from(other), StoreError::Database(_)));
    }
}
