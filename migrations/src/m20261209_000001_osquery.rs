//! Layered agent options and the osquery TLS API: one options layer per
//! tenant (global) and per team, osquery enroll secrets, enrolled osquery
//! nodes (their node keys, stored as SHA-256), and the result and status
//! logs osquery hosts ship. Devices get a `managed_by` column (`osquery`
//! for hosts enrolled through the osquery API, NULL for Mobius agents).
//! All tenant tables under RLS; three narrow lookups for what must be found
//! before a tenant is known (an enroll secret's owner, a node key's owner,
//! the tenants with expired logs).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{
    isolate, owner_lookup, same_tenant_fk, tenant_table, tenant_unique, timestamp,
};

pub(crate) const OSQUERY_TABLES: &[&str] = &[
    "agent_option_layers",
    "osquery_enroll_secrets",
    "osquery_nodes",
    "osquery_result_logs",
    "osquery_status_logs",
];

/// Tables the lookup functions below read (as the owner).
const LOOKUP_TABLES: &[&str] = &[
    "osquery_enroll_secrets",
    "osquery_nodes",
    "osquery_result_logs",
    "osquery_status_logs",
];

const LOOKUP_FUNCTIONS: &str = r#"
-- The tenant owning an enroll secret that is not revoked, by the SHA-256 of
-- the presented secret (256 random bits).
CREATE FUNCTION mobius_osquery_enroll_secret_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM osquery_enroll_secrets
    WHERE token_hash = p_token_hash AND revoked_at IS NULL
$$;
-- The tenant owning a node key, by its SHA-256 (256 random bits).
CREATE FUNCTION mobius_osquery_node_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM osquery_nodes WHERE token_hash = p_token_hash
$$;
-- The tenants with osquery logs older than a time (ids only), so the
-- retention job can open a scope in each.
CREATE FUNCTION mobius_osquery_log_tenants(p_before timestamptz)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM osquery_result_logs WHERE created_at < p_before
    UNION
    SELECT tenant_id FROM osquery_status_logs WHERE created_at < p_before
$$;
REVOKE ALL ON FUNCTION mobius_osquery_enroll_secret_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_osquery_node_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_osquery_log_tenants(timestamptz) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn device_fk(table: &'static str) -> ForeignKeyCreateStatement {
    same_tenant_fk(table, "device_id", "devices", ForeignKeyAction::Cascade)
}

fn index(name: &'static str, table: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table);
    for col in cols {
        index.col(*col);
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("devices")
                    .add_column(ColumnDef::new("managed_by").string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("agent_option_layers")
                    // `global`, or the team's id: one layer of each per tenant.
                    .col(ColumnDef::new("layer").string().not_null())
                    .col(ColumnDef::new("team_id").uuid().null())
                    .col(ColumnDef::new("document").json_binary().not_null())
                    // Taken from the tenant's highest layer version plus
                    // one on every write, so a merged view's version
                    // (the max of its layers') grows with any change.
                    .col(ColumnDef::new("version").big_integer().not_null())
                    .foreign_key(&mut same_tenant_fk(
                        "agent_option_layers",
                        "team_id",
                        "teams",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("agent_option_layers", &["layer"]))
            .await?;
        manager
            .create_table(
                tenant_table("osquery_enroll_secrets")
                    .col(ColumnDef::new("name").string().not_null())
                    // SHA-256 of the secret; the secret is shown once.
                    .col(ColumnDef::new("token_hash").binary().not_null())
                    // The first characters, so admins can tell secrets apart.
                    .col(ColumnDef::new("prefix").string().not_null())
                    .col(ColumnDef::new("site_id").uuid().not_null())
                    .col(ColumnDef::new("team_id").uuid().null())
                    .col(ColumnDef::new("created_by").uuid().null())
                    .col(
                        ColumnDef::new("revoked_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "osquery_enroll_secrets",
                        "site_id",
                        "sites",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "osquery_enroll_secrets",
                        "team_id",
                        "teams",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index(
                    "uq_osquery_enroll_secrets_token_hash",
                    "osquery_enroll_secrets",
                    &["token_hash"],
                )
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("osquery_nodes")
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    // SHA-256 of the node key; the key is sent once.
                    .col(ColumnDef::new("token_hash").binary().not_null())
                    .col(ColumnDef::new("host_identifier").string().not_null())
                    .col(ColumnDef::new("enroll_secret_id").uuid().null())
                    .col(ColumnDef::new("osquery_version").string().null())
                    .col(
                        ColumnDef::new("last_config_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut device_fk("osquery_nodes"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index(
                    "uq_osquery_nodes_token_hash",
                    "osquery_nodes",
                    &["token_hash"],
                )
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_osquery_nodes_device",
                "osquery_nodes",
                &["tenant_id", "device_id"],
            ))
            .await?;
        manager
            .create_table(
                tenant_table("osquery_result_logs")
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    .col(ColumnDef::new("name").string().not_null())
                    // added, removed or snapshot
                    .col(ColumnDef::new("action").string().not_null())
                    .col(ColumnDef::new("columns").json_binary().not_null())
                    .col(timestamp("logged_at"))
                    .foreign_key(&mut device_fk("osquery_result_logs"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_osquery_result_logs_device_name",
                "osquery_result_logs",
                &["tenant_id", "device_id", "name", "logged_at"],
            ))
            .await?;
        manager
            .create_index(index(
                "ix_osquery_result_logs_created_at",
                "osquery_result_logs",
                &["created_at"],
            ))
            .await?;
        manager
            .create_table(
                tenant_table("osquery_status_logs")
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    .col(ColumnDef::new("severity").integer().not_null())
                    .col(ColumnDef::new("filename").string().not_null())
                    .col(ColumnDef::new("line").integer().not_null())
                    .col(ColumnDef::new("message").text().not_null())
                    .col(ColumnDef::new("version").string().not_null())
                    .col(timestamp("logged_at"))
                    .foreign_key(&mut device_fk("osquery_status_logs"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_osquery_status_logs_device",
                "osquery_status_logs",
                &["tenant_id", "device_id", "logged_at"],
            ))
            .await?;
        manager
            .create_index(index(
                "ix_osquery_status_logs_created_at",
                "osquery_status_logs",
                &["created_at"],
            ))
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in OSQUERY_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            for table in LOOKUP_TABLES {
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
                    "DROP FUNCTION IF EXISTS mobius_osquery_enroll_secret_tenant(bytea);\n\
                     DROP FUNCTION IF EXISTS mobius_osquery_node_tenant(bytea);\n\
                     DROP FUNCTION IF EXISTS mobius_osquery_log_tenants(timestamptz);\n",
                )
                .await?;
        }
        for table in OSQUERY_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("devices")
                    .drop_column("managed_by")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
