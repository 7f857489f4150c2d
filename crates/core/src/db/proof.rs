//! Tenant proofs: what [`super::Store::begin`] takes instead of a bare
//! tenant id. Each kind is constructed only where the tenant was actually
//! established, so code that skipped authentication has nothing to pass.
//!
//! | proof | made by |
//! |---|---|
//! | [`crate::authz::Principal`] | identity: a verified access token or API token |
//! | [`crate::devices::DeviceIdentity`] | pki: a client certificate that chained to the tenant's CA |
//! | [`FoundTenant`] | [`super::lookups`]: the owner of a presented secret, the default tenant |
//! | [`SystemTask`] | a named background task or start-up step (greppable, logged) |

use sea_orm::prelude::Uuid;

mod sealed {
    /// Only this crate's proof types implement [`super::TenantProof`].
    pub trait Sealed {}
}

/// Something that establishes which tenant a unit of work belongs to.
pub trait TenantProof: sealed::Sealed {
    fn tenant_id(&self) -> Uuid;

    /// For callers limited to one team's devices (a team-scoped API
    /// token): the scope's device reads then see that team only, so a
    /// resolver cannot forget the filter.
    fn team_restriction(&self) -> Option<Uuid> {
        None
    }

    /// Whether the work may enter a suspended or unverified tenant. Only
    /// named system tasks may (verifying a sign-up, the operator's resume
    /// and offboarding, background flushes); users and devices may not.
    fn enters_blocked_tenants(&self) -> bool {
        false
    }
}

/// The tenant a named cross-tenant lookup answered with (the owner of a
/// token hash, a login candidate's tenant, the default tenant). Only
/// [`super::lookups`] and tenant creation make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundTenant(Uuid);

impl FoundTenant {
    pub(crate) fn new(tenant_id: Uuid) -> FoundTenant {
        FoundTenant(tenant_id)
    }

    pub fn id(&self) -> Uuid {
        self.0
    }
}

impl sealed::Sealed for FoundTenant {}
impl TenantProof for FoundTenant {
    fn tenant_id(&self) -> Uuid {
        self.0
    }
}

/// Work the server does on its own behalf in one tenant: flushing
/// heartbeats, creating the default tenant's CA, a scheduled job. The name
/// says which, so every use is easy to find and review.
#[derive(Clone, Copy, Debug)]
pub struct SystemTask {
    name: &'static str,
    tenant_id: Uuid,
}

impl SystemTask {
    pub fn new(name: &'static str, tenant_id: Uuid) -> SystemTask {
        SystemTask { name, tenant_id }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl sealed::Sealed for SystemTask {}
impl TenantProof for SystemTask {
    fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    fn enters_blocked_tenants(&self) -> bool {
        true
    }
}

impl sealed::Sealed for crate::authz::Principal {}
impl TenantProof for crate::authz::Principal {
    fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    fn team_restriction(&self) -> Option<Uuid> {
        self.grants.token_team
    }
}

impl sealed::Sealed for crate::devices::DeviceIdentity {}
impl TenantProof for crate::devices::DeviceIdentity {
    fn tenant_id(&self) -> Uuid {
        self.tenant_id()
    }
}

impl sealed::Sealed for crate::portal::PortalGrant {}
/// A portal token's device: its tenant, nothing wider (the portal's
/// repositories take the grant and read that one device).
impl TenantProof for crate::portal::PortalGrant {
    fn tenant_id(&self) -> Uuid {
        self.tenant_id()
    }
}
