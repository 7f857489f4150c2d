//! Admin mutations and queries for the device side: enrollment tokens,
//! revoking and deleting devices, rotating the tenant CA.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use mobius_api::device::EnrollmentToken as TokenString;
use mobius_core::authz::Operation;
use mobius_core::enrollment::NewEnrollmentToken;

use super::DeviceAdmin;
use super::errors;
use super::gate;
use super::types::*;

/// Longest an enrollment token may live: a week.
const MAX_TOKEN_TTL_MINUTES: i32 = 7 * 24 * 60;

#[derive(SimpleObject, Clone)]
#[graphql(name = "EnrollmentToken")]
pub struct EnrollmentTokenNode {
    pub id: ID,
    pub name: String,
    pub site_id: ID,
    pub expires_at: DateTime<Utc>,
    pub max_uses: i32,
    pub uses: i32,
    pub allowed_ips: Vec<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<mobius_core::enrollment::EnrollmentToken> for EnrollmentTokenNode {
    fn from(t: mobius_core::enrollment::EnrollmentToken) -> Self {
        EnrollmentTokenNode {
            id: ID(t.id.to_string()),
            name: t.name,
            site_id: ID(t.site_id.to_string()),
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            uses: t.uses,
            allowed_ips: t
                .allowed_ips
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            revoked_at: t.revoked_at,
            created_at: t.created_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct CreatedEnrollmentToken {
    /// Give this to `mobius-agent enroll --token`. Shown once: only a hash
    /// of its secret is kept. It also pins the device listener's CA.
    pub token: String,
    pub enrollment_token: EnrollmentTokenNode,
}

#[derive(SimpleObject)]
#[graphql(name = "CertificateAuthority")]
pub struct CertificateAuthorityNode {
    pub id: ID,
    pub certificate_pem: String,
    pub not_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(InputObject)]
pub struct CreateEnrollmentTokenInput {
    pub site_id: ID,
    #[graphql(default_with = "String::from(\"enrollment token\")")]
    pub name: String,
    /// Minutes until it expires: default 15, at most a week.
    #[graphql(default = 15)]
    pub ttl_minutes: i32,
    /// How many enrollments it allows: default 1.
    #[graphql(default = 1)]
    pub max_uses: i32,
    /// Addresses or CIDR networks allowed to use it; empty: any.
    #[graphql(default)]
    pub allowed_ips: Vec<String>,
}

#[derive(Default)]
pub struct DeviceMutation;

#[Object]
impl DeviceMutation {
    /// Creates a site-scoped enrollment token. The answer holds the token
    /// string once.
    async fn create_enrollment_token(
        &self,
        ctx: &Context<'_>,
        input: CreateEnrollmentTokenInput,
    ) -> Result<CreatedEnrollmentToken> {
        if !(1..=MAX_TOKEN_TTL_MINUTES).contains(&input.ttl_minutes) {
            return Err(errors::bad_input(
                "ttlMinutes",
                format!("must be between 1 and {MAX_TOKEN_TTL_MINUTES}"),
            ));
        }
        if !(1..=100_000).contains(&input.max_uses) {
            return Err(errors::bad_input("maxUses", "must be between 1 and 100000"));
        }
        let site_id = parse_id(&input.site_id, "site")?;
        let devices = ctx.data::<DeviceAdmin>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageEnrollmentTokens, None).await?;
        let secret = mobius_core::crypto::secrets::generate("");
        let token = TokenString {
            secret: secret.clone(),
            ca_pin_sha256: devices.ca_pin,
        };
        let row = scope
            .enrollment_tokens()
            .create(
                &principal.actor(),
                NewEnrollmentToken {
                    site_id,
                    name: &input.name,
                    token_hash: mobius_core::crypto::secrets::sha256(&secret),
                    expires_at: chrono::Utc::now()
                        + chrono::Duration::minutes(i64::from(input.ttl_minutes)),
                    max_uses: input.max_uses,
                    allowed_ips: input.allowed_ips,
                },
            )
            .await
            .map_err(errors::store)?;
        // The tenant's CA exists before any device needs it.
        let created_ca = devices
            .pki
            .trusted(&scope)
            .await
            .map_err(errors::store)?
            .is_empty();
        devices
            .pki
            .current_ca(&scope, &principal.actor())
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        if created_ca {
            reload(devices).await;
        }
        Ok(CreatedEnrollmentToken {
            token: token.to_string(),
            enrollment_token: row.into(),
        })
    }

    async fn revoke_enrollment_token(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<EnrollmentTokenNode> {
        let id = parse_id(&id, "enrollment token")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageEnrollmentTokens, None).await?;
        let token = scope
            .enrollment_tokens()
            .revoke(&principal.actor(), id)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(token.into())
    }

    /// Revokes a device: its certificate is refused within seconds, and
    /// its agent stops.
    async fn revoke_device(&self, ctx: &Context<'_>, id: ID) -> Result<DeviceNode> {
        let id = parse_id(&id, "device")?;
        let (principal, scope) = gate::write_on_device(ctx, Operation::ManageDevices, id).await?;
        let device = scope
            .devices()
            .revoke(&principal.actor(), id)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        ctx.data::<DeviceAdmin>()?.revocations.insert(id);
        Ok(DeviceNode::new(
            device,
            chrono::Utc::now(),
            super::query::heartbeat_interval(ctx),
        ))
    }

    /// Deletes a device and refuses its certificate from then on.
    async fn delete_device(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "device")?;
        let (principal, scope) = gate::write_on_device(ctx, Operation::ManageDevices, uuid).await?;
        scope
            .devices()
            .delete(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        ctx.data::<DeviceAdmin>()?.revocations.insert(uuid);
        Ok(id)
    }

    /// Starts signing device certificates with a new tenant CA. The old CA
    /// stays trusted until the certificates it signed expire; agents move
    /// to the new CA when they next renew (at once, as told by their ping).
    async fn rotate_tenant_ca(&self, ctx: &Context<'_>) -> Result<CertificateAuthorityNode> {
        let devices = ctx.data::<DeviceAdmin>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageTenant, None).await?;
        let ca = devices
            .pki
            .rotate(&scope, &principal.actor())
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        reload(devices).await;
        Ok(CertificateAuthorityNode {
            id: ID(ca.id.to_string()),
            certificate_pem: ca.cert_pem,
            not_after: ca.not_after,
            created_at: ca.created_at,
        })
    }
}

async fn reload(devices: &DeviceAdmin) {
    if let Err(e) = devices.trust.reload().await {
        tracing::error!(error = %e, "reloading trusted tenant CAs");
    }
}

/// Enrollment tokens, newest first (without their secrets).
pub async fn enrollment_tokens(
    ctx: &Context<'_>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Page<EnrollmentTokenNode>> {
    let (offset, limit) = page_window(first, after.as_deref())?;
    let (_, scope) = gate::read(ctx, Operation::ManageEnrollmentTokens, None).await?;
    let (rows, total) = scope
        .enrollment_tokens()
        .page(offset, limit)
        .await
        .map_err(errors::store)?;
    Ok(page(rows, total, offset, EnrollmentTokenNode::from))
}
