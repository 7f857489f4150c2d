//! Invitations: an admin invites an email with a role; the code is
//! single-use and expires after [`INVITATION_DAYS`].

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set, prelude::Uuid,
};

use crate::audit::{Actor, AuditRecord};
use crate::authz::Role;
use crate::crypto::secrets::{self, INVITATION_PREFIX};
use crate::db::StoreResult;
use crate::db::TenantScope;
use crate::db::entities::invitation;
use crate::identity::users::valid_email;

pub type Invitation = invitation::Model;

pub const INVITATION_DAYS: i64 = 7;

pub struct Invitations<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn invitations(&self) -> Invitations<'_> {
        Invitations::new(self)
    }
}

impl<'s> Invitations<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        Invitations { scope }
    }

    /// Creates an invitation; returns the code (shown once) and the row.
    pub async fn create(
        &self,
        actor: &Actor,
        email: &str,
        role: Role,
    ) -> StoreResult<(String, Invitation)> {
        let email = valid_email(email)?;
        let code = secrets::generate(INVITATION_PREFIX);
        let now = chrono::Utc::now();
        let row = invitation::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            email: Set(email),
            role: Set(role),
            token_hash: Set(secrets::sha256(&code).to_vec()),
            expires_at: Set(now + chrono::Duration::days(INVITATION_DAYS)),
            accepted_at: Set(None),
            invited_by: Set(actor.id),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("user.invited", "invitation", Some(row.id)).with_details(
                    serde_json::json!({ "email": row.email, "role": row.role.as_str() }),
                ),
            )
            .await?;
        Ok((code, row))
    }

    pub async fn find_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<Invitation>> {
        let row = invitation::Entity::find()
            .filter(invitation::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(invitation::Column::TokenHash.eq(hash.to_vec()))
            .one(self.scope.connection())
            .await?;
        Ok(row.filter(|r| secrets::hashes_match(&r.token_hash, hash)))
    }

    pub async fn mark_accepted(&self, invitation: Invitation) -> StoreResult<()> {
        let mut row = invitation.into_active_model();
        let now = chrono::Utc::now();
        row.accepted_at = Set(Some(now));
        row.updated_at = Set(now);
        row.update(self.scope.connection()).await?;
        Ok(())
    }
}
