//! `signUp` (cloud edition, `signup_enabled`): a new tenant with its CA,
//! default site and first owner, and the verification email. Where
//! sign-up is off (always in OSS) it answers FORBIDDEN.

use mobius_core::audit::{Actor, ActorKind};
use mobius_core::pki::Pki;
use mobius_core::tenancy::{SignUp, SignUpPolicy};

use crate::admin::graphql::prelude::*;
use crate::http::limits::SignUpLimiter;
use crate::mail::Mailer;

/// What `signUp` needs; in the schema only where sign-up is on.
pub struct SignUpService {
    pub pki: Arc<Pki>,
    pub policy: SignUpPolicy,
    pub limiter: SignUpLimiter,
    /// Present whenever `policy.verify_email` is (the settings check it).
    pub mailer: Option<Mailer>,
    /// Base of the verification link.
    pub public_url: String,
    pub trust: Arc<crate::device::Trust>,
}

#[derive(Default)]
pub struct SignUpMutation;

#[derive(InputObject)]
pub struct SignUpInput {
    /// The organization's name, as its users will see it.
    pub name: String,
    /// Unique across the service: lowercase letters, digits and dashes.
    pub slug: String,
    /// The first owner's email: the verification link goes here.
    pub email: String,
    pub display_name: String,
    pub password: String,
}

#[derive(SimpleObject)]
pub struct SignUpPayload {
    pub tenant: TenantNode,
    /// True when the tenant stays closed until the emailed link is
    /// followed; false when it is usable at once.
    pub verification_required: bool,
}

#[Object]
impl SignUpMutation {
    /// Creates a tenant, its CA, its default site and its first owner, in
    /// one transaction, and emails the owner a verification link (sign-in
    /// works once it is followed). Rate limited per client address; an
    /// email may sign up a limited number of tenants.
    async fn sign_up(&self, ctx: &Context<'_>, input: SignUpInput) -> Result<SignUpPayload> {
        let Some(service) = ctx.data_opt::<Arc<SignUpService>>() else {
            return Err(errors::forbidden(
                "self sign-up is not enabled on this server",
            ));
        };
        let request = gate::request(ctx)?;
        if let Err(limit) = service.limiter.check_client(&request.client_key) {
            let seconds = limit.retry_after_secs;
            ctx.insert_http_header("retry-after", seconds.to_string());
            return Err(errors::coded(
                ErrorCode::RateLimited,
                format!("too many sign-ups from this address; retry in {seconds} s"),
                None,
            ));
        }
        let store = &ctx.data::<gate::WriteStore>()?.0;
        let actor = Actor {
            kind: ActorKind::System,
            id: None,
            ip: request.meta.ip.clone(),
            user_agent: request.meta.user_agent.clone(),
        };
        let pending = store
            .sign_up(
                &service.pki,
                service.policy,
                SignUp {
                    tenant_name: &input.name,
                    slug: &input.slug,
                    email: &input.email,
                    display_name: &input.display_name,
                    password: &input.password,
                },
                &actor,
            )
            .await
            .map_err(errors::store)?;
        // The email goes out before the commit: if it cannot be sent, no
        // tenant is left behind and the slug stays free for a retry.
        if let (Some(secret), Some(mailer)) =
            (&pending.signed_up.verification_secret, &service.mailer)
        {
            let link = format!(
                "{}/api/v1/mobius/signup/verify?token={secret}",
                service.public_url.trim_end_matches('/')
            );
            let body = format!(
                "Welcome to Mobius.\n\nConfirm the sign-up of \"{}\" ({}) by opening this link within {} hours:\n\n{link}\n\nIf you did not sign up, ignore this email: nothing happens without the link.\n",
                pending.signed_up.tenant.name,
                pending.signed_up.tenant.slug,
                service.policy.link_ttl.num_hours(),
            );
            if let Err(err) = mailer
                .send(&input.email, "Confirm your Mobius sign-up", body)
                .await
            {
                tracing::error!(error = %err, "sign-up: the verification email could not be sent");
                return Err(errors::coded(
                    ErrorCode::Internal,
                    "the verification email could not be sent; try again later",
                    None,
                ));
            }
        }
        let signed = pending.commit().await.map_err(errors::store)?;
        // The new CA is trusted by this server's device listener at once.
        if let Err(err) = service.trust.reload().await {
            tracing::warn!(error = %err, "sign-up: could not reload trusted CAs");
        }
        tracing::info!(tenant_id = %signed.tenant.id, slug = %signed.tenant.slug, "tenant signed up");
        Ok(SignUpPayload {
            verification_required: signed.verification_secret.is_some(),
            tenant: signed.tenant.into(),
        })
    }
}
