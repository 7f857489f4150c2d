//! The device listener's identity from the shared store, so every replica
//! presents a certificate from the same CA and any replica serves any
//! agent (agents pin the CA, not the leaf).
//!
//! The CA (certificate and sealed key) lives in `device_listener_ca`; each
//! replica issues its own leaf from it in memory at start-up. The first
//! replica to start stores the CA: the one a previous single-server run
//! generated in the data directory if there is one (so enrolled agents
//! keep their pin), else a new one. Configured `device_tls_*` files still
//! take precedence over all of this.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use mobius_core::Store;
use mobius_core::crypto::sealing::{SealContext, SecretSealer};

use crate::device::tls::{self, ServerIdentity};

/// Sealing context of the listener CA's key.
/// The listener CA key is the platform's, not a tenant's.
fn seal_context() -> SealContext {
    SealContext::platform("device-listener-ca", "current")
}

/// The shared listener CA (stored on first use) and a fresh leaf for
/// `hostnames`.
pub async fn shared_server_identity(
    store: &Store,
    sealer: Arc<dyn SecretSealer>,
    data_dir: &Path,
    hostnames: &[String],
) -> anyhow::Result<ServerIdentity> {
    if store.device_listener_ca().await?.is_none() {
        let (cert_pem, key_pem, origin) = match tls::data_dir_ca(data_dir) {
            Some((cert, key)) => (cert, key, "imported from the data directory"),
            None => {
                let (cert, key) = tls::new_listener_ca()?;
                (cert, key, "generated")
            }
        };
        let sealed = sealer
            .seal(&seal_context(), key_pem.as_bytes())
            .await
            .context("sealing the device listener CA key")?;
        store.store_device_listener_ca(&cert_pem, &sealed).await?;
        tracing::info!(
            origin,
            "stored the device listener's CA in the shared store"
        );
    }
    // Read back: when replicas start together, the first insert wins.
    let (ca_pem, sealed) = store
        .device_listener_ca()
        .await?
        .context("the device listener CA vanished from the store")?;
    let key_pem = sealer
        .open(&seal_context(), &sealed)
        .await
        .context("opening the device listener CA key (is this the installation's master key?)")?;
    let key_pem = String::from_utf8(key_pem).context("the device listener CA key is not PEM")?;
    // The CA certificate (public) where single-server installs keep it,
    // for operators and tools that give agents a CA to trust.
    let ca_copy = data_dir.join(tls::SERVER_CA_FILE);
    if std::fs::read_to_string(&ca_copy).ok().as_deref() != Some(ca_pem.as_str()) {
        mobius_core::crypto::sealing::write_private_file(&ca_copy, &ca_pem)
            .with_context(|| format!("writing {}", ca_copy.display()))?;
    }
    let names = tls::listener_names(hostnames);
    let (cert_pem, leaf_key_pem) = tls::issue_listener_leaf(&ca_pem, &key_pem, &names)?;
    tls::identity_from_pems(&cert_pem, &leaf_key_pem, &ca_pem)
}
