//! The cloud edition's services. Cloud-only implementations live beside
//! this file, behind the crate's features: AWS KMS sealing (`kms`) and
//! entitlements from the tenant's billing plan (`billing`) arrive with
//! their issues; until then the cloud binary seals with the local master
//! key and applies the `device_limit` setting per tenant, and says so in
//! its start-up log and `config` output.

use std::sync::Arc;

use mobius_core::authz::{Entitlements, FixedDeviceLimit};
use mobius_server::Settings;
use mobius_server::edition::{EditionProvider, EditionServices, LocalServices, ServiceNames};

pub struct CloudServices;

impl EditionProvider for CloudServices {
    fn describe(&self, settings: &Settings) -> ServiceNames {
        let local = LocalServices.describe(settings);
        ServiceNames {
            sealer: format!("{} [cloud: KMS sealing not built yet]", local.sealer),
            entitlements: format!(
                "{} per tenant [cloud: billing plans not built yet]",
                FixedDeviceLimit(settings.device_limit).describe()
            ),
        }
    }

    /// No license file in the cloud: a tenant's entitlements are its
    /// plan's (the `device_limit` setting until billing plans arrive).
    fn build(&self, settings: &Settings) -> anyhow::Result<EditionServices> {
        Ok(EditionServices {
            sealer: LocalServices::sealer(settings)?,
            entitlements: Arc::new(FixedDeviceLimit(settings.device_limit)),
            routes: axum::Router::new(),
            platform_operator: true,
            self_signup: true,
        })
    }
}
