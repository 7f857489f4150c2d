//! Device work: per-tenant plan-signing keys, immutable plans, one
//! execution per target device, per-operation results and append-only
//! output lines.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, same_tenant_fk, tenant_table, tenant_unique, timestamp};

pub(crate) const PLAN_TABLES: &[&str] = &[
    "plan_signing_keys",
    "plans",
    "plan_executions",
    "plan_operation_results",
    "plan_execution_logs",
];

/// The log retention job must find the tenants with old output lines
/// before it can open a scope in each: ids only.
const LOOKUP_FUNCTIONS: &str = r#"
CREATE FUNCTION mobius_plan_log_tenants(p_before timestamptz)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT DISTINCT tenant_id FROM plan_execution_logs WHERE created_at < p_before
$$;
REVOKE ALL ON FUNCTION mobius_plan_log_tenants(timestamptz) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("plan_signing_keys")
                    // Ed25519 public key (32 bytes), handed to agents.
                    .col(ColumnDef::new("public_key").binary().not_null())
                    // The private half, sealed like a CA key (bound to
                    // tenant and key id).
                    .col(ColumnDef::new("sealed_key").binary().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("plans")
                    // NULL once older than 24 h, so the key can be reused
                    // while the unique index still settles concurrent applies.
                    .col(ColumnDef::new("idempotency_key").string().null())
                    .col(ColumnDef::new("payload_sha256").string().not_null())
                    .col(ColumnDef::new("content").json_binary().not_null())
                    .col(ColumnDef::new("actor_kind").string().not_null())
                    .col(ColumnDef::new("actor_id").uuid().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("plans", &["idempotency_key"]))
            .await?;
        manager
            .create_table(
                tenant_table("plan_executions")
                    .col(ColumnDef::new("plan_id").uuid().not_null())
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    .col(ColumnDef::new("plan_version").big_integer().not_null())
                    .col(ColumnDef::new("status").string().not_null())
                    .col(ColumnDef::new("payload").text().not_null())
                    .col(ColumnDef::new("signature").string().not_null())
                    .col(ColumnDef::new("payload_sha256").string().not_null())
                    .col(
                        ColumnDef::new("cancel_requested")
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new("error").text().null())
                    .col(
                        ColumnDef::new("log_bytes")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new("log_dropped_bytes")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new("log_seq")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new("delivered_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new("started_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new("finished_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "plan_executions",
                        "plan_id",
                        "plans",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "plan_executions",
                        "device_id",
                        "devices",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "plan_executions",
                &["device_id", "plan_version"],
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_plan_executions_plan")
                    .table("plan_executions")
                    .col("tenant_id")
                    .col("plan_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_plan_executions_device_status")
                    .table("plan_executions")
                    .col("tenant_id")
                    .col("device_id")
                    .col("status")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("plan_operation_results")
                    .col(ColumnDef::new("execution_id").uuid().not_null())
                    .col(ColumnDef::new("operation_id").string().not_null())
                    .col(ColumnDef::new("status").string().not_null())
                    .col(ColumnDef::new("exit_code").integer().null())
                    .col(ColumnDef::new("duration_ms").big_integer().null())
                    .col(ColumnDef::new("error").text().null())
                    .foreign_key(&mut same_tenant_fk(
                        "plan_operation_results",
                        "execution_id",
                        "plan_executions",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "plan_operation_results",
                &["execution_id", "operation_id"],
            ))
            .await?;
        manager
            .create_table(
                tenant_table("plan_execution_logs")
                    .col(ColumnDef::new("execution_id").uuid().not_null())
                    .col(ColumnDef::new("seq").big_integer().not_null())
                    .col(ColumnDef::new("stream").string().not_null())
                    .col(timestamp("logged_at"))
                    .col(ColumnDef::new("line").text().not_null())
                    .col(ColumnDef::new("bytes").integer().not_null())
                    .foreign_key(&mut same_tenant_fk(
                        "plan_execution_logs",
                        "execution_id",
                        "plan_executions",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "plan_execution_logs",
                &["execution_id", "seq"],
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_plan_execution_logs_created_at")
                    .table("plan_execution_logs")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in PLAN_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            sql.push_str(&crate::tables::owner_lookup("plan_execution_logs"));
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
                    "DROP FUNCTION IF EXISTS mobius_plan_log_tenants(timestamptz);\n",
                )
                .await?;
        }
        for table in PLAN_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        Ok(())
    }
}
