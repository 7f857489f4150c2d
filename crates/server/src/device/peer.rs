//! Who is on the other end of a device-listener connection: the [`Peer`]
//! the listener attaches to every request, and [`DeviceScope`], the
//! extractor device handlers use to prove the caller is an enrolled,
//! unrevoked device. Admin authentication never shares this path.

use std::net::SocketAddr;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::response::Response;
use mobius_core::devices::DeviceIdentity;

use super::DeviceState;
use super::errors::{error, revoked};
use crate::http::errors::ErrorCode;

/// What the device listener knows about the peer, from its TLS handshake.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified client certificate's name, when one was presented and
    /// its issuer belongs to the tenant it names.
    pub device: Option<DeviceIdentity>,
}

/// A device that proved itself with a certificate from its tenant's CA and
/// is not revoked: the only way device handlers reach the store.
pub struct DeviceScope {
    /// Also the tenant proof for [`mobius_core::Store::begin`].
    pub identity: DeviceIdentity,
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
            device: Some(identity),
        }) = peer
        else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "a client certificate from this server's enrollment is required",
                None,
            ));
        };
        if state.revocations.is_revoked(identity.device_id()) {
            return Err(revoked());
        }
        // A suspended tenant's devices are refused here, from memory, so
        // even the store-free heartbeat says so (TENANT_SUSPENDED).
        if let Some(block) = state.store.tenant_block(identity.tenant_id()) {
            return Err(crate::http::errors::ApiError::from(
                mobius_core::StoreError::TenantBlocked(block),
            )
            .into_response());
        }
        Ok(DeviceScope { identity, addr })
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
