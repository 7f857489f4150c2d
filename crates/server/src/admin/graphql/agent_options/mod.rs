//! Layered agent options: read either layer with the merged view, set a
//! layer (or try it with `dryRun`).

use mobius_core::osquery::{OptionLayer, OsqueryError, merge, validate_document};

use crate::admin::graphql::prelude::*;
use crate::osquery::OptionsHub;

/// One layer and the merged view devices of its team get.
#[derive(SimpleObject)]
pub struct AgentOptions {
    /// The team whose override this is; null for the global layer.
    pub team_id: Option<ID>,
    /// This layer's own document (`{}` when never set).
    pub layer: Json<serde_json::Value>,
    /// This layer's version (0 when never set).
    pub layer_version: i64,
    /// What devices of this team (or, for the global layer, devices in
    /// no team) get: the team layer over the global one.
    pub merged: Json<serde_json::Value>,
    /// Grows with every change to either layer of this view.
    pub options_version: i64,
    pub updated_at: Option<DateTime<Utc>>,
    /// True when this answer is a dry run: nothing was stored.
    pub dry_run: bool,
}

fn options_error(err: OsqueryError) -> async_graphql::Error {
    match err {
        OsqueryError::Invalid { field, reason } => errors::bad_input(
            &format!("document.{field}").replace("document.document", "document"),
            reason,
        ),
        OsqueryError::Store(err) => errors::store(err),
        OsqueryError::UnknownSecret
        | OsqueryError::NodeInvalid
        | OsqueryError::DeviceRevoked
        | OsqueryError::DeviceLimit { .. } => {
            errors::coded(ErrorCode::Internal, "unexpected", None)
        }
    }
}

fn team_arg(team_id: Option<ID>) -> Result<Option<Uuid>> {
    team_id.map(|id| parse_id(&id, "Team")).transpose()
}

fn view(
    layer: OptionLayer,
    merged_version: i64,
    merged: serde_json::Value,
    dry_run: bool,
) -> AgentOptions {
    AgentOptions {
        team_id: layer.team_id.map(|id| global_id("Team", id)),
        layer: Json(layer.document),
        layer_version: layer.version,
        merged: Json(merged),
        options_version: merged_version,
        updated_at: layer.updated_at,
        dry_run,
    }
}

#[derive(Default)]
pub struct AgentOptionsQuery;

#[Object]
impl AgentOptionsQuery {
    /// The global layer (no `teamId`) or a team's override, with the
    /// merged view.
    async fn agent_options(&self, ctx: &Context<'_>, team_id: Option<ID>) -> Result<AgentOptions> {
        let team = team_arg(team_id)?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, team).await?;
        let layer = scope
            .agent_options()
            .layer(team)
            .await
            .map_err(errors::store)?;
        let merged = ctx
            .data::<Arc<OptionsHub>>()?
            .merged(scope, team)
            .await
            .map_err(errors::store)?;
        Ok(view(layer, merged.version, merged.document.clone(), false))
    }
}

#[derive(Default)]
pub struct AgentOptionsMutation;

#[Object]
impl AgentOptionsMutation {
    /// Replaces the global layer (no `teamId`) or a team's override with
    /// `document` (`options`, `schedule`, `packs`, `decorators`, `agent`,
    /// ...; a team's `null` removes a global key). Devices whose merged
    /// view changes get it at once. With `dryRun`, only validates and
    /// answers the merged view the change would give.
    async fn set_agent_options(
        &self,
        ctx: &Context<'_>,
        team_id: Option<ID>,
        document: Json<serde_json::Value>,
        #[graphql(default = false)] dry_run: bool,
    ) -> Result<AgentOptions> {
        let team = team_arg(team_id)?;
        let document = document.0;
        if dry_run {
            validate_document(&document).map_err(options_error)?;
            let (_, scope) = gate::read(ctx, Operation::ManageDevices, team).await?;
            let mut layer = scope
                .agent_options()
                .layer(team)
                .await
                .map_err(errors::store)?;
            let merged = match team {
                Some(_) => {
                    let global = scope
                        .agent_options()
                        .layer(None)
                        .await
                        .map_err(errors::store)?;
                    merge(&merge(&serde_json::json!({}), &global.document), &document)
                }
                None => merge(&serde_json::json!({}), &document),
            };
            let current = scope
                .agent_options()
                .merged(team)
                .await
                .map_err(errors::store)?;
            layer.document = document;
            return Ok(view(layer, current.version, merged, true));
        }
        let hub = ctx.data::<Arc<OptionsHub>>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, team).await?;
        let layer = scope
            .agent_options()
            .set(&principal.actor(), team, document)
            .await
            .map_err(options_error)?;
        let merged = scope
            .agent_options()
            .merged(team)
            .await
            .map_err(errors::store)?;
        let tenant = scope.tenant_id();
        scope.commit().await.map_err(errors::store)?;
        hub.changed(tenant).await;
        Ok(view(layer, merged.version, merged.document, false))
    }
}
