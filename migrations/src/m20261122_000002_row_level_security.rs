//! Row-level security for every tenant-owned table, and the few named
//! cross-tenant lookups the request path needs (Postgres only).
//!
//! Policies compare `tenant_id` with `current_setting('app.tenant_id', true)`.
//! `nullif(.., '')` matters: once a transaction that set the value ends, the
//! setting reads as an empty string, and `''::uuid` would raise instead of
//! matching nothing.
//!
//! RLS is FORCED, so even the owner is subject to it. The owner gets one
//! extra SELECT-only policy on the three tables that SECURITY DEFINER lookups
//! read (`tenants`, `users`, `enrollment_tokens`); the request-path role is
//! never the owner nor a member of it, so that policy does not apply to it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, owner_lookup};

/// The tables this migration isolates (frozen: later tables isolate themselves).
const V1_TABLES: &[&str] = &[
    "sites",
    "teams",
    "users",
    "team_memberships",
    "devices",
    "enrollment_tokens",
    "audit_events",
];

/// Tables read by the SECURITY DEFINER lookups below.
const LOOKUP_TABLES: &[&str] = &["tenants", "users", "enrollment_tokens"];

const LOOKUP_FUNCTIONS: &str = r#"
-- The oldest tenant: the one an embedded or single-tenant install serves.
CREATE FUNCTION mobius_default_tenant_id() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM tenants ORDER BY created_at, id LIMIT 1
$$;

-- The tenant owning an enrollment token, found by the SHA-256 of its secret.
CREATE FUNCTION mobius_enrollment_token_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM enrollment_tokens WHERE token_hash = p_token_hash
$$;

-- The (tenant, user) pairs a login email may belong to, with the tenant's
-- slug so a login form can pick one.
CREATE FUNCTION mobius_login_candidates(p_email text)
RETURNS TABLE (tenant_id uuid, user_id uuid, tenant_slug text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT u.tenant_id, u.id, t.slug FROM users u JOIN tenants t ON t.id = u.tenant_id
    WHERE lower(u.email) = lower(p_email)
$$;

REVOKE ALL ON FUNCTION mobius_default_tenant_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_enrollment_token_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_login_candidates(text) FROM PUBLIC;
"#;

/// The lookup functions this migration creates, for `down`.
const LOOKUP_FUNCTION_SIGNATURES: &[&str] = &[
    "mobius_default_tenant_id()",
    "mobius_enrollment_token_tenant(bytea)",
    "mobius_login_candidates(text)",
];

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        let mut sql = String::new();
        sql.push_str(&isolate("tenants", "id"));
        for table in V1_TABLES {
            sql.push_str(&isolate(table, "tenant_id"));
        }
        for table in LOOKUP_TABLES {
            sql.push_str(&owner_lookup(table));
        }
        sql.push_str(LOOKUP_FUNCTIONS);
        db.execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        let mut sql = String::new();
        for signature in LOOKUP_FUNCTION_SIGNATURES {
            sql.push_str(&format!("DROP FUNCTION IF EXISTS {signature};\n"));
        }
        for table in LOOKUP_TABLES {
            sql.push_str(&format!("DROP POLICY IF EXISTS owner_lookup ON {table};\n"));
        }
        for table in std::iter::once(&"tenants").chain(V1_TABLES) {
            sql.push_str(&format!(
                "DROP POLICY IF EXISTS tenant_isolation ON {table};\n\
                 ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;\n\
                 ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;\n"
            ));
        }
        db.execute_unprepared(&sql).await?;
        Ok(())
    }
}
