//! Certificate renewal over mutual TLS. The agent keeps its key and sends
//! a fresh CSR signed by it: the private key never leaves the host, and the
//! server sees the same public key it enrolled.

use anyhow::Context;
use chrono::{DateTime, Utc};
use mobius_api::device::RenewRequest;

use crate::identity::{
    CertificateInfo, DeviceKey, certificates_from_pem, ensure_certificate_matches_key,
};
use crate::state::{CA_FILE, CERT_FILE, StateDir};
use crate::transport::{CallError, DeviceClient};

/// Why a renewal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// The answer was unusable or could not be stored; the old certificate
    /// stays in place.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// A certificate freshly stored on disk.
pub struct Renewed {
    pub certificate: CertificateInfo,
    pub expires_at: DateTime<Utc>,
}

/// Whether it is time to renew: the server's `renew_after` from the last
/// ping has passed, or, with no word from the server, half the certificate's
/// lifetime has.
pub fn is_due(
    now: DateTime<Utc>,
    renew_after: Option<DateTime<Utc>>,
    certificate: &CertificateInfo,
) -> bool {
    renew_after.is_some_and(|at| now >= at) || now >= certificate.half_life()
}

/// Asks for a new certificate for `key` and stores it with the CA bundle
/// that came with it.
pub async fn renew(
    client: &DeviceClient,
    key: &DeviceKey,
    hostname: &str,
    dir: &StateDir,
) -> Result<Renewed, RenewalError> {
    let csr_pem = key.certificate_request_pem(hostname)?;
    let response = client.renew(&RenewRequest { csr_pem }).await?;
    let certificate = CertificateInfo::from_pem(&response.certificate_pem)
        .context("the server returned an unreadable certificate")?;
    ensure_certificate_matches_key(&certificate, key)?;
    certificates_from_pem(&response.ca_bundle_pem)
        .context("the server returned an unreadable tenant CA bundle")?;
    // The CA bundle first: a crash in between leaves the old certificate
    // with a bundle that still includes its CA (the server keeps the one
    // being retired in it).
    dir.write_atomic(CA_FILE, response.ca_bundle_pem.as_bytes())?;
    dir.write_atomic(CERT_FILE, response.certificate_pem.as_bytes())?;
    crate::work::save_plan_key(dir, response.plan_verification_key.as_deref())?;
    let expires_at = crate::enrollment::reported_expiry(&response.expires_at, &certificate);
    Ok(Renewed {
        certificate,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn certificate(now: DateTime<Utc>) -> CertificateInfo {
        CertificateInfo {
            not_before: now - TimeDelta::hours(1),
            not_after: now + TimeDelta::hours(23),
            public_key_der: Vec::new(),
        }
    }

    #[test]
    fn renewal_is_due_at_half_life_or_when_the_server_says() {
        let now = Utc::now();
        let cert = certificate(now);
        assert!(!is_due(now, None, &cert));
        assert!(is_due(now + TimeDelta::hours(11), None, &cert));
        assert!(is_due(now, Some(now), &cert));
        assert!(!is_due(now, Some(now + TimeDelta::minutes(1)), &cert));
        // A later renew_after does not postpone past half-life.
        assert!(is_due(
            now + TimeDelta::hours(12),
            Some(now + TimeDelta::hours(20)),
            &cert
        ));
    }
}
