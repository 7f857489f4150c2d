//! Turning a verified identity into a signed-in user: find the user by
//! the IdP's (issuer, subject), else by email (linking them), else create
//! one just in time; apply the group → role mapping on every sign-in, so a
//! change at the IdP takes effect the next time the person signs in.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
use uuid::Uuid;

use super::entities::sso_identity;
use super::{GroupRole, SsoConfig, SsoError, SsoResult, TakenLogin};
use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::authz::{Role, TeamRole};
use crate::db::entities::team_membership;
use crate::db::{FoundTenant, StoreError, StoreResult, TenantScope};
use crate::identity::{Identity, NewUser, RequestMeta, Session, User, user_actor};

/// What the server established from a verified ID token (or assertion).
#[derive(Clone, Debug)]
pub struct VerifiedIdentity {
    /// The IdP's issuer identifier.
    pub issuer: String,
    /// The IdP's stable id for the person.
    pub subject: String,
    pub email: Option<String>,
    /// Whether the IdP vouches for the email (`email_verified`); an
    /// unverified email never links to an existing account.
    pub email_verified: bool,
    pub name: Option<String>,
    /// The groups claim's values (empty when the claim is absent).
    pub groups: Vec<String>,
}

/// The end of a successful sign-in.
pub enum SsoOutcome {
    /// A browser sign-in: the same session password login gives.
    Session {
        session: Session,
        redirect_to: String,
    },
    /// A CLI sign-in: a one-time code for the CLI's loopback listener,
    /// which redeems it with its own verifier ([`Identity::redeem_sso_handoff`]).
    CliHandoff { code: String, redirect_to: String },
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Owner => 5,
        Role::Admin => 4,
        Role::Maintainer => 3,
        Role::Gitops => 2,
        Role::Observer => 1,
    }
}

/// The tenant role and the team roles `groups` map to under `config`.
/// Teams named by any mapping are "managed": the person's membership in
/// them follows the groups (removed when no group grants it any more);
/// other teams are left alone.
fn mapped_roles(
    policy: &Provisioning<'_>,
    groups: &[String],
) -> (Role, Vec<(Uuid, Option<TeamRole>)>) {
    let mut role: Option<Role> = None;
    let mut teams: Vec<(Uuid, Option<TeamRole>)> = Vec::new();
    for mapping in policy.group_roles {
        let member = groups.contains(&mapping.group);
        if let Some(team_id) = mapping.team_id {
            let entry = match teams.iter_mut().find(|(t, _)| *t == team_id) {
                Some(entry) => entry,
                None => {
                    teams.push((team_id, None));
                    // Just pushed: the vector is not empty.
                    let last = teams.len() - 1;
                    &mut teams[last]
                }
            };
            if member {
                let wanted = mapping.team_role;
                entry.1 = match (entry.1, wanted) {
                    (Some(TeamRole::Maintainer), _) | (_, Some(TeamRole::Maintainer)) => {
                        Some(TeamRole::Maintainer)
                    }
                    (a, b) => a.or(b),
                };
            }
        }
        if member && let Some(r) = mapping.role {
            role = Some(match role {
                Some(current) if rank(current) >= rank(r) => current,
                _ => r,
            });
        }
    }
    (role.unwrap_or(policy.default_role), teams)
}

/// How a protocol's verified identities become users: the part of a
/// tenant's OIDC or SAML configuration that provisioning reads.
pub(crate) struct Provisioning<'a> {
    /// `oidc` or `saml`, for the audit log.
    pub protocol: &'static str,
    pub allowed_email_domains: &'a [String],
    pub group_roles: &'a [GroupRole],
    pub jit_enabled: bool,
    pub default_role: Role,
}

impl SsoConfig {
    fn provisioning(&self) -> Provisioning<'_> {
        Provisioning {
            protocol: "oidc",
            allowed_email_domains: &self.allowed_email_domains,
            group_roles: &self.group_roles,
            jit_enabled: self.jit_enabled,
            default_role: self.default_role,
        }
    }
}

pub(super) fn sso_actor(user: Option<&User>, meta: &RequestMeta) -> Actor {
    match user {
        Some(user) => user_actor(user, meta),
        None => Actor {
            kind: ActorKind::System,
            id: None,
            ip: meta.ip.clone(),
            user_agent: meta.user_agent.clone(),
        },
    }
}

impl super::Sso<'_> {
    /// Links an IdP identity (issuer, subject) to a user: later sign-ins
    /// find the user by it, whatever the email says then.
    pub async fn link(&self, user_id: Uuid, issuer: &str, subject: &str) -> StoreResult<()> {
        let now = Utc::now();
        sso_identity::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            user_id: Set(user_id),
            issuer: Set(issuer.to_owned()),
            subject: Set(subject.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(crate::db::conflict_on("SSO identity", "subject"))?;
        Ok(())
    }
}

impl Identity {
    /// Signs in the person `identity` names, after the server verified it
    /// against `login` (the consumed login state). `replay_key` is the
    /// hash of the assertion, remembered until `replay_expires_at`.
    pub async fn complete_sso(
        &self,
        tenant: &FoundTenant,
        login: &TakenLogin,
        identity: VerifiedIdentity,
        replay_key: [u8; 32],
        replay_expires_at: chrono::DateTime<Utc>,
        meta: &RequestMeta,
    ) -> SsoResult<SsoOutcome> {
        let scope = self.store.begin(tenant).await?;
        let config = scope
            .sso()
            .config()
            .await?
            .filter(|c| c.enabled)
            .ok_or(SsoError::NotConfigured)?;
        scope
            .sso()
            .remember_once(replay_key, replay_expires_at)
            .await?;
        let user = self
            .sign_in_identity(
                &scope,
                &config.provisioning(),
                &identity,
                login.cli_challenge.is_some(),
                meta,
            )
            .await?;
        let outcome = if login.cli_challenge.is_some() {
            let code = scope.sso().set_handoff(login.id, user.id).await?;
            SsoOutcome::CliHandoff {
                code,
                redirect_to: login.redirect_to.clone(),
            }
        } else {
            let session = self.start_session(&scope, user, meta).await?;
            SsoOutcome::Session {
                session,
                redirect_to: login.redirect_to.clone(),
            }
        };
        scope.commit().await?;
        Ok(outcome)
    }

    /// Finds, links or (just in time) creates the user `identity` names,
    /// applies the group → role mapping and audits the sign-in
    /// (`user.sso_signed_in`), inside `scope`'s transaction. Shared by
    /// OIDC and SAML: only how the identity was verified differs.
    pub(crate) async fn sign_in_identity(
        &self,
        scope: &TenantScope,
        policy: &Provisioning<'_>,
        identity: &VerifiedIdentity,
        cli: bool,
        meta: &RequestMeta,
    ) -> SsoResult<User> {
        let email = identity
            .email
            .as_deref()
            .map(|e| e.trim().to_owned())
            .filter(|e| e.contains('@'))
            .ok_or(SsoError::EmailMissing)?;
        if !super::config::domain_allowed(policy.allowed_email_domains, &email) {
            let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            return Err(SsoError::EmailDomainNotAllowed(domain.to_ascii_lowercase()));
        }
        let (role, teams) = mapped_roles(policy, &identity.groups);
        let (user, created) = match self.linked_user(scope, identity).await? {
            Some(user) => (user, false),
            None => match scope.users().find_by_email(&email).await? {
                // Linking by email is only safe when the IdP vouches for
                // the address; otherwise anyone could claim an account.
                Some(user) if identity.email_verified => {
                    scope
                        .sso()
                        .link(user.id, &identity.issuer, &identity.subject)
                        .await?;
                    (user, false)
                }
                Some(_) => return Err(SsoError::EmailMissing),
                None if policy.jit_enabled => {
                    let name = identity
                        .name
                        .clone()
                        .filter(|n| !n.trim().is_empty())
                        .unwrap_or_else(|| email.clone());
                    let user = scope
                        .users()
                        .create(
                            &sso_actor(None, meta),
                            NewUser {
                                email: &email,
                                display_name: &name,
                                role,
                                password_hash: None,
                            },
                        )
                        .await?;
                    scope
                        .sso()
                        .link(user.id, &identity.issuer, &identity.subject)
                        .await?;
                    (user, true)
                }
                None => return Err(SsoError::NoAccount),
            },
        };
        let actor = sso_actor(Some(&user), meta);
        // Owners are managed by hand (break-glass), never by the IdP.
        let user = if user.role != Role::Owner && user.role != role {
            scope.users().set_role(&actor, user.id, role).await?
        } else {
            user
        };
        if user.role != Role::Owner {
            sync_teams(scope, &actor, user.id, &teams).await?;
        }
        scope
            .audit()
            .record(
                &actor,
                AuditRecord::new("user.sso_signed_in", "user", Some(user.id)).with_details(
                    serde_json::json!({
                        "protocol": policy.protocol,
                        "issuer": identity.issuer,
                        "subject": identity.subject,
                        "groups": identity.groups,
                        "role": user.role.as_str(),
                        "provisioned": created,
                        "cli": cli,
                    }),
                ),
            )
            .await?;
        Ok(user)
    }

    /// The CLI's half of `mobius login --sso`: the code its loopback
    /// listener received, and the verifier of the challenge it sent.
    pub async fn redeem_sso_handoff(
        &self,
        tenant: &FoundTenant,
        code: &str,
        verifier: &str,
        meta: &RequestMeta,
    ) -> SsoResult<Session> {
        let scope = self.store.begin(tenant).await?;
        let user_id = scope.sso().take_handoff(code, verifier).await?;
        let user = scope.users().get(user_id).await?;
        let session = self.start_session(&scope, user, meta).await?;
        scope.commit().await?;
        Ok(session)
    }

    /// Records a refused sign-in (`sso.sign_in_refused`) in its own
    /// transaction: the refusal itself wrote nothing else.
    pub async fn record_sso_refusal(
        &self,
        tenant: &FoundTenant,
        protocol: &'static str,
        error: &SsoError,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let scope = self.store.begin(tenant).await?;
        scope
            .audit()
            .record(
                &sso_actor(None, meta),
                AuditRecord::new("sso.sign_in_refused", "tenant", Some(tenant_id(tenant)))
                    .with_details(serde_json::json!({
                        "protocol": protocol,
                        "reason": error.reason(),
                        "message": match error {
                            SsoError::Store(_) => "internal error".to_owned(),
                            other => other.to_string(),
                        },
                    })),
            )
            .await?;
        scope.commit().await
    }

    async fn linked_user(
        &self,
        scope: &TenantScope,
        identity: &VerifiedIdentity,
    ) -> StoreResult<Option<User>> {
        let link = sso_identity::Entity::find()
            .filter(sso_identity::Column::TenantId.eq(scope.tenant_id()))
            .filter(sso_identity::Column::Issuer.eq(identity.issuer.as_str()))
            .filter(sso_identity::Column::Subject.eq(identity.subject.as_str()))
            .one(scope.connection())
            .await?;
        match link {
            Some(link) => Ok(Some(scope.users().get(link.user_id).await?)),
            None => Ok(None),
        }
    }
}

fn tenant_id(tenant: &FoundTenant) -> Uuid {
    use crate::db::TenantProof;
    tenant.tenant_id()
}

/// Makes the user's membership in each managed team what the groups say.
async fn sync_teams(
    scope: &TenantScope,
    actor: &Actor,
    user_id: Uuid,
    teams: &[(Uuid, Option<TeamRole>)],
) -> StoreResult<()> {
    let current = scope.team_memberships().for_user(user_id).await?;
    for (team_id, wanted) in teams {
        let existing = current.iter().find(|m| m.team_id == *team_id);
        match (existing, wanted) {
            (None, Some(role)) => {
                scope
                    .team_memberships()
                    .add(actor, *team_id, user_id, *role)
                    .await?;
            }
            (Some(m), Some(role)) if m.role != *role => {
                let mut row = m.clone().into_active_model();
                row.role = Set(*role);
                row.updated_at = Set(Utc::now());
                row.update(scope.connection()).await?;
                scope
                    .audit()
                    .record(
                        actor,
                        AuditRecord::new("team.member_role_changed", "team", Some(*team_id))
                            .with_details(serde_json::json!({ "user_id": user_id, "role": role.as_str(), "by": "sso" })),
                    )
                    .await?;
            }
            (Some(m), None) => {
                team_membership::Entity::delete_by_id(m.id)
                    .exec(scope.connection())
                    .await
                    .map_err(StoreError::from)?;
                scope
                    .audit()
                    .record(
                        actor,
                        AuditRecord::new("team.member_removed", "team", Some(*team_id))
                            .with_details(serde_json::json!({ "user_id": user_id, "by": "sso" })),
                    )
                    .await?;
            }
            _ => {}
        }
    }
    Ok(())
}
