//! The enroll phase: workers enroll new agents back to back, each on a new
//! TLS connection with a fresh key and CSR, exactly as `mobius-agent
//! enroll` does on a new host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mobius_api::device::{ENROLL_PATH, EnrollRequest, EnrollResponse};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::identity::{Identity, NewAgent, simulated_facts};
use crate::report::{Phase, PhaseReport, Recorder};
use crate::tls::ServerTrust;
use crate::transport::{Failure, Target};
use crate::usage::Watch;

/// When the phase stops: after `count` enrollments, after `duration`, or
/// whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// What an enrollment phase produced.
pub struct Enrolled {
    pub agents: Vec<Identity>,
    /// The server CA from the answers, to trust for mutual TLS from now on.
    pub server_ca_pem: Option<String>,
    pub report: PhaseReport,
}

/// Shared by the workers.
struct Work {
    target: Arc<Target>,
    tls: Arc<ClientConfig>,
    token: String,
    run: Uuid,
    /// Facts and host names are numbered from here (agents already in the
    /// identities file keep theirs).
    first_index: u64,
    started: AtomicU64,
    stop: Stop,
    deadline: Option<Instant>,
    recorder: Recorder,
    enrolled: Mutex<Vec<Identity>>,
    server_ca_pem: Mutex<Option<String>>,
}

impl Work {
    /// The next agent number, or `None` when the phase is over.
    fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        match self.stop.count {
            Some(count) if n >= count => None,
            _ => Some(n),
        }
    }

    async fn enroll_one(&self, n: u64) -> Result<Identity, Failure> {
        let index = self.first_index + n;
        // Key generation is the agent's own work, before it reaches the
        // server: not part of the measured latency.
        let agent = NewAgent::generate(self.run, index)
            .map_err(|e| Failure(format!("key generation: {e}")))?;
        let request = EnrollRequest {
            token: self.token.clone(),
            csr_pem: agent.csr_pem.clone(),
            host_fingerprint: agent.host_fingerprint.clone(),
            facts: simulated_facts(&agent.hostname, index),
        };
        let started = Instant::now();
        let call = async {
            let mut connection = self.target.connect(self.tls.clone()).await?;
            connection
                .post::<_, EnrollResponse>(&self.target, ENROLL_PATH, &request)
                .await
        };
        let response = tokio::time::timeout(self.target.timeout, call)
            .await
            .map_err(|_| Failure::timeout())??;
        let certificate = CertificateDer::from_pem_slice(response.certificate_pem.as_bytes())
            .map_err(|_| Failure("answer: unreadable certificate".into()))?;
        self.recorder.ok(started.elapsed());
        if let Ok(mut ca) = self.server_ca_pem.lock()
            && ca.is_none()
        {
            *ca = Some(response.server_ca_pem.clone());
        }
        Ok(Identity {
            device_id: response.device_id,
            hostname: agent.hostname,
            certificate,
            key: agent.key.serialize_der(),
        })
    }

    async fn worker(self: Arc<Self>) {
        while let Some(n) = self.claim() {
            match self.enroll_one(n).await {
                Ok(identity) => {
                    if let Ok(mut enrolled) = self.enrolled.lock() {
                        enrolled.push(identity);
                    }
                }
                Err(failure) => self.recorder.error(failure.0),
            }
        }
    }
}

/// Enrolls agents with `concurrency` workers until `stop`.
///
/// With a pinned trust (no server CA known yet), the first agent enrolls
/// alone, trusting the pin; the others then trust the server CA it
/// received, as an agent does after enrolling.
pub async fn enroll(
    target: Arc<Target>,
    trust: &ServerTrust,
    token: &str,
    first_index: u64,
    stop: Stop,
    concurrency: usize,
    server_pid: Option<u32>,
) -> Result<Enrolled> {
    let watch = Watch::start(server_pid);
    let started = Instant::now();
    let mut work = Work {
        target,
        tls: trust.enrollment_config()?,
        token: token.to_owned(),
        run: Uuid::new_v4(),
        first_index,
        started: AtomicU64::new(0),
        stop,
        deadline: stop.duration.map(|d| started + d),
        recorder: Recorder::new()?,
        enrolled: Mutex::new(Vec::new()),
        server_ca_pem: Mutex::new(None),
    };
    if matches!(trust, ServerTrust::Pinned(_))
        && let Some(n) = work.claim()
    {
        let first = work
            .enroll_one(n)
            .await
            .map_err(|failure| anyhow::anyhow!("the first enrollment failed: {failure}"))?;
        work.enrolled
            .get_mut()
            .map_err(|_| anyhow::anyhow!("enrollment state poisoned"))?
            .push(first);
        let ca = work
            .server_ca_pem
            .get_mut()
            .ok()
            .and_then(|ca| ca.clone())
            .context("the server sent no server CA")?;
        work.tls = ServerTrust::from_ca_pem(&ca)
            .context("the server CA from the enrollment answer")?
            .enrollment_config()?;
    }
    let work = Arc::new(work);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        workers.spawn(work.clone().worker());
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let usage = watch.finish();
    let report = work.recorder.finish(Phase {
        name: "enroll",
        agents: work.enrolled.lock().map(|e| e.len()).unwrap_or(0),
        elapsed,
        offered_per_s: None,
        connections_held: 0,
        server: usage.server.map(Into::into),
        loadgen_cpu_seconds: usage.loadgen_cpu_seconds,
        machine_cpu_busy_fraction: usage.machine_cpu_busy_fraction,
    });
    let Ok(work) = Arc::try_unwrap(work) else {
        bail!("an enrollment worker outlived the phase");
    };
    Ok(Enrolled {
        agents: work.enrolled.into_inner().unwrap_or_default(),
        server_ca_pem: work.server_ca_pem.into_inner().unwrap_or_default(),
        report,
    })
}
