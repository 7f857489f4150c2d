//! Data model v1: tenants, sites, teams, users, team memberships, devices,
//! enrollment tokens and audit events.

use sea_orm_migration::prelude::*;

use crate::tables::{same_tenant_fk, tenant_table, tenant_unique, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("tenants")
                    .col(ColumnDef::new("id").uuid().not_null().primary_key())
                    .col(ColumnDef::new("name").string().not_null())
                    .col(ColumnDef::new("slug").string().not_null().unique_key())
                    .col(timestamp("created_at"))
                    .col(timestamp("updated_at"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("sites")
                    .col(ColumnDef::new("name").string().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("sites", &["name"]))
            .await?;

        manager
            .create_table(
                tenant_table("teams")
                    .col(ColumnDef::new("name").string().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("teams", &["name"]))
            .await?;

        manager
            .create_table(
                tenant_table("users")
                    .col(ColumnDef::new("email").string().not_null())
                    .col(ColumnDef::new("display_name").string().not_null())
                    .col(ColumnDef::new("role").string().not_null())
                    .col(ColumnDef::new("password_hash").string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("users", &["email"]))
            .await?;

        manager
            .create_table(
                tenant_table("team_memberships")
                    .col(ColumnDef::new("team_id").uuid().not_null())
                    .col(ColumnDef::new("user_id").uuid().not_null())
                    .col(ColumnDef::new("role").string().not_null())
                    .foreign_key(&mut same_tenant_fk(
                        "team_memberships",
                        "team_id",
                        "teams",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "team_memberships",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("team_memberships", &["team_id", "user_id"]))
            .await?;

        manager
            .create_table(
                tenant_table("devices")
                    .col(ColumnDef::new("site_id").uuid().not_null())
                    .col(ColumnDef::new("team_id").uuid().null())
                    .col(ColumnDef::new("hostname").string().not_null())
                    .col(ColumnDef::new("host_fingerprint").string().not_null())
                    .col(
                        ColumnDef::new("last_seen_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new("revoked_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "devices",
                        "site_id",
                        "sites",
                        ForeignKeyAction::Restrict,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "devices",
                        "team_id",
                        "teams",
                        ForeignKeyAction::Restrict,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("devices", &["host_fingerprint"]))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_devices_tenant_hostname")
                    .table("devices")
                    .col("tenant_id")
                    .col("hostname")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("enrollment_tokens")
                    .col(ColumnDef::new("site_id").uuid().not_null())
                    .col(ColumnDef::new("name").string().not_null())
                    // SHA-256 of the secret; unique across tenants because the
                    // enroll endpoint finds the tenant from it.
                    .col(
                        ColumnDef::new("token_hash")
                            .binary_len(32)
                            .not_null()
                            .unique_key(),
                    )
                    .col(timestamp("expires_at"))
                    .col(ColumnDef::new("max_uses").integer().not_null())
                    .col(ColumnDef::new("uses").integer().not_null().default(0))
                    .col(ColumnDef::new("allowed_ips").json_binary().null())
                    .col(
                        ColumnDef::new("revoked_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "enrollment_tokens",
                        "site_id",
                        "sites",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("audit_events")
                    .col(ColumnDef::new("actor_kind").string().not_null())
                    .col(ColumnDef::new("actor_id").uuid().null())
                    .col(ColumnDef::new("action").string().not_null())
                    .col(ColumnDef::new("target_kind").string().not_null())
                    .col(ColumnDef::new("target_id").uuid().null())
                    .col(ColumnDef::new("ip").string().null())
                    .col(ColumnDef::new("user_agent").string().null())
                    .col(ColumnDef::new("details").json_binary().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_events_tenant_created")
                    .table("audit_events")
                    .col("tenant_id")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "audit_events",
            "enrollment_tokens",
            "devices",
            "team_memberships",
            "users",
            "teams",
            "sites",
            "tenants",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
