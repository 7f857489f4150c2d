//! The two Postgres roles Mobius uses.
//!
//! The *owner* runs migrations and owns every table. The *request role*
//! serves requests: it logs in directly (never `SET ROLE` from a privileged
//! session, which an injected `RESET ROLE` would undo), is NOSUPERUSER and
//! NOBYPASSRLS, owns nothing and is not a member of the owner, so row-level
//! security always applies to it.

use mobius_migrations::{LOOKUP_FUNCTION_SIGNATURES, SHARED_TABLES, TENANT_TABLES};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use secrecy::{ExposeSecret, SecretString};

use crate::db::{Backend, Store};
use crate::db::{StoreError, StoreResult};

/// Checks a role name is a plain lower-case identifier, so it needs no
/// quoting anywhere (it is still quoted with `%I` when used).
pub fn valid_role_name(role: &str) -> StoreResult<()> {
    let mut chars = role.chars();
    let ok = role.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "database_app_role",
            reason: "use 1 to 63 characters of a-z, 0-9 and '_', starting with a letter or '_'"
                .into(),
        })
    }
}

/// Creates the request role if missing (with `password`, if given) and
/// grants it exactly what the request path needs: DML on tenant tables,
/// SELECT and INSERT only on the append-only audit log, SELECT on the
/// migration table (for `/readyz`), and EXECUTE on the named cross-tenant
/// lookups. Runs on the owner's connection, after migrations; idempotent.
pub async fn ensure_app_role(
    owner: &Store,
    role: &str,
    password: Option<&SecretString>,
) -> StoreResult<()> {
    valid_role_name(role)?;
    if owner.backend() != Backend::Postgres {
        return Ok(());
    }
    // Role and grant changes write shared catalog rows; two servers doing
    // this at once (replicas starting together) get "tuple concurrently
    // updated", or lose the race to create the role, from one of them.
    // Every step is idempotent, so try again: the next attempt sees the
    // role exists (and sets its password, if one was given).
    let mut attempt = 0;
    loop {
        match apply_app_role(owner, role, password).await {
            Err(err)
                if attempt < 8
                    && (is_concurrent_catalog_update(&err) || is_duplicate_role(&err)) =>
            {
                attempt += 1;
                let pause = 20 + rand::random::<u64>() % (40 * attempt);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            other => return other,
        }
    }
}

fn is_concurrent_catalog_update(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(e) if e.to_string().contains("tuple concurrently updated"))
}

async fn apply_app_role(
    owner: &Store,
    role: &str,
    password: Option<&SecretString>,
) -> StoreResult<()> {
    let db = owner.connection();
    let exists = db
        .query_one_raw(pg(
            "SELECT 1 AS one FROM pg_roles WHERE rolname = $1",
            vec![role.into()],
        ))
        .await?
        .is_some();
    let password = password.map(|p| p.expose_secret().to_owned());
    if !exists {
        let create =
            "CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT";
        // Another server (or test) may create it between the check and
        // here: `ensure_app_role` retries on that error.
        match &password {
            Some(pw) => run_formatted(owner, &format!("{create} PASSWORD %L"), &[role, pw]).await?,
            None => run_formatted(owner, create, &[role]).await?,
        }
    } else if let Some(pw) = &password {
        run_formatted(owner, "ALTER ROLE %I PASSWORD %L", &[role, pw]).await?;
    }

    let dml_tables: Vec<&str> = std::iter::once("tenants")
        .chain(
            TENANT_TABLES
                .iter()
                .copied()
                .filter(|t| *t != "audit_events"),
        )
        .collect();
    run_formatted(owner, "GRANT USAGE ON SCHEMA public TO %I", &[role]).await?;
    run_formatted(
        owner,
        &format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO %I",
            dml_tables.join(", ")
        ),
        &[role],
    )
    .await?;
    for (table, privileges) in SHARED_TABLES {
        run_formatted(
            owner,
            &format!("GRANT {privileges} ON {table} TO %I"),
            &[role],
        )
        .await?;
    }
    run_formatted(owner, "GRANT SELECT, INSERT ON audit_events TO %I", &[role]).await?;
    run_formatted(
        owner,
        "REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM %I",
        &[role],
    )
    .await?;
    run_formatted(owner, "GRANT SELECT ON seaql_migrations TO %I", &[role]).await?;
    run_formatted(
        owner,
        &format!(
            "GRANT EXECUTE ON FUNCTION {} TO %I",
            LOOKUP_FUNCTION_SIGNATURES.join(", ")
        ),
        &[role],
    )
    .await?;
    Ok(())
}

/// Refuses a request-path connection whose role could see across tenants:
/// a superuser, a role with BYPASSRLS, the owner of a table (or a member of
/// that owner, whose policies would then apply to it).
pub async fn verify_request_role(store: &Store) -> StoreResult<()> {
    if store.backend() != Backend::Postgres {
        return Ok(());
    }
    let row = store
        .connection()
        .query_one_raw(pg(
            "SELECT r.rolname::text AS role, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls, \
               (SELECT count(*) FROM pg_class c \
                 WHERE c.relkind IN ('r', 'p') AND c.relnamespace = 'public'::regnamespace \
                   AND pg_has_role(current_user, c.relowner, 'MEMBER'))::bigint AS owned \
             FROM pg_roles r WHERE r.rolname = current_user",
            Vec::new(),
        ))
        .await?
        .ok_or_else(|| StoreError::UnsafeRequestRole {
            role: "?".into(),
            problem: "the current role is not in pg_roles".into(),
        })?;
    let role: String = row.try_get("", "role")?;
    let problem = if row.try_get::<bool>("", "superuser")? {
        Some("it is a superuser".to_owned())
    } else if row.try_get::<bool>("", "bypassrls")? {
        Some("it has BYPASSRLS".to_owned())
    } else {
        let owned: i64 = row.try_get("", "owned")?;
        (owned > 0).then(|| format!("it owns (or is a member of the owner of) {owned} table(s)"))
    };
    match problem {
        Some(problem) => Err(StoreError::UnsafeRequestRole {
            role,
            problem: format!(
                "{problem}; use a role that is NOSUPERUSER, NOBYPASSRLS and owns no tables \
                 (see docs/operations/database.md)"
            ),
        }),
        None => Ok(()),
    }
}

/// The owner's URL with the request role's name and password in place of
/// the owner's: how a development setup with one URL reaches the role.
pub fn request_role_url(
    owner_url: &SecretString,
    role: &str,
    password: &SecretString,
) -> StoreResult<SecretString> {
    let invalid = |reason: String| StoreError::Invalid {
        field: "database_url",
        reason,
    };
    let mut url = url::Url::parse(owner_url.expose_secret()).map_err(|e| invalid(e.to_string()))?;
    url.set_username(role)
        .map_err(|()| invalid("cannot carry a user name".into()))?;
    url.set_password(Some(password.expose_secret()))
        .map_err(|()| invalid("cannot carry a password".into()))?;
    Ok(SecretString::from(url.to_string()))
}

/// Builds a utility statement (which cannot take bind parameters) with the
/// server's own `format()`, so identifiers are quoted by `%I` and literals
/// by `%L`, then runs it. No value is ever spliced into SQL on our side.
async fn run_formatted(store: &Store, template: &str, args: &[&str]) -> StoreResult<()> {
    let placeholders: Vec<String> = (2..=args.len() + 1).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT format($1, {}) AS sql", placeholders.join(", "));
    let mut values: Vec<sea_orm::Value> = vec![template.into()];
    values.extend(args.iter().map(|a| (*a).into()));
    let db = store.connection();
    let row = db.query_one_raw(pg(&sql, values)).await?;
    let statement: String = row
        .ok_or_else(|| StoreError::Database(sea_orm::DbErr::RecordNotFound("format()".into())))?
        .try_get("", "sql")?;
    db.execute_unprepared(&statement).await?;
    Ok(())
}

/// Whether CREATE ROLE lost a race with another session creating the same
/// role. Postgres reports that as `duplicate_object` (42710) when it sees
/// the committed role, but as `unique_violation` (23505) on
/// `pg_authid_rolname_index` when both inserts are in flight at once.
fn is_duplicate_role(err: &StoreError) -> bool {
    matches!(sqlstate(err).as_deref(), Some("42710" | "23505"))
}

/// The SQLSTATE of a database error, when the server sent one.
fn sqlstate(err: &StoreError) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    let StoreError::Database(
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)),
    ) = err
    else {
        return None;
    };
    match e.as_ref() {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

fn pg(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}
