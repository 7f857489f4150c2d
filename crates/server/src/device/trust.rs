//! The device listener's trust registry: every tenant's trusted CAs in
//! the TLS verifier, and which CA currently signs for each tenant.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use mobius_core::{Store, Uuid};

use super::tls::TenantCaVerifier;

/// Keeps the listener's trust store in step with the tenants' CAs, and
/// knows which CA currently signs for each tenant.
pub struct Trust {
    store: Store,
    verifier: Arc<TenantCaVerifier>,
    current: RwLock<HashMap<Uuid, Uuid>>,
}

impl Trust {
    pub fn new(store: Store, verifier: Arc<TenantCaVerifier>) -> Trust {
        Trust {
            store,
            verifier,
            current: RwLock::new(HashMap::new()),
        }
    }

    /// Reloads every trusted CA (after a CA is created or rotated here, and
    /// periodically for other servers' changes).
    pub async fn reload(&self) -> anyhow::Result<usize> {
        let cas = self.store.trusted_device_cas().await?;
        let pems: Vec<String> = cas.iter().map(|ca| ca.cert_pem.clone()).collect();
        let count = self.verifier.set_roots(&pems)?;
        let current = cas
            .iter()
            .filter(|ca| !ca.retiring)
            .map(|ca| (ca.tenant_id, ca.ca_id))
            .collect();
        if let Ok(mut map) = self.current.write() {
            *map = current;
        }
        Ok(count)
    }

    /// Whether `ca_id` is the tenant's signing CA as last loaded.
    pub fn knows(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.current
            .read()
            .map(|m| m.get(&tenant_id) == Some(&ca_id))
            .unwrap_or(false)
    }

    /// Whether `ca_id` is still the tenant's signing CA (if not, the device
    /// should renew now to move to the new one).
    pub fn is_current(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.current
            .read()
            .map(|m| m.get(&tenant_id).is_none_or(|c| *c == ca_id))
            .unwrap_or(true)
    }
}
