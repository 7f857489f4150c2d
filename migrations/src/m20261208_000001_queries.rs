//! Live query campaigns (one row per target device with its answer),
//! policies with their incrementally kept pass/fail counts and per-device
//! latest results, the per-tenant policy webhook (its signing secret
//! sealed) and the webhook delivery log.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, same_tenant_fk, tenant_table, tenant_unique, timestamp};

pub(crate) const QUERY_TABLES: &[&str] = &[
    "query_campaigns",
    "query_campaign_devices",
    "policies",
    "policy_results",
    "policy_webhooks",
    "webhook_deliveries",
];

#[derive(DeriveMigrationName)]
pub struct Migration;

fn index(name: &str, table: &'static str, columns: &[&'static str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table);
    for column in columns {
        index.col(*column);
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("query_campaigns")
                    .col(ColumnDef::new("sql").text().not_null())
                    // RUNNING, FINISHED (every online target answered or
                    // the timeout passed) or STOPPED (by an admin).
                    .col(ColumnDef::new("status").string().not_null())
                    .col(ColumnDef::new("timeout_ms").big_integer().not_null())
                    .col(timestamp("ends_at"))
                    .col(
                        ColumnDef::new("finished_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new("targets").json_binary().not_null())
                    .col(ColumnDef::new("actor_kind").string().not_null())
                    .col(ColumnDef::new("actor_id").uuid().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_query_campaigns_status_ends",
                "query_campaigns",
                &["status", "ends_at"],
            ))
            .await?;
        manager
            .create_index(index(
                "ix_query_campaigns_created",
                "query_campaigns",
                &["created_at"],
            ))
            .await?;
        manager
            .create_table(
                tenant_table("query_campaign_devices")
                    .col(ColumnDef::new("campaign_id").uuid().not_null())
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    // PENDING, ANSWERED, ERROR or OFFLINE.
                    .col(ColumnDef::new("status").string().not_null())
                    .col(ColumnDef::new("error").text().null())
                    .col(ColumnDef::new("rows").json_binary().null())
                    .col(ColumnDef::new("row_count").integer().not_null().default(0))
                    .col(
                        ColumnDef::new("truncated")
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new("duration_ms").big_integer().null())
                    .col(
                        ColumnDef::new("answered_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "query_campaign_devices",
                        "campaign_id",
                        "query_campaigns",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "query_campaign_devices",
                        "device_id",
                        "devices",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "query_campaign_devices",
                &["campaign_id", "device_id"],
            ))
            .await?;
        // The campaign watcher counts a campaign's PENDING rows often.
        manager
            .create_index(index(
                "ix_query_campaign_devices_campaign_status",
                "query_campaign_devices",
                &["tenant_id", "campaign_id", "status"],
            ))
            .await?;
        manager
            .create_index(index(
                "ix_query_campaign_devices_device_status",
                "query_campaign_devices",
                &["tenant_id", "device_id", "status"],
            ))
            .await?;
        manager
            .create_table(
                tenant_table("policies")
                    .col(ColumnDef::new("team_id").uuid().null())
                    .col(ColumnDef::new("name").string().not_null())
                    .col(ColumnDef::new("sql").text().not_null())
                    .col(ColumnDef::new("description").text().not_null())
                    .col(ColumnDef::new("resolution").text().not_null())
                    // Comma-separated platforms (`linux,darwin`); NULL: all.
                    .col(ColumnDef::new("platform").string().null())
                    .col(ColumnDef::new("interval_secs").big_integer().not_null())
                    .col(timestamp("next_run_at"))
                    // Kept in the same transaction as each result, so the
                    // counts are never older than the newest result.
                    .col(
                        ColumnDef::new("passing_count")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new("failing_count")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "policies",
                        "team_id",
                        "teams",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("policies", &["name"]))
            .await?;
        manager
            .create_index(index("ix_policies_next_run", "policies", &["next_run_at"]))
            .await?;
        manager
            .create_table(
                tenant_table("policy_results")
                    .col(ColumnDef::new("policy_id").uuid().not_null())
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    // NULL: the check failed to run (unknown).
                    .col(ColumnDef::new("passes").boolean().null())
                    .col(ColumnDef::new("error").text().null())
                    .col(timestamp("checked_at"))
                    .foreign_key(&mut same_tenant_fk(
                        "policy_results",
                        "policy_id",
                        "policies",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "policy_results",
                        "device_id",
                        "devices",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("policy_results", &["policy_id", "device_id"]))
            .await?;
        manager
            .create_index(index(
                "ix_policy_results_policy_passes",
                "policy_results",
                &["tenant_id", "policy_id", "passes"],
            ))
            .await?;
        manager
            .create_table(
                tenant_table("policy_webhooks")
                    .col(ColumnDef::new("url").text().not_null())
                    // The HMAC key, sealed (bound to tenant and webhook id).
                    .col(ColumnDef::new("sealed_secret").binary().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_policy_webhooks_tenant")
                    .table("policy_webhooks")
                    .col("tenant_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("webhook_deliveries")
                    .col(ColumnDef::new("event").string().not_null())
                    .col(ColumnDef::new("body").text().not_null())
                    // PENDING (to be tried at next_attempt_at), DELIVERED, FAILED.
                    .col(ColumnDef::new("status").string().not_null())
                    .col(ColumnDef::new("attempts").integer().not_null().default(0))
                    .col(timestamp("next_attempt_at"))
                    .col(
                        ColumnDef::new("last_attempt_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new("response_status").integer().null())
                    .col(ColumnDef::new("last_error").text().null())
                    .col(
                        ColumnDef::new("delivered_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_webhook_deliveries_due",
                "webhook_deliveries",
                &["status", "next_attempt_at"],
            ))
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in QUERY_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in QUERY_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        Ok(())
    }
}
