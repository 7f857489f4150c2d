//! Software inventory: the packages each device reports installed (from
//! its `deb_packages` and `rpm_packages` host tables), one row per device,
//! source and package name, replaced whole by each report that differs.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, same_tenant_fk, tenant_table, tenant_unique, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("software_inventory")
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    // deb or rpm.
                    .col(ColumnDef::new("source").string().not_null())
                    .col(ColumnDef::new("name").string().not_null())
                    .col(ColumnDef::new("version").string().not_null())
                    .col(timestamp("reported_at"))
                    .foreign_key(&mut same_tenant_fk(
                        "software_inventory",
                        "device_id",
                        "devices",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "software_inventory",
                &["device_id", "source", "name"],
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_software_inventory_name")
                    .table("software_inventory")
                    .col("tenant_id")
                    .col("name")
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(&isolate("software_inventory", "tenant_id"))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("software_inventory").to_owned())
            .await
    }
}
