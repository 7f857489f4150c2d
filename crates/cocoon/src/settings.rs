//! Cocoon's settings: flags, each with a `MOBIUS_COCOON_*` environment
//! fallback (handy under systemd or in a container).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use url::Url;

const EXAMPLE: &str = "\
Example:
  mobius-cocoon --server https://mobius.example.com:8443 \\
      --server-ca /etc/mobius/ca.pem \\
      --public-url https://portal.example.com --listen 127.0.0.1:8090

Then set the server's `portal_url` to https://portal.example.com so the
links `mobius-agent portal` prints open this service.";

/// The Mobius self-service portal for device users.
///
/// Shows one device's status, policies and self-service software to the
/// person using it. Users arrive through a short-lived link that
/// `mobius-agent portal` prints; Cocoon trades it for a session with the
/// Mobius server and talks to the server only through its portal API.
#[derive(Debug, Parser)]
#[command(name = "mobius-cocoon", version, after_help = EXAMPLE)]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "MOBIUS_COCOON_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: String,

    /// The Mobius server's admin API base URL (http or https).
    #[arg(long, env = "MOBIUS_COCOON_SERVER", value_parser = http_url)]
    pub server: Url,

    /// PEM file with the CA(s) to trust for an https --server, instead of
    /// the platform's roots.
    #[arg(long, env = "MOBIUS_COCOON_SERVER_CA", value_name = "FILE")]
    pub server_ca: Option<PathBuf>,

    /// How users reach this service (e.g. behind a TLS reverse proxy).
    /// When https, the session cookie is marked Secure.
    #[arg(long, env = "MOBIUS_COCOON_PUBLIC_URL", value_parser = http_url)]
    pub public_url: Option<Url>,

    /// How often, in milliseconds, live install progress polls the server
    /// (one request per open software page per interval).
    #[arg(long, env = "MOBIUS_COCOON_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub poll_ms: u64,

    /// Log format on stderr.
    #[arg(long, env = "MOBIUS_COCOON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A tracing filter, e.g. `info` or `mobius_cocoon=debug`.
    #[arg(
        long,
        env = "MOBIUS_COCOON_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Cookies are Secure when users come over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_ref()
            .is_some_and(|url| url.scheme() == "https")
    }
}

fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err("the URL has no host".to_owned()),
        other => Err(format!("expected http or https, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Settings::command().debug_assert();
    }

    #[test]
    fn https_public_url_means_secure_cookies() {
        let parse = |args: &[&str]| Settings::try_parse_from(args);
        let plain = parse(&["mobius-cocoon", "--server", "http://127.0.0.1:1"]).unwrap();
        assert!(!plain.secure_cookies());
        assert_eq!(plain.listen, "127.0.0.1:8090");
        assert_eq!(plain.poll_ms, 1000);
        let tls = parse(&[
            "mobius-cocoon",
            "--server",
            "https://mobius.example:8443",
            "--public-url",
            "https://portal.example",
        ])
        .unwrap();
        assert!(tls.secure_cookies());
        assert!(parse(&["mobius-cocoon", "--server", "ftp://x"]).is_err());
        assert!(parse(&["mobius-cocoon"]).is_err());
    }
}
