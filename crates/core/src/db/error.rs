//! Errors of the store and its repositories. No HTTP here: the server maps
//! each variant to a status and a stable code with an exhaustive match.

use sea_orm::{DbErr, SqlErr};

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

    /// The request-path database role could read across tenants.
    #[error("refusing to serve requests as database role `{role}`: {problem}")]
    UnsafeRequestRole { role: String, problem: String },

    #[error("database error: {0}")]
    Database(#[from] DbErr),
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
        _ => StoreError::Database(err),
    }
}

/// Turns a foreign-key violation into [`StoreError::InUse`].
pub(crate) fn in_use_by(entity: &'static str, by: &'static str) -> impl Fn(DbErr) -> StoreError {
    move |err| match err.sql_err() {
        Some(SqlErr::ForeignKeyConstraintViolation(_)) => StoreError::InUse { entity, by },
        _ => StoreError::Database(err),
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
