//! Batched loads within the request's read scope, one cache per request.

use crate::admin::graphql::prelude::*;
use crate::admin::graphql::tenancy::types::{SiteNode, TeamNode};

/// The request's cached site and team loaders (one of each per request).
pub type SiteLoads = DataLoader<SiteLoader, HashMapCache>;

pub type TeamLoads = DataLoader<TeamLoader, HashMapCache>;

/// Loads sites by id within the request's read scope.
pub struct SiteLoader(pub Arc<ReadScope>);

/// Loads teams by id within the request's read scope.
pub struct TeamLoader(pub Arc<ReadScope>);

impl Loader<Uuid> for SiteLoader {
    type Value = SiteNode;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, SiteNode>> {
        let scope = self.0.get().await?;
        let rows = scope.sites().by_ids(keys).await.map_err(errors::store)?;
        Ok(rows
            .into_iter()
            .map(|s| (s.id, SiteNode::from(s)))
            .collect())
    }
}

impl Loader<Uuid> for TeamLoader {
    type Value = TeamNode;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, TeamNode>> {
        let scope = self.0.get().await?;
        let rows = scope.teams().by_ids(keys).await.map_err(errors::store)?;
        Ok(rows
            .into_iter()
            .map(|t| (t.id, TeamNode::from(t)))
            .collect())
    }
}
