//! Single sign-on over HTTP: `GET /api/v1/mobius/sso/{tenant}/oidc/start`
//! sends the browser to the tenant's identity provider, `.../callback`
//! receives it back, and `POST .../oidc/cli-token` lets `mobius login
//! --sso` redeem the one-time code its loopback listener received.
//!
//! A browser sign-in ends with the same session as password login: the
//! refresh token in the HttpOnly `mobius_refresh` cookie plus the
//! `mobius_csrf` double-submit cookie (the SPA then calls
//! `refreshSession`), and a redirect to a target checked against the
//! tenant's allow-list. Every refusal is audited (`sso.sign_in_refused`).

mod oidc;
mod saml;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};

use crate::admin::graphql::Peer;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mobius_core::Store;
use mobius_core::authz::Entitlements;
use mobius_core::crypto::sealing::SecretSealer;
use mobius_core::db::FoundTenant;
use mobius_core::identity::sso::saml::SamlProtocol;
use mobius_core::identity::sso::{SsoConfig, SsoError, SsoOutcome};
use mobius_core::identity::{Identity, RequestMeta, Session};
use serde::{Deserialize, Serialize};

use crate::http::errors::{ApiError, ErrorCode};
use crate::http::limits::LoginLimiter;
use crate::settings::Settings;

pub use oidc::OidcProviders;
pub(crate) use saml::fetch_metadata as fetch_saml_metadata;

/// Must match the GraphQL session cookies (`admin/graphql/identity/session.rs`):
/// `refreshSession` reads these.
const REFRESH_COOKIE: &str = "mobius_refresh";
const CSRF_COOKIE: &str = "mobius_csrf";

/// What the SSO handlers share.
#[derive(Clone)]
pub struct SsoState {
    store: Store,
    identity: Identity,
    sealer: Arc<dyn SecretSealer>,
    providers: Arc<OidcProviders>,
    /// The edition's SAML engine (none in the OSS edition).
    saml: Option<Arc<dyn SamlProtocol>>,
    /// The premium gate SAML passes first.
    entitlements: Arc<dyn Entitlements>,
    limiter: Arc<LoginLimiter>,
    public_url: Option<String>,
    scheme: &'static str,
}

impl SsoState {
    pub fn new(
        store: Store,
        identity: Identity,
        sealer: Arc<dyn SecretSealer>,
        saml: Option<Arc<dyn SamlProtocol>>,
        entitlements: Arc<dyn Entitlements>,
        settings: &Settings,
    ) -> anyhow::Result<SsoState> {
        Ok(SsoState {
            store,
            identity,
            sealer,
            providers: Arc::new(OidcProviders::new()?),
            saml,
            entitlements,
            limiter: Arc::new(LoginLimiter::new(
                settings.login_attempts_per_minute_per_client,
                settings.login_attempts_per_minute_per_account,
            )),
            public_url: settings
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            scheme: if settings.serves_tls() {
                "https"
            } else {
                "http"
            },
        })
    }
}

/// The SSO routes.
pub fn routes(state: SsoState) -> Router {
    Router::new()
        .route("/api/v1/mobius/sso/{tenant}/oidc/start", get(oidc::start))
        .route(
            "/api/v1/mobius/sso/{tenant}/oidc/callback",
            get(oidc::callback),
        )
        .route(
            "/api/v1/mobius/sso/{tenant}/oidc/cli-token",
            post(cli_token),
        )
        .route(
            "/api/v1/mobius/sso/{tenant}/saml/metadata",
            get(saml::metadata),
        )
        .route("/api/v1/mobius/sso/{tenant}/saml/login", get(saml::login))
        .route("/api/v1/mobius/sso/{tenant}/saml/acs", post(saml::acs))
        .route(
            "/api/v1/mobius/sso/saml/config",
            get(saml::get_config).put(saml::put_config),
        )
        .with_state(state)
}

fn meta(peer: Option<SocketAddr>, headers: &HeaderMap) -> RequestMeta {
    RequestMeta {
        ip: peer.map(|p| p.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect()),
    }
}

/// Exhaustive: a new refusal needs a decision here.
fn sso_error(err: SsoError) -> ApiError {
    let message = err.to_string();
    match err {
        SsoError::NotConfigured => ApiError::new(ErrorCode::NotFound, message),
        SsoError::InvalidState => ApiError {
            field: Some("state".into()),
            ..ApiError::new(ErrorCode::BadUserInput, message)
        },
        SsoError::InvalidRedirect(_) => ApiError {
            field: Some("redirect_to".into()),
            ..ApiError::new(ErrorCode::BadUserInput, message)
        },
        SsoError::ProviderRefused(_)
        | SsoError::InvalidIdToken(_)
        | SsoError::InvalidAssertion(_)
        | SsoError::Unsolicited
        | SsoError::Replayed
        | SsoError::InvalidHandoff => ApiError::new(ErrorCode::Unauthenticated, message),
        SsoError::EmailMissing | SsoError::EmailDomainNotAllowed(_) | SsoError::NoAccount => {
            ApiError::new(ErrorCode::Forbidden, message)
        }
        SsoError::ProviderUnavailable(ref cause) => {
            tracing::warn!(error = %cause, "identity provider unavailable");
            ApiError {
                retryable: true,
                ..ApiError::new(
                    ErrorCode::Internal,
                    "the identity provider could not be reached; try again later",
                )
            }
        }
        SsoError::Store(e) => ApiError::from(e),
    }
}

impl SsoState {
    /// The tenant the URL names, with its enabled configuration.
    async fn tenant_config(&self, slug: &str) -> Result<(FoundTenant, SsoConfig), ApiError> {
        let tenant = self
            .store
            .tenant_by_slug(slug)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such tenant"))?;
        let scope = self.store.begin(&tenant).await?;
        let config = scope
            .sso()
            .config()
            .await?
            .filter(|c| c.enabled)
            .ok_or_else(|| sso_error(SsoError::NotConfigured))?;
        Ok((tenant, config))
    }

    fn limit(&self, meta: &RequestMeta) -> Result<(), ApiError> {
        self.limiter
            .check_client(meta.ip.as_deref().unwrap_or("unknown"))
            .map_err(|limit| {
                ApiError::new(
                    ErrorCode::RateLimited,
                    format!("too many attempts; retry in {} s", limit.retry_after_secs),
                )
            })
    }

    /// This server's base URL as the browser sees it.
    fn base_url(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(url) = &self.public_url {
            return Ok(url.clone());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    })
            })
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadUserInput,
                    "missing Host header; set `public_url`",
                )
            })?;
        Ok(format!("{}://{host}", self.scheme))
    }

    /// Audits a refusal, then answers it.
    async fn refuse(&self, tenant: &FoundTenant, err: SsoError, meta: &RequestMeta) -> ApiError {
        if let Err(audit) = self
            .identity
            .record_sso_refusal(tenant, "oidc", &err, meta)
            .await
        {
            return ApiError::from(audit);
        }
        tracing::info!(reason = err.reason(), error = %err, "single sign-on refused");
        sso_error(err)
    }
}

/// Where to send the browser after sign-in: a path on this server, or an
/// absolute URL whose origin the tenant allowed. Anything else (other
/// hosts, `//host`, backslashes) would make this an open redirect.
fn checked_redirect(config: &SsoConfig, target: Option<&str>) -> Result<String, SsoError> {
    let target = target.unwrap_or("/");
    if target.starts_with('/') && !target.starts_with("//") && !target.contains('\\') {
        return Ok(target.to_owned());
    }
    let url = url::Url::parse(target)
        .map_err(|_| SsoError::InvalidRedirect("not a path or URL".into()))?;
    let origin = url.origin().ascii_serialization();
    if config.allowed_redirect_origins.contains(&origin) {
        Ok(url.to_string())
    } else {
        Err(SsoError::InvalidRedirect(format!(
            "{origin} is not in the tenant's allowed redirect origins"
        )))
    }
}

/// The session as cookies plus a redirect: what a browser sign-in ends with.
fn session_redirect(session: Session, redirect_to: &str) -> Response {
    let max_age = mobius_core::identity::REFRESH_TOKEN_DAYS * 24 * 3600;
    let csrf = mobius_core::crypto::secrets::generate("");
    let mut response = Redirect::to(redirect_to).into_response();
    for cookie in [
        format!(
            "{REFRESH_COOKIE}={}; Path=/api/graphql; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict",
            session.refresh_token
        ),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict"),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

fn outcome_response(outcome: SsoOutcome) -> Response {
    match outcome {
        SsoOutcome::Session {
            session,
            redirect_to,
        } => session_redirect(session, &redirect_to),
        SsoOutcome::CliHandoff { code, redirect_to } => {
            let mut url = match url::Url::parse(&redirect_to) {
                Ok(url) => url,
                Err(_) => {
                    return ApiError::new(ErrorCode::Internal, "bad loopback address")
                        .into_response();
                }
            };
            url.query_pairs_mut().append_pair("code", &code);
            Redirect::to(url.as_str()).into_response()
        }
    }
}

#[derive(Deserialize)]
struct CliTokenRequest {
    code: String,
    code_verifier: String,
}

/// The session `mobius login --sso` stores, as the CLI's `login` does.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CliSession {
    access_token: String,
    access_token_expires_at: chrono::DateTime<chrono::Utc>,
    refresh_token: String,
    email: String,
    tenant_id: uuid::Uuid,
}

/// `POST .../oidc/cli-token`: the CLI redeems its one-time code with the
/// verifier of the challenge it sent to `start`.
async fn cli_token(
    State(state): State<SsoState>,
    Path(slug): Path<String>,
    Peer(connect): Peer,
    headers: HeaderMap,
    body: Result<Json<CliTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<CliSession>, ApiError> {
    let meta = meta(connect, &headers);
    state.limit(&meta)?;
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            ErrorCode::BadUserInput,
            format!(
                "expected JSON {{\"code\", \"code_verifier\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let (tenant, _) = state.tenant_config(&slug).await?;
    match state
        .identity
        .redeem_sso_handoff(&tenant, &body.code, &body.code_verifier, &meta)
        .await
    {
        Ok(session) => Ok(Json(CliSession {
            access_token: session.access_token,
            access_token_expires_at: session.access_token_expires_at,
            refresh_token: session.refresh_token,
            email: session.user.email,
            tenant_id: session.user.tenant_id,
        })),
        Err(err) => Err(state.refuse(&tenant, err, &meta).await),
    }
}
