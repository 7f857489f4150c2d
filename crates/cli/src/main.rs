//! `mobius`, the admin command line. It talks only to the server's public
//! GraphQL API, so anything it does a script can do with curl.

mod cli;
mod client;
mod commands;
mod credentials;
mod error;
mod output;
mod pagination;
mod password;
mod session;

use std::io;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::error::UsageError;

fn main() -> ExitCode {
    // Usage errors exit here with clap's message and code 2.
    let cli = Cli::parse();

    // One request at a time: a single-threaded runtime is all a CLI needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mobius: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Prints the one-line error and picks the exit code: 2 for usage
/// mistakes (as clap does), 1 for everything else.
fn report(err: &anyhow::Error) -> ExitCode {
    let closed_pipe = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    });
    if closed_pipe {
        // `mobius ... | head`: the reader has what it wanted.
        return ExitCode::SUCCESS;
    }
    eprintln!("mobius: {err:#}");
    if err.chain().any(|cause| cause.is::<UsageError>()) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}
