//! Audit queries.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Queries of this area, merged into the root `Query`.
#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<AuditEventNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewAuditLog, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.audit().page(offset, limit).await },
            AuditEventNode::from,
        )
        .await
    }

    /// Recomputes the tenant's audit hash chain; `firstBrokenSeq` is null
    /// when every event is intact.
    async fn audit_chain(&self, ctx: &Context<'_>) -> Result<AuditChain> {
        let (principal, scope) = gate::read(ctx, Operation::ViewAuditLog, None).await?;
        // Link what has committed but not been chained yet, so the answer
        // covers every event written before this query.
        ctx.data::<crate::admin::graphql::gate::WriteStore>()?
            .0
            .chain_tenant_audit(principal)
            .await
            .map_err(errors::store)?;
        let report = scope.audit().verify_chain().await.map_err(errors::store)?;
        Ok(AuditChain {
            events: report.events as i64,
            intact: report.is_intact(),
            first_broken_seq: report.first_broken_seq,
        })
    }
}
