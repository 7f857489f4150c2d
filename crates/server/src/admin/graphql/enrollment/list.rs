//! The enrollment-token listing.

use super::types::*;
use crate::admin::graphql::prelude::*;

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
