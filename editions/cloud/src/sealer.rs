//! Which sealer the cloud binary uses: AWS KMS envelope sealing when
//! `[kms]` is configured (feature `kms`), else the local master key.
//! The KMS sealer still opens values the local sealer wrote (until
//! `reseal --to kms` has re-wrapped them), so switching is not a cliff.

use std::sync::Arc;

use mobius_core::crypto::sealing::SecretSealer;
use mobius_server::Settings;
use mobius_server::edition::LocalServices;

pub fn describe(settings: &Settings, local: &str) -> String {
    match &settings.kms {
        #[cfg(feature = "kms")]
        Some(kms) => format!(
            "AWS KMS envelope (key {}, region {}; opens local values too)",
            kms.key_id, kms.region
        ),
        _ => format!("{local} [cloud: no [kms] settings]"),
    }
}

/// The sealer, without touching the network.
pub fn build(settings: &Settings) -> anyhow::Result<Arc<dyn SecretSealer>> {
    match &settings.kms {
        #[cfg(feature = "kms")]
        Some(kms) => Ok(Arc::new(crate::kms::KmsSealer::new(
            kms,
            Some(LocalServices::sealer(settings)?),
        )?)),
        #[cfg(not(feature = "kms"))]
        Some(_) => {
            anyhow::bail!("[kms] is set, but this binary was built without the `kms` feature")
        }
        None => LocalServices::sealer(settings),
    }
}

/// Refuses to start when the key service cannot be used: every secret
/// the server signs or issues with would fail later anyway.
pub async fn check(sealer: &Arc<dyn SecretSealer>) -> anyhow::Result<()> {
    use mobius_core::crypto::sealing::SealContext;
    let probe = SealContext::platform("start-up-check", "kms");
    let sealed = sealer.seal(&probe, b"probe").await.map_err(|e| {
        anyhow::anyhow!("the key service is not usable, so the server will not start: {e}")
    })?;
    sealer.open(&probe, &sealed).await.map_err(|e| {
        anyhow::anyhow!("the key service is not usable, so the server will not start: {e}")
    })?;
    Ok(())
}
