//! SAML single sign-on over HTTP (a premium feature; the engine comes from
//! the edition, see [`mobius_core::identity::sso::saml::SamlProtocol`]):
//!
//! - `GET /api/v1/mobius/sso/{tenant}/saml/metadata`: this SP's metadata
//!   (entity id = this URL, ACS below), to give the IdP;
//! - `GET .../saml/login?redirect_to=/path`: SP-initiated sign-in, an
//!   AuthnRequest through the HTTP-Redirect binding with a random
//!   RelayState bound to the request's id;
//! - `POST .../saml/acs`: the Assertion Consumer Service (HTTP-POST);
//! - `GET`/`PUT /api/v1/mobius/sso/saml/config`: the tenant's IdP
//!   configuration (bearer token; owners, like the OIDC configuration).
//!
//! Every step asks the entitlement gate first (`LICENSE_REQUIRED` names
//! the feature and tier), and every refused response is audited
//! (`sso.sign_in_refused`, protocol `saml`) with no session issued.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use mobius_core::authz::{Feature, Operation, Role, TeamRole};
use mobius_core::crypto::secrets;
use mobius_core::db::{FoundTenant, TenantProof};
use mobius_core::identity::sso::saml::{
    Expected, SamlConfig, SamlConfigInput, SamlProtocol, ServiceProviderUrls,
};
use mobius_core::identity::sso::{GroupRole, SsoError};
use mobius_core::identity::{IdentityError, RequestMeta};
use serde::{Deserialize, Serialize};

use super::{SsoState, meta, outcome_response, sso_error};
use crate::admin::graphql::Peer;
use crate::http::errors::{ApiError, ErrorCode};

/// Fetching IdP metadata from a URL gets this long and this many bytes.
const METADATA_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const METADATA_MAX_BYTES: usize = 512 * 1024;

impl SsoState {
    /// The edition's SAML engine, or NOT_FOUND naming why there is none.
    fn saml_engine(&self) -> Result<Arc<dyn SamlProtocol>, ApiError> {
        self.saml.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                "SAML single sign-on is part of the cloud edition; this server has no SAML",
            )
        })
    }

    /// The tenant the URL names, after the premium gate.
    async fn saml_tenant(&self, slug: &str) -> Result<FoundTenant, ApiError> {
        let tenant = self
            .store
            .tenant_by_slug(slug)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such tenant"))?;
        self.entitlements
            .require(tenant.tenant_id(), Feature::Saml)?;
        Ok(tenant)
    }

    async fn saml_config(&self, tenant: &FoundTenant) -> Result<SamlConfig, ApiError> {
        let scope = self.store.begin(tenant).await?;
        scope
            .sso()
            .saml_config()
            .await?
            .filter(|c| c.enabled)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    "SAML single sign-on is not configured or not enabled for this tenant",
                )
            })
    }

    /// This tenant's SP URLs, as the browser (and so the IdP) sees them.
    fn sp_urls(&self, headers: &HeaderMap, slug: &str) -> Result<ServiceProviderUrls, ApiError> {
        let base = self.base_url(headers)?;
        Ok(ServiceProviderUrls {
            entity_id: format!("{base}/api/v1/mobius/sso/{slug}/saml/metadata"),
            acs_url: format!("{base}/api/v1/mobius/sso/{slug}/saml/acs"),
        })
    }

    /// Audits a refused SAML response, then answers it.
    async fn refuse_saml(
        &self,
        tenant: &FoundTenant,
        err: SsoError,
        meta: &RequestMeta,
    ) -> ApiError {
        if let Err(audit) = self
            .identity
            .record_sso_refusal(tenant, "saml", &err, meta)
            .await
        {
            return ApiError::from(audit);
        }
        tracing::info!(reason = err.reason(), error = %err, "SAML sign-in refused");
        sso_error(err)
    }
}

/// `GET .../saml/metadata`: the SP metadata an admin gives the IdP.
pub(super) async fn metadata(
    State(state): State<SsoState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let engine = state.saml_engine()?;
    state.saml_tenant(&slug).await?;
    let xml = engine
        .sp_metadata(&state.sp_urls(&headers, &slug)?)
        .map_err(|cause| {
            tracing::error!(error = %cause, "building SAML SP metadata");
            ApiError::new(ErrorCode::Internal, "could not build the SP metadata")
        })?;
    let mut response = xml.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/samlmetadata+xml"),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    redirect_to: Option<String>,
}

/// Where to land after sign-in: a path on this server only (SAML has no
/// allow-list of other origins; anything else would be an open redirect).
fn local_path(target: Option<&str>) -> Result<String, SsoError> {
    let target = target.unwrap_or("/");
    if target.starts_with('/') && !target.starts_with("//") && !target.contains('\\') {
        Ok(target.to_owned())
    } else {
        Err(SsoError::InvalidRedirect(
            "after a SAML sign-in only a path on this server is allowed, such as /devices".into(),
        ))
    }
}

/// `GET .../saml/login`: SP-initiated sign-in.
pub(super) async fn login(
    State(state): State<SsoState>,
    Path(slug): Path<String>,
    Peer(connect): Peer,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let meta = meta(connect, &headers);
    state.limit(&meta)?;
    let engine = state.saml_engine()?;
    let tenant = state.saml_tenant(&slug).await?;
    let config = state.saml_config(&tenant).await?;
    let redirect_to = local_path(query.redirect_to.as_deref()).map_err(sso_error)?;
    let relay_state = secrets::generate("");
    let request = engine
        .authn_request(
            &state.sp_urls(&headers, &slug)?,
            &config.idp_metadata_xml,
            &relay_state,
        )
        .map_err(|cause| {
            tracing::warn!(error = %cause, "building a SAML AuthnRequest");
            ApiError::new(
                ErrorCode::BadUserInput,
                format!("the tenant's SAML configuration cannot start a sign-in: {cause}"),
            )
        })?;
    let scope = state.store.begin(&tenant).await?;
    scope
        .sso()
        .record_saml_request(&relay_state, &request.request_id, &redirect_to)
        .await?;
    scope.commit().await?;
    Ok(Redirect::to(&request.redirect_url).into_response())
}

#[derive(Deserialize)]
pub(super) struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    saml_response: Option<String>,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

/// `POST .../saml/acs`: verifies the IdP's response and signs the person in.
pub(super) async fn acs(
    State(state): State<SsoState>,
    Path(slug): Path<String>,
    Peer(connect): Peer,
    headers: HeaderMap,
    form: Result<axum::Form<AcsForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let meta = meta(connect, &headers);
    state.limit(&meta)?;
    let engine = state.saml_engine()?;
    let tenant = state.saml_tenant(&slug).await?;
    let axum::Form(form) = form.map_err(|_| {
        ApiError::new(
            ErrorCode::BadUserInput,
            "expected an HTML form post (application/x-www-form-urlencoded) with SAMLResponse",
        )
    })?;
    let Some(saml_response) = form.saml_response.filter(|r| !r.is_empty()) else {
        return Err(ApiError {
            field: Some("SAMLResponse".into()),
            ..ApiError::new(ErrorCode::BadUserInput, "SAMLResponse is missing")
        });
    };
    let config = state.saml_config(&tenant).await?;
    let sp = state.sp_urls(&headers, &slug)?;
    // The RelayState names the request this server sent; without a live
    // one the response is unsolicited (IdP-initiated).
    let request = match form.relay_state.as_deref().filter(|r| !r.is_empty()) {
        Some(relay_state) => match state.identity.take_saml_request(&tenant, relay_state).await {
            Ok(request) => request,
            Err(err) => return Err(state.refuse_saml(&tenant, err, &meta).await),
        },
        None => None,
    };
    let (expected, redirect_to) = match &request {
        Some(request) => (
            Expected::Request(&request.request_id),
            request.redirect_to.clone(),
        ),
        None if config.allow_idp_initiated => (Expected::Unsolicited, "/".to_owned()),
        None => {
            return Err(state
                .refuse_saml(&tenant, SsoError::Unsolicited, &meta)
                .await);
        }
    };
    let verified = engine.verify_response(&sp, &config.idp_metadata_xml, &saml_response, expected);
    let result = match verified {
        Ok(assertion) => {
            state
                .identity
                .complete_saml(&tenant, &assertion, redirect_to, &meta)
                .await
        }
        Err(err) => Err(err),
    };
    match result {
        Ok(outcome) => Ok(outcome_response(outcome)),
        Err(err) => Err(state.refuse_saml(&tenant, err, &meta).await),
    }
}

/// One group → role mapping, as the config API reads and writes it.
#[derive(Serialize, Deserialize)]
pub(super) struct GroupRoleBody {
    group: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    team_id: Option<uuid::Uuid>,
    #[serde(default)]
    team_role: Option<String>,
}

/// `PUT .../sso/saml/config`: the IdP by metadata XML or by a URL to fetch
/// it from (once, now), plus the attribute mapping.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SamlConfigBody {
    #[serde(default)]
    metadata_xml: Option<String>,
    #[serde(default)]
    metadata_url: Option<String>,
    #[serde(default)]
    email_attribute: Option<String>,
    #[serde(default)]
    name_attribute: Option<String>,
    #[serde(default)]
    groups_attribute: Option<String>,
    #[serde(default)]
    group_roles: Vec<GroupRoleBody>,
    #[serde(default)]
    allowed_email_domains: Vec<String>,
    #[serde(default)]
    jit_enabled: bool,
    #[serde(default)]
    default_role: Option<String>,
    #[serde(default)]
    allow_idp_initiated: bool,
    #[serde(default = "enabled_default")]
    enabled: bool,
}

fn enabled_default() -> bool {
    true
}

#[derive(Serialize)]
pub(super) struct SamlConfigView {
    idp_entity_id: String,
    idp_sso_url: String,
    idp_metadata_url: Option<String>,
    idp_cert_fingerprints: Vec<String>,
    email_attribute: Option<String>,
    name_attribute: Option<String>,
    groups_attribute: Option<String>,
    group_roles: Vec<GroupRoleBody>,
    allowed_email_domains: Vec<String>,
    jit_enabled: bool,
    default_role: String,
    allow_idp_initiated: bool,
    enabled: bool,
    /// Where this tenant's SP metadata, ACS and sign-in start are.
    sp_metadata_url: String,
    acs_url: String,
    login_url: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn view(config: SamlConfig, sp: &ServiceProviderUrls, login_url: String) -> SamlConfigView {
    SamlConfigView {
        idp_entity_id: config.idp_entity_id,
        idp_sso_url: config.idp_sso_url,
        idp_metadata_url: config.idp_metadata_url,
        idp_cert_fingerprints: config.idp_cert_fingerprints,
        email_attribute: config.email_attribute,
        name_attribute: config.name_attribute,
        groups_attribute: config.groups_attribute,
        group_roles: config
            .group_roles
            .into_iter()
            .map(|g| GroupRoleBody {
                group: g.group,
                role: g.role.map(|r| r.as_str().to_owned()),
                team_id: g.team_id,
                team_role: g.team_role.map(|r| r.as_str().to_owned()),
            })
            .collect(),
        allowed_email_domains: config.allowed_email_domains,
        jit_enabled: config.jit_enabled,
        default_role: config.default_role.as_str().to_owned(),
        allow_idp_initiated: config.allow_idp_initiated,
        enabled: config.enabled,
        sp_metadata_url: sp.entity_id.clone(),
        acs_url: sp.acs_url.clone(),
        login_url,
        updated_at: config.updated_at,
    }
}

fn bad_input(field: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        field: Some(field.into()),
        ..ApiError::new(ErrorCode::BadUserInput, message)
    }
}

/// Authenticates the bearer token and checks it may manage SSO.
async fn admin(
    state: &SsoState,
    headers: &HeaderMap,
    peer: &Peer,
) -> Result<mobius_core::identity::Authenticated, ApiError> {
    let meta = meta(peer.0, headers);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "sign in first: send `Authorization: Bearer <token>`",
            )
        })?;
    let authenticated = match state.identity.authenticate(bearer, &meta).await {
        Ok(authenticated) => authenticated,
        Err(IdentityError::Store(err)) => return Err(err.into()),
        Err(
            err @ (IdentityError::InvalidCredentials
            | IdentityError::InvalidToken
            | IdentityError::AccessTokenExpired
            | IdentityError::RefreshTokenReused
            | IdentityError::InvalidCode),
        ) => return Err(ApiError::new(ErrorCode::Unauthenticated, err.to_string())),
        Err(err @ IdentityError::SsoRequired) => {
            return Err(ApiError::new(ErrorCode::Forbidden, err.to_string()));
        }
    };
    authenticated
        .principal
        .authorize(Operation::ManageSso, None)
        .map_err(|_| ApiError::new(ErrorCode::Forbidden, "your role does not permit this"))?;
    Ok(authenticated)
}

fn urls_for(
    state: &SsoState,
    headers: &HeaderMap,
    slug: &str,
) -> Result<(ServiceProviderUrls, String), ApiError> {
    let sp = state.sp_urls(headers, slug)?;
    let login = format!(
        "{}/api/v1/mobius/sso/{slug}/saml/login",
        state.base_url(headers)?
    );
    Ok((sp, login))
}

/// `GET /api/v1/mobius/sso/saml/config`.
pub(super) async fn get_config(
    State(state): State<SsoState>,
    peer: Peer,
    headers: HeaderMap,
) -> Result<Json<SamlConfigView>, ApiError> {
    state.saml_engine()?;
    let authenticated = admin(&state, &headers, &peer).await?;
    state
        .entitlements
        .require(authenticated.principal.tenant_id, Feature::Saml)?;
    let scope = authenticated.scope;
    let slug = scope.tenant().get().await?.slug;
    let config = scope.sso().saml_config().await?.ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound, "SAML single sign-on is not configured")
    })?;
    let (sp, login) = urls_for(&state, &headers, &slug)?;
    Ok(Json(view(config, &sp, login)))
}

/// Fetches IdP metadata from an https URL (http on a loopback host, for a
/// local IdP), without following redirects, size-limited.
pub(crate) async fn fetch_metadata(url: &str) -> Result<String, ApiError> {
    let parsed =
        url::Url::parse(url.trim()).map_err(|_| bad_input("metadata_url", "not a valid URL"))?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        return Err(bad_input("metadata_url", "must be an https URL"));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(METADATA_FETCH_TIMEOUT)
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "building the metadata HTTP client");
            ApiError::new(ErrorCode::Internal, "could not fetch the metadata")
        })?;
    let unreachable = |what: &str| {
        bad_input(
            "metadata_url",
            format!("could not fetch the IdP metadata: {what}"),
        )
    };
    let mut response = client
        .get(parsed)
        .send()
        .await
        .map_err(|_| unreachable("the URL did not answer"))?;
    if !response.status().is_success() {
        return Err(unreachable(&format!(
            "HTTP status {}",
            response.status().as_u16()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| unreachable("the download broke off"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > METADATA_MAX_BYTES {
            return Err(unreachable("larger than 512 KiB"));
        }
    }
    String::from_utf8(body).map_err(|_| unreachable("not UTF-8 XML"))
}

fn parse_role(field: &str, value: &str) -> Result<Role, ApiError> {
    value
        .parse::<Role>()
        .map_err(|_| bad_input(field, format!("unknown role `{value}`")))
}

/// `PUT /api/v1/mobius/sso/saml/config` (audited as `sso.saml_configured`).
pub(super) async fn put_config(
    State(state): State<SsoState>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<SamlConfigBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SamlConfigView>, ApiError> {
    let engine = state.saml_engine()?;
    let authenticated = admin(&state, &headers, &peer).await?;
    state
        .entitlements
        .require(authenticated.principal.tenant_id, Feature::Saml)?;
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            ErrorCode::BadUserInput,
            format!("expected a JSON SAML configuration: {}", e.body_text()),
        )
    })?;
    let (xml, url) = match (body.metadata_xml, body.metadata_url) {
        (Some(xml), None) => (xml, None),
        (None, Some(url)) => (fetch_metadata(&url).await?, Some(url.trim().to_owned())),
        _ => {
            return Err(bad_input(
                "metadata_xml",
                "give exactly one of metadata_xml and metadata_url",
            ));
        }
    };
    let mut group_roles = Vec::new();
    for g in body.group_roles {
        group_roles.push(GroupRole {
            group: g.group,
            role: g
                .role
                .as_deref()
                .map(|r| parse_role("group_roles", r))
                .transpose()?,
            team_id: g.team_id,
            team_role: g
                .team_role
                .as_deref()
                .map(|r| {
                    r.parse::<TeamRole>()
                        .map_err(|_| bad_input("group_roles", format!("unknown team role `{r}`")))
                })
                .transpose()?,
        });
    }
    let default_role = match body.default_role.as_deref() {
        Some(role) => parse_role("default_role", role)?,
        None => Role::Observer,
    };
    let actor = authenticated.principal.actor();
    let scope = authenticated.scope;
    let config = scope
        .sso()
        .put_saml_config(
            &actor,
            SamlConfigInput {
                idp_metadata_xml: xml,
                idp_metadata_url: url,
                email_attribute: body.email_attribute,
                name_attribute: body.name_attribute,
                groups_attribute: body.groups_attribute,
                group_roles,
                allowed_email_domains: body.allowed_email_domains,
                jit_enabled: body.jit_enabled,
                default_role,
                allow_idp_initiated: body.allow_idp_initiated,
                enabled: body.enabled,
            },
            engine.as_ref(),
        )
        .await?;
    let slug = scope.tenant().get().await?.slug;
    scope.commit().await?;
    let (sp, login) = urls_for(&state, &headers, &slug)?;
    Ok(Json(view(config, &sp, login)))
}
