//! The `mobius-server` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::edition::Edition;
use crate::serve::{self, Server};
use crate::settings::{FlagOverrides, LogFormat, ServerRole, Settings};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    version,
    // A flag given twice means its last value (wrappers and scripts can
    // append an override), as with the settings layers.
    args_override_self = true,
    about = "Mobius device-management control plane server",
    long_about = "Mobius device-management control plane server.\n\n\
        With no configuration it serves the admin API on 127.0.0.1:8080 from an embedded SQLite \
        store in ./mobius-data. Give --database-url postgres://... for Postgres (multi-tenant).\n\n\
        Settings are layered: defaults, then the TOML file given with --config, then MOBIUS_* \
        environment variables (e.g. MOBIUS_DATABASE_URL, MOBIUS_LISTEN), then flags. \
        `config` prints the effective result."
)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// TOML settings file (keys as printed by `config`).
    #[arg(long, global = true, env = "MOBIUS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Admin API address [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Postgres URL of the schema owner (runs migrations). Unset: embedded SQLite.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Postgres URL of the request-path role, if it is managed separately.
    #[arg(long, global = true, value_name = "URL")]
    database_app_url: Option<String>,
    /// Data directory for the embedded store and generated secrets [default: ./mobius-data].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// mTLS device listener address [default: 0.0.0.0:8443].
    #[arg(long, global = true, value_name = "ADDR")]
    device_listen: Option<std::net::SocketAddr>,
    /// Log format [default: auto: pretty on a terminal, JSON otherwise].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run migrations, create the default tenant on an empty store, and serve.
    Serve {
        /// `api`: serve requests, no scheduled jobs; `worker`: run the
        /// scheduled jobs; `all`: both [default: all].
        #[arg(long, value_enum)]
        role: Option<ServerRole>,
    },
    /// Apply pending migrations (and the request role's grants), then exit.
    Migrate,
    /// Print the effective configuration, secrets redacted, then exit.
    Config,
    /// Print the GraphQL schema (SDL) of the admin API, then exit.
    PrintSchema,
    /// Start signing access tokens with a new key; old tokens stay valid
    /// until they expire (15 minutes).
    RotateSigningKey,
    /// Show the scheduled jobs: runs so far, last run (when, where, how
    /// long, what it did) and when each is next due, across replicas.
    Jobs {
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value = "table")]
        output: JobsOutput,
    },
    /// Exit 0 when the server on `listen` answers /healthz (for container
    /// HEALTHCHECKs in images without curl).
    Healthcheck,
    /// Copy the embedded SQLite store to FILE while the server runs (a
    /// consistent snapshot); restore by stopping the server and putting
    /// FILE in place of `<data_dir>/mobius.db`. Postgres: use pg_dump or
    /// PITR (docs/operations/backup.md).
    Backup {
        /// The new file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
/// How `jobs` prints.
enum JobsOutput {
    Table,
    Json,
}

/// Entry point of the edition binaries. Exit codes: 0 success, 1 failure
/// at run time, 2 bad usage or settings.
pub fn main(edition: Edition) -> ExitCode {
    let cli = Cli::parse();
    let flags = FlagOverrides {
        data_dir: cli.settings.data_dir.clone(),
        listen: cli.settings.listen,
        database_url: cli.settings.database_url.clone(),
        database_app_url: cli.settings.database_app_url.clone(),
        log_format: cli.settings.log_format,
        device_listen: cli.settings.device_listen,
        role: match cli.command {
            Command::Serve { role } => role,
            _ => None,
        },
    };
    let settings = match Settings::load(cli.settings.config.as_deref(), &flags) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{}: {err}", edition.binary);
            return ExitCode::from(2);
        }
    };

    if let Command::PrintSchema = cli.command {
        print!("{}", crate::admin::graphql::sdl());
        return ExitCode::SUCCESS;
    }
    if let Command::Config = cli.command {
        println!(
            "# {} {} ({} edition)",
            edition.binary,
            env!("CARGO_PKG_VERSION"),
            edition.name
        );
        if !edition.features.is_empty() {
            println!("# features: {}", edition.features.join(", "));
        }
        let names = edition.provider.describe(&settings);
        println!("# sealer: {}", names.sealer);
        println!("# entitlements: {}", names.entitlements);
        print!("{}", settings.to_redacted_toml());
        return ExitCode::SUCCESS;
    }

    telemetry::init(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{}: cannot start the async runtime: {err}", edition.binary);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => {
                let server = Server::prepare(&settings, &edition).await?;
                server.run(serve::shutdown_signal()).await
            }
            Command::Migrate => {
                let pending = serve::migrate(&settings, &edition).await?;
                if pending.is_empty() {
                    tracing::info!("migrations are up to date");
                    Ok(())
                } else {
                    anyhow::bail!("migrations still pending: {}", pending.join(", "))
                }
            }
            Command::RotateSigningKey => {
                let kid = serve::rotate_signing_key(&settings, &edition).await?;
                println!("now signing access tokens with key {kid}");
                Ok(())
            }
            Command::Jobs { output } => {
                let records = serve::job_records(&settings).await?;
                match output {
                    JobsOutput::Table => {
                        print!("{}", crate::jobs::scheduler::render_table(&records))
                    }
                    JobsOutput::Json => println!("{}", serde_json::to_string(&records)?),
                }
                Ok(())
            }
            Command::Healthcheck => serve::healthcheck(&settings).await,
            Command::Backup { to } => {
                serve::backup(&settings, &to).await?;
                println!("backed up the embedded store to {}", to.display());
                Ok(())
            }
            Command::Config | Command::PrintSchema => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "stopping");
            eprintln!("{}: {err:#}", edition.binary);
            ExitCode::FAILURE
        }
    }
}
