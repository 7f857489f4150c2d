//! `mobius-server-cloud`, the cloud edition: multi-tenant on Postgres, with
//! the cloud-only features this binary was built with. Its services are
//! built by [`services::CloudServices`]; the cloud-only commands
//! (`reseal`, `usage export`) are in [`commands`].

#[cfg(feature = "billing")]
mod billing;
mod commands;
#[cfg(feature = "kms")]
mod kms;
#[cfg(feature = "saml")]
mod saml;
mod sealer;
mod services;

use mobius_server::Edition;

/// Cloud features compiled into this build.
const FEATURES: &[&str] = &[
    #[cfg(feature = "saml")]
    "saml",
    #[cfg(feature = "billing")]
    "billing",
    #[cfg(feature = "kms")]
    "kms",
];

pub const EDITION: Edition = Edition {
    name: "cloud",
    binary: "mobius-server-cloud",
    requires_postgres: true,
    features: FEATURES,
    provider: &services::CloudServices,
};

fn main() -> std::process::ExitCode {
    // The cloud-only commands come first on the command line; everything
    // else is the server's own command line.
    match std::env::args().nth(1).as_deref() {
        Some("reseal") | Some("usage") => commands::main(),
        _ => mobius_server::cli::main(EDITION),
    }
}
