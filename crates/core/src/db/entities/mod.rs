//! sea-orm entities, one module per table. They are crate-private: other
//! crates reach rows only through the repositories on [`crate::TenantScope`].

pub(crate) mod api_token;
pub(crate) mod audit_event;
pub(crate) mod certificate_authority;
pub(crate) mod device;
pub(crate) mod enrollment_token;
pub(crate) mod invitation;
pub(crate) mod refresh_token;
pub(crate) mod revoked_device;
pub(crate) mod signing_key;
pub(crate) mod site;
pub(crate) mod team;
pub(crate) mod team_membership;
pub(crate) mod tenant;
pub(crate) mod user;
