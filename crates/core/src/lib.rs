//! Mobius core: domain types, tenant-scoped repositories and services.
//!
//! Tenant data is reachable only through a [`TenantScope`], which only
//! [`Store::begin`] creates: it opens a transaction and sets the tenant for
//! Postgres row-level security before anything else runs.

pub mod access_tokens;
mod api_tokens;
mod audit;
pub mod authz;
mod device_enrollment;
mod devices;
mod enrollment;
mod entities;
mod error;
pub mod identity;
mod invitations;
pub mod passwords;
pub mod pki;
pub mod postgres_roles;
pub mod presence;
mod scope;
pub mod sealing;
pub mod secrets;
mod sessions;
mod store;
mod teams;
mod tenants;
pub mod usage;
mod users;

pub use api_tokens::{ApiToken, ApiTokens, DEFAULT_API_TOKEN_DAYS, NewApiToken};
pub use audit::{Actor, ActorKind, AuditEvent, AuditLog, AuditRecord, ChainVerification};
pub use device_enrollment::{
    EnrollError, Enrolled, EnrollmentRequest, Entitlements, FixedDeviceLimit, enroll, parse_network,
};
pub use devices::{
    Device, DeviceFilter, DeviceOrder, DeviceStatus, Devices, HEARTBEAT_INTERVAL_SECS,
    MISSED_HEARTBEATS_OFFLINE,
};
pub use enrollment::{EnrollmentToken, EnrollmentTokens, NewEnrollmentToken};
pub use error::{StoreError, StoreResult};
pub use invitations::{INVITATION_DAYS, Invitation, Invitations};
pub use scope::TenantScope;
pub use sea_orm::prelude::Uuid;
pub use sessions::{REFRESH_TOKEN_DAYS, RefreshToken, RefreshTokens};
pub use store::{
    Backend, DEFAULT_SITE, DEFAULT_TENANT_SLUG, LoginCandidate, PoolStats, SecretKind, Store,
    Tenant,
};
pub use teams::{Site, Sites, TEAM_ROLES, Team, TeamMembership, TeamMemberships, Teams};
pub use tenants::TenantSettings;
pub use users::{NewUser, TENANT_ROLES, User, Users};
