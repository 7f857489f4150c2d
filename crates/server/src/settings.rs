//! The server's settings: one typed struct, layered as defaults, then a
//! TOML file (`--config`), then `MOBIUS_*` environment variables, then
//! command-line flags. Secrets are wrapped so they never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Pretty,
    Json,
}

/// What a `serve` process does (docs/operations/scaling.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Serve requests and run the scheduled jobs (one server, or small installs).
    #[default]
    All,
    /// Serve requests only: no scheduled jobs on this replica.
    Api,
    /// Run the scheduled jobs (listeners stay up for health and metrics;
    /// route no traffic to it).
    Worker,
}

impl ServerRole {
    /// Whether this process runs the once-across-replicas job scheduler.
    pub fn runs_jobs(self) -> bool {
        matches!(self, ServerRole::All | ServerRole::Worker)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded store, keys and generated secrets live.
    pub data_dir: PathBuf,
    /// Address of the admin API (GraphQL, REST, health, metrics).
    pub listen: SocketAddr,
    /// Postgres URL of the schema owner: runs migrations. Without it (and
    /// without `database_app_url`) the embedded SQLite store is used.
    #[serde(serialize_with = "redact_url")]
    pub database_url: Option<SecretString>,
    /// Postgres URL of the request-path role (NOSUPERUSER, NOBYPASSRLS,
    /// owns no tables). Without it, the server creates `database_app_role`
    /// from `database_url` and logs in as that role.
    #[serde(serialize_with = "redact_url")]
    pub database_app_url: Option<SecretString>,
    /// The request-path role created in development mode.
    pub database_app_role: String,
    /// Password of the request-path role in development mode. Without it,
    /// one is generated once and kept in `<data_dir>/postgres-app-role.secret`.
    #[serde(serialize_with = "redact_secret")]
    pub database_app_password: Option<SecretString>,
    /// Upper bound of the request-path connection pool.
    pub database_max_connections: u32,
    /// Apply pending migrations at start-up (needs `database_url` on Postgres).
    pub migrate_on_start: bool,
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `mobius_server=debug,info`.
    pub log_filter: String,
    /// Requests running longer than this are answered 408.
    pub request_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    pub request_body_limit_bytes: usize,
    /// The 32-byte master key (base64) that seals signing and CA keys.
    /// Without it, one is generated once into `<data_dir>/master.key`.
    #[serde(serialize_with = "redact_secret")]
    pub master_key: Option<SecretString>,
    /// Browser origins allowed to call the API cross-origin (CORS), e.g.
    /// `["https://admin.example.com"]`. Empty: none.
    pub cors_allowed_origins: Vec<String>,
    /// Serve the admin API over TLS with this certificate chain (PEM)...
    pub tls_cert_file: Option<PathBuf>,
    /// ...and this private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Sign-in attempts allowed per minute from one client address.
    pub login_attempts_per_minute_per_client: u32,
    /// Sign-in attempts allowed per minute for one account (email).
    pub login_attempts_per_minute_per_account: u32,
    /// Address of the mTLS device listener (agents connect here).
    pub device_listen: SocketAddr,
    /// Extra names (DNS or IP) for the device listener's generated
    /// certificate, besides localhost, 127.0.0.1 and ::1.
    pub device_hostnames: Vec<String>,
    /// Use this certificate chain (PEM) for the device listener instead of
    /// generating one...
    pub device_tls_cert_file: Option<PathBuf>,
    /// ...with this key (PEM)...
    pub device_tls_key_file: Option<PathBuf>,
    /// ...issued by this CA (PEM), whose key enrollment tokens pin.
    pub device_tls_ca_file: Option<PathBuf>,
    /// Lifetime of device client certificates (agents renew at half-life).
    pub device_certificate_ttl_secs: u64,
    /// How often agents are told to heartbeat.
    pub heartbeat_interval_secs: u64,
    /// A device's `last_seen_at` is written only when the stored value is
    /// older than this (online/offline still follows the heartbeat
    /// interval, from memory first). With several servers answering the
    /// admin API, keep it below three heartbeat intervals: a server that
    /// does not hold a device's connection sees only the stored time.
    pub last_seen_write_after_secs: u64,
    /// A client gets this long to finish the TLS handshake and then to
    /// send each request's head, on both listeners; slower ones are
    /// disconnected, so held-open half requests cannot pile up.
    pub client_read_timeout_secs: u64,
    /// Most devices a tenant may enroll (unset: no limit). With a
    /// license (OSS), the lower of this and the license's limit applies.
    pub device_limit: Option<u64>,
    /// The URL browsers reach this server at (scheme, host, port), e.g.
    /// `https://mobius.example.com`: single sign-on builds its callback
    /// URL from it. Unset: taken from each request's `Host` header, which
    /// is only right when nothing rewrites it in between.
    pub public_url: Option<String>,
    /// Stripe billing and the price → plan mapping (cloud edition, feature
    /// `billing`); see docs/operations/billing.md.
    pub billing: Option<mobius_core::billing::BillingSettings>,
    /// AWS KMS envelope sealing (cloud edition, feature `kms`); see
    /// docs/operations/kms.md.
    pub kms: Option<mobius_core::crypto::kms::KmsSettings>,
    /// The license (a signed JWT). Without it, `<data_dir>/license.key` is
    /// read if present; without either, the free tier applies.
    #[serde(serialize_with = "redact_secret")]
    pub license_key: Option<SecretString>,
    /// Also trust the public test key for licenses. Honoured only by debug
    /// builds (a release binary refuses to start with it): tests sign
    /// licenses with that key, and a production binary must never accept
    /// them. See docs/operations/license.md.
    pub license_trust_test_key: bool,
    /// The SHA-256 (hex) of the platform operator's API token (cloud
    /// edition). Unset: the operator surface under /api/v1/mobius/platform/
    /// is off. Only the hash is configured, so no settings file, environment
    /// or `config` output ever holds the token. See docs/operations/tenants.md.
    pub platform_operator_token_sha256: Option<String>,
    /// Self sign-up of new tenants (cloud edition only): `signUp` in
    /// GraphQL. Needs `public_url` and `smtp_host` while
    /// `signup_verify_email` is on.
    pub signup_enabled: bool,
    /// A new tenant stays closed until the emailed link is followed. Off:
    /// usable at once (for trials behind another gate).
    pub signup_verify_email: bool,
    /// Most tenants one email address may sign up.
    pub signup_max_tenants_per_email: u64,
    /// Sign-ups allowed per client address per hour.
    pub signup_attempts_per_hour_per_client: u32,
    /// How long a verification link works.
    pub signup_link_ttl_hours: u64,
    /// The SMTP server that sends emails.
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_username: Option<String>,
    #[serde(serialize_with = "redact_secret")]
    pub smtp_password: Option<SecretString>,
    /// The sender, e.g. `Mobius <no-reply@example.com>`.
    pub smtp_from: String,
    /// Enrollment attempts allowed per minute from one client address,
    /// counted across replicas. Unset: no limit (fleets often enroll
    /// from behind one NAT address; set it to what a burst of yours needs).
    pub enrollment_attempts_per_minute_per_client: Option<u32>,
    /// `all` (default), `api` (no scheduled jobs) or `worker`.
    pub role: ServerRole,
    /// Scheduled job periods in seconds by job name, overriding the
    /// defaults (`purge-expired` 3600, `prune-cluster` 300,
    /// `audit-chain-sweep` 10, `purge-plan-logs` 3600), e.g.
    /// `{ purge-expired = 600 }`.
    pub job_periods_secs: std::collections::BTreeMap<String, u64>,
    /// Output kept per plan execution, in bytes; beyond it the oldest
    /// lines are dropped (the tail is kept) and the drop is marked.
    pub plan_log_cap_bytes: u64,
    /// Plan output lines are deleted after this many days.
    pub plan_log_retention_days: u32,
    /// Address of the backbone listener (the reverse tunnel: services at
    /// `<service>.<backbone_domain>`). Unset: no backbone.
    pub backbone_listen: Option<SocketAddr>,
    /// The domain services are reached under: `<service>.<domain>`.
    pub backbone_domain: String,
    /// Serve the backbone over TLS with this certificate chain (PEM; a
    /// wildcard `*.<domain>` plus `<domain>`)...
    pub backbone_tls_cert_file: Option<PathBuf>,
    /// ...and this key (PEM). Without both, plain HTTP (behind a TLS proxy).
    pub backbone_tls_key_file: Option<PathBuf>,
    /// Unauthenticated principal registrations allowed per minute from one
    /// client address.
    pub backbone_registrations_per_minute_per_client: u32,
    /// Where software installers are stored: `local` (a directory, the
    /// default) or `s3` (an S3-compatible bucket).
    pub software_storage: String,
    /// The local installer directory. Unset: `<data_dir>/installers`.
    pub software_local_dir: Option<PathBuf>,
    /// The bucket of `software_storage = "s3"`.
    pub software_s3_bucket: Option<String>,
    /// An S3-compatible endpoint (MinIO, Ceph, ...). Unset: AWS.
    pub software_s3_endpoint: Option<String>,
    pub software_s3_region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores need.
    pub software_s3_path_style: bool,
    /// Credentials; unset: the standard AWS environment variables.
    pub software_s3_access_key_id: Option<String>,
    #[serde(serialize_with = "redact_secret")]
    pub software_s3_secret_access_key: Option<SecretString>,
    /// The largest installer accepted, in bytes.
    pub software_max_installer_bytes: u64,
    /// How long a device's signed download URL stays valid.
    pub software_download_url_ttl_secs: u64,
    /// An install still pending after this many days (its device offline)
    /// fails with "device offline too long".
    pub software_install_pending_days: u32,
    /// Live query campaigns and their answers are deleted this many hours
    /// after they started.
    pub live_query_retention_hours: u32,
    /// osquery result and status logs are deleted after this many days.
    pub osquery_log_retention_days: u32,
    /// Requests one osquery node (node key) may make per minute on one
    /// server; beyond it, 429 with `Retry-After`.
    pub osquery_requests_per_minute_per_node: u32,
    /// Largest osquery request body, in bytes (the admin listener's
    /// `request_body_limit_bytes` applies too).
    pub osquery_body_limit_bytes: usize,
    /// The self-service portal's (mobius-cocoon's) public base URL, e.g.
    /// `https://portal.example.com`. Unset: no portal, and agents asking
    /// for a portal link are told so.
    pub portal_url: Option<String>,
    /// How long an agent's portal link token is good for before the agent
    /// asks for the next (it rotates on this period; hourly by default).
    pub portal_link_ttl_secs: u64,
    /// How long a link stays valid after its successor is due, so a link
    /// printed just before a rotation still opens.
    pub portal_link_overlap_secs: u64,
    /// How long a portal session (a browser that opened a link) lasts,
    /// whatever the agent rotates meanwhile.
    pub portal_session_ttl_secs: u64,
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587), required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on the same host or a test server.
    None,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./mobius-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            database_app_url: None,
            database_app_role: "mobius_app".into(),
            database_app_password: None,
            database_max_connections: 16,
            migrate_on_start: true,
            log_format: LogFormat::Auto,
            log_filter: "info,sqlx=warn".into(),
            request_timeout_secs: 30,
            request_body_limit_bytes: 1024 * 1024,
            master_key: None,
            cors_allowed_origins: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            login_attempts_per_minute_per_client: 30,
            login_attempts_per_minute_per_account: 10,
            device_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            device_hostnames: Vec::new(),
            device_tls_cert_file: None,
            device_tls_key_file: None,
            device_tls_ca_file: None,
            device_certificate_ttl_secs: 24 * 3600,
            heartbeat_interval_secs: 30,
            last_seen_write_after_secs: 60,
            client_read_timeout_secs: 10,
            device_limit: None,
            public_url: None,
            billing: None,
            kms: None,
            license_key: None,
            license_trust_test_key: false,
            platform_operator_token_sha256: None,
            signup_enabled: false,
            signup_verify_email: true,
            signup_max_tenants_per_email: 3,
            signup_attempts_per_hour_per_client: 10,
            signup_link_ttl_hours: 48,
            smtp_host: None,
            smtp_port: 587,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password: None,
            smtp_from: "Mobius <no-reply@localhost>".into(),
            enrollment_attempts_per_minute_per_client: None,
            role: ServerRole::All,
            job_periods_secs: std::collections::BTreeMap::new(),
            plan_log_cap_bytes: mobius_core::plans::DEFAULT_LOG_CAP_BYTES,
            plan_log_retention_days: 30,
            backbone_listen: None,
            backbone_domain: "backbone.localhost".into(),
            backbone_tls_cert_file: None,
            backbone_tls_key_file: None,
            backbone_registrations_per_minute_per_client: 10,
            software_storage: "local".into(),
            software_local_dir: None,
            software_s3_bucket: None,
            software_s3_endpoint: None,
            software_s3_region: "us-east-1".into(),
            software_s3_path_style: false,
            software_s3_access_key_id: None,
            software_s3_secret_access_key: None,
            software_max_installer_bytes: 4 * 1024 * 1024 * 1024,
            software_download_url_ttl_secs: 900,
            software_install_pending_days: 7,
            live_query_retention_hours: 24,
            osquery_log_retention_days: 7,
            osquery_requests_per_minute_per_node: 600,
            osquery_body_limit_bytes: 1024 * 1024,
            portal_url: None,
            portal_link_ttl_secs: 3600,
            portal_link_overlap_secs: 300,
            portal_session_ttl_secs: 8 * 3600,
        }
    }
}

/// Every setting name, for the environment provider: `MOBIUS_<NAME>` in
/// upper case. Other `MOBIUS_*` variables (the CLI's, the tests') are not
/// settings of the server and are ignored.
const SETTING_NAMES: &[&str] = &[
    "data_dir",
    "listen",
    "database_url",
    "database_app_url",
    "database_app_role",
    "database_app_password",
    "database_max_connections",
    "migrate_on_start",
    "log_format",
    "log_filter",
    "request_timeout_secs",
    "request_body_limit_bytes",
    "master_key",
    "cors_allowed_origins",
    "tls_cert_file",
    "tls_key_file",
    "login_attempts_per_minute_per_client",
    "login_attempts_per_minute_per_account",
    "device_listen",
    "device_hostnames",
    "device_tls_cert_file",
    "device_tls_key_file",
    "device_tls_ca_file",
    "device_certificate_ttl_secs",
    "heartbeat_interval_secs",
    "last_seen_write_after_secs",
    "client_read_timeout_secs",
    "device_limit",
    "public_url",
    "license_key",
    "license_trust_test_key",
    "platform_operator_token_sha256",
    "signup_enabled",
    "signup_verify_email",
    "signup_max_tenants_per_email",
    "signup_attempts_per_hour_per_client",
    "signup_link_ttl_hours",
    "smtp_host",
    "smtp_port",
    "smtp_tls",
    "smtp_username",
    "smtp_password",
    "smtp_from",
    "enrollment_attempts_per_minute_per_client",
    "role",
    "job_periods_secs",
    "plan_log_cap_bytes",
    "plan_log_retention_days",
    "backbone_listen",
    "backbone_domain",
    "backbone_tls_cert_file",
    "backbone_tls_key_file",
    "backbone_registrations_per_minute_per_client",
    "software_storage",
    "software_local_dir",
    "software_s3_bucket",
    "software_s3_endpoint",
    "software_s3_region",
    "software_s3_path_style",
    "software_s3_access_key_id",
    "software_s3_secret_access_key",
    "software_max_installer_bytes",
    "software_download_url_ttl_secs",
    "software_install_pending_days",
    "live_query_retention_hours",
    "osquery_log_retention_days",
    "osquery_requests_per_minute_per_node",
    "osquery_body_limit_bytes",
    "portal_url",
    "portal_link_ttl_secs",
    "portal_link_overlap_secs",
    "portal_session_ttl_secs",
];

/// Values given as command-line flags; `None` means "not given".
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_app_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<ServerRole>,
}

/// A setting that could not be loaded, with the setting's name in the text.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting: {0}")]
pub struct SettingsError(pub String);

impl Settings {
    /// Loads the layers in order: defaults, `config_file`, `MOBIUS_*`
    /// environment variables, then `flags`.
    pub fn load(
        config_file: Option<&Path>,
        flags: &FlagOverrides,
    ) -> Result<Settings, SettingsError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(SettingsError(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(Env::prefixed("MOBIUS_").only(SETTING_NAMES))
            .merge(Serialized::defaults(flags));
        let settings: Settings = figment
            .extract()
            .map_err(|e| SettingsError(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        for (name, url) in [
            ("database_url", &self.database_url),
            ("database_app_url", &self.database_app_url),
        ] {
            if let Some(url) = url {
                let scheme_ok = url::Url::parse(url.expose_secret())
                    .is_ok_and(|u| matches!(u.scheme(), "postgres" | "postgresql"));
                if !scheme_ok {
                    return Err(SettingsError(format!(
                        "{name} must be a postgres:// URL (leave it unset for the embedded SQLite store)"
                    )));
                }
            }
        }
        mobius_core::db::postgres_roles::valid_role_name(&self.database_app_role)
            .map_err(|e| SettingsError(e.to_string()))?;
        if self.database_max_connections == 0 {
            return Err(SettingsError(
                "database_max_connections must be at least 1".into(),
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(SettingsError(
                "request_timeout_secs must be at least 1".into(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(SettingsError(
                "tls_cert_file and tls_key_file must be set together".into(),
            ));
        }
        let device_files = [
            &self.device_tls_cert_file,
            &self.device_tls_key_file,
            &self.device_tls_ca_file,
        ];
        let given = device_files.iter().filter(|f| f.is_some()).count();
        if given != 0 && given != 3 {
            return Err(SettingsError(
                "device_tls_cert_file, device_tls_key_file and device_tls_ca_file must be set together".into(),
            ));
        }
        if let Some(url) = &self.portal_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(SettingsError(
                "portal_url must be the portal's http:// or https:// base URL".into(),
            ));
        }
        for (name, value) in [
            ("portal_link_ttl_secs", self.portal_link_ttl_secs),
            ("portal_session_ttl_secs", self.portal_session_ttl_secs),
        ] {
            if value == 0 {
                return Err(SettingsError(format!("{name} must be at least 1")));
            }
        }
        if self.device_certificate_ttl_secs < 60 {
            return Err(SettingsError(
                "device_certificate_ttl_secs must be at least 60".into(),
            ));
        }
        if let Some(hash) = &self.platform_operator_token_sha256
            && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(SettingsError(
                "platform_operator_token_sha256 must be the SHA-256 of the token as 64 hex digits \
                 (e.g. `printf %s \"$TOKEN\" | sha256sum`)"
                    .into(),
            ));
        }
        if self.signup_enabled && self.signup_verify_email {
            let url_ok = self.public_url.as_deref().is_some_and(|u| {
                url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            });
            if !url_ok {
                return Err(SettingsError(
                    "signup_enabled with signup_verify_email needs public_url (https://...) for the verification link".into(),
                ));
            }
            if self.smtp_host.is_none() {
                return Err(SettingsError(
                    "signup_enabled with signup_verify_email needs smtp_host to send the verification email".into(),
                ));
            }
        }
        if self.smtp_from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(SettingsError(
                "smtp_from must be an address such as `Mobius <no-reply@example.com>`".into(),
            ));
        }
        if self.client_read_timeout_secs == 0 {
            return Err(SettingsError(
                "client_read_timeout_secs must be at least 1".into(),
            ));
        }
        if self.plan_log_cap_bytes < 1024 || self.plan_log_retention_days == 0 {
            return Err(SettingsError(
                "plan_log_cap_bytes must be at least 1024 and plan_log_retention_days at least 1"
                    .into(),
            ));
        }
        if self.live_query_retention_hours == 0 {
            return Err(SettingsError(
                "live_query_retention_hours must be at least 1".into(),
            ));
        }
        if self.osquery_log_retention_days == 0
            || self.osquery_requests_per_minute_per_node == 0
            || self.osquery_body_limit_bytes < 4096
        {
            return Err(SettingsError(
                "osquery_log_retention_days and osquery_requests_per_minute_per_node must be at least 1, osquery_body_limit_bytes at least 4096"
                    .into(),
            ));
        }
        if self.heartbeat_interval_secs == 0 {
            return Err(SettingsError(
                "heartbeat_interval_secs must be at least 1".into(),
            ));
        }
        if let Some(public_url) = &self.public_url
            && !url::Url::parse(public_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        {
            return Err(SettingsError(format!(
                "public_url: `{public_url}` is not a URL like https://mobius.example.com"
            )));
        }
        if self.backbone_tls_cert_file.is_some() != self.backbone_tls_key_file.is_some() {
            return Err(SettingsError(
                "backbone_tls_cert_file and backbone_tls_key_file must be set together".into(),
            ));
        }
        let domain_ok = !self.backbone_domain.is_empty()
            && self.backbone_domain.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !domain_ok {
            return Err(SettingsError(format!(
                "backbone_domain `{}` is not a lower-case domain name like backbone.example.com",
                self.backbone_domain
            )));
        }
        for origin in &self.cors_allowed_origins {
            // An origin is scheme://host[:port], nothing more: anything else
            // would never match what a browser sends.
            let exact = url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
                    && u.origin().ascii_serialization() == *origin
            });
            if !exact {
                return Err(SettingsError(format!(
                    "cors_allowed_origins: `{origin}` is not an origin like https://admin.example.com"
                )));
            }
        }
        if self.login_attempts_per_minute_per_client == 0
            || self.login_attempts_per_minute_per_account == 0
        {
            return Err(SettingsError(
                "login_attempts_per_minute_* must be at least 1".into(),
            ));
        }
        if self.enrollment_attempts_per_minute_per_client == Some(0) {
            return Err(SettingsError(
                "enrollment_attempts_per_minute_per_client must be at least 1 (or unset)".into(),
            ));
        }
        if self
            .log_filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(SettingsError(format!(
                "log_filter `{}` is not a valid tracing filter",
                self.log_filter
            )));
        }
        Ok(())
    }

    /// Whether the admin listener serves TLS (both files given).
    pub fn serves_tls(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_key_file.is_some()
    }

    /// Whether the store is Postgres (any database URL given).
    pub fn uses_postgres(&self) -> bool {
        self.database_url.is_some() || self.database_app_url.is_some()
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// Shows a URL with its password replaced by `***`.
fn redact_url<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(secret) => match url::Url::parse(secret.expose_secret()) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                s.serialize_str(url.as_str())
            }
            Err(_) => s.serialize_str("***"),
        },
    }
}

fn redact_secret<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(_) => s.serialize_str("***"),
    }
}
