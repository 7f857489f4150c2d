//! Mobius core: domain types, tenant-scoped repositories and services,
//! one folder per domain area (see `docs/architecture.md`).
//!
//! Tenant data is reachable only through a [`TenantScope`], which only
//! [`Store::begin`] creates, from a proof of who is asking
//! ([`db::TenantProof`]): it opens a transaction and sets the tenant for
//! Postgres row-level security before anything else runs.

pub mod audit;
pub mod authz;
pub mod backbone;
pub mod billing;
pub mod crypto;
pub mod db;
pub mod devices;
pub mod enrollment;
pub mod identity;
pub mod licensing;
pub mod osquery;
pub mod pki;
pub mod plans;
pub mod platform;
pub mod policies;
pub mod portal;
pub mod queries;
pub mod software;
pub mod tenancy;

pub use db::{Store, StoreError, StoreResult, TenantScope};
pub use sea_orm::prelude::Uuid;
