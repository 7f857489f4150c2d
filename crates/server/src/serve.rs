//! Start-up: open the store the settings describe, bring its schema up to
//! date, check the request-path role, create the default tenant on an empty
//! store, then serve until SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mobius_core::Store;
use mobius_core::crypto::sealing::write_private_file;
use mobius_core::db::Backend;
use mobius_core::db::SystemTask;
use mobius_core::db::postgres_roles::{ensure_app_role, request_role_url, verify_request_role};
use mobius_core::identity::ApiTokenUsage;
use mobius_core::identity::Identity;
use mobius_core::identity::access_tokens::AccessTokens;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::admin::graphql::DeviceAdmin;
use crate::admin::graphql::{self, GraphqlState};
use crate::data_dir::DataDirLock;
use crate::device::listener;
use crate::device::tls::{self, TenantCaVerifier};
use crate::device::{self, DeviceState, Trust};
use crate::edition::Edition;
use crate::http::limits::LoginLimiter;
use crate::http::metrics::Metrics;
use crate::http::router::{self, AppState};
use crate::jobs;
use crate::settings::Settings;
use mobius_core::devices::presence::{Presence, Revocations};
use mobius_core::pki::Pki;

/// Name of the embedded store's file inside the data directory.
pub const SQLITE_FILE: &str = "mobius.db";
/// Where the development-mode request role's generated password is kept.
pub const APP_ROLE_PASSWORD_FILE: &str = "postgres-app-role.secret";

/// A server that has opened its store and bound its listener but not yet
/// served a request; [`Server::local_addr`] tells where it listens (useful
/// with port 0).
pub struct Server {
    store: Store,
    /// Held while the server lives (embedded store only).
    _data_dir_lock: Option<DataDirLock>,
    listener: TcpListener,
    router: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    api_token_usage: Arc<ApiTokenUsage>,
    setup_code: Option<String>,
    devices: DeviceSide,
    backbone: Option<crate::backbone::BackboneSide>,
    client_read_timeout_secs: u64,
    /// The gate and the default tenant, for the daily license log line.
    license_watch: (Arc<dyn mobius_core::authz::Entitlements>, mobius_core::Uuid),
    cluster: ClusterSide,
}

/// What coordinates this process with other replicas on the same store.
struct ClusterSide {
    bus: crate::cluster::Bus,
    metrics: Arc<Metrics>,
    role: crate::settings::ServerRole,
    job_periods_secs: std::collections::BTreeMap<String, u64>,
    osquery_log_retention_days: u32,
}

/// The device listener and what runs beside it.
struct DeviceSide {
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: axum::Router,
    presence: Arc<Presence>,
    revocations: Arc<Revocations>,
    trust: Arc<Trust>,
    revocation_lookback: chrono::Duration,
    plans: crate::device::PlanServices,
    plan_log_retention_days: u32,
    software_install_pending_days: u32,
    queries: crate::queries::QueryServices,
    heartbeat_interval_secs: u64,
}

impl Server {
    pub async fn prepare(settings: &Settings, edition: &Edition) -> anyhow::Result<Server> {
        install_crypto_provider();
        raise_open_file_limit();
        // Load TLS material first: a bad certificate must stop start-up
        // before anything announces itself as listening.
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "loading TLS certificate {} and key {} (settings tls_cert_file, tls_key_file)",
                            cert.display(),
                            key.display()
                        )
                    })?,
            ),
            _ => None,
        };
        // Refuse a cloud binary without Postgres before touching the disk.
        if edition.requires_postgres && !settings.uses_postgres() {
            bail!(
                "the {} edition needs Postgres: set `database_url` (--database-url or MOBIUS_DATABASE_URL)",
                edition.name
            );
        }
        crate::data_dir::make_private(&settings.data_dir)?;
        // One server per embedded store: the lock is taken before the
        // store is opened, so a second server changes nothing.
        let data_dir_lock = if settings.uses_postgres() {
            None
        } else {
            Some(DataDirLock::acquire(&settings.data_dir)?)
        };
        let store = open_store(settings, edition, settings.migrate_on_start).await?;
        let (tenant_id, created) = store
            .ensure_default_tenant()
            .await
            .context("creating the default tenant")?;
        if created {
            tracing::info!(tenant_id = %tenant_id.id(), "empty store: created the default tenant and its default site");
        }
        let names = edition.provider.describe(settings);
        let services = edition.provider.start(settings, &store).await?;
        tracing::info!(
            edition = edition.name,
            sealer = %names.sealer,
            entitlements = %names.entitlements,
            "edition services"
        );
        let sealer = services.sealer.clone();
        let access = AccessTokens::load(store.clone(), sealer.clone())
            .await
            .context("loading the JWT signing keys")?;
        let identity = Identity::new(store.clone(), Arc::new(access));
        let backbone =
            crate::backbone::BackboneSide::prepare(settings, &store, &identity, sealer.clone())
                .await?;
        let setup_code = identity
            .issue_setup_code()
            .await
            .context("issuing the setup code")?;
        // After the setup code, whose start-up step reads the default
        // tenant: a suspended default tenant must not stop the server.
        store
            .refresh_tenant_blocks()
            .await
            .context("loading suspended tenants")?;

        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (setting `listen`)", settings.listen))?;

        // The device side: server identity, tenant CAs, the mTLS listener.
        let certificate_ttl =
            chrono::Duration::seconds(settings.device_certificate_ttl_secs as i64);
        let plans = crate::device::PlanServices {
            signer: Arc::new(mobius_core::plans::PlanSigner::new(sealer.clone())),
            notifier: Arc::new(crate::device::WorkNotifier::default()),
            events: crate::device::PlanEvents::default(),
            log_cap_bytes: settings.plan_log_cap_bytes,
        };
        let software = crate::software::SoftwareServices::from_settings(settings)?;
        let pki = Arc::new(Pki::new(sealer, certificate_ttl));
        {
            let scope = store
                .begin(&SystemTask::new("default-tenant-ca", tenant_id.id()))
                .await?;
            pki.current_ca(&scope, &mobius_core::audit::Actor::system())
                .await?;
            scope.commit().await?;
        }
        let configured = match (
            &settings.device_tls_cert_file,
            &settings.device_tls_key_file,
            &settings.device_tls_ca_file,
        ) {
            (Some(c), Some(k), Some(a)) => Some((c.as_path(), k.as_path(), a.as_path())),
            _ => None,
        };
        // Files when configured; on Postgres the CA every replica shares;
        // on the embedded store the one generated in the data directory.
        let server_identity = if configured.is_none() && settings.uses_postgres() {
            crate::cluster::identity::shared_server_identity(
                &store,
                services.sealer.clone(),
                &settings.data_dir,
                &settings.device_hostnames,
            )
            .await
            .context("loading the device listener's TLS identity from the shared store")?
        } else {
            tls::server_identity(&settings.data_dir, configured, &settings.device_hostnames)
                .context("loading the device listener's TLS identity")?
        };
        let verifier = Arc::new(TenantCaVerifier::new());
        let trust = Arc::new(Trust::new(store.clone(), verifier.clone(), pki.clone()));
        trust.reload().await.context("loading the tenant CAs")?;
        let revocations = Arc::new(Revocations::default());
        revocations
            .poll(&store, certificate_ttl)
            .await
            .context("loading revoked devices")?;
        let presence = Arc::new(Presence::new(std::time::Duration::from_secs(
            settings.last_seen_write_after_secs,
        )));
        let device_listener = TcpListener::bind(settings.device_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (setting `device_listen`)",
                    settings.device_listen
                )
            })?;
        let bus = crate::cluster::Bus::new(store.clone());
        let queries = crate::queries::QueryServices {
            store: store.clone(),
            bus: bus.clone(),
            notifier: plans.notifier.clone(),
            presence: presence.clone(),
            events: crate::queries::QueryEvents::default(),
            sealer: services.sealer.clone(),
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
            last_seen_write_after_secs: settings.last_seen_write_after_secs,
            retention_hours: settings.live_query_retention_hours,
            answers: crate::queries::answers::AnswerWriter::start(store.clone()),
            own_addresses: Arc::new(own_addresses(
                settings,
                &[
                    listener.local_addr().ok(),
                    device_listener.local_addr().ok(),
                ],
            )),
        };
        let options = crate::osquery::OptionsHub::start(bus.clone());
        let portal = crate::portal::PortalServices::from_settings(settings);
        let portal_rest = crate::portal::rest::router(crate::portal::rest::PortalRestState {
            store: store.clone(),
            portal: portal.clone(),
            plans: plans.clone(),
            presence: presence.clone(),
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
        });
        let device_state = DeviceState {
            store: store.clone(),
            pki: pki.clone(),
            entitlements: services.entitlements.clone(),
            presence: presence.clone(),
            revocations: revocations.clone(),
            trust: trust.clone(),
            server_ca_pem: Arc::new(server_identity.ca_pem.clone()),
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
            enrollment_limit: settings.enrollment_attempts_per_minute_per_client.map(|n| {
                Arc::new(crate::cluster::limits::EnrollmentLimiter::new(
                    n,
                    store.clone(),
                ))
            }),
            plans: plans.clone(),
            software: software.clone(),
            queries: queries.clone(),
            options: options.clone(),
            portal: portal.clone(),
        };
        let devices = DeviceSide {
            listener: device_listener,
            tls: tls::server_config(&server_identity, verifier)?,
            router: device::router(device_state),
            presence: presence.clone(),
            revocations: revocations.clone(),
            trust: trust.clone(),
            revocation_lookback: certificate_ttl,
            plans: plans.clone(),
            plan_log_retention_days: settings.plan_log_retention_days,
            software_install_pending_days: settings.software_install_pending_days,
            queries: queries.clone(),
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
        };
        let signup = match (settings.signup_enabled, services.self_signup) {
            (true, true) => {
                tracing::info!(
                    verify_email = settings.signup_verify_email,
                    "self sign-up on: signUp in GraphQL"
                );
                Some(Arc::new(graphql::signup::SignUpService {
                    pki: pki.clone(),
                    policy: mobius_core::tenancy::SignUpPolicy {
                        verify_email: settings.signup_verify_email,
                        link_ttl: chrono::Duration::hours(settings.signup_link_ttl_hours as i64),
                        max_tenants_per_email: settings.signup_max_tenants_per_email,
                    },
                    limiter: crate::http::limits::SignUpLimiter::new(
                        settings.signup_attempts_per_hour_per_client,
                    ),
                    mailer: crate::mail::Mailer::from_settings(settings)
                        .context("setting up SMTP (settings smtp_*)")?,
                    public_url: settings.public_url.clone().unwrap_or_default(),
                    trust: trust.clone(),
                }))
            }
            (true, false) => {
                tracing::warn!(
                    "signup_enabled is set, but the {} edition is single-tenant: no sign-up",
                    edition.name
                );
                None
            }
            (false, _) => None,
        };
        let device_admin = DeviceAdmin {
            pki,
            trust,
            revocations,
            presence,
            ca_pin: server_identity.ca_pin,
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
        };
        let api_token_usage = Arc::new(ApiTokenUsage::default());
        let limiter = LoginLimiter::new(
            settings.login_attempts_per_minute_per_client,
            settings.login_attempts_per_minute_per_account,
        )
        .shared_across_replicas(
            crate::cluster::limits::SharedCounter::new(store.clone()),
            settings.login_attempts_per_minute_per_client,
            settings.login_attempts_per_minute_per_account,
        );
        let identity_for_sso = identity.clone();
        let graphql = GraphqlState {
            schema: graphql::schema(Some(graphql::Services {
                store: store.clone(),
                identity: identity.clone(),
                limiter,
                devices: device_admin,
                sealer: services.sealer.clone(),
                entitlements: services.entitlements.clone(),
                signup: signup.clone(),
                plans: plans.clone(),
                saml: services.saml.clone(),
                queries: queries.clone(),
                options: options.clone(),
            })),
            store: store.clone(),
            identity,
            api_token_usage: api_token_usage.clone(),
            entitlements: services.entitlements.clone(),
        };
        let metrics = Metrics::new();
        let state = AppState {
            store: store.clone(),
            metrics: metrics.clone(),
        };
        let rest = crate::admin::rest::sso::routes(crate::admin::rest::sso::SsoState::new(
            store.clone(),
            identity_for_sso,
            services.sealer.clone(),
            services.saml.clone(),
            services.entitlements.clone(),
            settings,
        )?)
        .merge(crate::osquery::router(
            crate::osquery::OsqueryState::new(
                store.clone(),
                services.entitlements.clone(),
                options,
                queries,
                settings.osquery_requests_per_minute_per_node,
            ),
            settings.osquery_body_limit_bytes,
        ))
        .merge(portal_rest);
        let platform = match (
            &settings.platform_operator_token_sha256,
            services.platform_operator,
        ) {
            (Some(hash), true) => {
                tracing::info!("platform operator surface on: /api/v1/mobius/platform/");
                crate::admin::rest::platform::router(store.clone(), hash, software.storage.clone())
            }
            (Some(_), false) => {
                tracing::warn!(
                    "platform_operator_token_sha256 is set, but the {} edition has no platform operator (single-tenant): ignored",
                    edition.name
                );
                None
            }
            (None, _) => None,
        };
        let signup_routes = signup
            .as_ref()
            .map(|_| crate::admin::rest::signup::router(store.clone()));
        let tenant_routes = match (platform, signup_routes) {
            (Some(platform), Some(signup)) => Some(platform.merge(signup)),
            (platform, signup) => platform.or(signup),
        };
        let software_rest =
            crate::software::rest::router(crate::software::rest::SoftwareRestState {
                graphql: graphql.clone(),
                software: software.clone(),
                plans: plans.clone(),
            });
        let router = router::router_with(state, settings, Some(graphql), rest, tenant_routes)
            .merge(services.routes)
            .merge(software_rest);
        Ok(Server {
            store,
            _data_dir_lock: data_dir_lock,
            listener,
            router,
            tls,
            api_token_usage,
            setup_code,
            devices,
            backbone,
            client_read_timeout_secs: settings.client_read_timeout_secs,
            license_watch: (services.entitlements.clone(), tenant_id.id()),
            cluster: ClusterSide {
                bus,
                metrics,
                role: settings.role,
                job_periods_secs: settings.job_periods_secs.clone(),
                osquery_log_retention_days: settings.osquery_log_retention_days,
            },
        })
    }

    /// Where the device listener listens.
    pub fn device_addr(&self) -> SocketAddr {
        self.devices
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The one-time setup code, when the store has no user yet.
    pub fn setup_code(&self) -> Option<&str> {
        self.setup_code.as_deref()
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish, and closes the store.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        if let Some(code) = &self.setup_code {
            tracing::warn!(setup_code = %code, "no user yet: finish setup with this one-time code");
            println!(
                "\nMobius has no users yet. Create the first owner with this one-time code:\n\n    \
                 mobius setup --server {url} --code {code} --email you@example.com --display-name 'Your Name'\n"
            );
        }
        // One shutdown signal, shared by both listeners.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let device_addr = self.device_addr();
        let devices = self.devices;
        tracing::info!(address = %device_addr, url = %format!("https://{device_addr}"), "device listener listening");
        let device_listener = tokio::spawn(listener::serve(
            devices.listener,
            devices.tls,
            devices.router,
            Duration::from_secs(self.client_read_timeout_secs),
            listener::device_keepalive(
                Duration::from_secs(self.client_read_timeout_secs),
                Duration::from_secs(devices.heartbeat_interval_secs),
            ),
            stopped(stop_rx.clone()),
        ));
        let backbone = self.backbone.map(|backbone| {
            if let Some(addr) = backbone.local_addr() {
                tracing::info!(address = %addr, "backbone listening");
            }
            tokio::spawn(backbone.run(stopped(stop_rx.clone())))
        });
        let mut background = vec![
            tokio::spawn(jobs::flush_usage_periodically(
                self.store.clone(),
                self.api_token_usage.clone(),
            )),
            tokio::spawn(jobs::flush_presence_periodically(
                self.store.clone(),
                devices.presence.clone(),
            )),
            tokio::spawn(jobs::poll_revocations(
                self.store.clone(),
                devices.revocations.clone(),
                devices.revocation_lookback,
            )),
            tokio::spawn(jobs::reload_trust_periodically(devices.trust.clone())),
            tokio::spawn(jobs::chain_audit_periodically(self.store.clone())),
            tokio::spawn(jobs::refresh_tenant_blocks(self.store.clone())),
            tokio::spawn(jobs::log_license_daily(
                self.license_watch.0.clone(),
                self.license_watch.1,
            )),
            tokio::spawn({
                // Work streams never finish on their own: end them at the
                // stop signal so the device listener drains at once.
                let notifier = devices.plans.notifier.clone();
                let stop = stopped(stop_rx.clone());
                async move {
                    stop.await;
                    notifier.close_all();
                }
            }),
        ];
        let cluster = self.cluster;
        background.push(tokio::spawn(crate::queries::relay::run(
            devices.queries.clone(),
        )));
        if cluster.bus.is_shared() {
            background.push(tokio::spawn(cluster.bus.clone().run()));
            background.push(tokio::spawn(crate::cluster::relay::announce_commits(
                self.store.clone(),
                cluster.bus.clone(),
            )));
            background.push(tokio::spawn(crate::cluster::relay::apply_remote(
                self.store.clone(),
                cluster.bus.clone(),
                devices.revocations.clone(),
                devices.trust.clone(),
                devices.plans.notifier.clone(),
            )));
        }
        if cluster.role.runs_jobs() {
            let scheduler = jobs::scheduler::Scheduler::new(
                self.store.clone(),
                node_name(addr),
                &cluster.job_periods_secs,
                jobs::scheduler::Retention {
                    revocation_lookback: devices.revocation_lookback,
                    plan_logs: chrono::Duration::days(i64::from(devices.plan_log_retention_days)),
                },
                cluster.metrics.clone(),
            )
            .with_queries(devices.queries.clone())
            .with_osquery_log_retention(cluster.osquery_log_retention_days)
            .with_software_expiry(
                devices.software_install_pending_days,
                devices.plans.notifier.clone(),
            );
            background.push(tokio::spawn(scheduler.run()));
        }
        tracing::info!(role = ?cluster.role, shared_bus = cluster.bus.is_shared(), "cluster role");
        // After the setup code and the device listener, so whoever waits
        // for this line has all three.
        tracing::info!(address = %addr, url = %url, "admin API listening");
        let shutdown = stopped(stop_rx);
        match self.tls {
            None => {
                crate::http::plain::serve(
                    self.listener,
                    self.router,
                    Duration::from_secs(self.client_read_timeout_secs),
                    shutdown,
                )
                .await
            }
            Some(config) => {
                let app = self
                    .router
                    .into_make_service_with_connect_info::<SocketAddr>();
                let handle = axum_server::Handle::new();
                let on_signal = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    on_signal.graceful_shutdown(Some(Duration::from_secs(30)));
                });
                axum_server::from_tcp_rustls(self.listener.into_std()?, config)?
                    .handle(handle)
                    .serve(app)
                    .await
                    .context("serving the admin API over TLS")?;
            }
        }
        if let Some(backbone) = backbone {
            backbone.abort();
        }
        if let Err(err) = device_listener.await {
            tracing::warn!(error = %err, "device listener task failed");
        }
        for task in background {
            task.abort();
        }
        if let Err(err) = devices.presence.flush_all(&self.store).await {
            tracing::warn!(error = %err, "could not write device last-seen times at shutdown");
        }
        if let Err(err) = self.api_token_usage.flush(&self.store).await {
            tracing::warn!(error = %err, "could not write API-token use times at shutdown");
        }
        tracing::info!("in-flight requests drained; closing the store");
        self.store.close().await.context("closing the store")?;
        Ok(())
    }
}

/// This process's name in job records: host name (the pod or task name in
/// containers), process id and admin address.
fn node_name(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mobius".to_owned());
    format!("{host}:{}:{}", std::process::id(), addr.port())
}

/// The scheduled jobs' records (`mobius-server jobs`).
pub async fn job_records(
    settings: &Settings,
) -> anyhow::Result<Vec<mobius_core::db::cluster::JobRecord>> {
    // Read-only: connect as whichever role is configured, without the
    // role set-up `serve` does (which could reset a development password).
    let store = match (&settings.database_app_url, &settings.database_url) {
        (Some(url), _) | (None, Some(url)) => Store::open_postgres(url, 1)
            .await
            .context("connecting to Postgres")?,
        (None, None) => {
            let path = settings.data_dir.join(SQLITE_FILE);
            if !path.is_file() {
                bail!(
                    "no embedded store at {} (setting `data_dir`)",
                    path.display()
                );
            }
            Store::open_sqlite(&path)
                .await
                .with_context(|| format!("opening the embedded store at {}", path.display()))?
        }
    };
    let records = store.job_records().await?;
    store.close().await?;
    Ok(records)
}

/// `mobius-server healthcheck`: GET /healthz on the admin listener (plain
/// HTTP; with TLS on the admin listener, a TCP connect is the check).
pub async fn healthcheck(settings: &Settings) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = settings.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if settings.serves_tls() {
            return Ok::<bool, std::io::Error>(true);
        }
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => bail!("{addr}/healthz did not answer 200"),
        Ok(Err(err)) => bail!("cannot reach {addr}: {err}"),
        Err(_) => bail!("{addr}/healthz did not answer within 3 s"),
    }
}

/// `mobius-server backup --to FILE`: an online copy of the embedded store.
pub async fn backup(settings: &Settings, to: &std::path::Path) -> anyhow::Result<()> {
    if settings.uses_postgres() {
        bail!(
            "`backup` copies the embedded SQLite store; back up Postgres with pg_dump or \
             point-in-time recovery (docs/operations/backup.md)"
        );
    }
    let path = settings.data_dir.join(SQLITE_FILE);
    if !path.is_file() {
        bail!(
            "no embedded store at {} (setting `data_dir`)",
            path.display()
        );
    }
    // Opened beside the running server (WAL allows it), without migrating.
    let store = Store::open_sqlite(&path)
        .await
        .with_context(|| format!("opening the embedded store at {}", path.display()))?;
    store
        .backup_embedded_to(to)
        .await
        .with_context(|| format!("writing {}", to.display()))?;
    store.close().await?;
    Ok(())
}

/// Every agent holds a connection, and each is a file descriptor: raise
/// the soft limit to the hard one (systemd's default soft limit of 1,024
/// would refuse agents after about a thousand).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// rustls finds two crypto providers linked in (ring through sqlx,
/// aws-lc-rs through axum-server) and will not guess; pick aws-lc-rs once
/// for the whole process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}

/// Opens the request-path store.
///
/// - No database URL: the embedded SQLite store in the data directory.
/// - `database_url` (owner) only: migrate as the owner, create the
///   request role if missing (password from settings or generated once into
///   the data directory), then log in as that role.
/// - `database_app_url`: log in as that role (migrating first through
///   `database_url` when both are given).
///
/// On Postgres the request role is verified before anything is served.
pub async fn open_store(
    settings: &Settings,
    edition: &Edition,
    migrate: bool,
) -> anyhow::Result<Store> {
    if !settings.uses_postgres() {
        if edition.requires_postgres {
            bail!(
                "the {} edition needs Postgres: set `database_url` (--database-url or MOBIUS_DATABASE_URL)",
                edition.name
            );
        }
        let path = settings.data_dir.join(SQLITE_FILE);
        let store = Store::open_sqlite(&path)
            .await
            .with_context(|| format!("opening the embedded store at {}", path.display()))?;
        // The embedded store has one role, so it always migrates itself.
        store
            .migrate()
            .await
            .context("migrating the embedded store")?;
        tracing::info!(path = %path.display(), "using the embedded SQLite store (single tenant)");
        return Ok(store);
    }

    let app_url = match (&settings.database_url, &settings.database_app_url) {
        (Some(owner_url), app_url) => {
            let owner = Store::open_postgres(owner_url, 2)
                .await
                .context("connecting to Postgres with `database_url`")?;
            if migrate {
                owner.migrate().await.context("running migrations")?;
            }
            let url = match app_url {
                Some(app_url) => {
                    let role = url_user(app_url, "database_app_url")?;
                    ensure_app_role(&owner, &role, None)
                        .await
                        .with_context(|| format!("granting privileges to `{role}`"))?;
                    app_url.clone()
                }
                None => {
                    let password = app_role_password(settings)?;
                    ensure_app_role(&owner, &settings.database_app_role, Some(&password))
                        .await
                        .with_context(|| {
                            format!("creating the request role `{}`", settings.database_app_role)
                        })?;
                    request_role_url(owner_url, &settings.database_app_role, &password)?
                }
            };
            owner
                .close()
                .await
                .context("closing the owner connection")?;
            url
        }
        (None, Some(app_url)) => app_url.clone(),
        (None, None) => unreachable!("uses_postgres() checked that one URL is set"),
    };
    let store = Store::open_postgres(&app_url, settings.database_max_connections)
        .await
        .context("connecting to Postgres as the request role")?;
    verify_request_role(&store).await?;
    debug_assert_eq!(store.backend(), Backend::Postgres);
    tracing::info!(
        "using Postgres; request role verified: not superuser, no BYPASSRLS, owns no tables"
    );
    Ok(store)
}

/// Applies migrations (and grants) and returns the list still pending
/// afterwards (empty on success).
pub async fn migrate(settings: &Settings, edition: &Edition) -> anyhow::Result<Vec<String>> {
    if settings.uses_postgres() && settings.database_url.is_none() {
        bail!(
            "migrations run as the schema owner: set `database_url` (--database-url or MOBIUS_DATABASE_URL)"
        );
    }
    let store = open_store(settings, edition, true).await?;
    let pending = store.pending_migrations().await?;
    store.close().await?;
    Ok(pending)
}

/// Adds a signing key and makes it current (running servers pick it up
/// when they first see a token signed with it).
pub async fn rotate_signing_key(
    settings: &Settings,
    edition: &Edition,
) -> anyhow::Result<mobius_core::Uuid> {
    let store = open_store(settings, edition, false).await?;
    let services = edition.provider.build(settings)?;
    let access = AccessTokens::load(store.clone(), services.sealer).await?;
    let kid = access.rotate().await?;
    store.close().await?;
    Ok(kid)
}

fn url_user(url: &SecretString, setting: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url.expose_secret())
        .with_context(|| format!("`{setting}` is not a URL"))?;
    if parsed.username().is_empty() {
        bail!("`{setting}` must name the role to log in as (postgres://ROLE:PASSWORD@host/db)");
    }
    Ok(parsed.username().to_owned())
}

/// The development request role's password: the setting if given, else
/// the one generated on first run and kept (mode 0600) in the data directory.
fn app_role_password(settings: &Settings) -> anyhow::Result<SecretString> {
    if let Some(password) = &settings.database_app_password {
        return Ok(password.clone());
    }
    let path = settings.data_dir.join(APP_ROLE_PASSWORD_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(SecretString::from(existing.to_owned()));
        }
    }
    // 32 alphanumerics: ~190 bits, and nothing that needs URL escaping.
    let generated = Alphanumeric.sample_string(&mut rand::rng(), 32);
    write_private_file(&path, &generated)
        .with_context(|| format!("storing the request role's password in {}", path.display()))?;
    Ok(SecretString::from(generated))
}

/// The `host:port` forms this server answers on (its bound listeners and
/// `public_url`), which a policy webhook may not name.
fn own_addresses(settings: &Settings, bound: &[Option<SocketAddr>]) -> Vec<String> {
    let mut own: Vec<String> = bound.iter().flatten().map(ToString::to_string).collect();
    own.push(settings.listen.to_string());
    own.push(settings.device_listen.to_string());
    if let Some(url) = settings
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
    {
        own.push(format!("{host}:{port}"));
    }
    own
}
