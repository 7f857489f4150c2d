//! The cloud edition's services: entitlements from each tenant's billing
//! plan (feature `billing`, when `[billing]` is configured) and AWS KMS
//! envelope sealing (feature `kms`, when `[kms]` is configured). Without
//! a section the cloud binary falls back to the OSS service (local
//! master key; the `device_limit` setting) and says so in its start-up
//! log and `config` output.

use std::sync::Arc;

use mobius_core::Store;
use mobius_core::authz::{Entitlements, FixedDeviceLimit};
use mobius_server::Settings;
use mobius_server::edition::{EditionProvider, EditionServices, LocalServices, ServiceNames};

pub struct CloudServices;

#[async_trait::async_trait]
impl EditionProvider for CloudServices {
    fn describe(&self, settings: &Settings) -> ServiceNames {
        let local = LocalServices.describe(settings);
        ServiceNames {
            sealer: crate::sealer::describe(settings, &local.sealer),
            entitlements: match &settings.billing {
                #[cfg(feature = "billing")]
                Some(billing) => match mobius_core::billing::PlanCatalog::new(billing) {
                    Ok(catalog) => {
                        crate::billing::PlanEntitlements::new(catalog.free().clone()).describe()
                    }
                    Err(err) => format!("invalid billing settings: {err}"),
                },
                _ => format!(
                    "{} [cloud: no [billing] settings]",
                    FixedDeviceLimit(settings.device_limit).describe()
                ),
            },
        }
    }

    /// The services without the store: the sealer (for `rotate-signing-key`
    /// and `reseal`) and the fallback entitlements. No license file in the
    /// cloud: a tenant's entitlements are its plan's, or the `device_limit`
    /// setting without `[billing]`.
    fn build(&self, settings: &Settings) -> anyhow::Result<EditionServices> {
        Ok(EditionServices {
            sealer: crate::sealer::build(settings)?,
            entitlements: Arc::new(FixedDeviceLimit(settings.device_limit)),
            routes: axum::Router::new(),
            platform_operator: true,
            self_signup: true,
            #[cfg(feature = "saml")]
            saml: Some(Arc::new(crate::saml::SamaelProtocol)),
            #[cfg(not(feature = "saml"))]
            saml: None,
        })
    }

    async fn start(&self, settings: &Settings, store: &Store) -> anyhow::Result<EditionServices> {
        let mut services = self.build(settings)?;
        crate::sealer::check(&services.sealer).await?;
        #[cfg(feature = "billing")]
        if let Some(billing) = &settings.billing {
            let started = crate::billing::start(billing, store).await?;
            services.entitlements = started.entitlements as Arc<_>;
            services.routes = services.routes.merge(started.routes);
        }
        #[cfg(not(feature = "billing"))]
        if settings.billing.is_some() {
            anyhow::bail!(
                "[billing] is set, but this binary was built without the `billing` feature"
            );
        }
        #[cfg(not(feature = "billing"))]
        let _ = store;
        Ok(services)
    }
}
