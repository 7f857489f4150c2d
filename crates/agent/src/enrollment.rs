//! `mobius-agent enroll`: trade a one-time token and a CSR for a device
//! certificate, trusting the server only through the token's CA pin.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use mobius_api::device::{EnrollRequest, EnrollResponse, EnrollmentToken, HostFacts};
use serde::Serialize;
use uuid::Uuid;

use crate::cli::{EnrollArgs, EnrollOutput};
use crate::error::UsageError;
use crate::facts;
use crate::identity::{
    CertificateInfo, DeviceKey, certificates_from_pem, ensure_certificate_matches_key,
};
use crate::output;
use crate::state::{
    AgentState, CA_FILE, CERT_FILE, KEY_FILE, SERVER_CA_FILE, STATE_FILE, StateDir,
};
use crate::tls::{self, PinnedCaVerifier};
use crate::transport::{CallError, DeviceClient, parse_server_url};

/// What `enroll --output json` prints: the enrollment without its PEMs
/// (they are in the state directory, and a certificate in a terminal or a
/// CI log helps no one).
#[derive(Debug, Serialize)]
struct EnrollSummary {
    device_id: Uuid,
    tenant_id: Uuid,
    site_id: Uuid,
    expires_at: String,
    heartbeat_interval_secs: u64,
}

pub async fn enroll(args: EnrollArgs) -> Result<()> {
    // Check everything local first: a token is single-use, and a mistake
    // found after the server redeemed it costs the operator a new one.
    let token = EnrollmentToken::parse(&args.token).ok_or_else(|| {
        UsageError(
            "the enrollment token is malformed: expected mobius1.<secret>.<pin> exactly as your Mobius admin handed it out".into(),
        )
    })?;
    let server = parse_server_url(&args.server).map_err(|err| UsageError(format!("{err:#}")))?;
    let server_base = server.as_str().trim_end_matches('/').to_owned();
    let state_dir = StateDir::new(&args.state.state_dir);
    state_dir.prepare()?;
    let previous = state_dir.load_state().ok();

    let facts = tokio::task::spawn_blocking(facts::collect)
        .await
        .context("collecting host facts failed")?;
    let host_fingerprint = match args.host_fingerprint {
        Some(fingerprint) if !fingerprint.trim().is_empty() => fingerprint.trim().to_owned(),
        _ => facts::host_fingerprint(&facts),
    };
    let key = DeviceKey::generate()?;
    let request = EnrollRequest {
        token: args.token.trim().to_owned(),
        csr_pem: key.certificate_request_pem(&facts.hostname)?,
        host_fingerprint,
        facts: facts.clone(),
    };

    let verifier = Arc::new(PinnedCaVerifier::new(
        token.ca_pin_sha256,
        tls::crypto_provider(),
    ));
    let client = DeviceClient::new(&server, tls::enrollment_config(Arc::clone(&verifier))?)?;
    tracing::info!(server = %server, state_dir = %state_dir.path().display(), "enrolling");
    let response = match client.enroll(&request).await {
        Ok(response) => response,
        Err(err) => {
            // A pin refusal surfaces from reqwest as a generic handshake
            // failure; the verifier kept the precise reason.
            if let Some(refusal) = verifier.refusal() {
                return Err(refusal.into());
            }
            return Err(match err {
                CallError::Refused { code, message, .. } => {
                    anyhow!("enrollment refused: {message} ({code})")
                }
                CallError::Unreachable(detail) | CallError::CertificateRejected(detail) => {
                    anyhow!("cannot reach the server at {server_base}: {detail}")
                }
            });
        }
    };

    let state = store(&state_dir, &key, &server_base, &response)?;
    if let Some(previous) = previous {
        tracing::info!(
            previous_device_id = %previous.device_id,
            "replaced the previous enrollment"
        );
    }
    report(&response, &state, &facts, args.output)
}

/// Checks the answer and writes the identity. `state.json` goes last: it
/// is what marks the directory as enrolled, so an interrupted write leaves
/// no state that claims a certificate it does not have.
fn store(
    dir: &StateDir,
    key: &DeviceKey,
    server_base: &str,
    response: &EnrollResponse,
) -> Result<AgentState> {
    let cert = CertificateInfo::from_pem(&response.certificate_pem)
        .context("the server returned an unreadable certificate")?;
    ensure_certificate_matches_key(&cert, key)?;
    certificates_from_pem(&response.server_ca_pem)
        .context("the server returned an unreadable server CA")?;
    certificates_from_pem(&response.ca_bundle_pem)
        .context("the server returned an unreadable tenant CA bundle")?;
    if response.heartbeat_interval_secs == 0 {
        bail!("the server returned a heartbeat interval of 0 seconds");
    }

    dir.write_atomic(KEY_FILE, key.to_pem().as_bytes())?;
    dir.write_atomic(CERT_FILE, response.certificate_pem.as_bytes())?;
    dir.write_atomic(CA_FILE, response.ca_bundle_pem.as_bytes())?;
    dir.write_atomic(SERVER_CA_FILE, response.server_ca_pem.as_bytes())?;
    crate::work::save_plan_key(dir, response.plan_verification_key.as_deref())?;
    let state = AgentState {
        server_url: server_base.to_owned(),
        device_id: response.device_id,
        tenant_id: response.tenant_id,
        site_id: response.site_id,
        enrolled_at: Utc::now(),
        certificate_expires_at: reported_expiry(&response.expires_at, &cert),
        heartbeat_interval_secs: response.heartbeat_interval_secs,
        renew_after: None,
        last_renewed_at: None,
        last_heartbeat_at: None,
        last_heartbeat_ok: None,
        last_error: None,
    };
    dir.save_state(&state)
        .with_context(|| format!("cannot write {STATE_FILE}"))?;
    Ok(state)
}

/// The server's RFC 3339 expiry, or the certificate's own when the server
/// sent something unparsable (the certificate is the truth either way).
pub fn reported_expiry(expires_at: &str, cert: &CertificateInfo) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(expires_at)
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or(cert.not_after)
}

fn report(
    response: &EnrollResponse,
    state: &AgentState,
    facts: &HostFacts,
    output: EnrollOutput,
) -> Result<()> {
    match output {
        EnrollOutput::Text => {
            // stdout carries only the id, for scripts; the rest is for people.
            output::print(&response.device_id.to_string())?;
            eprintln!(
                "mobius-agent: enrolled {} as device {} (site {}); certificate valid until {}. Start the agent: systemctl enable --now mobius-agent",
                facts.hostname,
                response.device_id,
                response.site_id,
                state.certificate_expires_at.to_rfc3339(),
            );
        }
        EnrollOutput::Json => {
            let summary = EnrollSummary {
                device_id: response.device_id,
                tenant_id: response.tenant_id,
                site_id: response.site_id,
                expires_at: response.expires_at.clone(),
                heartbeat_interval_secs: response.heartbeat_interval_secs,
            };
            output::print(&serde_json::to_string_pretty(&summary)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Arc;

    use mobius_api::device::ENROLL_PATH;

    use super::*;
    use crate::cli::StateDirArg;
    use crate::state::NotEnrolled;
    use crate::testing::{EXPIRED_SECRET, FakeMobius, PingScript, TestCa, ping_ok};

    fn args(server: &str, token: &str, dir: &Path) -> EnrollArgs {
        EnrollArgs {
            server: server.into(),
            token: token.into(),
            state: StateDirArg {
                state_dir: dir.to_path_buf(),
            },
            host_fingerprint: Some("test-host-a".into()),
            output: EnrollOutput::Json,
        }
    }

    fn quiet_server() -> PingScript {
        Arc::new(|_| ping_ok(60, Utc::now() + chrono::TimeDelta::hours(1)))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn enrolling_stores_a_private_identity_for_the_pinned_server() {
        let server = FakeMobius::start(quiet_server()).await;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        enroll(args(&server.url, &server.token, &dir))
            .await
            .unwrap();

        let sent = server.requests_to(ENROLL_PATH);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].method, "POST");
        assert!(sent[0].client_certificate.is_none());
        let request: EnrollRequest = serde_json::from_str(&sent[0].body).unwrap();
        assert_eq!(request.host_fingerprint, "test-host-a");
        assert_eq!(request.token, server.token);
        assert!(!request.facts.hostname.is_empty());
        assert!(request.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));

        assert_eq!(mode(&dir), 0o700);
        for file in [KEY_FILE, CERT_FILE, CA_FILE, SERVER_CA_FILE, STATE_FILE] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        let state_dir = StateDir::new(&dir);
        let state = state_dir.load_state().unwrap();
        assert_eq!(state.device_id, server.device.device_id);
        assert_eq!(state.tenant_id, server.device.tenant_id);
        assert_eq!(state.site_id, server.device.site_id);
        assert_eq!(state.heartbeat_interval_secs, 60);
        assert_eq!(state.server_url, server.url);
        assert_eq!(state.last_heartbeat_ok, None);

        let key = DeviceKey::from_pem(&state_dir.read_string(KEY_FILE).unwrap()).unwrap();
        let cert = CertificateInfo::from_pem(&state_dir.read_string(CERT_FILE).unwrap()).unwrap();
        ensure_certificate_matches_key(&cert, &key).unwrap();
        assert_eq!(
            state_dir.read_string(SERVER_CA_FILE).unwrap(),
            server.server_ca.cert.pem()
        );
    }

    #[tokio::test]
    async fn a_server_not_matching_the_pin_gets_nothing() {
        let server = FakeMobius::start(quiet_server()).await;
        let token = EnrollmentToken {
            secret: "s".repeat(43),
            ca_pin_sha256: TestCa::new("impostor").pin(),
        };
        let root = tempfile::tempdir().unwrap();
        let err = enroll(args(&server.url, &token.to_string(), root.path()))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("the server's CA does not match the token's pin (expected sha256 "),
            "{message}"
        );
        assert!(message.ends_with("refusing to enroll"), "{message}");
        assert!(server.requests_to(ENROLL_PATH).is_empty());
        let state = StateDir::new(root.path()).load_state().unwrap_err();
        assert!(state.is::<NotEnrolled>());
    }

    #[tokio::test]
    async fn a_refused_token_reports_the_servers_reason_and_keeps_the_old_identity() {
        let server = FakeMobius::start(quiet_server()).await;
        let root = tempfile::tempdir().unwrap();
        enroll(args(&server.url, &server.token, root.path()))
            .await
            .unwrap();
        let dir = StateDir::new(root.path());
        let key_before = dir.read_string(KEY_FILE).unwrap();

        let expired = server.token.replacen(&"s".repeat(35), EXPIRED_SECRET, 1);
        let err = enroll(args(&server.url, &expired, root.path()))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrollment refused: the enrollment token has expired (UNAUTHENTICATED)"
        );
        assert_eq!(dir.read_string(KEY_FILE).unwrap(), key_before);
        assert_eq!(dir.load_state().unwrap().device_id, server.device.device_id);
    }

    #[tokio::test]
    async fn malformed_input_is_a_usage_error_and_contacts_no_one() {
        let server = FakeMobius::start(quiet_server()).await;
        let root = tempfile::tempdir().unwrap();
        let err = enroll(args(&server.url, "mobius1.short.abc", root.path()))
            .await
            .unwrap_err();
        assert!(err.is::<UsageError>(), "{err:#}");
        assert!(err.to_string().contains("malformed"), "{err}");

        let plain = server.url.replace("https://", "http://");
        let err = enroll(args(&plain, &server.token, root.path()))
            .await
            .unwrap_err();
        assert!(err.is::<UsageError>(), "{err:#}");
        assert!(server.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let token = EnrollmentToken {
            secret: "s".repeat(43),
            ca_pin_sha256: [1; 32],
        };
        let root = tempfile::tempdir().unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let err = enroll(args(&url, &token.to_string(), root.path()))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot reach the server at {url}: ")),
            "{err}"
        );
    }
}
