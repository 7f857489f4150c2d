//! Device mutations: each passes the gate with its operation, writes in
//! one transaction (audit event included) and commits.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Mutations of this area, merged into the root `Mutation`.
#[derive(Default)]
pub struct DeviceMutation;

#[Object]
impl DeviceMutation {
    /// Revokes a device: its certificate is refused within seconds, and
    /// its agent stops.
    async fn revoke_device(&self, ctx: &Context<'_>, id: ID) -> Result<DeviceNode> {
        let id = parse_id(&id, "Device")?;
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
            heartbeat_interval(ctx),
        ))
    }

    /// Deletes a device and refuses its certificate from then on.
    async fn delete_device(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "Device")?;
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
            id: global_id("CertificateAuthority", ca.id),
            certificate_pem: ca.cert_pem,
            not_after: ca.not_after,
            created_at: ca.created_at,
        })
    }
}
