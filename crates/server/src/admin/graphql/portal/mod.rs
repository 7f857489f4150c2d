//! The self-service portal's white-labeling: the name, colour, logo and
//! help contact end users see in Cocoon.

use mobius_core::portal::{Branding, BrandingPatch, PortalError};

use crate::admin::graphql::prelude::*;
use crate::http::errors::ErrorCode;

/// How the tenant's portal looks to its end users.
#[derive(SimpleObject)]
pub struct PortalBranding {
    /// Shown in the portal's header instead of the tenant's name.
    pub display_name: Option<String>,
    /// `#rrggbb`, used for the header and buttons.
    pub accent_color: Option<String>,
    /// Who end users should ask for help.
    pub support_contact: Option<String>,
    pub has_logo: bool,
    /// `image/png`, `image/jpeg` or `image/webp`.
    pub logo_content_type: Option<String>,
    pub logo_bytes: i32,
}

impl From<Branding> for PortalBranding {
    fn from(b: Branding) -> Self {
        PortalBranding {
            display_name: b.display_name,
            accent_color: b.accent_color,
            support_contact: b.support_contact,
            has_logo: b.logo_content_type.is_some(),
            logo_content_type: b.logo_content_type,
            logo_bytes: i32::try_from(b.logo_bytes).unwrap_or(i32::MAX),
        }
    }
}

/// A change to the branding: a field left out stays as it is; an empty
/// string clears it.
#[derive(InputObject)]
pub struct SetPortalBrandingInput {
    pub display_name: Option<String>,
    pub accent_color: Option<String>,
    pub support_contact: Option<String>,
    /// A PNG, JPEG or WebP image, base64 (standard alphabet), at most 256 KiB.
    pub logo_base64: Option<String>,
    /// Removes the logo.
    #[graphql(default = false)]
    pub clear_logo: bool,
}

/// Exhaustive: a new portal error needs a decision here.
fn portal_error(err: PortalError) -> async_graphql::Error {
    match err {
        PortalError::Invalid { field, reason } => errors::bad_input(field, reason),
        PortalError::Store(err) => errors::store(err),
        PortalError::Unauthenticated
        | PortalError::NotOffered
        | PortalError::NotAllowed(_)
        | PortalError::Software(_) => errors::coded(ErrorCode::Internal, "unexpected", None),
    }
}

#[derive(Default)]
pub struct PortalQuery;

#[Object]
impl PortalQuery {
    /// The self-service portal's branding (defaults when never set).
    async fn portal_branding(&self, ctx: &Context<'_>) -> Result<PortalBranding> {
        let (_, scope) = gate::read(ctx, Operation::ViewTenant, None).await?;
        Ok(scope
            .portal()
            .branding()
            .await
            .map_err(errors::store)?
            .into())
    }
}

#[derive(Default)]
pub struct PortalMutation;

#[Object]
impl PortalMutation {
    /// Changes the self-service portal's branding; audited.
    async fn set_portal_branding(
        &self,
        ctx: &Context<'_>,
        input: SetPortalBrandingInput,
    ) -> Result<PortalBranding> {
        let logo = input
            .logo_base64
            .as_deref()
            .map(|text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| errors::bad_input("logoBase64", "is not base64"))
            })
            .transpose()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageTenant, None).await?;
        let branding = scope
            .portal()
            .set_branding(
                &principal.actor(),
                BrandingPatch {
                    display_name: input.display_name,
                    accent_color: input.accent_color,
                    support_contact: input.support_contact,
                    logo,
                    clear_logo: input.clear_logo,
                },
            )
            .await
            .map_err(portal_error)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(branding.into())
    }
}
