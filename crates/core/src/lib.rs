//! Mobius core: domain types, tenant-scoped repositories and services.
//!
//! Tenant data is reachable only through a [`TenantScope`], which only
//! [`Store::begin`] creates: it opens a transaction and sets the tenant for
//! Postgres row-level security before anything else runs.

mod audit;
mod devices;
mod enrollment;
mod entities;
mod error;
pub mod postgres_roles;
mod scope;
mod store;
mod teams;
mod users;

pub use audit::{Actor, ActorKind, AuditEvent, AuditLog, AuditRecord};
pub use devices::{Device, Devices};
pub use enrollment::{EnrollmentToken, EnrollmentTokens, NewEnrollmentToken};
pub use error::{StoreError, StoreResult};
pub use scope::TenantScope;
pub use sea_orm::prelude::Uuid;
pub use store::{Backend, DEFAULT_SITE, DEFAULT_TENANT_SLUG, PoolStats, Store, Tenant};
pub use teams::{Site, Sites, TEAM_ROLES, Team, TeamMembership, TeamMemberships, Teams};
pub use users::{NewUser, TENANT_ROLES, User, Users};
