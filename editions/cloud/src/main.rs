//! `mobius-server-cloud`, the cloud edition: multi-tenant on Postgres, with
//! the cloud-only features this binary was built with. Its services are
//! built by [`services::CloudServices`].

#[cfg(feature = "billing")]
mod billing;
#[cfg(feature = "kms")]
mod kms;
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

fn main() -> std::process::ExitCode {
    mobius_server::cli::main(Edition {
        name: "cloud",
        binary: "mobius-server-cloud",
        requires_postgres: true,
        features: FEATURES,
        provider: &services::CloudServices,
    })
}
