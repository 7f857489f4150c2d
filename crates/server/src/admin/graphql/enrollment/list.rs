//! The enrollment-token listing.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Enrollment tokens, newest first (without their secrets).
pub async fn enrollment_tokens(
    ctx: &Context<'_>,
    window: Window,
) -> Result<Page<EnrollmentTokenNode>> {
    let (_, scope) = gate::read(ctx, Operation::ManageEnrollmentTokens, None).await?;
    paged(
        window,
        |offset, limit| async move { scope.enrollment_tokens().page(offset, limit).await },
        EnrollmentTokenNode::from,
    )
    .await
}
