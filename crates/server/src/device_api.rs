//! The device endpoints, served on the mTLS device listener. Devices are
//! authenticated by their client certificate through [`DeviceScope`], an
//! extractor of their own: admin authentication never shares this path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{head, post};
use axum::{Json, Router};
use mobius_api::device::{
    DeviceName, ENROLL_PATH, EnrollRequest, EnrollResponse, EnrollmentToken, PING_PATH,
    PingRequest, PingResponse, RENEW_PATH, RenewRequest, RenewResponse,
};
use mobius_api::{ErrorBody, ErrorDetail};
use mobius_core::pki::{DeviceCsr, Pki, trusted_device_cas};
use mobius_core::presence::{Presence, Revocations};
use mobius_core::{
    Actor, ActorKind, AuditRecord, EnrollError, EnrollmentRequest, Entitlements, Store, Uuid,
};

use crate::device_tls::TenantCaVerifier;
use crate::error::{ApiError, ErrorCode};

/// Enrollment requests carry a CSR and facts: 64 KiB is plenty.
pub const MAX_DEVICE_BODY_BYTES: usize = 64 * 1024;

/// What the device listener knows about the peer, from its TLS handshake.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified client certificate's name, when one was presented and
    /// its issuer belongs to the tenant it names.
    pub device: Option<PeerCertificate>,
}

#[derive(Clone, Debug)]
pub struct PeerCertificate {
    pub name: DeviceName,
    /// The CA that issued it (from the issuer's common name).
    pub ca_id: Uuid,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// Reads the identity out of a client certificate that rustls already
/// verified against a trusted tenant CA. The issuer's common name must name
/// the same tenant as the SAN, so one tenant's CA can never vouch for
/// another tenant's device.
pub fn peer_certificate(der: &[u8]) -> Option<PeerCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let name = san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => DeviceName::from_uri(uri),
        _ => None,
    })?;
    let issuer_cn = cert.issuer().iter_common_name().next()?.as_str().ok()?;
    let expected_prefix = format!("Mobius tenant {} CA ", name.tenant_id);
    let ca_id: Uuid = issuer_cn.strip_prefix(&expected_prefix)?.parse().ok()?;
    let time = |t: x509_parser::time::ASN1Time| chrono::DateTime::from_timestamp(t.timestamp(), 0);
    Some(PeerCertificate {
        name,
        ca_id,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

/// Keeps the listener's trust store in step with the tenants' CAs, and
/// knows which CA currently signs for each tenant.
pub struct Trust {
    store: Store,
    verifier: Arc<TenantCaVerifier>,
    current: RwLock<HashMap<Uuid, Uuid>>,
}

impl Trust {
    pub fn new(store: Store, verifier: Arc<TenantCaVerifier>) -> Trust {
        Trust {
            store,
            verifier,
            current: RwLock::new(HashMap::new()),
        }
    }

    /// Reloads every trusted CA (after a CA is created or rotated here, and
    /// periodically for other servers' changes).
    pub async fn reload(&self) -> anyhow::Result<usize> {
        let cas = trusted_device_cas(&self.store).await?;
        let pems: Vec<String> = cas.iter().map(|ca| ca.cert_pem.clone()).collect();
        let count = self.verifier.set_roots(&pems)?;
        let current = cas
            .iter()
            .filter(|ca| !ca.retiring)
            .map(|ca| (ca.tenant_id, ca.ca_id))
            .collect();
        if let Ok(mut map) = self.current.write() {
            *map = current;
        }
        Ok(count)
    }

    /// Whether `ca_id` is the tenant's signing CA as last loaded.
    fn knows(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.current
            .read()
            .map(|m| m.get(&tenant_id) == Some(&ca_id))
            .unwrap_or(false)
    }

    /// Whether `ca_id` is still the tenant's signing CA (if not, the device
    /// should renew now to move to the new one).
    fn is_current(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.current
            .read()
            .map(|m| m.get(&tenant_id).is_none_or(|c| *c == ca_id))
            .unwrap_or(true)
    }
}

#[derive(Clone)]
pub struct DeviceState {
    pub store: Store,
    pub pki: Arc<Pki>,
    pub entitlements: Arc<dyn Entitlements>,
    pub presence: Arc<Presence>,
    pub revocations: Arc<Revocations>,
    pub trust: Arc<Trust>,
    pub server_ca_pem: Arc<String>,
    pub heartbeat_interval_secs: u64,
}

pub fn router(state: DeviceState) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(enroll))
        .route(PING_PATH, head(ping_head).post(ping))
        .route(RENEW_PATH, post(renew))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such device endpoint",
                None,
            )
        })
        .layer(DefaultBodyLimit::max(MAX_DEVICE_BODY_BYTES))
        .with_state(state)
}

/// A device that proved itself with a certificate from its tenant's CA and
/// is not revoked: the only way device handlers reach the store.
pub struct DeviceScope {
    pub name: DeviceName,
    pub certificate: PeerCertificate,
    pub addr: SocketAddr,
}

impl FromRequestParts<DeviceState> for DeviceScope {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DeviceState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<Peer>().cloned();
        let Some(Peer {
            addr,
            device: Some(certificate),
        }) = peer
        else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "a client certificate from this server's enrollment is required",
                None,
            ));
        };
        if state.revocations.is_revoked(certificate.name.device_id) {
            return Err(revoked());
        }
        Ok(DeviceScope {
            name: certificate.name,
            certificate,
            addr,
        })
    }
}

fn revoked() -> Response {
    error(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "device revoked: an administrator revoked or deleted this device",
        None,
    )
}

fn error(status: StatusCode, code: ErrorCode, message: &str, field: Option<&str>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
            field: field.map(str::to_owned),
        },
    };
    (status, Json(body)).into_response()
}

/// A malformed or oversized body is the client's mistake, with its status
/// kept (413 for too large) and a stable code.
fn body_error(rejection: JsonRejection) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body larger than {MAX_DEVICE_BODY_BYTES} bytes")
    } else {
        rejection.body_text()
    };
    error(status, ErrorCode::BadUserInput, &message, None)
}

/// Exhaustive: a new enrollment failure needs a decision here.
fn enroll_error(err: EnrollError) -> Response {
    let message = err.to_string();
    match err {
        EnrollError::UnknownToken
        | EnrollError::TokenExpired
        | EnrollError::TokenRevoked
        | EnrollError::TokenUsedUp => error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            &message,
            Some("token"),
        ),
        EnrollError::AddressNotAllowed | EnrollError::DeviceRevoked => {
            error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message, None)
        }
        EnrollError::DeviceLimit { .. } => error(
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::LicenseRequired,
            &message,
            None,
        ),
        EnrollError::Store(e) => ApiError::from(e).into_response(),
    }
}

async fn enroll(
    State(state): State<DeviceState>,
    peer: Peer,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let Some(token) = EnrollmentToken::parse(&request.token) else {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "malformed enrollment token (expected mobius1.<secret>.<pin>)",
            Some("token"),
        );
    };
    let csr = match DeviceCsr::parse(&request.csr_pem) {
        Ok(csr) => csr,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &e.to_string(),
                Some("csr"),
            );
        }
    };
    if request.host_fingerprint.trim().is_empty() || request.host_fingerprint.len() > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "host_fingerprint must be 1 to 200 characters",
            Some("host_fingerprint"),
        );
    }
    let enrolled = match mobius_core::enroll(
        &state.store,
        &state.pki,
        state.entitlements.as_ref(),
        EnrollmentRequest {
            secret: &token.secret,
            csr: &csr,
            host_fingerprint: &request.host_fingerprint,
            facts: &request.facts,
            client_ip: Some(peer.addr.ip()),
        },
    )
    .await
    {
        Ok(enrolled) => enrolled,
        Err(e) => return enroll_error(e),
    };
    // The CA may have been created by this enrollment: trust it before the
    // agent's first ping (a known CA needs no reload).
    if !state
        .trust
        .knows(enrolled.tenant_id, enrolled.certificate.ca_id)
        && let Err(e) = state.trust.reload().await
    {
        tracing::error!(error = %e, "reloading trusted CAs after enrollment");
    }
    tracing::info!(device_id = %enrolled.device_id, tenant_id = %enrolled.tenant_id, created = enrolled.created, "device enrolled");
    Json(EnrollResponse {
        device_id: enrolled.device_id,
        tenant_id: enrolled.tenant_id,
        site_id: enrolled.site_id,
        certificate_pem: enrolled.certificate.pem,
        ca_bundle_pem: enrolled.ca_bundle_pem,
        server_ca_pem: state.server_ca_pem.as_ref().clone(),
        expires_at: enrolled.certificate.not_after.to_rfc3339(),
        heartbeat_interval_secs: state.heartbeat_interval_secs,
    })
    .into_response()
}

/// The cheapest authenticated request: answered from the certificate and
/// memory alone.
async fn ping_head(State(state): State<DeviceState>, device: DeviceScope) -> StatusCode {
    state
        .presence
        .record(device.name.tenant_id, device.name.device_id);
    StatusCode::NO_CONTENT
}

async fn ping(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<PingRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    if let Some(facts) = &request.facts {
        let result = async {
            let scope = state.store.begin(device.name.tenant_id).await?;
            scope
                .devices()
                .record_facts(device.name.device_id, facts)
                .await?;
            scope.commit().await
        }
        .await;
        match result {
            Ok(()) => {}
            Err(mobius_core::StoreError::NotFound { .. }) => return revoked(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    state
        .presence
        .record(device.name.tenant_id, device.name.device_id);
    Json(PingResponse {
        interval_secs: state.heartbeat_interval_secs,
        renew_after: renew_after(&state, &device.certificate).to_rfc3339(),
        work: Vec::new(),
    })
    .into_response()
}

/// Half-life of the certificate; at once when its CA is being retired.
fn renew_after(
    state: &DeviceState,
    certificate: &PeerCertificate,
) -> chrono::DateTime<chrono::Utc> {
    if !state
        .trust
        .is_current(certificate.name.tenant_id, certificate.ca_id)
    {
        return chrono::Utc::now();
    }
    certificate.not_before + (certificate.not_after - certificate.not_before) / 2
}

async fn renew(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let csr = match DeviceCsr::parse(&request.csr_pem) {
        Ok(csr) => csr,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &e.to_string(),
                Some("csr"),
            );
        }
    };
    let result = async {
        let scope = state.store.begin(device.name.tenant_id).await?;
        let existing = scope.devices().get(device.name.device_id).await?;
        if existing.revoked_at.is_some() {
            return Err(mobius_core::StoreError::NotFound { entity: "device" });
        }
        let actor = Actor {
            kind: ActorKind::Device,
            id: Some(device.name.device_id),
            ip: Some(device.addr.ip().to_string()),
            user_agent: None,
        };
        let ca = state.pki.current_ca(&scope, &actor).await?;
        let certificate = state.pki.issue(&ca, &csr, device.name).await?;
        scope
            .devices()
            .set_certificate(device.name.device_id, &certificate)
            .await?;
        scope
            .audit()
            .record(
                &actor,
                AuditRecord::new("device.renewed", "device", Some(device.name.device_id))
                    .with_details(serde_json::json!({
                        "certificate_serial": certificate.serial,
                        "ca_id": certificate.ca_id,
                        "previous_ca_id": device.certificate.ca_id,
                    })),
            )
            .await?;
        let bundle = state.pki.bundle(&scope).await?;
        scope.commit().await?;
        Ok((certificate, bundle))
    }
    .await;
    match result {
        Ok((certificate, ca_bundle_pem)) => Json(RenewResponse {
            certificate_pem: certificate.pem,
            ca_bundle_pem,
            expires_at: certificate.not_after.to_rfc3339(),
        })
        .into_response(),
        Err(mobius_core::StoreError::NotFound { .. }) => revoked(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Lets `Extension<Peer>` fail as a 500 only if the listener forgot it.
impl FromRequestParts<DeviceState> for Peer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &DeviceState,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Peer>().cloned().ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
                None,
            )
        })
    }
}
