//! Tenants get a lifecycle: self sign-up awaiting email verification,
//! suspension by the platform operator, and the operator's own log.
//!
//! `tenants` gains `suspended_at`, `signup_email` (lower-cased, for the
//! per-email sign-up limit), and the SHA-256 of the pending verification
//! link's secret with its expiry (both NULL once verified, or for tenants
//! that never signed up). On Postgres, four named SECURITY DEFINER
//! functions answer the cross-tenant questions these need, and nothing
//! more: which tenants are blocked (ids), which tenant a verification
//! secret belongs to (id), how many tenants an email signed up (a count),
//! and the operator's tenant list with usage (names and counts, never
//! users' or devices' rows).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::timestamp;

const FUNCTIONS: &str = r#"
-- Tenants refused to everyone but system tasks: suspended by the operator,
-- or signed up and not verified yet. Ids and the reason only.
CREATE FUNCTION mobius_blocked_tenants() RETURNS TABLE (id uuid, suspended boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id, t.suspended_at IS NOT NULL FROM tenants t
    WHERE t.suspended_at IS NOT NULL OR t.verification_hash IS NOT NULL
$$;

-- The tenant a sign-up verification link belongs to, by the SHA-256 of
-- its secret, while the link is valid.
CREATE FUNCTION mobius_signup_verification_tenant(p_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id FROM tenants t
    WHERE t.verification_hash = p_hash AND t.verification_expires_at > now()
$$;

-- How many tenants were signed up with this (lower-cased) email.
CREATE FUNCTION mobius_signups_for_email(p_email text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT count(*) FROM tenants t WHERE t.signup_email = lower(p_email)
$$;

-- The platform operator's tenant list: names, states and usage counts.
CREATE FUNCTION mobius_platform_tenants()
RETURNS TABLE (id uuid, name text, slug text, created_at timestamptz,
               suspended_at timestamptz, awaiting_verification boolean,
               devices bigint, users bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id, t.name::text, t.slug::text, t.created_at, t.suspended_at,
           t.verification_hash IS NOT NULL,
           (SELECT count(*) FROM devices d WHERE d.tenant_id = t.id),
           (SELECT count(*) FROM users u WHERE u.tenant_id = t.id)
    FROM tenants t ORDER BY t.created_at, t.id
$$;

REVOKE ALL ON FUNCTION mobius_blocked_tenants() FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_signup_verification_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_signups_for_email(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_platform_tenants() FROM PUBLIC;

-- The usage count reads devices as the owner (tenants and users already
-- have their owner_lookup policy).
CREATE POLICY owner_platform_usage ON devices FOR SELECT TO CURRENT_USER USING (true);
"#;

const DOWN: &str = r#"
DROP POLICY IF EXISTS owner_platform_usage ON devices;
DROP FUNCTION IF EXISTS mobius_platform_tenants();
DROP FUNCTION IF EXISTS mobius_signups_for_email(text);
DROP FUNCTION IF EXISTS mobius_signup_verification_tenant(bytea);
DROP FUNCTION IF EXISTS mobius_blocked_tenants();
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        for column in [
            ColumnDef::new("suspended_at")
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new("signup_email").string().null().to_owned(),
            ColumnDef::new("verification_hash")
                .binary()
                .null()
                .to_owned(),
            ColumnDef::new("verification_expires_at")
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("tenants")
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_tenants_signup_email")
                    .table("tenants")
                    .col("signup_email")
                    .to_owned(),
            )
            .await?;
        // The platform operator's log: not a tenant's (it outlives the
        // tenants it records), so no tenant_id column and no RLS; the
        // request role may only read and append.
        manager
            .create_table(
                Table::create()
                    .table("platform_operator_log")
                    .col(ColumnDef::new("id").uuid().not_null().primary_key())
                    .col(timestamp("created_at"))
                    .col(ColumnDef::new("action").string().not_null())
                    .col(ColumnDef::new("target_tenant").uuid().null())
                    .col(ColumnDef::new("ip").string().null())
                    .col(ColumnDef::new("details").json_binary().not_null())
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(FUNCTIONS)
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager.get_connection().execute_unprepared(DOWN).await?;
        }
        manager
            .drop_table(Table::drop().table("platform_operator_log").to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_tenants_signup_email")
                    .table("tenants")
                    .to_owned(),
            )
            .await?;
        for column in [
            "verification_expires_at",
            "verification_hash",
            "signup_email",
            "suspended_at",
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("tenants")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
