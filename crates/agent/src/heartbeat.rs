//! `mobius-agent run`: heartbeat, renew, back off, and stop for good only
//! when the server says this identity is finished.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use mobius_api::device::{HostFacts, PingRequest, PingResponse};
use rand::Rng;
use reqwest::{StatusCode, Url};

use crate::cli::RunArgs;
use crate::error::NeedsReenrollment;
use crate::facts;
use crate::identity::{CertificateInfo, DeviceKey, certificates_from_pem};
use crate::renewal::{self, RenewalError};
use crate::state::{AgentState, CERT_FILE, KEY_FILE, SERVER_CA_FILE, StateDir};
use crate::tls;
use crate::transport::{CallError, DeviceClient};

/// No retry waits longer than this, however long the outage: an agent
/// should notice a recovered server within minutes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Full jitter can draw almost zero; a floor keeps one agent from spinning
/// against a server that refuses connections instantly.
const MIN_RETRY: Duration = Duration::from_millis(500);
/// ±10%: spreads agents that started together (a rack after a power cut)
/// so their heartbeats do not arrive in lockstep.
const JITTER: f64 = 0.10;
/// Facts are resent at least this often even when nothing meaningful
/// changed, so the server's uptime and free space do not go stale forever.
const FACTS_REFRESH: Duration = Duration::from_secs(3600);

/// How fast to heartbeat and how long to wait when the server is away.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    pub max_interval: Option<Duration>,
    pub max_backoff: Duration,
}

impl Pacing {
    /// The server's interval, at least 1 s, capped by `--max-interval-secs`.
    pub fn interval(&self, server_secs: u64) -> Duration {
        let interval = Duration::from_secs(server_secs.max(1));
        self.max_interval.map_or(interval, |max| interval.min(max))
    }
}

/// `interval` ±10%, uniformly.
pub fn jittered(interval: Duration, rng: &mut impl Rng) -> Duration {
    interval.mul_f64(rng.random_range(1.0 - JITTER..=1.0 + JITTER))
}

/// The longest wait after `failures` consecutive failures: `base` doubling
/// with each one, capped.
pub fn backoff_ceiling(base: Duration, failures: u32, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    base.max(Duration::from_secs(1))
        .saturating_mul(1 << doublings)
        .min(cap)
}

/// Exponential backoff with full jitter (uniform in `[0, ceiling]`), so
/// agents that lost the server at the same moment do not return together.
pub fn backoff(base: Duration, failures: u32, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = backoff_ceiling(base, failures, cap);
    ceiling
        .mul_f64(rng.random_range(0.0..=1.0))
        .max(MIN_RETRY.min(ceiling))
}

/// The enrolled device at run time.
struct Agent {
    dir: StateDir,
    state: AgentState,
    server: Url,
    key: DeviceKey,
    certificate: CertificateInfo,
    client: DeviceClient,
    pacing: Pacing,
    /// Facts as last accepted by the server, and when.
    facts_sent: Option<(HostFacts, Instant)>,
    failures: u32,
    /// Runs plans; fed by the push stream and by ping answers.
    work: Option<crate::work::WorkHandle>,
}

/// What one heartbeat attempt leads to.
enum Beat {
    Healthy { interval: Duration },
    Failed,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM")?;
    let pacing = Pacing {
        max_interval: args.max_interval_secs.map(Duration::from_secs),
        max_backoff: Duration::from_secs(args.max_backoff_secs).min(MAX_BACKOFF),
    };
    let agent = Agent::load(StateDir::new(&args.state.state_dir), pacing)?;
    let portal_file = crate::portal::PortalFile::new(&agent.dir, args.portal.portal_file);
    tokio::spawn(crate::portal::keep_fresh(agent.dir.clone(), portal_file));
    agent.run(shutdown).await
}

/// Resolves on SIGTERM (systemd stopping the unit) or Ctrl-C.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = interrupt.recv() => tracing::info!("interrupted, stopping"),
        }
    })
}

impl Agent {
    fn load(dir: StateDir, pacing: Pacing) -> Result<Agent> {
        let state = dir.load_state()?;
        let server = Url::parse(&state.server_url).with_context(|| {
            format!(
                "state.json has an invalid server URL {:?}",
                state.server_url
            )
        })?;
        let key = DeviceKey::from_pem(&dir.read_string(KEY_FILE)?)?;
        let certificate = CertificateInfo::from_pem(&dir.read_string(CERT_FILE)?)
            .with_context(|| format!("{CERT_FILE} is unreadable"))?;
        if certificate.public_key_der != key.public_key_der() {
            return Err(NeedsReenrollment::Inconsistent {
                reason: format!("{KEY_FILE} and {CERT_FILE} do not belong together"),
            }
            .into());
        }
        let client = connect(&dir, &server, &key)?;
        Ok(Agent {
            dir,
            state,
            server,
            key,
            certificate,
            client,
            pacing,
            facts_sent: None,
            failures: 0,
            work: None,
        })
    }

    async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        tracing::info!(
            device_id = %self.state.device_id,
            server = %self.server,
            certificate_expires_at = %self.certificate.not_after.to_rfc3339(),
            "agent started"
        );
        self.work = Some(crate::work::start(
            self.dir.clone(),
            self.state.tenant_id,
            self.state.device_id,
        )?);
        loop {
            // Both the request and the wait give way to a stop signal, so
            // `systemctl stop` never waits out a timeout.
            let beat = tokio::select! {
                () = &mut shutdown => return Ok(()),
                beat = self.beat() => beat?,
            };
            let delay = match beat {
                Beat::Healthy { interval } => {
                    self.failures = 0;
                    jittered(interval, &mut rand::rng())
                }
                Beat::Failed => {
                    self.failures = self.failures.saturating_add(1);
                    let base = self.pacing.interval(self.state.heartbeat_interval_secs);
                    let delay = backoff(
                        base,
                        self.failures,
                        self.pacing.max_backoff,
                        &mut rand::rng(),
                    );
                    tracing::info!(
                        failures = self.failures,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "will retry"
                    );
                    delay
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One round: renew if due, then ping. Returns `Err` only when the
    /// agent must stop.
    async fn beat(&mut self) -> Result<Beat> {
        let facts = tokio::task::spawn_blocking(facts::collect)
            .await
            .context("collecting host facts failed")?;

        if renewal::is_due(Utc::now(), self.state.renew_after, &self.certificate) {
            self.renew(&facts.hostname).await?;
        }

        let request = PingRequest {
            facts: self.facts_to_send(&facts).then(|| facts.clone()),
        };
        let sent_facts = request.facts.is_some();
        let result = self.client.ping(&request).await;
        let now = Utc::now();
        self.state.last_heartbeat_at = Some(now);
        match result {
            Ok(response) => {
                if sent_facts {
                    self.facts_sent = Some((facts, Instant::now()));
                }
                let interval = self.accept(&response);
                self.state.last_heartbeat_ok = Some(true);
                self.state.last_error = None;
                self.save();
                tracing::debug!(
                    sent_facts,
                    interval_secs = interval.as_secs(),
                    "heartbeat ok"
                );
                if self.failures > 0 {
                    tracing::info!("server reachable again");
                }
                Ok(Beat::Healthy { interval })
            }
            Err(err) => {
                self.state.last_heartbeat_ok = Some(false);
                self.state.last_error = Some(err.to_string());
                if let Some(stop) = stop_reason(&err) {
                    self.state.last_error = Some(stop.to_string());
                    self.save();
                    return Err(stop.into());
                }
                self.save();
                tracing::warn!(error = %err, server = %self.server, "heartbeat failed");
                Ok(Beat::Failed)
            }
        }
    }

    /// Adopts the server's interval and renewal time.
    fn accept(&mut self, response: &PingResponse) -> Duration {
        self.state.heartbeat_interval_secs = response.interval_secs.max(1);
        self.state.renew_after = match DateTime::parse_from_rfc3339(&response.renew_after) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(err) => {
                tracing::warn!(renew_after = %response.renew_after, %err,
                    "the server sent an unreadable renew_after; renewing at half-life");
                None
            }
        };
        if let Some(work) = &self.work {
            work.deliver(&response.work);
        }
        self.pacing.interval(self.state.heartbeat_interval_secs)
    }

    fn facts_to_send(&self, current: &HostFacts) -> bool {
        match &self.facts_sent {
            None => true,
            Some((previous, at)) => {
                facts::changed_meaningfully(previous, current) || at.elapsed() >= FACTS_REFRESH
            }
        }
    }

    /// Renews and switches to the new certificate. A renewal that fails for
    /// a passing reason is logged and retried on the next round: the old
    /// certificate still has half its life left.
    async fn renew(&mut self, hostname: &str) -> Result<()> {
        tracing::info!(
            not_after = %self.certificate.not_after.to_rfc3339(),
            "renewing the device certificate"
        );
        match renewal::renew(&self.client, &self.key, hostname, &self.dir).await {
            Ok(renewed) => {
                self.certificate = renewed.certificate;
                self.state.certificate_expires_at = renewed.expires_at;
                self.state.last_renewed_at = Some(Utc::now());
                // The old renew_after is in the past and would ask again at
                // once; the next ping brings the new one.
                self.state.renew_after = None;
                self.save();
                self.client = connect(&self.dir, &self.server, &self.key)?;
                tracing::info!(
                    not_after = %self.certificate.not_after.to_rfc3339(),
                    "certificate renewed"
                );
                Ok(())
            }
            Err(RenewalError::Call(err)) => {
                if let Some(stop) = stop_reason(&err) {
                    self.state.last_heartbeat_ok = Some(false);
                    self.state.last_error = Some(stop.to_string());
                    self.save();
                    return Err(stop.into());
                }
                tracing::warn!(error = %err, "certificate renewal failed; will retry");
                Ok(())
            }
            Err(RenewalError::Local(err)) => {
                tracing::warn!(error = %format!("{err:#}"), "certificate renewal failed; will retry");
                Ok(())
            }
        }
    }

    /// Saves state.json; a full disk must not stop the heartbeat itself.
    fn save(&self) {
        if let Err(err) = self.dir.save_state(&self.state) {
            tracing::error!(error = %format!("{err:#}"), "cannot save state.json");
        }
    }
}

/// The mutual-TLS client from the files on disk.
pub(crate) fn connect(dir: &StateDir, server: &Url, key: &DeviceKey) -> Result<DeviceClient> {
    let server_ca = certificates_from_pem(&dir.read_string(SERVER_CA_FILE)?)
        .with_context(|| format!("{SERVER_CA_FILE} is unreadable"))?;
    let chain = certificates_from_pem(&dir.read_string(CERT_FILE)?)
        .with_context(|| format!("{CERT_FILE} is unreadable"))?;
    let leaf = chain.into_iter().take(1).collect();
    let config = tls::mutual_tls_config(&server_ca, leaf, key.to_rustls()?)?;
    DeviceClient::new(server, config)
}

/// The answers that end the agent: 403 (revoked or deleted) and 401 or a
/// handshake refusal of our certificate (expired, unknown). Retrying cannot
/// change them, and the unit must not restart into them (exit 3).
fn stop_reason(err: &CallError) -> Option<NeedsReenrollment> {
    match err {
        CallError::Refused { status, .. } if *status == StatusCode::FORBIDDEN => {
            Some(NeedsReenrollment::Revoked)
        }
        CallError::Refused {
            status, message, ..
        } if *status == StatusCode::UNAUTHORIZED => Some(NeedsReenrollment::CertificateRejected {
            reason: message.clone(),
        }),
        CallError::CertificateRejected(reason) => Some(NeedsReenrollment::CertificateRejected {
            reason: reason.clone(),
        }),
        CallError::Refused { .. } | CallError::Unreachable(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use chrono::TimeDelta;
    use mobius_api::device::{PING_PATH, RENEW_PATH};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::cli::{EnrollArgs, EnrollOutput, StateDirArg};
    use crate::testing::{FakeMobius, PingScript, error_body, ping_ok};

    const FAST: Pacing = Pacing {
        max_interval: Some(Duration::from_millis(200)),
        max_backoff: Duration::from_secs(1),
    };

    async fn enrolled(script: PingScript) -> (FakeMobius, tempfile::TempDir) {
        let server = FakeMobius::start(script).await;
        let root = tempfile::tempdir().unwrap();
        crate::enrollment::enroll(EnrollArgs {
            server: server.url.clone(),
            token: server.token.clone(),
            state: StateDirArg {
                state_dir: root.path().to_path_buf(),
            },
            host_fingerprint: Some("heartbeat-host".into()),
            output: EnrollOutput::Json,
        })
        .await
        .unwrap();
        (server, root)
    }

    fn load(dir: &Path, pacing: Pacing) -> Agent {
        Agent::load(StateDir::new(dir), pacing).unwrap()
    }

    fn ping_bodies(server: &FakeMobius) -> Vec<PingRequest> {
        server
            .requests_to(PING_PATH)
            .iter()
            .map(|request| serde_json::from_str(&request.body).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_agent_heartbeats_renews_when_asked_and_stops_when_revoked() {
        let script: PingScript = Arc::new(|n| match n {
            // The server wants a renewal now (its CA is being retired).
            0 => ping_ok(60, Utc::now() - TimeDelta::seconds(1)),
            1 | 2 => ping_ok(60, Utc::now() + TimeDelta::minutes(30)),
            _ => error_body(403, "FORBIDDEN", "device revoked"),
        });
        let (server, root) = enrolled(script).await;
        let cert_before = StateDir::new(root.path()).read_string(CERT_FILE).unwrap();

        let started = Instant::now();
        let err = load(root.path(), FAST)
            .run(std::future::pending())
            .await
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(NeedsReenrollment::Revoked)),
            "{err:#}"
        );
        assert_eq!(
            err.to_string(),
            "this device was revoked by an administrator; re-enroll with a new token to manage it again"
        );
        assert!(started.elapsed() < Duration::from_secs(10));

        // Facts on the first ping only: nothing meaningful changed since.
        let pings = ping_bodies(&server);
        assert_eq!(pings.len(), 4);
        assert!(pings[0].facts.is_some());
        assert!(pings[1..].iter().all(|ping| ping.facts.is_none()));
        assert!(
            server
                .requests_to(PING_PATH)
                .iter()
                .all(|r| r.client_certificate.is_some())
        );

        // One renewal, over mTLS, with the same key; the agent then used
        // the new certificate.
        let renewals = server.requests_to(RENEW_PATH);
        assert_eq!(renewals.len(), 1);
        let dir = StateDir::new(root.path());
        let cert_after = dir.read_string(CERT_FILE).unwrap();
        assert_ne!(cert_after, cert_before);
        let key = DeviceKey::from_pem(&dir.read_string(KEY_FILE).unwrap()).unwrap();
        let renewed = CertificateInfo::from_pem(&cert_after).unwrap();
        assert_eq!(renewed.public_key_der, key.public_key_der());
        let last_ping = server.requests_to(PING_PATH).pop().unwrap();
        let presented = last_ping.client_certificate.unwrap();
        assert_eq!(
            CertificateInfo::from_der(&presented).unwrap(),
            renewed,
            "the pings after renewal present the new certificate"
        );

        let state = dir.load_state().unwrap();
        assert_eq!(state.last_heartbeat_ok, Some(false));
        assert!(state.last_error.unwrap().contains("revoked"));
        assert!(state.last_renewed_at.is_some());
        assert!(state.renew_after.is_some());
    }

    #[tokio::test]
    async fn a_rejected_certificate_stops_the_agent() {
        let script: PingScript =
            Arc::new(|_| error_body(401, "UNAUTHENTICATED", "certificate expired"));
        let (_server, root) = enrolled(script).await;
        let err = load(root.path(), FAST)
            .run(std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server no longer accepts this device's certificate (certificate expired); re-enroll with a new token"
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_recorded() {
        let script: PingScript = Arc::new(|n| match n {
            0 | 1 => error_body(503, "INTERNAL", "database unavailable"),
            _ => ping_ok(60, Utc::now() + TimeDelta::minutes(30)),
        });
        let (server, root) = enrolled(script).await;
        let dir = StateDir::new(root.path());
        let mut agent = load(root.path(), FAST);

        assert!(matches!(agent.beat().await.unwrap(), Beat::Failed));
        let state = dir.load_state().unwrap();
        assert_eq!(state.last_heartbeat_ok, Some(false));
        assert!(
            state
                .last_error
                .as_deref()
                .unwrap()
                .contains("database unavailable"),
            "{state:?}"
        );
        assert!(state.last_heartbeat_at.is_some());

        assert!(matches!(agent.beat().await.unwrap(), Beat::Failed));
        assert!(matches!(agent.beat().await.unwrap(), Beat::Healthy { .. }));
        let state = dir.load_state().unwrap();
        assert_eq!(state.last_heartbeat_ok, Some(true));
        assert_eq!(state.last_error, None);
        // No ping succeeded before, so all three carried the facts.
        assert!(ping_bodies(&server).iter().all(|ping| ping.facts.is_some()));
    }

    #[tokio::test]
    async fn a_stop_signal_ends_the_wait_at_once() {
        let script: PingScript = Arc::new(|_| ping_ok(3600, Utc::now() + TimeDelta::hours(1)));
        let (_server, root) = enrolled(script).await;
        let agent = load(
            root.path(),
            Pacing {
                max_interval: None,
                max_backoff: MAX_BACKOFF,
            },
        );
        let started = Instant::now();
        agent
            .run(tokio::time::sleep(Duration::from_millis(300)))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn renewal_happens_at_half_life_without_any_ping() {
        // The server is down for pings, but renewal still goes through.
        let script: PingScript = Arc::new(|_| error_body(502, "HTTP 502", "bad gateway"));
        let (server, root) = enrolled(script).await;
        let mut agent = load(root.path(), FAST);
        agent.certificate.not_before = Utc::now() - TimeDelta::hours(2);
        agent.certificate.not_after = Utc::now() + TimeDelta::hours(1);
        assert!(matches!(agent.beat().await.unwrap(), Beat::Failed));
        assert_eq!(server.requests_to(RENEW_PATH).len(), 1);
        assert!(!renewal::is_due(Utc::now(), None, &agent.certificate));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut rng = StdRng::seed_from_u64(7);
        let interval = Duration::from_secs(60);
        let (mut low, mut high) = (interval, interval);
        for _ in 0..10_000 {
            let delay = jittered(interval, &mut rng);
            assert!(delay >= Duration::from_secs(54), "{delay:?}");
            assert!(delay <= Duration::from_secs(66), "{delay:?}");
            low = low.min(delay);
            high = high.max(delay);
        }
        // It really spreads, both ways.
        assert!(low < Duration::from_secs(55) && high > Duration::from_secs(65));
    }

    #[test]
    fn backoff_grows_and_never_exceeds_five_minutes() {
        let base = Duration::from_secs(1);
        let ceilings: Vec<_> = (1..=12)
            .map(|n| backoff_ceiling(base, n, MAX_BACKOFF))
            .collect();
        assert_eq!(ceilings[0], Duration::from_secs(1));
        assert_eq!(ceilings[1], Duration::from_secs(2));
        assert_eq!(ceilings[5], Duration::from_secs(32));
        assert!(ceilings.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(ceilings[11], MAX_BACKOFF);

        let mut rng = StdRng::seed_from_u64(1);
        for failures in [1, 2, 5, 9, 10, 40, u32::MAX] {
            for base in [
                Duration::ZERO,
                Duration::from_secs(60),
                Duration::from_secs(3600),
            ] {
                let delay = backoff(base, failures, MAX_BACKOFF, &mut rng);
                assert!(delay <= MAX_BACKOFF, "{failures} {base:?} {delay:?}");
                assert!(delay >= MIN_RETRY, "{failures} {base:?} {delay:?}");
            }
        }
        // With the server's 60 s interval as the base, the 4th failure is capped.
        assert_eq!(
            backoff_ceiling(Duration::from_secs(60), 4, MAX_BACKOFF),
            MAX_BACKOFF
        );
        // A lower cap (tests) holds too.
        let cap = Duration::from_secs(2);
        assert!(backoff(base, 30, cap, &mut rng) <= cap);
    }

    #[test]
    fn the_interval_knob_caps_the_server_interval() {
        let pacing = Pacing {
            max_interval: Some(Duration::from_secs(1)),
            max_backoff: MAX_BACKOFF,
        };
        assert_eq!(pacing.interval(60), Duration::from_secs(1));
        let free = Pacing {
            max_interval: None,
            ..pacing
        };
        assert_eq!(free.interval(60), Duration::from_secs(60));
        assert_eq!(free.interval(0), Duration::from_secs(1));
    }

    #[test]
    fn only_refusals_of_the_identity_stop_the_agent() {
        let refused = |status: StatusCode| CallError::Refused {
            status,
            code: "X".into(),
            message: "m".into(),
        };
        assert!(matches!(
            stop_reason(&refused(StatusCode::FORBIDDEN)),
            Some(NeedsReenrollment::Revoked)
        ));
        assert!(matches!(
            stop_reason(&refused(StatusCode::UNAUTHORIZED)),
            Some(NeedsReenrollment::CertificateRejected { .. })
        ));
        assert!(stop_reason(&refused(StatusCode::TOO_MANY_REQUESTS)).is_none());
        assert!(stop_reason(&CallError::Unreachable("refused".into())).is_none());
    }
}
