//! Entitlements: what a tenant has paid for (or licensed). One trait, one
//! implementation per edition, chosen by the binary in `editions/*`.

use sea_orm::prelude::Uuid;

/// The entitlement gate. The device limit is enforced inside the
/// enrollment transaction, under the tenant's device-limit lock, so it is
/// exact under concurrency.
pub trait Entitlements: Send + Sync + std::fmt::Debug {
    /// A short name for logs and `mobius-server config`.
    fn describe(&self) -> String;

    /// The most devices the tenant may have, or `None` for no limit.
    fn device_limit(&self, tenant_id: Uuid) -> Option<u64>;
}

/// The same limit (or none) for every tenant: the `device_limit` setting.
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedDeviceLimit(pub Option<u64>);

impl Entitlements for FixedDeviceLimit {
    fn describe(&self) -> String {
        match self.0 {
            Some(limit) => format!("fixed device limit ({limit} devices per tenant)"),
            None => "unlimited (no device limit)".to_owned(),
        }
    }

    fn device_limit(&self, _: Uuid) -> Option<u64> {
        self.0
    }
}
