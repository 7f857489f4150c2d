//! Subscriptions over graphql-ws on `/api/graphql`.

use async_graphql::{Context, Result, Subscription as SubscriptionDerive};
use futures_util::{Stream, StreamExt};
use mobius_core::authz::Operation;
use tokio_stream::wrappers::BroadcastStream;

use super::types::AuditEventNode;
use crate::admin::graphql::gate::{self, WriteStore};

#[derive(Default)]
pub struct AuditSubscription;

#[SubscriptionDerive]
impl AuditSubscription {
    /// Audit events of the caller's tenant as they are committed, on this
    /// server or (relayed by the cluster bus) on any other replica.
    async fn audit_events(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = AuditEventNode>> {
        let principal = gate::principal(ctx)?;
        principal
            .authorize(Operation::ViewAuditLog, None)
            .map_err(crate::admin::graphql::errors::denied)?;
        let tenant = principal.tenant_id;
        let store = &ctx.data::<WriteStore>()?.0;
        let here = BroadcastStream::new(store.subscribe_audit());
        let elsewhere = BroadcastStream::new(store.subscribe_remote_audit());
        Ok(
            futures_util::stream::select(here, elsewhere).filter_map(move |event| async move {
                match event {
                    Ok(event) if event.tenant_id == tenant => Some(AuditEventNode::from(event)),
                    // Other tenants' events, or a lagging subscriber's gap.
                    _ => None,
                }
            }),
        )
    }
}
