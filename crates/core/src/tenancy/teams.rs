//! Teams (who manages which devices) and their members.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid,
};

use super::named::named_repository;
use crate::audit::{Actor, AuditRecord};
use crate::authz::TeamRole;
use crate::db::entities::{team, team_membership};
use crate::db::{StoreError, StoreResult, TenantScope, conflict_on, in_use_by, valid_name};

pub type Team = team::Model;
pub type TeamMembership = team_membership::Model;

named_repository!(Teams, team, Team, "team", "devices");

impl TenantScope {
    pub fn teams(&self) -> Teams<'_> {
        Teams::new(self)
    }

    pub fn team_memberships(&self) -> TeamMemberships<'_> {
        TeamMemberships::new(self)
    }
}

/// Who belongs to which team, with which team role.
pub struct TeamMemberships<'s> {
    scope: &'s TenantScope,
}

impl<'s> TeamMemberships<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        TeamMemberships { scope }
    }

    pub async fn add(
        &self,
        actor: &Actor,
        team_id: Uuid,
        user_id: Uuid,
        role: TeamRole,
    ) -> StoreResult<TeamMembership> {
        // Both lookups are tenant-filtered, so a foreign id is "not found".
        self.scope.teams().get(team_id).await?;
        self.scope.users().get(user_id).await?;
        let now = chrono::Utc::now();
        let row = team_membership::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            team_id: Set(team_id),
            user_id: Set(user_id),
            role: Set(role),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(conflict_on("team membership", "user"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("team.member_added", "team", Some(team_id))
                    .with_details(serde_json::json!({ "user_id": user_id, "role": role.as_str() })),
            )
            .await?;
        Ok(row)
    }

    pub async fn for_user(&self, user_id: Uuid) -> StoreResult<Vec<TeamMembership>> {
        Ok(team_membership::Entity::find()
            .filter(team_membership::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(team_membership::Column::UserId.eq(user_id))
            .all(self.scope.connection())
            .await?)
    }

    pub async fn list(&self, team_id: Uuid) -> StoreResult<Vec<TeamMembership>> {
        Ok(team_membership::Entity::find()
            .filter(team_membership::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(team_membership::Column::TeamId.eq(team_id))
            .order_by_asc(team_membership::Column::Id)
            .all(self.scope.connection())
            .await?)
    }
}
