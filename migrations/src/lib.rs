//! Schema migrations for the Mobius store.
//!
//! The same migrations run on Postgres and on the embedded SQLite store.
//! Statements that only make sense on Postgres (row-level security,
//! SECURITY DEFINER lookups) are skipped on SQLite, which is single-tenant.

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m20261122_000001_data_model_v1;
mod m20261122_000002_row_level_security;
mod m20261122_000003_identity;
mod m20261122_000004_device_pki;
mod m20261201_000005_async_audit_chain;
mod m20261201_000006_audit_inserts_unchained;
mod m20261202_000001_plans;
mod m20261203_000001_tenant_lifecycle;
mod m20261204_000001_sso;
mod m20261205_000001_backbone;
mod m20261206_000001_billing;
mod m20261207_000001_cluster;
mod m20261208_000001_queries;
mod m20261209_000001_osquery;
mod m20261210_000001_software;
mod m20261210_000002_software_inventory;
mod m20261211_000001_saml;
mod m20261212_000001_portal;
mod tables;

pub use tables::{LOOKUP_FUNCTION_SIGNATURES, SHARED_TABLES, TENANT_TABLES};

/// Changes whenever a migration source file changes; the test harness keys
/// its migrated template database on it.
pub const FINGERPRINT: &str = env!("MOBIUS_MIGRATIONS_FINGERPRINT");

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_data_model_v1::Migration),
            Box::new(m20261122_000002_row_level_security::Migration),
            Box::new(m20261122_000003_identity::Migration),
            Box::new(m20261122_000004_device_pki::Migration),
            Box::new(m20261201_000005_async_audit_chain::Migration),
            Box::new(m20261201_000006_audit_inserts_unchained::Migration),
            Box::new(m20261202_000001_plans::Migration),
            Box::new(m20261203_000001_tenant_lifecycle::Migration),
            Box::new(m20261204_000001_sso::Migration),
            Box::new(m20261205_000001_backbone::Migration),
            Box::new(m20261206_000001_billing::Migration),
            Box::new(m20261207_000001_cluster::Migration),
            Box::new(m20261208_000001_queries::Migration),
            Box::new(m20261209_000001_osquery::Migration),
            Box::new(m20261210_000001_software::Migration),
            Box::new(m20261210_000002_software_inventory::Migration),
            Box::new(m20261211_000001_saml::Migration),
            Box::new(m20261212_000001_portal::Migration),
        ]
    }
}
