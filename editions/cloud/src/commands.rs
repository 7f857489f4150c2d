//! The cloud-only commands:
//!
//! - `reseal --to kms|local [--dry-run]`: re-wraps every sealed secret
//!   (JWT signing keys, tenant CA keys) under KMS or the local master key.
//!   Resumable and idempotent; also finishes a KMS key rotation (values
//!   under the old key still open; reseal moves them to the new one).
//! - `usage export [--from DAY] [--to DAY]`: every tenant's recorded daily
//!   device counts as JSON lines, for the operator (no operator REST
//!   credential exists yet, so this is the export).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mobius_server::settings::{FlagOverrides, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "mobius-server-cloud",
    about = "Cloud-only maintenance commands"
)]
struct Cli {
    /// TOML settings file (the server's).
    #[arg(long, global = true, env = "MOBIUS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Postgres URL of the schema owner.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Data directory (where the local master key file is).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-wrap every sealed secret under KMS or the local master key.
    Reseal {
        /// Where secrets should end up.
        #[arg(long, value_enum)]
        to: Target,
        /// Only count what would be re-wrapped.
        #[arg(long)]
        dry_run: bool,
    },
    /// Recorded usage.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UsageCommand {
    /// Every tenant's daily device counts, one JSON object per line.
    Export {
        /// First day (YYYY-MM-DD) [default: 31 days ago].
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last day (YYYY-MM-DD) [default: today].
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// Record today's counts first.
        #[arg(long)]
        record_now: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    Kms,
    Local,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = FlagOverrides {
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone(),
        ..FlagOverrides::default()
    };
    let settings = match Settings::load(cli.config.as_deref(), &flags) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("mobius-server-cloud: {err}");
            return ExitCode::from(2);
        }
    };
    mobius_server::telemetry::init(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mobius-server-cloud: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mobius-server-cloud: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    mobius_server::serve::install_crypto_provider();
    let store = mobius_server::serve::open_store(settings, &crate::EDITION, false).await?;
    match command {
        Command::Reseal { to, dry_run } => reseal(settings, &store, to, dry_run).await?,
        Command::Usage {
            command:
                UsageCommand::Export {
                    from,
                    to,
                    record_now,
                },
        } => {
            if record_now {
                store.record_billing_usage(chrono::Utc::now()).await?;
            }
            let today = chrono::Utc::now().date_naive();
            let to = to.unwrap_or(today);
            let from = from.unwrap_or(to - chrono::Duration::days(31));
            for row in store.billing_usage(from, to).await? {
                println!("{}", serde_json::to_string(&row)?);
            }
        }
    }
    store.close().await?;
    Ok(())
}

#[cfg(feature = "kms")]
async fn reseal(
    settings: &Settings,
    store: &mobius_core::Store,
    to: Target,
    dry_run: bool,
) -> anyhow::Result<()> {
    use mobius_core::crypto::sealing::{LOCAL_FORMAT_V1, SecretSealer};
    let kms_settings = settings
        .kms
        .as_ref()
        .context("reseal needs the [kms] settings (to open or to seal with KMS)")?;
    let local = mobius_server::edition::LocalServices::sealer(settings)?;
    let kms = std::sync::Arc::new(crate::kms::KmsSealer::new(
        kms_settings,
        Some(local.clone()),
    )?);
    let probe: std::sync::Arc<dyn SecretSealer> = kms.clone();
    crate::sealer::check(&probe).await?;
    let checker = kms.clone();
    let report = match to {
        Target::Kms => {
            let is_target = move |sealed: &[u8]| checker.is_current(sealed);
            store
                .reseal_secrets(kms.as_ref(), kms.as_ref(), &is_target, dry_run)
                .await?
        }
        Target::Local => {
            let is_target = |sealed: &[u8]| sealed.first() == Some(&LOCAL_FORMAT_V1);
            store
                .reseal_secrets(kms.as_ref(), local.as_ref(), &is_target, dry_run)
                .await?
        }
    };
    tracing::info!(kms_calls = kms.kms_calls(), "reseal done");
    println!(
        "{} {} of {} sealed secrets to {} ({} already there)",
        if dry_run { "would reseal" } else { "resealed" },
        report.resealed,
        report.examined,
        match to {
            Target::Kms => format!("KMS key {}", kms.key_id()),
            Target::Local => "the local master key".to_owned(),
        },
        report.already
    );
    Ok(())
}

#[cfg(not(feature = "kms"))]
async fn reseal(_: &Settings, _: &mobius_core::Store, _: Target, _: bool) -> anyhow::Result<()> {
    anyhow::bail!("this binary was built without the `kms` feature")
}
