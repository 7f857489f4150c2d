//! The software catalog: titles (a name on a platform, where it is
//! offered, whether end users may install it themselves), versions (one
//! stored installer each, with its scripts and pre-install condition), and
//! installs (one per device and request: what the device reported while
//! downloading, installing or uninstalling, and how it ended).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, same_tenant_fk, tenant_table, tenant_unique};

pub(crate) const SOFTWARE_TABLES: &[&str] =
    &["software_titles", "software_versions", "software_installs"];

/// The job that fails installs left pending too long must find the
/// tenants that have any before it can open a scope in each: ids only.
const LOOKUP_FUNCTIONS: &str = r#"
CREATE FUNCTION mobius_software_stale_install_tenants(p_before timestamptz)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT DISTINCT tenant_id FROM software_installs
    WHERE status = 'PENDING' AND created_at < p_before
$$;
REVOKE ALL ON FUNCTION mobius_software_stale_install_tenants(timestamptz) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("software_titles")
                    .col(ColumnDef::new("name").string().not_null())
                    // linux, darwin or windows.
                    .col(ColumnDef::new("platform").string().not_null())
                    .col(
                        ColumnDef::new("self_service")
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    // Site and team ids where the title is offered
                    // (both empty: everywhere).
                    .col(
                        ColumnDef::new("available_site_ids")
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new("available_team_ids")
                            .json_binary()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("software_titles", &["name", "platform"]))
            .await?;
        manager
            .create_table(
                tenant_table("software_versions")
                    .col(ColumnDef::new("title_id").uuid().not_null())
                    .col(ColumnDef::new("version").string().not_null())
                    // deb, rpm, sh or tarball.
                    .col(ColumnDef::new("installer_kind").string().not_null())
                    .col(ColumnDef::new("file_name").string().not_null())
                    // Where the installer lives in the configured storage.
                    .col(ColumnDef::new("storage_key").string().not_null())
                    .col(ColumnDef::new("size_bytes").big_integer().not_null())
                    .col(ColumnDef::new("sha256").string().not_null())
                    .col(ColumnDef::new("install_script").text().null())
                    .col(ColumnDef::new("uninstall_script").text().null())
                    .col(ColumnDef::new("post_install_script").text().null())
                    .col(ColumnDef::new("pre_install_condition").text().null())
                    .foreign_key(&mut same_tenant_fk(
                        "software_versions",
                        "title_id",
                        "software_titles",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("software_versions", &["title_id", "version"]))
            .await?;
        manager
            .create_table(
                tenant_table("software_installs")
                    .col(ColumnDef::new("version_id").uuid().not_null())
                    .col(ColumnDef::new("device_id").uuid().not_null())
                    // The request that made it (in the plan's signed
                    // parameters): with the device, how an agent names it.
                    .col(ColumnDef::new("request_id").uuid().not_null())
                    .col(ColumnDef::new("plan_id").uuid().not_null())
                    .col(ColumnDef::new("execution_id").uuid().not_null())
                    // install or uninstall.
                    .col(ColumnDef::new("action").string().not_null())
                    .col(ColumnDef::new("status").string().not_null())
                    .col(
                        ColumnDef::new("bytes_downloaded")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new("bytes_total")
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new("reason").text().null())
                    .col(ColumnDef::new("exit_code").integer().null())
                    .col(ColumnDef::new("output_tail").text().null())
                    .col(
                        ColumnDef::new("finished_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "software_installs",
                        "version_id",
                        "software_versions",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "software_installs",
                        "device_id",
                        "devices",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "software_installs",
                        "execution_id",
                        "plan_executions",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "software_installs",
                &["request_id", "device_id"],
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_software_installs_execution")
                    .table("software_installs")
                    .col("tenant_id")
                    .col("execution_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_software_installs_status_created")
                    .table("software_installs")
                    .col("status")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in SOFTWARE_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            sql.push_str(&crate::tables::owner_lookup("software_installs"));
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
                    "DROP FUNCTION IF EXISTS mobius_software_stale_install_tenants(timestamptz);\n",
                )
                .await?;
        }
        for table in SOFTWARE_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        Ok(())
    }
}
