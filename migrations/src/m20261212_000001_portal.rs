//! The self-service portal (Cocoon): device-scoped tokens and each
//! tenant's white-labeling.
//!
//! `portal_tokens` holds the SHA-256 of every link token (the agent's
//! hourly one) and session token (a browser's, traded for a link token),
//! each bound to one device and valid until `expires_at`. A narrow lookup
//! finds the tenant of a presented, unexpired token's hash before a tenant
//! is known, as for the other bearer secrets.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{
    isolate, owner_lookup, same_tenant_fk, tenant_table, tenant_unique, timestamp,
};

pub(crate) const PORTAL_TABLES: &[&str] = &["portal_tokens", "portal_branding"];

const LOOKUP_FUNCTIONS: &str = r#"
-- The tenant owning an unexpired portal token, by the SHA-256 of the
-- presented token (256 random bits).
CREATE FUNCTION mobius_portal_token_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM portal_tokens
    WHERE token_hash = p_token_hash AND expires_at > now()
$$;
REVOKE ALL ON FUNCTION mobius_portal_token_tenant(bytea) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("portal_tokens")
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    // `link` (from the agent, opens a session) or `session`.
                    .col(ColumnDef::new("kind").string().not_null())
                    .col(
                        ColumnDef::new("token_hash")
                            .binary_len(32)
                            .not_null()
                            .unique_key(),
                    )
                    .col(timestamp("expires_at"))
                    .foreign_key(&mut same_tenant_fk(
                        "portal_tokens",
                        "device_id",
                        "devices",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_portal_tokens_device")
                    .table("portal_tokens")
                    .col("tenant_id")
                    .col("device_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("portal_branding")
                    .col(ColumnDef::new("display_name").string().null())
                    // `#rrggbb`.
                    .col(ColumnDef::new("accent_color").string().null())
                    // A small PNG, JPEG or WebP (checked by its magic bytes).
                    .col(ColumnDef::new("logo").binary().null())
                    .col(ColumnDef::new("logo_content_type").string().null())
                    .col(ColumnDef::new("support_contact").string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                tenant_unique("portal_branding", &[])
                    .name("uq_portal_branding_tenant")
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in PORTAL_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            sql.push_str(&owner_lookup("portal_tokens"));
            sql.push_str(LOOKUP_FUNCTIONS);
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS mobius_portal_token_tenant(bytea);\n")
                .await?;
        }
        for table in PORTAL_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        Ok(())
    }
}
