//! Coalesced API-token "last used" writes (see [`crate::db::coalesce`]).

use sea_orm::prelude::Uuid;

use crate::db::coalesce::{Coalesced, LatestTimes};
use crate::db::{StoreResult, TenantScope};

/// API-token uses waiting to be written.
pub type ApiTokenUsage = Coalesced<TokenLastUsed>;

/// Writes `api_tokens.last_used_at`.
pub struct TokenLastUsed;

impl LatestTimes for TokenLastUsed {
    const TASK: &'static str = "api-token-usage-flush";

    async fn write(
        scope: &TenantScope,
        latest: Vec<(Uuid, chrono::DateTime<chrono::Utc>)>,
    ) -> StoreResult<()> {
        scope.api_tokens().record_last_used(&latest).await
    }
}
