//! The OIDC relying party (openidconnect): authorization code flow with
//! PKCE, `state` and `nonce` bound to a server-side login record, provider
//! discovery and JWKS cached per issuer, with one JWKS refresh when an ID
//! token names a key we do not know (the IdP rotated its keys).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use mobius_core::crypto::secrets;
use mobius_core::identity::sso::{SsoConfig, SsoError, VerifiedIdentity};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJsonWebKeySet, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse,
};
use serde::Deserialize;

use super::{SsoState, checked_redirect, meta, outcome_response};
use crate::admin::graphql::Peer;
use crate::http::errors::ApiError;

/// How long discovery metadata (and its JWKS) is reused before it is
/// fetched again; an unknown `kid` refreshes the JWKS sooner.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// A request to the IdP gets this long; a slow IdP must not hold a
/// sign-in (and a server task) for the whole request timeout.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP failure talking to the IdP (logged, never shown).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

type HttpFuture =
    Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send>>;

/// Discovery documents per issuer, and the HTTP client that fetches them.
pub struct OidcProviders {
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (CoreProviderMetadata, Instant)>>,
}

impl OidcProviders {
    pub fn new() -> anyhow::Result<OidcProviders> {
        Ok(OidcProviders {
            // No redirects: the token endpoint must answer itself (an
            // open redirect there could leak the code and verifier).
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(PROVIDER_TIMEOUT)
                .build()?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The openidconnect HTTP client: the workspace's reqwest.
    fn client(&self) -> impl Fn(openidconnect::HttpRequest) -> HttpFuture + use<> {
        let http = self.http.clone();
        move |request: openidconnect::HttpRequest| {
            let http = http.clone();
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let response = http
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| HttpError(e.to_string()))?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| HttpError(e.to_string()))?;
                let mut out = openidconnect::http::Response::new(body.to_vec());
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok(out)
            }) as HttpFuture
        }
    }

    /// The issuer's discovery document (with its JWKS), from the cache
    /// while fresh.
    async fn metadata(&self, issuer: &str) -> Result<CoreProviderMetadata, SsoError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((metadata, at)) = cache.get(issuer)
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer_url = IssuerUrl::new(issuer.to_owned())
            .map_err(|_| SsoError::ProviderUnavailable("the issuer URL is invalid".into()))?;
        let http = self.client();
        let metadata = CoreProviderMetadata::discover_async(issuer_url, &http)
            .await
            .map_err(|e| SsoError::ProviderUnavailable(format!("discovery failed: {e}")))?;
        self.store(issuer, &metadata);
        Ok(metadata)
    }

    /// Fetches the issuer's JWKS again (after an unknown `kid`).
    async fn refresh_keys(
        &self,
        issuer: &str,
        metadata: CoreProviderMetadata,
    ) -> Result<CoreProviderMetadata, SsoError> {
        let http = self.client();
        let jwks = CoreJsonWebKeySet::fetch_async(metadata.jwks_uri(), &http)
            .await
            .map_err(|e| SsoError::ProviderUnavailable(format!("fetching the JWKS failed: {e}")))?;
        let metadata = metadata.set_jwks(jwks);
        self.store(issuer, &metadata);
        Ok(metadata)
    }

    fn store(&self, issuer: &str, metadata: &CoreProviderMetadata) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(issuer.to_owned(), (metadata.clone(), Instant::now()));
        }
    }
}

fn callback_url(base: &str, slug: &str) -> String {
    format!("{base}/api/v1/mobius/sso/{slug}/oidc/callback")
}

fn oidc_client(
    metadata: CoreProviderMetadata,
    config: &SsoConfig,
    secret: Option<String>,
    redirect: &str,
) -> Result<
    openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    SsoError,
> {
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(config.client_id.clone()),
        secret.map(ClientSecret::new),
    )
    .set_redirect_uri(
        RedirectUrl::new(redirect.to_owned())
            .map_err(|_| SsoError::InvalidRedirect("bad callback URL".into()))?,
    ))
}

#[derive(Deserialize)]
pub(super) struct StartQuery {
    redirect_to: Option<String>,
    /// `mobius login --sso`: the port of the CLI's loopback listener...
    cli_port: Option<u16>,
    /// ...and the S256 challenge of the CLI's own verifier.
    cli_challenge: Option<String>,
}

/// `GET .../oidc/start`: records the sign-in and redirects to the IdP.
pub(super) async fn start(
    State(state): State<SsoState>,
    Path(slug): Path<String>,
    Query(query): Query<StartQuery>,
    Peer(connect): Peer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = meta(connect, &headers);
    state.limit(&meta)?;
    let (tenant, config) = state.tenant_config(&slug).await?;
    let base = state.base_url(&headers)?;
    let (redirect_to, cli_challenge) = match (query.cli_port, query.cli_challenge) {
        (Some(port), Some(challenge)) => {
            // RFC 8252 loopback redirect: only 127.0.0.1, any port.
            let well_formed = challenge.len() == 43
                && challenge
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !well_formed || port == 0 {
                return Err(super::sso_error(SsoError::InvalidRedirect(
                    "cli_port needs cli_challenge (43 base64url characters)".into(),
                )));
            }
            (format!("http://127.0.0.1:{port}/callback"), Some(challenge))
        }
        (None, None) => (
            checked_redirect(&config, query.redirect_to.as_deref()).map_err(super::sso_error)?,
            None,
        ),
        _ => {
            return Err(super::sso_error(SsoError::InvalidRedirect(
                "cli_port and cli_challenge go together".into(),
            )));
        }
    };
    let metadata = state
        .providers
        .metadata(&config.issuer_url)
        .await
        .map_err(super::sso_error)?;
    let scope = state.store.begin(&tenant).await?;
    let started = scope
        .sso()
        .start_login(
            state.sealer.as_ref(),
            &redirect_to,
            cli_challenge.as_deref(),
        )
        .await?;
    scope.commit().await?;
    let client = oidc_client(metadata, &config, None, &callback_url(&base, &slug))
        .map_err(super::sso_error)?;
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(started.pkce_verifier));
    let (state_value, nonce) = (started.state, started.nonce);
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state_value),
            move || Nonce::new(nonce),
        )
        .set_pkce_challenge(challenge);
    for scope in &config.scopes {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, _, _) = request.url();
    Ok(Redirect::to(url.as_str()).into_response())
}

#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET .../oidc/callback`: consumes the login state, exchanges the code,
/// verifies the ID token and signs the person in.
pub(super) async fn callback(
    State(state): State<SsoState>,
    Path(slug): Path<String>,
    Query(query): Query<CallbackQuery>,
    Peer(connect): Peer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = meta(connect, &headers);
    state.limit(&meta)?;
    let (tenant, config) = state.tenant_config(&slug).await?;
    match sign_in(&state, &tenant, &config, &slug, &headers, query, &meta).await {
        Ok(response) => Ok(response),
        Err(err) => Err(state.refuse(&tenant, err, &meta).await),
    }
}

async fn sign_in(
    state: &SsoState,
    tenant: &mobius_core::db::FoundTenant,
    config: &SsoConfig,
    slug: &str,
    headers: &HeaderMap,
    query: CallbackQuery,
    meta: &mobius_core::identity::RequestMeta,
) -> Result<Response, SsoError> {
    let presented = query.state.ok_or(SsoError::InvalidState)?;
    // Consumed (and committed) before anything else, so a replayed
    // callback fails even when this one fails later.
    let login = {
        let scope = state.store.begin(tenant).await?;
        let login = scope
            .sso()
            .take_login(state.sealer.as_ref(), &presented)
            .await?;
        scope.commit().await?;
        login
    };
    if let Some(error) = query.error {
        let error: String = error
            .chars()
            .take(64)
            .filter(|c| c.is_ascii_graphic())
            .collect();
        return Err(SsoError::ProviderRefused(error));
    }
    let code = query
        .code
        .ok_or_else(|| SsoError::ProviderRefused("no authorization code".into()))?;
    let base = state
        .base_url(headers)
        .map_err(|_| SsoError::InvalidRedirect("missing Host header; set `public_url`".into()))?;
    let secret = { config.client_secret(state.sealer.as_ref()).await? };
    let mut metadata = state.providers.metadata(&config.issuer_url).await?;
    let client = oidc_client(
        metadata.clone(),
        config,
        secret.clone(),
        &callback_url(&base, slug),
    )?;
    let http = state.providers.client();
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| SsoError::ProviderUnavailable("the provider has no token endpoint".into()))?
        .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
        .request_async(&http)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                SsoError::ProviderRefused(r.error().to_string())
            }
            other => SsoError::ProviderUnavailable(format!("token request failed: {other}")),
        })?;
    let id_token = token
        .id_token()
        .ok_or_else(|| SsoError::InvalidIdToken("the token response has no ID token".into()))?
        .clone();
    let mut verified = verify(&client, &id_token, &login.nonce_hash);
    if matches!(
        verified,
        Err(ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey
        ))
    ) {
        metadata = state
            .providers
            .refresh_keys(&config.issuer_url, metadata)
            .await?;
        let client = oidc_client(metadata, config, secret, &callback_url(&base, slug))?;
        verified = verify(&client, &id_token, &login.nonce_hash);
    }
    let identity = verified.map_err(|e| SsoError::InvalidIdToken(describe(&e)))?;
    let identity = VerifiedIdentity {
        groups: groups(&id_token, config.groups_claim.as_deref()),
        ..identity
    };
    let raw = id_token.to_string();
    let expires =
        jwt_expiry(&raw).unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::hours(1));
    let outcome = state
        .identity
        .complete_sso(
            tenant,
            &login,
            identity,
            secrets::sha256(&raw),
            expires,
            meta,
        )
        .await?;
    Ok(outcome_response(outcome))
}

/// Checks signature, issuer, audience (our client id only), expiry and
/// nonce (by hash against the login record).
fn verify(
    client: &openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    id_token: &CoreIdToken,
    nonce_hash: &[u8; 32],
) -> Result<VerifiedIdentity, ClaimsVerificationError> {
    let verifier = client.id_token_verifier();
    let claims = id_token.claims(&verifier, |nonce: Option<&Nonce>| match nonce {
        Some(nonce) if secrets::hashes_match(&secrets::sha256(nonce.secret()), nonce_hash) => {
            Ok(())
        }
        _ => Err("the nonce does not match this sign-in".to_owned()),
    })?;
    Ok(VerifiedIdentity {
        issuer: claims.issuer().to_string(),
        subject: claims.subject().to_string(),
        email: claims.email().map(|e| e.to_string()),
        email_verified: claims.email_verified().unwrap_or(false),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string()),
        groups: Vec::new(),
    })
}

/// A refusal reason safe to show: which check failed, not the token.
fn describe(err: &ClaimsVerificationError) -> String {
    match err {
        ClaimsVerificationError::Expired(_) => "the ID token has expired".into(),
        ClaimsVerificationError::InvalidAudience(_) => {
            "the ID token was issued for another client".into()
        }
        ClaimsVerificationError::InvalidIssuer(_) => "the ID token has the wrong issuer".into(),
        ClaimsVerificationError::InvalidNonce(_) => "the ID token's nonce does not match".into(),
        ClaimsVerificationError::SignatureVerification(_) => {
            "the ID token's signature does not verify".into()
        }
        _ => "the ID token is invalid".into(),
    }
}

/// The JWT's payload, after its signature was verified.
fn payload(raw: &str) -> Option<serde_json::Value> {
    let part = raw.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn jwt_expiry(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let exp = payload(raw)?.get("exp")?.as_i64()?;
    chrono::DateTime::from_timestamp(exp, 0)
}

/// The groups claim (an array of strings, or one string) of a verified
/// token; openidconnect's core claims do not model it.
fn groups(id_token: &CoreIdToken, claim: Option<&str>) -> Vec<String> {
    let Some(claim) = claim else {
        return Vec::new();
    };
    match payload(&id_token.to_string()).and_then(|p| p.get(claim).cloned()) {
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one],
        _ => Vec::new(),
    }
}
