//! Enrolled agents at work: connecting (TCP, mutual TLS, first ping),
//! reconnecting all at once, heartbeating on a clock, and holding idle
//! connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use mobius_api::device::{PING_PATH, PingRequest, PingResponse};
use rand::Rng;
use rustls::ClientConfig;
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::identity::{Identity, simulated_facts};
use crate::report::{Phase, PhaseReport, Recorder, round};
use crate::tls::ServerTrust;
use crate::transport::{Connection, Failure, Target};
use crate::usage::Watch;

/// ±10%, as the agent jitters its interval.
const JITTER: f64 = 0.10;

/// Which request a beat is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// POST ping with a PingRequest, as mobius-agent sends it.
    Ping,
    /// HEAD ping: the cheapest authenticated request.
    Head,
}

/// When beats are due.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Every agent every `interval` ±10%, set by the clock.
    Open { interval: Duration },
    /// Each agent again as soon as its previous beat is answered.
    Closed,
}

/// One simulated agent and its connection, if it has one.
pub struct Agent {
    pub index: u64,
    pub(crate) identity: Identity,
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) connection: Option<Connection>,
}

impl Agent {
    fn is_connected(&self) -> bool {
        self.connection.as_ref().is_some_and(Connection::is_open)
    }

    /// Sends one beat, reconnecting first if the connection was lost (the
    /// reconnection is part of that beat, as it would be for the agent).
    /// `facts` makes it the agent's first ping, which reports its facts.
    async fn beat(&mut self, target: &Target, beat: Beat, facts: bool) -> Result<(), Failure> {
        if !self.is_connected() {
            self.connection = Some(target.connect(self.tls.clone()).await?);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err(Failure("connection: not connected".into()));
        };
        match beat {
            Beat::Head => connection.head(target, PING_PATH).await,
            Beat::Ping => {
                let request = PingRequest {
                    facts: facts.then(|| simulated_facts(&self.identity.hostname, self.index)),
                };
                let response: PingResponse = connection.post(target, PING_PATH, &request).await?;
                if response.interval_secs == 0 {
                    return Err(Failure("answer: interval of 0 seconds".into()));
                }
                Ok(())
            }
        }
    }

    /// [`Agent::beat`] within the request timeout; a failed beat drops the
    /// connection so the next one starts afresh.
    async fn timed_beat(
        &mut self,
        target: &Target,
        beat: Beat,
        facts: bool,
    ) -> Result<(), Failure> {
        let result =
            match tokio::time::timeout(target.timeout, self.beat(target, beat, facts)).await {
                Ok(result) => result,
                Err(_) => Err(Failure::timeout()),
            };
        if result.is_err() {
            self.connection = None;
        }
        result
    }
}

fn held(agents: &[Agent]) -> usize {
    agents.iter().filter(|a| a.is_connected()).count()
}

pub(crate) fn phase(
    name: &'static str,
    agents: &[Agent],
    elapsed: Duration,
    offered_per_s: Option<f64>,
    watch: Watch,
) -> Phase {
    let usage = watch.finish();
    Phase {
        name,
        agents: agents.len(),
        elapsed,
        offered_per_s,
        connections_held: held(agents),
        server: usage.server.map(Into::into),
        loadgen_cpu_seconds: usage.loadgen_cpu_seconds,
        machine_cpu_busy_fraction: usage.machine_cpu_busy_fraction,
    }
}

/// Runs `task` on every agent, at most `limit` at once, and gives the
/// agents back in their order.
pub(crate) async fn for_each_agent<F, Fut>(
    agents: Vec<Agent>,
    limit: Option<usize>,
    task: F,
) -> Vec<Agent>
where
    F: Fn(Agent) -> Fut,
    Fut: Future<Output = Agent> + Send + 'static,
{
    let permits = limit.map(|n| Arc::new(Semaphore::new(n.max(1))));
    let mut set = JoinSet::new();
    for agent in agents {
        let work = task(agent);
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = match &permits {
                Some(p) => p.clone().acquire_owned().await.ok(),
                None => None,
            };
            work.await
        });
    }
    let mut done = Vec::with_capacity(set.len());
    while let Some(joined) = set.join_next().await {
        if let Ok(agent) = joined {
            done.push(agent);
        }
    }
    done.sort_by_key(|a| a.index);
    done
}

/// The agents of `identities`, each with its mutual-TLS configuration made
/// (before any clock starts: it is the simulator's work, not the server's).
pub(crate) fn unconnected(trust: &ServerTrust, identities: &[Identity]) -> Result<Vec<Agent>> {
    identities
        .iter()
        .enumerate()
        .map(|(index, identity)| {
            Ok(Agent {
                index: index as u64,
                tls: trust.agent_config(identity.certificate.clone(), identity.key())?,
                identity: identity.clone(),
                connection: None,
            })
        })
        .collect()
}

/// The connect phase: every agent opens its connection and sends its
/// first request (a ping with facts, or a HEAD for the baseline), at most
/// `concurrency` at once. Latency here includes TCP and the TLS handshake.
pub async fn connect(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    first: Beat,
    concurrency: usize,
    server_pid: Option<u32>,
) -> Result<(Vec<Agent>, PhaseReport)> {
    let agents = unconnected(trust, identities)?;
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(server_pid);
    let started = Instant::now();
    let agents = for_each_agent(agents, Some(concurrency), |mut agent| {
        let target = target.clone();
        let recorder = recorder.clone();
        async move {
            let began = Instant::now();
            match agent.timed_beat(&target, first, first == Beat::Ping).await {
                Ok(()) => recorder.ok(began.elapsed()),
                Err(failure) => recorder.error(failure.0),
            }
            agent
        }
    })
    .await;
    let report = recorder.finish(phase("connect", &agents, started.elapsed(), None, watch));
    Ok((agents, report))
}

/// The reconnect phase: every agent at the same moment, as after a server
/// restart, opens its connection (TCP, the full TLS handshake) and sends its
/// first ping with its facts. All tasks are spawned first and released
/// together by a barrier, so no agent gets a head start; latency counts
/// from that release for every agent (as open-loop latency counts from when
/// a beat was due), so its maximum is how long until the last agent was
/// served, also reported as `last_served_secs`. Each agent tries once,
/// within the request timeout: a failure is an error by kind (a real agent
/// would retry it after its backoff).
pub async fn reconnect(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    server_pid: Option<u32>,
) -> Result<(Vec<Agent>, PhaseReport)> {
    let agents = unconnected(trust, identities)?;
    let recorder = Arc::new(Recorder::new()?);
    let release = Arc::new(Barrier::new(agents.len() + 1));
    let released = Arc::new(OnceLock::new());
    let last_served_micros = Arc::new(AtomicU64::new(0));
    let watch = Watch::start(server_pid);
    // Waits with the agents, so the start is known even with no agent.
    let start = {
        let (release, released) = (release.clone(), released.clone());
        tokio::spawn(async move {
            release.wait().await;
            *released.get_or_init(Instant::now)
        })
    };
    let agents = for_each_agent(agents, None, |mut agent| {
        let (target, recorder) = (target.clone(), recorder.clone());
        let (release, released) = (release.clone(), released.clone());
        let last_served_micros = last_served_micros.clone();
        async move {
            release.wait().await;
            let began = *released.get_or_init(Instant::now);
            match agent.timed_beat(&target, Beat::Ping, true).await {
                Ok(()) => {
                    let served = began.elapsed();
                    recorder.ok(served);
                    let micros = u64::try_from(served.as_micros()).unwrap_or(u64::MAX);
                    last_served_micros.fetch_max(micros, Ordering::Relaxed);
                }
                Err(failure) => recorder.error(failure.0),
            }
            agent
        }
    })
    .await;
    let started = start.await?;
    let mut report = recorder.finish(phase("reconnect", &agents, started.elapsed(), None, watch));
    report.last_served_secs = (report.ok > 0).then(|| {
        let micros = last_served_micros.load(Ordering::Relaxed);
        round(Duration::from_micros(micros).as_secs_f64(), 3)
    });
    Ok((agents, report))
}

/// The measured phase: beats for `duration`. Open loop: each agent's first
/// beat falls at a random point of its first interval, the next ones an
/// interval ±10% later, whatever happened to the previous one, and latency
/// counts from when a beat was due. Beats still due when the time is up
/// (the server fell behind) are counted as errors, never silently dropped.
pub async fn run(
    target: Arc<Target>,
    agents: Vec<Agent>,
    beat: Beat,
    pace: Pace,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<(Vec<Agent>, PhaseReport)> {
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(server_pid);
    let started = Instant::now();
    let end = started + duration;
    let agents = for_each_agent(agents, None, |mut agent| {
        let target = target.clone();
        let recorder = recorder.clone();
        async move {
            let mut due = match pace {
                Pace::Open { interval } => started + interval.mul_f64(rand::rng().random::<f64>()),
                Pace::Closed => started,
            };
            while due < end {
                // An answer that came after the end leaves the beats due
                // meanwhile unsent (counted below); a beat due before the
                // end is sent even if the timer wakes a little after it.
                if Instant::now() >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                match agent.timed_beat(&target, beat, false).await {
                    Ok(()) => recorder.ok(due.elapsed()),
                    Err(failure) => recorder.error(failure.0),
                }
                due = match pace {
                    Pace::Open { interval } => {
                        due + interval
                            .mul_f64(rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER))
                    }
                    Pace::Closed => Instant::now(),
                };
            }
            if let Pace::Open { interval } = pace {
                while due < end {
                    recorder.error("not sent: the server fell behind the schedule");
                    due += interval;
                }
            }
            agent
        }
    })
    .await;
    let offered = match pace {
        Pace::Open { interval } => Some(agents.len() as f64 / interval.as_secs_f64()),
        Pace::Closed => None,
    };
    let name = match beat {
        Beat::Ping => "heartbeat",
        Beat::Head => "baseline",
    };
    let report = recorder.finish(phase(name, &agents, started.elapsed(), offered, watch));
    Ok((agents, report))
}

/// Holds the connections idle for `hold`, then reports how many are still
/// open and the server's memory meanwhile.
pub async fn hold(
    agents: Vec<Agent>,
    hold: Duration,
    server_pid: Option<u32>,
) -> Result<(Vec<Agent>, PhaseReport)> {
    let recorder = Recorder::new()?;
    let watch = Watch::start(server_pid);
    let started = Instant::now();
    let opened = held(&agents);
    tokio::time::sleep(hold).await;
    for _ in held(&agents)..opened {
        recorder.error("connection closed while idle");
    }
    let report = recorder.finish(phase("idle", &agents, started.elapsed(), None, watch));
    Ok((agents, report))
}
