//! What distinguishes the editions at run time: an [`Edition`] names the
//! binary and carries the [`EditionProvider`] that builds its
//! [`EditionServices`] (secret sealer, entitlements, extra routes) from the
//! settings. The binaries in `editions/` pick one in `main.rs`; handlers
//! only ever see the services, never an edition `cfg`.

use std::sync::Arc;

use anyhow::Context;
use mobius_core::Store;
use mobius_core::authz::Entitlements;
use mobius_core::crypto::sealing::{LocalSealer, SecretSealer};
use mobius_core::licensing::{License, LicenseEntitlements};
use secrecy::ExposeSecret;

use crate::settings::Settings;

/// The generated master key, when `master_key` is not set.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The license file read when `license_key` is not set.
pub const LICENSE_FILE: &str = "license.key";

#[derive(Clone, Copy)]
pub struct Edition {
    /// `oss` or `cloud`.
    pub name: &'static str,
    /// The binary's name, for help and messages.
    pub binary: &'static str,
    /// The cloud edition is multi-tenant and has no embedded store.
    pub requires_postgres: bool,
    /// Cargo features compiled into this binary, for `config` output.
    pub features: &'static [&'static str],
    /// Builds this edition's services at start-up.
    pub provider: &'static dyn EditionProvider,
}

impl std::fmt::Debug for Edition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edition")
            .field("name", &self.name)
            .field("binary", &self.binary)
            .finish_non_exhaustive()
    }
}

impl Edition {
    /// The OSS edition (also what in-process tests run).
    pub const OSS: Edition = Edition {
        name: "oss",
        binary: "mobius-server",
        requires_postgres: false,
        features: &[],
        provider: &LocalServices,
    };
}

/// The services an edition plugs into the server.
pub struct EditionServices {
    /// Seals tenant CA keys and JWT signing keys at rest.
    pub sealer: Arc<dyn SecretSealer>,
    /// The entitlement gate: the license (OSS) or the tenant's plan (cloud).
    pub entitlements: Arc<dyn Entitlements>,
    /// Routes only this edition serves (SSO callbacks, billing webhooks),
    /// merged into the admin router.
    pub routes: axum::Router,
    /// Whether this edition has the platform operator surface
    /// (/api/v1/mobius/platform/, cloud only); it is served when the
    /// operator token's hash is also configured.
    pub platform_operator: bool,
    /// Whether this edition offers self sign-up of tenants (cloud only);
    /// it is on when `signup_enabled` is also set.
    pub self_signup: bool,
    /// The SAML protocol engine (cloud: samael with xmlsec). `None` in an
    /// edition without one: the SAML routes answer that this edition has
    /// no SAML.
    pub saml: Option<Arc<dyn mobius_core::identity::sso::saml::SamlProtocol>>,
}

/// Which implementation an edition uses for each service, for the
/// start-up log and `mobius-server config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNames {
    pub sealer: String,
    pub entitlements: String,
}

/// One implementation per edition, chosen by the binary.
#[async_trait::async_trait]
pub trait EditionProvider: Send + Sync {
    /// Names the services [`EditionProvider::build`] would use, without
    /// side effects (no key file is created).
    fn describe(&self, settings: &Settings) -> ServiceNames;

    fn build(&self, settings: &Settings) -> anyhow::Result<EditionServices>;

    /// The services `serve` runs with, once the store is open: what
    /// [`EditionProvider::build`] makes, plus anything that needs the
    /// store or a network check before the server may listen (the cloud
    /// edition's plan cache, webhook routes, KMS reachability).
    async fn start(&self, settings: &Settings, _store: &Store) -> anyhow::Result<EditionServices> {
        self.build(settings)
    }
}

/// The OSS services: AES-256-GCM sealing under a local master key, and
/// entitlements from the license (`license_key` or `license.key`), capped
/// by the `device_limit` setting.
pub struct LocalServices;

impl LocalServices {
    /// The local master-key sealer: `master_key` if set, else the key file
    /// in the data directory (created on first run).
    pub fn sealer(settings: &Settings) -> anyhow::Result<Arc<dyn SecretSealer>> {
        Ok(Arc::new(
            LocalSealer::from_key_or_file(
                settings.master_key.as_ref().map(|k| k.expose_secret()),
                &settings.data_dir.join(MASTER_KEY_FILE),
            )
            .context("loading the master key (setting `master_key`)")?,
        ))
    }

    /// The license in force: `license_key`, else `<data_dir>/license.key`,
    /// else none (the free tier). A license that does not verify stops
    /// start-up with a message naming the problem and where it came from:
    /// running on as the free tier would silently drop what was bought.
    pub fn license(settings: &Settings) -> anyhow::Result<Option<License>> {
        let file = settings.data_dir.join(LICENSE_FILE);
        let (token, origin) = match &settings.license_key {
            Some(key) => (
                key.expose_secret().to_owned(),
                "setting `license_key`".to_owned(),
            ),
            None if file.is_file() => (
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading the license file {}", file.display()))?,
                format!("file {}", file.display()),
            ),
            None => {
                if settings.license_trust_test_key && !mobius_core::licensing::test_key_available()
                {
                    anyhow::bail!(mobius_core::licensing::LicenseError::TestKeyUnavailable);
                }
                return Ok(None);
            }
        };
        let license = License::verify(&token, settings.license_trust_test_key)
            .with_context(|| format!("invalid license (from the {origin})"))?;
        Ok(Some(license))
    }

    /// The OSS entitlement gate from the license (or the free tier).
    pub fn entitlements(settings: &Settings) -> anyhow::Result<LicenseEntitlements> {
        Ok(LicenseEntitlements::new(
            LocalServices::license(settings)?,
            settings.device_limit,
        ))
    }

    fn sealer_name(settings: &Settings) -> String {
        match settings.master_key {
            Some(_) => "local AES-256-GCM (master key from setting `master_key`)".to_owned(),
            None => format!(
                "local AES-256-GCM (master key file {})",
                settings.data_dir.join(MASTER_KEY_FILE).display()
            ),
        }
    }
}

#[async_trait::async_trait]
impl EditionProvider for LocalServices {
    fn describe(&self, settings: &Settings) -> ServiceNames {
        ServiceNames {
            sealer: LocalServices::sealer_name(settings),
            entitlements: match LocalServices::entitlements(settings) {
                Ok(entitlements) => entitlements.describe(),
                Err(err) => format!("{err:#}"),
            },
        }
    }

    fn build(&self, settings: &Settings) -> anyhow::Result<EditionServices> {
        Ok(EditionServices {
            sealer: LocalServices::sealer(settings)?,
            entitlements: Arc::new(LocalServices::entitlements(settings)?),
            routes: axum::Router::new(),
            // OSS is single-tenant: no operator above its one tenant.
            platform_operator: false,
            self_signup: false,
            saml: None,
        })
    }
}
