//! `mobius-agent`, the Mobius device agent: enrolls a host with a one-time
//! token, then heartbeats with its facts and renews its short-lived client
//! certificate over mutual TLS. It shares only wire types (`mobius-api`)
//! with the server.

mod cli;
mod enrollment;
mod error;
mod facts;
mod heartbeat;
mod identity;
mod logging;
mod output;
mod portal;
mod queries;
mod renewal;
mod state;
mod status;
mod tables;
#[cfg(test)]
mod testing;
mod tls;
mod transport;
mod tunnel;
mod work;

use std::io;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{EXIT_REENROLL, EXIT_USAGE, NeedsReenrollment, UsageError};

fn main() -> ExitCode {
    // Usage errors exit here with clap's message and code 2.
    let cli = Cli::parse();

    // Cargo unifies features across the workspace, so rustls may be built
    // with more than one provider and would then refuse to pick a process
    // default itself. Every config here also names aws-lc-rs explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let default_filter = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    logging::init(&cli.logging, default_filter);

    // The agent does one thing at a time; a single thread leaves the host's
    // cores to its real work.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mobius-agent: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Enroll(args) => enrollment::enroll(args).await,
            Command::Run(args) => heartbeat::run(args).await,
            Command::Status(args) => status::status(args),
            Command::Facts(args) => status::facts(args),
            Command::Query(args) => queries::command::query(args),
            Command::Portal(args) => portal::command(args).await,
            Command::Tunnel(args) => tunnel::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Prints the one-line error and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    let closed_pipe = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    });
    if closed_pipe {
        // `mobius-agent facts | head`: the reader has what it wanted.
        return ExitCode::SUCCESS;
    }
    eprintln!("mobius-agent: {err:#}");
    if err.chain().any(|cause| cause.is::<NeedsReenrollment>()) {
        ExitCode::from(EXIT_REENROLL)
    } else if err.chain().any(|cause| cause.is::<UsageError>()) {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}
