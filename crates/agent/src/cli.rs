//! The command line. Every environment variable the agent reads is declared
//! here, next to the flag it stands for, so nothing else reads the
//! environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where systemd's `StateDirectory=mobius-agent` puts the agent's files.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mobius-agent";

#[derive(Debug, Parser)]
#[command(
    name = "mobius-agent",
    version,
    about = "The Mobius device agent",
    long_about = "The Mobius device agent.\n\n\
        Enroll a host once with a one-time token from your Mobius admin \
        (`mobius-agent enroll`), then keep `mobius-agent run` running (the \
        systemd unit does): it heartbeats with the host's facts over mutual \
        TLS and renews its short-lived certificate before it expires.\n\n\
        Exit codes: 0 ok, 1 error, 2 usage, 3 this device must be enrolled \
        again (revoked, deleted or its certificate no longer accepted).",
    after_help = "Example:\n  \
        mobius-agent enroll --server https://mobius.example.com:8443 --token mobius1.…\n  \
        systemctl enable --now mobius-agent"
)]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this host with a one-time token and store its identity.
    #[command(
        long_about = "Enroll this host with a one-time enrollment token.\n\n\
            The agent makes its private key here (it never leaves the host), \
            sends a certificate request with the host's facts, and stores the \
            signed certificate in the state directory. It trusts the server \
            only if the server's CA matches the pin inside the token.\n\n\
            Enrolling again (for example after the device was revoked) \
            replaces the stored identity, but only once the new enrollment \
            has succeeded.",
        after_help = "Example:\n  \
            mobius-agent enroll --server https://mobius.example.com:8443 \\\n      \
            --token mobius1.Zk3….9f2c…"
    )]
    Enroll(EnrollArgs),

    /// Heartbeat with the server and renew the certificate until stopped.
    #[command(long_about = "Heartbeat with the server and renew the certificate \
        until stopped (SIGTERM or Ctrl-C exit 0).\n\n\
        While the server is unreachable the agent retries with exponential \
        backoff. It stops with exit code 3 when the server says the device \
        was revoked or its certificate is no longer accepted: enroll again \
        with a new token.")]
    Run(RunArgs),

    /// Show this device's enrollment and the last heartbeat's outcome.
    Status(StatusArgs),

    /// Print the host facts the agent reports to the server.
    Facts(FactsArgs),

    /// Run one read-only SQL query against this host's tables.
    #[command(
        long_about = "Run one read-only SQL query against this host's tables, locally, \
            as a live query from the server would run (for debugging queries and policies).\n\n\
            The tables follow osquery's names and columns (system_info, os_version, \
            processes, users, listening_ports, deb_packages, ... and mobius_agent); \
            `--tables` lists them. Only reading is allowed: writes, ATTACH, \
            state-changing PRAGMAs and load_extension() are refused, and a query \
            running past --timeout-ms is stopped. Every value is printed as a string, \
            NULL as an empty string.\n\n\
            Exit status: 0 with the rows, 1 with the reason when the query is refused, \
            invalid or timed out.",
        after_help = "Examples:\n  \
            mobius-agent query \"SELECT hostname, cpu_brand, physical_memory FROM system_info\"\n  \
            mobius-agent query --output json \"SELECT name, version FROM deb_packages WHERE name LIKE 'openssl%'\"\n  \
            mobius-agent query \"SELECT p.name, l.port FROM listening_ports l JOIN processes p USING (pid)\"\n  \
            mobius-agent query --tables"
    )]
    Query(crate::queries::command::QueryArgs),

    /// Print (or open) the link to this device's self-service portal.
    #[command(
        long_about = "Print the link to this device's self-service portal (Mobius Cocoon), \
            where its user sees the device's status and failing policies and installs \
            approved software.\n\n\
            The running agent keeps a fresh link in the portal file and replaces it every \
            hour (the previous link keeps working for a few minutes). When the file is \
            missing or about to expire, this command asks the server for a new link itself, \
            which needs the agent's state directory.\n\n\
            Exit status: 0 with the link; 1 when there is none (the server has no portal \
            set up, or it cannot be reached and no valid link is on file).",
        after_help = "Examples:\n  \
            mobius-agent portal\n  \
            mobius-agent portal --open\n  \
            mobius-agent portal --output json"
    )]
    Portal(PortalArgs),

    /// Make a local HTTP service reachable through the Mobius backbone.
    #[command(
        after_help = "Example:\n  mobius-agent tunnel --server https://backbone.example.com \\\n      --service myapp --to http://127.0.0.1:3000 --token-file /etc/mobius/myapp.token"
    )]
    Tunnel(crate::tunnel::TunnelArgs),
}

#[derive(Debug, Args)]
pub struct StateDirArg {
    /// Where the key, certificates and state.json live.
    #[arg(
        long,
        env = "MOBIUS_AGENT_STATE_DIR",
        default_value = DEFAULT_STATE_DIR,
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Base URL of the server's device listener, e.g. https://mobius.example.com:8443.
    #[arg(long, env = "MOBIUS_AGENT_SERVER", value_name = "URL")]
    pub server: String,

    /// The enrollment token (`mobius1.<secret>.<pin>`) from your Mobius admin.
    #[arg(
        long,
        env = "MOBIUS_AGENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: String,

    #[command(flatten)]
    pub state: StateDirArg,

    /// Use this host fingerprint instead of the SHA-256 of the machine id
    /// (for cloned images that share one machine id, or tests that enroll
    /// several hosts from one machine). Re-enrolling with the same
    /// fingerprint keeps the device id.
    #[arg(
        long,
        env = "MOBIUS_AGENT_HOST_FINGERPRINT",
        value_name = "FINGERPRINT"
    )]
    pub host_fingerprint: Option<String>,

    /// `text` prints the device id; `json` prints the enrollment (without certificates).
    #[arg(long, value_enum, default_value_t = EnrollOutput::Text)]
    pub output: EnrollOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EnrollOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub state: StateDirArg,

    /// Never wait longer than this between heartbeats, whatever the server
    /// asks (tests use 1).
    #[arg(long, env = "MOBIUS_AGENT_MAX_INTERVAL_SECS", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_interval_secs: Option<u64>,

    /// The longest wait between retries while the server is unreachable.
    #[arg(long, env = "MOBIUS_AGENT_MAX_BACKOFF_SECS", value_name = "SECS",
          default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub max_backoff_secs: u64,

    #[command(flatten)]
    pub portal: PortalFileArg,
}

/// Where the running agent keeps the current portal link.
#[derive(Debug, Args)]
pub struct PortalFileArg {
    /// The portal link file (default: portal.json in the state directory,
    /// readable by the agent's user only). Give a path outside the state
    /// directory to let the device's other users open the portal: the file
    /// is then written readable by all, since the link shows only this
    /// device's own portal.
    #[arg(long, env = "MOBIUS_AGENT_PORTAL_FILE", value_name = "FILE")]
    pub portal_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PortalArgs {
    #[command(flatten)]
    pub state: StateDirArg,

    #[command(flatten)]
    pub portal: PortalFileArg,

    /// Open the link in the default browser (xdg-open, or open on macOS).
    #[arg(long)]
    pub open: bool,

    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateDirArg,

    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct FactsArgs {
    #[arg(long, value_enum, default_value_t = Output::Json)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// `human` on a terminal and `json` otherwise, unless set.
    #[arg(long, global = true, env = "MOBIUS_AGENT_LOG_FORMAT", value_enum,
          default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// A tracing filter, e.g. `info` or `mobius_agent=debug` (default:
    /// `info` for `run`, `warn` for the other commands).
    #[arg(long, global = true, env = "MOBIUS_AGENT_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
