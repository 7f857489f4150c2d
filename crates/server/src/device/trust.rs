//! The device listener's side of the trust registry: every tenant's
//! trusted CAs in the TLS verifier. Which CA signs for each tenant, and
//! each tenant's CA bundle, live in core's [`Pki`] so enrollment and
//! renewal read them from memory; one reload feeds both.

use std::sync::Arc;

use mobius_core::pki::Pki;
use mobius_core::{Store, Uuid};

use super::tls::TenantCaVerifier;

/// Keeps the listener's trust store and the PKI's registry in step with
/// the tenants' CAs.
pub struct Trust {
    store: Store,
    verifier: Arc<TenantCaVerifier>,
    pki: Arc<Pki>,
}

impl Trust {
    pub fn new(store: Store, verifier: Arc<TenantCaVerifier>, pki: Arc<Pki>) -> Trust {
        Trust {
            store,
            verifier,
            pki,
        }
    }

    /// Reloads every trusted CA (after a CA is created or rotated here, and
    /// periodically for other servers' changes).
    pub async fn reload(&self) -> anyhow::Result<usize> {
        let cas = self.store.trusted_device_cas().await?;
        let pems: Vec<String> = cas.iter().map(|ca| ca.cert_pem.clone()).collect();
        let count = self.verifier.set_roots(&pems)?;
        self.pki.load_trust(&cas);
        Ok(count)
    }

    /// Whether `ca_id` is the tenant's signing CA as last loaded.
    pub fn knows(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.pki.knows(tenant_id, ca_id)
    }

    /// Whether `ca_id` is still the tenant's signing CA (if not, the device
    /// should renew now to move to the new one).
    pub fn is_current(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.pki.is_current(tenant_id, ca_id)
    }
}
