//! Command-line interface: one subcommand per scenario, and the options
//! every scenario shares (where the server is, how to trust it, where the
//! enrolled identities live, how to report).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mobius-loadgen",
    version,
    about = "Simulates Mobius agents against a real server and measures it.",
    long_about = "Simulates Mobius agents against a real server and measures it.\n\n\
        Each simulated agent has its own P-256 key, enrolls through the real enroll \
        endpoint with its own CSR, then heartbeats over one kept-alive mutual-TLS \
        connection, as mobius-agent does. Reports throughput, latency (p50, p90, p99, \
        max), errors by kind, connections held and, with --server-pid, the server's CPU \
        time and memory.\n\n\
        Getting certificates: `enroll` (and the other scenarios when --identities \
        holds too few agents) needs an enrollment token allowing enough uses: pass it \
        with --token, or let the simulator create one with --admin URL and --setup-code \
        (a fresh server) or --admin-token (an access token). `mobius-loadgen token` \
        prints one for reuse. Enrolled identities are kept in --identities FILE, so later \
        runs reuse them without enrolling again.\n\n\
        Exit status: 0 when the run completed and every request was answered, 3 when it \
        completed with failed requests (the report says which), 1 on other errors, 2 on \
        usage errors.",
    after_help = "Examples:\n  \
        mobius-loadgen token --admin http://127.0.0.1:8080 --setup-code CODE\n  \
        mobius-loadgen --server https://127.0.0.1:8443 --token TOKEN --identities ids.json enroll --duration 60\n  \
        mobius-loadgen --server https://127.0.0.1:8443 --identities ids.json heartbeat --agents 10000 --rate 3500 --duration 60\n  \
        mobius-loadgen --server https://127.0.0.1:8443 --identities ids.json --server-pid 1234 connect --agents 10000 --hold 30\n  \
        mobius-loadgen --server https://127.0.0.1:8443 --identities ids.json reconnect --agents 10000"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Server, trust and reporting (any subcommand)")]
pub struct Common {
    /// The device listener (mutual TLS), e.g. https://127.0.0.1:8443.
    #[arg(
        long,
        global = true,
        env = "MOBIUS_LOADGEN_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Trust this CA (PEM) for the device listener, e.g. the server's
    /// `<data_dir>/device-ca.pem`. Without it, enrollment trusts only the CA
    /// whose key the token pins, as mobius-agent does.
    #[arg(long, global = true, value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// Enrollment token (mobius1.<secret>.<pin>) allowing as many uses as
    /// agents to enroll.
    #[arg(
        long,
        global = true,
        env = "MOBIUS_LOADGEN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Keep enrolled identities (keys and certificates) in this file and
    /// reuse them: runs enroll only the agents the file lacks.
    #[arg(long, global = true, value_name = "FILE")]
    pub identities: Option<PathBuf>,
    /// Report the CPU time and memory of this process (the server).
    #[arg(long, global = true, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Spread connections over this many loopback source addresses
    /// (127.0.0.2, 127.0.0.3, ...), each good for about 28,000
    /// connections to one server port. Only used when the server is on
    /// 127.0.0.0/8; 0 lets the kernel choose.
    #[arg(long, global = true, default_value_t = 16, value_name = "N")]
    pub source_ips: u32,
    /// Give up on a request (connection, handshake and answer) after this
    /// many seconds, as the agent does.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

/// How to create an enrollment token when --token is not given.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Getting an enrollment token (any subcommand)")]
pub struct AdminArgs {
    /// The admin API (GraphQL), e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// The one-time setup code a fresh server printed: creates its first
    /// owner (loadgen@mobius.invalid, random password) to make the token.
    #[arg(
        long,
        global = true,
        value_name = "CODE",
        conflicts_with = "admin_token"
    )]
    pub setup_code: Option<String>,
    /// An access or API token of an admin allowed to create enrollment tokens.
    #[arg(
        long,
        global = true,
        env = "MOBIUS_LOADGEN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Site to enroll into (default: the first site).
    #[arg(long, global = true, value_name = "ID")]
    pub site: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a multi-use enrollment token (100,000 uses, one week: the most the server allows)
    /// through the admin API and print it (JSON with --json).
    Token,
    /// Enroll new agents as fast as the server allows (closed loop: each
    /// worker enrolls the next agent when the previous one is done).
    Enroll(EnrollArgs),
    /// Heartbeat a fixed number of agents at a fixed rate: POST ping with a
    /// PingRequest (facts on the first one), each agent on its own
    /// kept-alive connection. Open loop: each beat is due at a time set by
    /// the clock, and its latency counts from then, so a slow server shows
    /// up as latency, never as a lower send rate.
    Heartbeat(HeartbeatArgs),
    /// The same as heartbeat, with HEAD ping (answered from the client
    /// certificate and memory alone): what the transport costs.
    Baseline(HeartbeatArgs),
    /// Open N mutual-TLS connections (one HEAD ping each, to prove the
    /// server accepted the certificate), hold them idle, and report how
    /// many stayed open and the server's memory.
    Connect(ConnectArgs),
    /// Every agent reconnects at the same moment, as after a server
    /// restart: opens its connection and sends its first ping with facts,
    /// no concurrency limit. Reports how long until the last agent was
    /// answered (latency counts from that moment for all) and the errors
    /// by kind; each agent tries once. To measure a restart, enroll the
    /// agents into --identities first, restart the server, then run this.
    Reconnect(ReconnectArgs),
    /// Every agent holds the push stream (plus a connection for its
    /// reports); one plan with a no-op operation targets them all and each
    /// answers SUCCEEDED when its execution arrives. Reports the time until
    /// 99% and 100% were SUCCEEDED (the fan-out phase's p99 and max) and
    /// the server memory the held streams cost. Needs --admin and
    /// --admin-token (to apply the plan).
    PlanFanout(PlanFanoutArgs),
    /// Every agent holds its work stream and a report connection; one
    /// live query goes to all of them and each answers three rows when its
    /// query frame arrives. Reports the time from runLiveQuery until 99%
    /// and 100% of results reached the admin's liveQueryResults
    /// subscription. Needs --admin and --admin-token. Same options as
    /// plan-fanout.
    LiveQuery(PlanFanoutArgs),
    /// Every agent opens its push stream (GET work/stream, one mutual-TLS
    /// connection each) and holds it idle, reading the keep-alive frames.
    /// Reports streams opened, streams still open and alive after --hold,
    /// and why the others ended. For several simulator processes sharing
    /// one run: --ready-file and --start-file.
    Streams(StreamsArgs),
    /// osquery's remote protocol on the admin listener: N clients enroll
    /// with an enroll secret (created through GraphQL), then each POSTs
    /// distributed/read every --interval seconds (±10% jitter, open loop)
    /// for --duration. Reports enrollment rate and latency, reads served
    /// per second, their latency and errors. Needs --admin and
    /// --admin-token.
    OsqueryPoll(OsqueryPollArgs),
}

#[derive(Clone, Debug, Args)]
pub struct OsqueryPollArgs {
    /// osquery clients (hosts).
    #[arg(long)]
    pub clients: usize,
    /// Each client polls every this many seconds, ±10% jitter.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub interval: f64,
    /// Poll for this many seconds, after every client enrolled.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub duration: f64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
}

#[derive(Clone, Debug, Args)]
pub struct StreamsArgs {
    /// Agents (one held stream each).
    #[arg(long)]
    pub agents: usize,
    /// Hold the streams this many seconds (counted from the start file, if given).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub hold: f64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Enrollments in flight at once, for agents --identities lacks.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// Write this file (JSON: opened, errors) once every stream was tried.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Begin the hold only once this file exists.
    #[arg(long, value_name = "FILE")]
    pub start_file: Option<PathBuf>,
    /// Give up waiting for --start-file after this many seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub start_timeout: u64,
}

#[derive(Clone, Debug, Args)]
pub struct PlanFanoutArgs {
    /// Agents (each holds two connections: the stream and one for reports).
    #[arg(long)]
    pub agents: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Enrollments in flight at once, for agents --identities lacks.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// Give up on an agent's execution after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub wait: f64,
}

#[derive(Clone, Debug, Args)]
pub struct EnrollArgs {
    /// Enroll this many agents...
    #[arg(long, required_unless_present = "duration")]
    pub count: Option<u64>,
    /// ...or as many as possible in this many seconds (with --count: which
    /// comes first).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

#[derive(Clone, Debug, Args)]
pub struct HeartbeatArgs {
    /// Simulated agents (one connection each). Enrolled first if
    /// --identities holds fewer.
    #[arg(long)]
    pub agents: usize,
    /// Each agent heartbeats every this many seconds, ±10% jitter.
    #[arg(
        long,
        default_value_t = 15.0,
        value_name = "SECS",
        conflicts_with = "rate"
    )]
    pub interval: f64,
    /// Alternatively, the total rate (heartbeats per second): the interval
    /// becomes agents / rate.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Measure for this many seconds, after every agent connected and sent
    /// its first ping.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub duration: f64,
    /// Closed loop instead: each agent sends its next request as soon as
    /// the previous one is answered. Measures capacity, not latency at a rate.
    #[arg(long, conflicts_with_all = ["interval", "rate"])]
    pub closed_loop: bool,
    /// Connections being set up (TCP, TLS, first ping) at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Enrollments in flight at once, for agents --identities lacks.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
}

#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
    /// Connections (agents) to open and hold.
    #[arg(long)]
    pub agents: usize,
    /// Hold them this many seconds after the last one opened.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub hold: f64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Enrollments in flight at once, for agents --identities lacks.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
}

#[derive(Clone, Debug, Args)]
pub struct ReconnectArgs {
    /// Agents (connections) reconnecting at once.
    #[arg(long)]
    pub agents: usize,
    /// Enrollments in flight at once, for agents --identities lacks.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
}
