//! Enrollment mutations: each passes the gate with its operation, writes in
//! one transaction (audit event included) and commits.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Mutations of this area, merged into the root `Mutation`.
#[derive(Default)]
pub struct EnrollmentMutation;

#[Object]
impl EnrollmentMutation {
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
        let site_id = parse_id(&input.site_id, "Site")?;
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
        let id = parse_id(&id, "EnrollmentToken")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageEnrollmentTokens, None).await?;
        let token = scope
            .enrollment_tokens()
            .revoke(&principal.actor(), id)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(token.into())
    }
}
