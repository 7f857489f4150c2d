//! `mobius-loadgen`: simulated agents against a real Mobius server.

mod admin;
mod cli;
mod enroll;
mod fanout;
mod heartbeat;
mod identity;
mod live_query;
mod osquery;
mod report;
mod streams;
mod tls;
mod transport;
mod usage;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use mobius_api::device::EnrollmentToken;

use crate::cli::{
    Cli, Command, Common, ConnectArgs, HeartbeatArgs, OsqueryPollArgs, PlanFanoutArgs,
    ReconnectArgs, StreamsArgs,
};
use crate::enroll::Stop;
use crate::heartbeat::{Beat, Pace};
use crate::identity::Fleet;
use crate::report::Report;
use crate::tls::ServerTrust;
use crate::transport::Target;

/// The run completed but some requests failed.
const EXIT_FAILED_REQUESTS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mobius-loadgen: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mobius-loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // reqwest (admin API) and the device connections each name their
    // provider, but a process default keeps any other user from panicking.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let common = cli.common;
    if let Command::Token = cli.command {
        let created = admin::create_token(&common.admin).await?;
        if common.json {
            println!("{}", serde_json::to_string_pretty(&created)?);
        } else {
            println!("{}", created.token);
        }
        return Ok(ExitCode::SUCCESS);
    }

    let descriptors = raise_descriptor_limit();
    let target = Arc::new(
        Target::resolve(
            &common.server,
            common.source_ips,
            Duration::from_secs(common.timeout.max(1)),
        )
        .await?,
    );
    let mut run = Run {
        fleet: match &common.identities {
            Some(path) => Fleet::load(path, &target.url)?,
            None => Fleet::default(),
        },
        common,
        target,
        report: Report::default(),
    };
    run.report.server = run.target.url.clone();

    match cli.command {
        Command::Token => {}
        Command::Enroll(args) => {
            let stop = Stop {
                count: args.count,
                duration: args.duration.map(Duration::from_secs_f64),
            };
            run.enroll(stop, args.concurrency).await?;
        }
        Command::Heartbeat(args) => run.heartbeat(&args, Beat::Ping, descriptors).await?,
        Command::Baseline(args) => run.heartbeat(&args, Beat::Head, descriptors).await?,
        Command::Connect(args) => run.connect(&args, descriptors).await?,
        Command::Reconnect(args) => run.reconnect(&args, descriptors).await?,
        Command::PlanFanout(args) => run.plan_fanout(&args, descriptors).await?,
        Command::LiveQuery(args) => run.live_query(&args, descriptors).await?,
        Command::Streams(args) => run.streams(&args, descriptors).await?,
        Command::OsqueryPoll(args) => run.osquery_poll(&args).await?,
    }

    if run.common.json {
        println!("{}", run.report.to_json());
    } else {
        print!("{}", run.report.to_table());
    }
    Ok(if run.report.failed_requests() > 0 {
        ExitCode::from(EXIT_FAILED_REQUESTS)
    } else {
        ExitCode::SUCCESS
    })
}

/// Raises the soft limit on open files to the hard limit: every agent
/// holds a socket. Returns the limit now in force.
fn raise_descriptor_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            eprintln!("mobius-loadgen: cannot raise the open-file limit: {err}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Sockets aside, the simulator needs a few descriptors of its own.
const SPARE_DESCRIPTORS: u64 = 64;

fn check_descriptors(agents: usize, limit: u64) -> Result<()> {
    if agents as u64 + SPARE_DESCRIPTORS > limit {
        bail!(
            "{agents} connections need about {} open files, but this process may open {limit} \
             (the hard limit, `ulimit -Hn`): raise it, or run fewer agents per process",
            agents as u64 + SPARE_DESCRIPTORS
        );
    }
    Ok(())
}

struct Run {
    common: Common,
    target: Arc<Target>,
    fleet: Fleet,
    report: Report,
}

impl Run {
    /// How to trust the device listener: --server-ca, else the CA the
    /// identities file recorded, else the token's pin.
    fn trust(&self, token: Option<&str>) -> Result<ServerTrust> {
        if let Some(path) = &self.common.server_ca {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading --server-ca {}", path.display()))?;
            return ServerTrust::from_ca_pem(&pem)
                .with_context(|| format!("--server-ca {}", path.display()));
        }
        if let Some(pem) = &self.fleet.server_ca_pem {
            return ServerTrust::from_ca_pem(pem).context("the server CA in --identities");
        }
        let token = token.context(
            "cannot trust the server yet: give --server-ca, an --identities file from an \
             earlier run, or an enrollment token (its CA pin)",
        )?;
        let parsed = EnrollmentToken::parse(token)
            .context("the enrollment token is malformed (expected mobius1.<secret>.<pin>)")?;
        Ok(ServerTrust::pinned(parsed.ca_pin_sha256))
    }

    async fn token(&self) -> Result<String> {
        match &self.common.token {
            Some(token) => Ok(token.trim().to_owned()),
            None => Ok(admin::create_token(&self.common.admin).await?.token),
        }
    }

    /// Enrolls new agents into the fleet and saves it.
    async fn enroll(&mut self, stop: Stop, concurrency: usize) -> Result<()> {
        let token = self.token().await?;
        let trust = self.trust(Some(&token))?;
        eprintln!("mobius-loadgen: enrolling ({stop:?}, {concurrency} at once)");
        let enrolled = enroll::enroll(
            self.target.clone(),
            &trust,
            &token,
            self.fleet.agents.len() as u64,
            stop,
            concurrency,
            self.common.server_pid,
        )
        .await?;
        self.fleet.agents.extend(enrolled.agents);
        if self.fleet.server_ca_pem.is_none() {
            self.fleet.server_ca_pem = enrolled.server_ca_pem;
        }
        self.report.phases.push(enrolled.report);
        if let Some(path) = &self.common.identities {
            self.fleet.save(path, &self.target.url)?;
        }
        Ok(())
    }

    /// Makes sure the fleet has `agents` identities, enrolling the rest.
    async fn ensure_agents(&mut self, agents: usize, concurrency: usize) -> Result<()> {
        let missing = agents.saturating_sub(self.fleet.agents.len());
        if missing > 0 {
            self.enroll(
                Stop {
                    count: Some(missing as u64),
                    duration: None,
                },
                concurrency,
            )
            .await?;
        }
        if self.fleet.agents.len() < agents {
            bail!(
                "only {} of {agents} agents could be enrolled (see the errors above)",
                self.fleet.agents.len()
            );
        }
        Ok(())
    }

    /// What every scenario on mutual TLS needs first: room for `agents`
    /// connections, that many enrolled agents, and the server's trust.
    async fn prepare(
        &mut self,
        agents: usize,
        enroll_concurrency: usize,
        descriptors: u64,
    ) -> Result<ServerTrust> {
        check_descriptors(agents, descriptors)?;
        self.ensure_agents(agents, enroll_concurrency).await?;
        self.trust(None)
    }

    async fn heartbeat(
        &mut self,
        args: &HeartbeatArgs,
        beat: Beat,
        descriptors: u64,
    ) -> Result<()> {
        let pace = if args.closed_loop {
            Pace::Closed
        } else {
            let interval = match args.rate {
                Some(rate) if rate > 0.0 => args.agents as f64 / rate,
                Some(_) => bail!("--rate must be above 0"),
                None => args.interval,
            };
            if !interval.is_finite() || interval <= 0.0 {
                bail!("the interval must be above 0 seconds");
            }
            Pace::Open {
                interval: Duration::from_secs_f64(interval),
            }
        };
        let trust = self
            .prepare(args.agents, args.enroll_concurrency, descriptors)
            .await?;
        eprintln!(
            "mobius-loadgen: connecting {} agents ({} at once)",
            args.agents, args.connect_concurrency
        );
        let (agents, connected) = heartbeat::connect(
            self.target.clone(),
            &trust,
            &self.fleet.agents[..args.agents],
            beat,
            args.connect_concurrency,
            self.common.server_pid,
        )
        .await?;
        self.report.phases.push(connected);
        eprintln!("mobius-loadgen: {pace:?} for {} s", args.duration);
        let (_agents, measured) = heartbeat::run(
            self.target.clone(),
            agents,
            beat,
            pace,
            Duration::from_secs_f64(args.duration.max(0.0)),
            self.common.server_pid,
        )
        .await?;
        self.report.phases.push(measured);
        Ok(())
    }

    async fn connect(&mut self, args: &ConnectArgs, descriptors: u64) -> Result<()> {
        let trust = self
            .prepare(args.agents, args.enroll_concurrency, descriptors)
            .await?;
        eprintln!(
            "mobius-loadgen: connecting {} agents ({} at once)",
            args.agents, args.connect_concurrency
        );
        let (agents, connected) = heartbeat::connect(
            self.target.clone(),
            &trust,
            &self.fleet.agents[..args.agents],
            Beat::Head,
            args.connect_concurrency,
            self.common.server_pid,
        )
        .await?;
        self.report.phases.push(connected);
        eprintln!("mobius-loadgen: holding for {} s", args.hold);
        let (_agents, idle) = heartbeat::hold(
            agents,
            Duration::from_secs_f64(args.hold.max(0.0)),
            self.common.server_pid,
        )
        .await?;
        self.report.phases.push(idle);
        Ok(())
    }

    /// The admin API's URL and token, which scenarios that act as an
    /// admin (`why`) need.
    fn admin_access(&self, why: &str) -> Result<(String, String)> {
        let admin = &self.common.admin;
        let url = admin
            .admin
            .clone()
            .with_context(|| format!("{why}: give --admin URL"))?;
        let token = admin
            .admin_token
            .clone()
            .with_context(|| format!("{why}: give --admin-token"))?;
        Ok((url, token))
    }

    async fn plan_fanout(&mut self, args: &PlanFanoutArgs, descriptors: u64) -> Result<()> {
        let (admin, access_token) = self.admin_access("plan-fanout applies a plan")?;
        // Two connections per agent: the stream and the reports.
        check_descriptors(args.agents * 2, descriptors)?;
        let trust = self
            .prepare(args.agents, args.enroll_concurrency, descriptors)
            .await?;
        eprintln!(
            "mobius-loadgen: {} agents open their work streams ({} at once)",
            args.agents, args.connect_concurrency
        );
        let phases = fanout::run(
            self.target.clone(),
            &trust,
            &self.fleet.agents[..args.agents],
            fanout::FanoutArgs {
                admin: &admin,
                access_token: &access_token,
                connect_concurrency: args.connect_concurrency,
                wait: Duration::from_secs_f64(args.wait.max(1.0)),
                server_pid: self.common.server_pid,
            },
        )
        .await?;
        self.report.phases.extend(phases);
        Ok(())
    }

    async fn streams(&mut self, args: &StreamsArgs, descriptors: u64) -> Result<()> {
        let trust = self
            .prepare(args.agents, args.enroll_concurrency, descriptors)
            .await?;
        eprintln!(
            "mobius-loadgen: {} agents open their work streams ({} at once)",
            args.agents, args.connect_concurrency
        );
        let phases = streams::run(
            self.target.clone(),
            &trust,
            &self.fleet.agents[..args.agents],
            streams::StreamsArgs {
                connect_concurrency: args.connect_concurrency,
                hold: Duration::from_secs_f64(args.hold.max(0.0)),
                ready_file: args.ready_file.as_deref(),
                start_file: args.start_file.as_deref(),
                start_timeout: Duration::from_secs(args.start_timeout),
                server_pid: self.common.server_pid,
            },
        )
        .await?;
        self.report.phases.extend(phases);
        Ok(())
    }

    async fn live_query(&mut self, args: &PlanFanoutArgs, descriptors: u64) -> Result<()> {
        let (admin, access_token) = self.admin_access("live-query starts a live query")?;
        check_descriptors(args.agents * 2, descriptors)?;
        let trust = self
            .prepare(args.agents, args.enroll_concurrency, descriptors)
            .await?;
        eprintln!(
            "mobius-loadgen: {} agents open their work streams ({} at once)",
            args.agents, args.connect_concurrency
        );
        let phases = live_query::run(
            self.target.clone(),
            &trust,
            &self.fleet.agents[..args.agents],
            live_query::LiveQueryArgs {
                admin: &admin,
                access_token: &access_token,
                connect_concurrency: args.connect_concurrency,
                wait: Duration::from_secs_f64(args.wait.max(1.0)),
                server_pid: self.common.server_pid,
            },
        )
        .await?;
        self.report.phases.extend(phases);
        Ok(())
    }

    async fn osquery_poll(&mut self, args: &OsqueryPollArgs) -> Result<()> {
        let (admin, access_token) =
            self.admin_access("osquery-poll creates an enroll secret on the admin listener")?;
        if args.clients == 0
            || args.interval.is_nan()
            || args.interval <= 0.0
            || args.duration.is_nan()
            || args.duration < 0.0
        {
            bail!("osquery-poll needs --clients > 0, --interval > 0 and --duration >= 0");
        }
        let phases = osquery::run(osquery::OsqueryArgs {
            admin: &admin,
            access_token: &access_token,
            clients: args.clients,
            interval: Duration::from_secs_f64(args.interval),
            duration: Duration::from_secs_f64(args.duration),
            enroll_concurrency: args.enroll_concurrency,
            timeout: Duration::from_secs(self.common.timeout.max(1)),
            server_pid: self.common.server_pid,
        })
        .await?;
        self.report.phases.extend(phases);
        Ok(())
    }

    async fn reconnect(&mut self, args: &ReconnectArgs, descriptors: u64) -> Result<()> {
        let trust = self
            .prepare(args.agents, args.enroll_concurrency, descriptors)
            .await?;
        eprintln!(
            "mobius-loadgen: reconnecting {} agents at once",
            args.agents
        );
        let (_agents, reconnected) = heartbeat::reconnect(
            self.target.clone(),
            &trust,
            &self.fleet.agents[..args.agents],
            self.common.server_pid,
        )
        .await?;
        self.report.phases.push(reconnected);
        Ok(())
    }
}
