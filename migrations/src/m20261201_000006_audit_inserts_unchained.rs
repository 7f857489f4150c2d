//! Audit events enter the table unchained (Postgres only).
//!
//! Since events are chained after commit (migration 000005), only
//! `mobius_audit_chain` (run as the owner, through an UPDATE) should ever
//! set `seq`, `prev_hash` and `hash`. Without this policy the request role
//! could INSERT a row that claims a place in the chain; the restrictive
//! policy makes every INSERT, by any role, leave the chain columns NULL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

const UP: &str = r#"
CREATE POLICY audit_inserts_unchained ON audit_events AS RESTRICTIVE FOR INSERT
    WITH CHECK (seq IS NULL AND prev_hash IS NULL AND hash IS NULL);
"#;

const DOWN: &str = r#"
DROP POLICY IF EXISTS audit_inserts_unchained ON audit_events;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
