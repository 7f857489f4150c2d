//! Identity: refresh tokens, invitations, API tokens, JWT signing keys, the
//! first-run setup code, and the audit log's per-tenant hash chain.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, owner_lookup, same_tenant_fk, tenant_table, timestamp};

/// Tenant tables this migration creates (each gets RLS below).
const IDENTITY_TABLES: &[&str] = &["refresh_tokens", "invitations", "api_tokens"];

const LOOKUP_FUNCTIONS: &str = r#"
-- The tenant owning a refresh token / invitation / API token, found by the
-- SHA-256 of its secret (each secret is random, 256 bits).
CREATE FUNCTION mobius_refresh_token_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM refresh_tokens WHERE token_hash = p_token_hash
$$;
CREATE FUNCTION mobius_invitation_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM invitations WHERE token_hash = p_token_hash
$$;
CREATE FUNCTION mobius_api_token_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM api_tokens WHERE token_hash = p_token_hash
$$;
REVOKE ALL ON FUNCTION mobius_refresh_token_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_invitation_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_api_token_tenant(bytea) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn secret_hash() -> ColumnDef {
    let mut col = ColumnDef::new("token_hash");
    col.binary_len(32).not_null().unique_key();
    col
}

fn nullable_time(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.timestamp_with_time_zone().null();
    col
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("refresh_tokens")
                    .col(ColumnDef::new("user_id").uuid().not_null())
                    // All tokens rotated from one login share a family; reuse
                    // of a rotated token revokes the whole family.
                    .col(ColumnDef::new("family_id").uuid().not_null())
                    .col(secret_hash())
                    .col(timestamp("expires_at"))
                    .col(nullable_time("rotated_at"))
                    .col(nullable_time("revoked_at"))
                    .foreign_key(&mut same_tenant_fk(
                        "refresh_tokens",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_refresh_tokens_family")
                    .table("refresh_tokens")
                    .col("tenant_id")
                    .col("family_id")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("invitations")
                    .col(ColumnDef::new("email").string().not_null())
                    .col(ColumnDef::new("role").string().not_null())
                    .col(secret_hash())
                    .col(timestamp("expires_at"))
                    .col(nullable_time("accepted_at"))
                    .col(ColumnDef::new("invited_by").uuid().null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("api_tokens")
                    // The user who created it; the token dies with them.
                    .col(ColumnDef::new("user_id").uuid().not_null())
                    .col(ColumnDef::new("name").string().not_null())
                    .col(secret_hash())
                    .col(ColumnDef::new("role").string().not_null())
                    .col(ColumnDef::new("team_id").uuid().null())
                    .col(timestamp("expires_at"))
                    .col(nullable_time("last_used_at"))
                    .col(nullable_time("revoked_at"))
                    .foreign_key(&mut same_tenant_fk(
                        "api_tokens",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "api_tokens",
                        "team_id",
                        "teams",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        // Not tenant-owned: the keys that sign access tokens for every tenant.
        manager
            .create_table(
                Table::create()
                    .table("signing_keys")
                    .col(ColumnDef::new("id").uuid().not_null().primary_key())
                    .col(ColumnDef::new("algorithm").string().not_null())
                    .col(ColumnDef::new("public_key").binary().not_null())
                    // Sealed with the server's secret sealer (AES-256-GCM
                    // under the master key in OSS), never stored in clear.
                    .col(ColumnDef::new("sealed_private_key").binary().not_null())
                    .col(timestamp("created_at"))
                    .col(timestamp("updated_at"))
                    .col(nullable_time("retired_at"))
                    .to_owned(),
            )
            .await?;

        // SQLite adds one column per ALTER TABLE, so one statement each.
        for def in [
            ColumnDef::new("setup_code_hash")
                .binary_len(32)
                .null()
                .to_owned(),
            ColumnDef::new("api_token_max_days")
                .integer()
                .not_null()
                .default(365)
                .to_owned(),
        ] {
            manager
                .alter_table(Table::alter().table("tenants").add_column(def).to_owned())
                .await?;
        }
        for def in [
            ColumnDef::new("seq")
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new("prev_hash").binary_len(32).null().to_owned(),
            ColumnDef::new("hash").binary_len(32).null().to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("audit_events")
                        .add_column(def)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("uq_audit_events_tenant_seq")
                    .table("audit_events")
                    .col("tenant_id")
                    .col("seq")
                    .unique()
                    .to_owned(),
            )
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in IDENTITY_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
                sql.push_str(&owner_lookup(table));
            }
            sql.push_str(LOOKUP_FUNCTIONS);
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "DROP FUNCTION IF EXISTS mobius_refresh_token_tenant(bytea);\n\
                     DROP FUNCTION IF EXISTS mobius_invitation_tenant(bytea);\n\
                     DROP FUNCTION IF EXISTS mobius_api_token_tenant(bytea);\n",
                )
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("uq_audit_events_tenant_seq")
                    .table("audit_events")
                    .to_owned(),
            )
            .await?;
        for column in ["seq", "prev_hash", "hash"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("audit_events")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in ["setup_code_hash", "api_token_max_days"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("tenants")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for table in [
            "signing_keys",
            "api_tokens",
            "invitations",
            "refresh_tokens",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
