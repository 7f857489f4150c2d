use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mobius_cocoon::portal::PortalClient;
use mobius_cocoon::settings::{LogFormat, Settings};
use mobius_cocoon::{AppState, router};
use tokio::sync::Notify;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    init_logging(&settings);

    let ca = match &settings.server_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --server-ca {}", path.display()))?,
        ),
        None => None,
    };
    let portal = PortalClient::new(&settings.server, ca.as_deref())
        .context("setting up the client for --server")?;
    let state = AppState::new(
        portal,
        settings.secure_cookies(),
        Duration::from_millis(settings.poll_ms),
    );

    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    // The one line on stdout: scripts and tests read the bound address here.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "mobius-cocoon listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%addr, server = %settings.server, "mobius-cocoon started");

    let stopping = Arc::new(Notify::new());
    let serve = axum::serve(listener, router(state)).with_graceful_shutdown({
        let stopping = stopping.clone();
        async move {
            shutdown().await;
            stopping.notify_one();
        }
    });
    // Live-progress streams never end on their own, so graceful shutdown
    // gets a short grace period and then the process exits.
    tokio::select! {
        served = serve => served?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => {}
    }
    Ok(())
}

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// Ctrl-C or SIGTERM. Browsers reconnect live progress to the next
/// instance on their own.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
