//! Device PKI: a CA per tenant, the certificate and latest facts of each
//! device, and the list of revoked devices the device listener polls.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, tenant_table, timestamp};

const PKI_TABLES: &[&str] = &["certificate_authorities", "revoked_devices"];

/// The device listener must trust every tenant's CA before it knows which
/// tenant a connection belongs to, and must learn of revocations in any
/// tenant: two narrow lookups returning public certificates and ids only.
const LOOKUP_FUNCTIONS: &str = r#"
CREATE FUNCTION mobius_trusted_device_cas()
RETURNS TABLE (tenant_id uuid, ca_id uuid, cert_pem text, retiring boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id, id, cert_pem, retire_after IS NOT NULL FROM certificate_authorities
    WHERE retire_after IS NULL OR retire_after > now()
$$;
CREATE FUNCTION mobius_revoked_devices_since(p_since timestamptz)
RETURNS TABLE (device_id uuid, revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT device_id, revoked_at FROM revoked_devices WHERE revoked_at > p_since
$$;
REVOKE ALL ON FUNCTION mobius_trusted_device_cas() FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_revoked_devices_since(timestamptz) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("certificate_authorities")
                    .col(ColumnDef::new("cert_pem").text().not_null())
                    // Sealed (AES-256-GCM under the master key in OSS),
                    // bound to tenant and CA id.
                    .col(ColumnDef::new("sealed_key").binary().not_null())
                    .col(timestamp("not_after"))
                    // Set on rotation: trusted until the last certificate
                    // it signed has expired.
                    .col(
                        ColumnDef::new("retire_after")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("revoked_devices")
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    .col(timestamp("revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_revoked_devices_revoked_at")
                    .table("revoked_devices")
                    .col("revoked_at")
                    .to_owned(),
            )
            .await?;

        // Facts the admin API filters on get columns; the full report is JSON.
        let columns = [
            ColumnDef::new("os_name").string().null().to_owned(),
            ColumnDef::new("os_version").string().null().to_owned(),
            ColumnDef::new("kernel_version").string().null().to_owned(),
            ColumnDef::new("architecture").string().null().to_owned(),
            ColumnDef::new("cpu_model").string().null().to_owned(),
            ColumnDef::new("cpu_cores").integer().null().to_owned(),
            ColumnDef::new("memory_bytes")
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new("agent_version").string().null().to_owned(),
            ColumnDef::new("hardware_uuid").string().null().to_owned(),
            ColumnDef::new("facts").json_binary().null().to_owned(),
            ColumnDef::new("facts_updated_at")
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new("ca_id").uuid().null().to_owned(),
            ColumnDef::new("cert_serial").string().null().to_owned(),
            ColumnDef::new("cert_not_after")
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ];
        // SQLite adds one column per ALTER TABLE.
        for column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table("devices")
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_devices_tenant_os")
                    .table("devices")
                    .col("tenant_id")
                    .col("os_name")
                    .to_owned(),
            )
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in PKI_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
                sql.push_str(&crate::tables::owner_lookup(table));
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
                    "DROP FUNCTION IF EXISTS mobius_trusted_device_cas();\n\
                     DROP FUNCTION IF EXISTS mobius_revoked_devices_since(timestamptz);\n",
                )
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("ix_devices_tenant_os")
                    .table("devices")
                    .to_owned(),
            )
            .await?;
        for column in [
            "os_name",
            "os_version",
            "kernel_version",
            "architecture",
            "cpu_model",
            "cpu_cores",
            "memory_bytes",
            "agent_version",
            "hardware_uuid",
            "facts",
            "facts_updated_at",
            "ca_id",
            "cert_serial",
            "cert_not_after",
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("devices")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for table in ["revoked_devices", "certificate_authorities"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
