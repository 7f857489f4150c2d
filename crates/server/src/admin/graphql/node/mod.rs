//! Relay's object identification: the `Node` interface, and `node(id:)` /
//! `nodes(ids:)`, which find any object by its global ID (see [`super::ids`])
//! after the same permission check as the object's own query.

use crate::admin::graphql::devices::types::DeviceNode;
use crate::admin::graphql::enrollment::types::EnrollmentTokenNode;
use crate::admin::graphql::identity::types::{ApiTokenNode, UserNode};
use crate::admin::graphql::prelude::*;

/// Most IDs one `nodes` call may ask for.
const MAX_NODES: usize = 100;

/// An object with a global ID.
// One value per resolved ID, dropped with the response: boxing the device
// variant would save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(async_graphql::Interface)]
#[graphql(field(name = "id", ty = "&ID"))]
pub enum Node {
    Tenant(TenantNode),
    Site(SiteNode),
    Team(TeamNode),
    User(UserNode),
    ApiToken(ApiTokenNode),
    Device(DeviceNode),
    EnrollmentToken(EnrollmentTokenNode),
}

#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// The object with this global ID, if the caller may see it.
    async fn node(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Node>> {
        find(ctx, &id).await
    }

    /// The objects with these global IDs, in order; null where one does not
    /// exist or is not visible to the caller. At most 100 IDs.
    async fn nodes(&self, ctx: &Context<'_>, ids: Vec<ID>) -> Result<Vec<Option<Node>>> {
        if ids.len() > MAX_NODES {
            return Err(errors::bad_input(
                "ids",
                format!("at most {MAX_NODES} IDs per call"),
            ));
        }
        let mut found = Vec::with_capacity(ids.len());
        for id in &ids {
            found.push(find(ctx, id).await?);
        }
        Ok(found)
    }
}

/// Resolves one global ID: `None` when it names nothing the caller may see
/// (malformed, unknown type, another tenant's, missing).
async fn find(ctx: &Context<'_>, id: &ID) -> Result<Option<Node>> {
    let Some((type_name, uuid)) = decode_global_id(id) else {
        return Ok(None);
    };
    let found = match type_name.as_str() {
        "Tenant" => {
            let (_, scope) = gate::read(ctx, Operation::ViewTenant, None).await?;
            if scope.tenant_id() != uuid {
                return Ok(None);
            }
            scope.tenant().get().await.map(|t| Node::Tenant(t.into()))
        }
        "Site" => {
            let (_, scope) = gate::read(ctx, Operation::ViewSites, None).await?;
            scope.sites().get(uuid).await.map(|s| Node::Site(s.into()))
        }
        "Team" => {
            let (_, scope) = gate::read(ctx, Operation::ViewTeams, None).await?;
            scope.teams().get(uuid).await.map(|t| Node::Team(t.into()))
        }
        "User" => {
            let (_, scope) = gate::read(ctx, Operation::ViewUsers, None).await?;
            scope.users().get(uuid).await.map(|u| Node::User(u.into()))
        }
        "ApiToken" => {
            let (principal, scope) = gate::read(ctx, Operation::ManageOwnApiTokens, None).await?;
            let all = principal
                .authorize(Operation::ManageAllApiTokens, None)
                .is_ok();
            match scope.api_tokens().get(uuid).await {
                Ok(token) if all || token.user_id == principal.user_id => {
                    Ok(Node::ApiToken(token.into()))
                }
                Ok(_) => return Ok(None),
                Err(err) => Err(err),
            }
        }
        "Device" => {
            let team = gate::principal(ctx)?.grants.token_team;
            let (_, scope) = gate::read(ctx, Operation::ViewDevices, team).await?;
            scope
                .devices()
                .get(uuid)
                .await
                .map(|d| Node::Device(device_node(ctx, d, Utc::now())))
        }
        "EnrollmentToken" => {
            let (_, scope) = gate::read(ctx, Operation::ManageEnrollmentTokens, None).await?;
            scope
                .enrollment_tokens()
                .get(uuid)
                .await
                .map(|t| Node::EnrollmentToken(t.into()))
        }
        _ => return Ok(None),
    };
    match found {
        Ok(node) => Ok(Some(node)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(errors::store(err)),
    }
}
