//! The self-service portal (Cocoon): device-scoped tokens, what the portal
//! shows of one device, the self-service actions its user may take, and
//! the tenant's white-labeling.
//!
//! A token is bound to one device and one kind. The agent asks for a
//! **link** token over mTLS every hour (`mobius-agent portal` prints it in
//! a URL); a link only opens a **session**, whose token Cocoon keeps in a
//! cookie. Only SHA-256 hashes are stored, as for the other bearer
//! secrets (256 random bits make a fast hash enough). A presented token is
//! turned into a [`PortalGrant`], the proof [`Store::begin`] accepts, by
//! [`authenticate`] alone, after checking its kind, its expiry and that
//! its device is not revoked: code holding a grant can reach that one
//! device and nothing else of the tenant.

mod entities;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mobius_api::portal::{
    LINK_TOKEN_PREFIX, PortalEvent, PortalInstall, PortalPolicy, PortalSoftware,
    SESSION_TOKEN_PREFIX,
};
use mobius_api::software::InstallStatus;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::{Value, json};

use crate::Uuid;
use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::crypto::secrets;
use crate::db::entities::{audit_event, device};
use crate::db::{SecretKind, Store, StoreError, StoreResult, TenantScope};
use crate::plans::{PlanSigner, PlanTargets};
use crate::software::{InstallSpec, SoftwareError, offered_to, status_of};
use entities::{branding, token};

/// The largest logo the portal serves: it is sent on every page load of
/// an end user's portal, so it should be small.
pub const MAX_LOGO_BYTES: usize = 256 * 1024;
/// Events the activity page shows.
pub const ACTIVITY_LIMIT: u64 = 25;
/// Link tokens a device may hold at once: the current one and the one
/// before it (valid for the overlap), with room for a few manual asks.
const MAX_LIVE_LINKS: usize = 4;

/// The two kinds of portal token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// From the agent; good only for opening a session.
    Link,
    /// A browser's, traded for a link.
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Link => "link",
            TokenKind::Session => "session",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Link => LINK_TOKEN_PREFIX,
            TokenKind::Session => SESSION_TOKEN_PREFIX,
        }
    }
}

/// What can go wrong in the portal, mapped to stable codes by the server.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No such token, expired, of the wrong kind, or its device revoked or
    /// deleted: all the same to the caller, who needs a new link.
    #[error(
        "this portal link has expired or is not valid: open the portal again from the device (mobius-agent portal)"
    )]
    Unauthenticated,
    /// The software is not a self-service title offered to this device.
    #[error("no such self-service software for this device")]
    NotOffered,
    /// The action does not fit the install's state (installing twice,
    /// retrying what did not fail).
    #[error("{0}")]
    NotAllowed(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Software(#[from] SoftwareError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type PortalResult<T> = Result<T, PortalError>;

impl From<sea_orm::DbErr> for PortalError {
    fn from(err: sea_orm::DbErr) -> Self {
        PortalError::Store(err.into())
    }
}

/// Proof that a request presented a valid portal token for one device.
/// Only [`authenticate`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct PortalGrant {
    tenant_id: Uuid,
    device_id: Uuid,
    kind: TokenKind,
    expires_at: DateTime<Utc>,
}

impl PortalGrant {
    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    pub fn device_id(&self) -> Uuid {
        self.device_id
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// The device's user, acting through the portal: audited as the
    /// device, with the portal named as the client.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: ActorKind::Device,
            id: Some(self.device_id),
            ip: None,
            user_agent: Some("mobius-cocoon".into()),
        }
    }
}

/// A token as handed out: shown once, stored hashed.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// The tenant's white-labeling as stored (the logo bytes apart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Branding {
    pub display_name: Option<String>,
    pub accent_color: Option<String>,
    pub support_contact: Option<String>,
    pub logo_content_type: Option<String>,
    pub logo_bytes: usize,
}

/// A change to the white-labeling: `None` leaves a field alone, an empty
/// string (or `clear_logo`) clears it.
#[derive(Clone, Debug, Default)]
pub struct BrandingPatch {
    pub display_name: Option<String>,
    pub accent_color: Option<String>,
    pub support_contact: Option<String>,
    pub logo: Option<Vec<u8>>,
    pub clear_logo: bool,
}

/// Checks a presented token of `kind` and opens a scope in its tenant
/// with the grant that proves it. Expiry is checked here, in the tenant's
/// transaction, not only by the lookup, so a token cannot outlive its
/// time by racing the clock.
pub async fn authenticate(
    store: &Store,
    presented: &str,
    kind: TokenKind,
) -> PortalResult<(TenantScope, PortalGrant)> {
    let presented = presented.trim();
    if !presented.starts_with(kind.prefix()) || presented.len() > 128 {
        return Err(PortalError::Unauthenticated);
    }
    let hash = secrets::sha256(presented);
    let owner = store
        .tenant_by_secret_hash(SecretKind::PortalToken, &hash)
        .await?
        .ok_or(PortalError::Unauthenticated)?;
    let scope = store.begin(&owner).await?;
    let found = token::Entity::find()
        .filter(token::Column::TenantId.eq(scope.tenant_id()))
        .filter(token::Column::TokenHash.eq(hash.to_vec()))
        .one(scope.connection())
        .await?
        .ok_or(PortalError::Unauthenticated)?;
    if !secrets::hashes_match(&found.token_hash, &hash)
        || found.kind != kind.as_str()
        || found.expires_at <= Utc::now()
    {
        return Err(PortalError::Unauthenticated);
    }
    let device = device::Entity::find_by_id(found.device_id)
        .filter(device::Column::TenantId.eq(scope.tenant_id()))
        .one(scope.connection())
        .await?;
    if device.is_none_or(|d| d.revoked_at.is_some()) {
        return Err(PortalError::Unauthenticated);
    }
    let grant = PortalGrant {
        tenant_id: scope.tenant_id(),
        device_id: found.device_id,
        kind,
        expires_at: found.expires_at,
    };
    Ok((scope, grant))
}

pub struct Portal<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn portal(&self) -> Portal<'_> {
        Portal { scope: self }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl<'s> Portal<'s> {
    async fn insert_token(
        &self,
        device_id: Uuid,
        kind: TokenKind,
        valid_for: chrono::Duration,
    ) -> StoreResult<IssuedToken> {
        let now = Utc::now();
        let token = secrets::generate(kind.prefix());
        let expires_at = now + valid_for;
        token::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            device_id: Set(device_id),
            kind: Set(kind.as_str().into()),
            token_hash: Set(secrets::sha256(&token).to_vec()),
            expires_at: Set(expires_at),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        Ok(IssuedToken { token, expires_at })
    }

    /// A new link token for a device (asked for by its agent over mTLS),
    /// valid for `valid_for`. The device's expired tokens go, and so do
    /// its oldest links beyond the few it may hold. Not audited: agents
    /// rotate hourly, and a link alone changes nothing; the session it
    /// opens is audited.
    pub async fn issue_link(
        &self,
        device_id: Uuid,
        valid_for: chrono::Duration,
    ) -> StoreResult<IssuedToken> {
        let db = self.scope.connection();
        let now = Utc::now();
        token::Entity::delete_many()
            .filter(token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(token::Column::DeviceId.eq(device_id))
            .filter(token::Column::ExpiresAt.lte(now))
            .exec(db)
            .await?;
        let links = token::Entity::find()
            .filter(token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(token::Column::DeviceId.eq(device_id))
            .filter(token::Column::Kind.eq(TokenKind::Link.as_str()))
            .order_by_desc(token::Column::Id)
            .select_only()
            .column(token::Column::Id)
            .into_tuple::<Uuid>()
            .all(db)
            .await?;
        let surplus: Vec<Uuid> = links
            .into_iter()
            .skip(MAX_LIVE_LINKS.saturating_sub(1))
            .collect();
        if !surplus.is_empty() {
            token::Entity::delete_many()
                .filter(token::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(token::Column::Id.is_in(surplus))
                .exec(db)
                .await?;
        }
        self.insert_token(device_id, TokenKind::Link, valid_for)
            .await
    }

    /// Trades a link for a session of `valid_for` on the same device.
    pub async fn open_session(
        &self,
        grant: &PortalGrant,
        valid_for: chrono::Duration,
    ) -> PortalResult<IssuedToken> {
        if grant.kind != TokenKind::Link {
            return Err(PortalError::Unauthenticated);
        }
        let issued = self
            .insert_token(grant.device_id, TokenKind::Session, valid_for)
            .await?;
        self.scope
            .audit()
            .record(
                &grant.actor(),
                AuditRecord::new("portal.session_opened", "device", Some(grant.device_id))
                    .with_details(json!({ "expires_at": time(issued.expires_at) })),
            )
            .await?;
        Ok(issued)
    }

    /// The grant's device.
    pub async fn device(&self, grant: &PortalGrant) -> PortalResult<device::Model> {
        device::Entity::find_by_id(grant.device_id)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .filter(|d| d.revoked_at.is_none())
            .ok_or(PortalError::Unauthenticated)
    }

    /// The policies that apply to the device with its latest result on
    /// each: failing first, then not checked yet, then passing.
    pub async fn policies(&self, grant: &PortalGrant) -> PortalResult<Vec<PortalPolicy>> {
        let device = self.device(grant).await?;
        let policies = self.scope.policies();
        let results: HashMap<Uuid, _> = policies
            .results_of_device(device.id)
            .await?
            .into_iter()
            .map(|r| (r.policy_id, r))
            .collect();
        let (all, _) = policies.page(device.team_id, 0, 10_000).await?;
        let mut shown: Vec<PortalPolicy> = all
            .into_iter()
            .filter(|p| crate::policies::applies_to(p, &device))
            .map(|p| {
                let result = results.get(&p.id);
                PortalPolicy {
                    id: p.id,
                    name: p.name,
                    description: p.description,
                    resolution: p.resolution,
                    passing: result.and_then(|r| r.passes),
                    checked_at: result.map(|r| time(r.checked_at)),
                }
            })
            .collect();
        let rank = |p: &PortalPolicy| match p.passing {
            Some(false) => 0,
            None => 1,
            Some(true) => 2,
        };
        shown.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name)));
        Ok(shown)
    }

    /// The newest version of each self-service title offered to the
    /// device, with the device's latest install of it and what its user
    /// may do now.
    pub async fn software(&self, grant: &PortalGrant) -> PortalResult<Vec<PortalSoftware>> {
        let device = self.device(grant).await?;
        let software = self.scope.software();
        let latest = software.latest_on_device(device.id).await?;
        let mut seen = std::collections::HashSet::new();
        let mut shown = Vec::new();
        // `list` is newest first: the first version seen of a title is its newest.
        for (title, version) in software.list().await? {
            if !title.self_service || !offered_to(&title, &device) || !seen.insert(title.id) {
                continue;
            }
            let install = latest.get(&version.id);
            let can_uninstall = version
                .uninstall_script
                .as_deref()
                .is_some_and(|s| !s.trim().is_empty());
            shown.push(PortalSoftware {
                version_id: version.id,
                name: title.name.clone(),
                version: version.version.clone(),
                installer_kind: version.installer_kind.clone(),
                size_bytes: u64::try_from(version.size_bytes).unwrap_or(0),
                actions: actions_for(
                    install.map(|i| (i.action.as_str(), status_of(i))),
                    can_uninstall,
                )
                .into_iter()
                .map(str::to_owned)
                .collect(),
                install: install.map(|i| PortalInstall {
                    action: i.action.clone(),
                    status: status_of(i),
                    bytes_downloaded: u64::try_from(i.bytes_downloaded).unwrap_or(0),
                    bytes_total: u64::try_from(i.bytes_total).unwrap_or(0),
                    reason: i.reason.clone(),
                    updated_at: time(i.updated_at),
                }),
            });
        }
        shown.sort_by_key(|s| s.name.to_lowercase());
        Ok(shown)
    }

    /// Installs, retries or uninstalls a self-service title on the grant's
    /// device, if its state allows; answers the plan executions to push.
    /// The request is audited by the software area, as the device with
    /// the portal as its client.
    pub async fn act(
        &self,
        grant: &PortalGrant,
        signer: &PlanSigner,
        version_id: Uuid,
        action: &str,
    ) -> PortalResult<crate::software::Requested> {
        let current = self
            .software(grant)
            .await?
            .into_iter()
            .find(|s| s.version_id == version_id)
            .ok_or(PortalError::NotOffered)?;
        if !current.actions.iter().any(|a| a == action) {
            let state = match &current.install {
                Some(i) => format!("its {} is {}", i.action, i.status.label()),
                None => "it is not installed".into(),
            };
            return Err(PortalError::NotAllowed(format!(
                "cannot {action} {} now: {state}",
                current.name
            )));
        }
        let uninstall = match action {
            "install" => false,
            "uninstall" => true,
            // Retry repeats what failed.
            _ => current
                .install
                .as_ref()
                .is_some_and(|i| i.action == "uninstall"),
        };
        let requested = self
            .scope
            .software()
            .install(
                &grant.actor(),
                signer,
                InstallSpec {
                    version_id,
                    uninstall,
                    targets: PlanTargets {
                        device_ids: vec![grant.device_id],
                        ..PlanTargets::default()
                    },
                    ..InstallSpec::default()
                },
            )
            .await?;
        Ok(requested)
    }

    /// Recent events on the device, newest first, in words for its user.
    pub async fn activity(&self, grant: &PortalGrant) -> PortalResult<Vec<PortalEvent>> {
        let db = self.scope.connection();
        let device_id = grant.device_id;
        let install_ids: Vec<Uuid> = self
            .scope
            .software()
            .installs_of_device(device_id)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        let mut about = Condition::any()
            .add(audit_event::Column::TargetId.eq(device_id))
            .add(
                Condition::all()
                    .add(audit_event::Column::ActorKind.eq(ActorKind::Device.as_str()))
                    .add(audit_event::Column::ActorId.eq(device_id)),
            );
        for chunk in install_ids.chunks(500) {
            about = about.add(audit_event::Column::TargetId.is_in(chunk.to_vec()));
        }
        let rows = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(about)
            // The machinery behind an install (its plan, its delivery) and
            // tenant housekeeping mean nothing to the device's user.
            .filter(audit_event::Column::Action.not_like("plan%"))
            .filter(audit_event::Column::Action.not_like("tenant.%"))
            .order_by_desc(audit_event::Column::CreatedAt)
            .order_by_desc(audit_event::Column::Id)
            .limit(ACTIVITY_LIMIT)
            .all(db)
            .await?;
        // Names of the versions and policies the events mention.
        let versions: HashMap<Uuid, (String, String)> = self
            .scope
            .software()
            .list()
            .await?
            .into_iter()
            .map(|(t, v)| (v.id, (t.name, v.version)))
            .collect();
        let mut policy_names = HashMap::new();
        for row in &rows {
            if row.target_kind == "policy"
                && let Some(id) = row.target_id
                && !policy_names.contains_key(&id)
                && let Ok(p) = self.scope.policies().get(id).await
            {
                policy_names.insert(id, p.name);
            }
        }
        Ok(rows
            .into_iter()
            .map(|row| PortalEvent {
                at: time(row.created_at),
                summary: summary(&row, &versions, &policy_names),
                action: row.action,
            })
            .collect())
    }
}

/// What a device's user may do with a title, given its latest install.
pub fn actions_for(
    latest: Option<(&str, InstallStatus)>,
    can_uninstall: bool,
) -> Vec<&'static str> {
    match latest {
        None | Some(("uninstall", InstallStatus::Uninstalled)) => vec!["install"],
        Some((_, InstallStatus::Failed)) => vec!["retry"],
        Some(("install", InstallStatus::Installed)) if can_uninstall => vec!["uninstall"],
        Some(_) => Vec::new(),
    }
}

fn detail<'v>(details: &'v Value, key: &str) -> Option<&'v str> {
    details.get(key).and_then(Value::as_str)
}

/// One audit event in words for the device's user.
fn summary(
    row: &audit_event::Model,
    versions: &HashMap<Uuid, (String, String)>,
    policies: &HashMap<Uuid, String>,
) -> String {
    let software = |details: &Value| {
        detail(details, "version_id")
            .and_then(|id| Uuid::try_parse(id).ok())
            .and_then(|id| versions.get(&id))
            .map(|(name, version)| format!("{name} {version}"))
            .unwrap_or_else(|| "Software".into())
    };
    let policy = || {
        row.target_id
            .and_then(|id| policies.get(&id))
            .map(|n| format!("“{n}”"))
            .unwrap_or_else(|| "A policy".into())
    };
    match row.action.as_str() {
        "device.enrolled" => "This device was enrolled in Mobius".into(),
        "device.re_enrolled" => "This device was enrolled again".into(),
        "device.renewed" => "The device's certificate was renewed".into(),
        "device.revoked" => "This device was revoked".into(),
        "portal.session_opened" => "The self-service portal was opened".into(),
        // Only the device's own requests (through the portal) are found.
        "software.install_requested" | "software.uninstall_requested" => format!(
            "{} {}: {} requested from the portal",
            detail(&row.details, "name").unwrap_or("Software"),
            detail(&row.details, "version").unwrap_or(""),
            if row.action.ends_with("uninstall_requested") {
                "uninstall"
            } else {
                "install"
            },
        ),
        "software.install_status" => {
            let status = detail(&row.details, "status")
                .and_then(InstallStatus::parse)
                .map(InstallStatus::label)
                .unwrap_or("Updated");
            match detail(&row.details, "reason") {
                Some(reason) if status == "Failed" => {
                    format!("{}: Failed: {reason}", software(&row.details))
                }
                _ => format!("{}: {status}", software(&row.details)),
            }
        }
        "software.inventory_changed" => "The list of installed packages changed".into(),
        "policy.newly_failing" => format!("{} started failing", policy()),
        "policy.newly_passing" => format!("{} is passing again", policy()),
        other => other.replace(['.', '_'], " "),
    }
}

/// `#rrggbb`, lower-cased.
fn valid_color(text: &str) -> PortalResult<String> {
    let text = text.trim();
    let hex = text.strip_prefix('#').unwrap_or("");
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PortalError::Invalid {
            field: "accentColor",
            reason: format!("{text:?} is not a colour like #1a73e8"),
        });
    }
    Ok(format!("#{}", hex.to_ascii_lowercase()))
}

/// The image type of a logo, by its first bytes; only raster formats a
/// browser shows without running anything (no SVG: it can carry script).
pub fn logo_content_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.len() > 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

fn text_field(field: &'static str, value: &str, max: usize) -> PortalResult<Option<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(PortalError::Invalid {
            field,
            reason: format!("must be at most {max} characters, on one line"),
        });
    }
    Ok(Some(value.to_owned()))
}

impl<'s> Portal<'s> {
    async fn branding_row(&self) -> StoreResult<Option<branding::Model>> {
        Ok(branding::Entity::find()
            .filter(branding::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?)
    }

    pub async fn branding(&self) -> StoreResult<Branding> {
        Ok(self
            .branding_row()
            .await?
            .map(|row| Branding {
                display_name: row.display_name,
                accent_color: row.accent_color,
                support_contact: row.support_contact,
                logo_content_type: row.logo_content_type,
                logo_bytes: row.logo.map(|l| l.len()).unwrap_or(0),
            })
            .unwrap_or_default())
    }

    /// The logo's bytes and content type, if one is set.
    pub async fn logo(&self) -> StoreResult<Option<(Vec<u8>, String)>> {
        Ok(self
            .branding_row()
            .await?
            .and_then(|row| Some((row.logo?, row.logo_content_type?))))
    }

    /// Changes the white-labeling (validated whole before anything is
    /// written) and audits what changed.
    pub async fn set_branding(
        &self,
        actor: &Actor,
        patch: BrandingPatch,
    ) -> PortalResult<Branding> {
        let display_name = patch
            .display_name
            .as_deref()
            .map(|v| text_field("displayName", v, 100))
            .transpose()?;
        let support_contact = patch
            .support_contact
            .as_deref()
            .map(|v| text_field("supportContact", v, 200))
            .transpose()?;
        let accent_color = match patch.accent_color.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(text) => Some(Some(valid_color(text)?)),
        };
        let logo = match &patch.logo {
            Some(_) if patch.clear_logo => {
                return Err(PortalError::Invalid {
                    field: "logo",
                    reason: "give a logo or clear it, not both".into(),
                });
            }
            Some(bytes) if bytes.len() > MAX_LOGO_BYTES => {
                return Err(PortalError::Invalid {
                    field: "logo",
                    reason: format!("must be at most {} KiB", MAX_LOGO_BYTES / 1024),
                });
            }
            Some(bytes) => {
                let kind = logo_content_type(bytes).ok_or(PortalError::Invalid {
                    field: "logo",
                    reason: "must be a PNG, JPEG or WebP image".into(),
                })?;
                Some(Some((bytes.clone(), kind.to_owned())))
            }
            None if patch.clear_logo => Some(None),
            None => None,
        };
        let now = Utc::now();
        let existing = self.branding_row().await?;
        let is_new = existing.is_none();
        let mut row = match existing {
            Some(found) => found.into_active_model(),
            None => branding::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(self.scope.tenant_id()),
                display_name: Set(None),
                accent_color: Set(None),
                logo: Set(None),
                logo_content_type: Set(None),
                support_contact: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            },
        };
        let mut changed = Vec::new();
        if let Some(value) = display_name {
            row.display_name = Set(value);
            changed.push("displayName");
        }
        if let Some(value) = support_contact {
            row.support_contact = Set(value);
            changed.push("supportContact");
        }
        if let Some(value) = accent_color {
            row.accent_color = Set(value);
            changed.push("accentColor");
        }
        if let Some(value) = logo {
            let (bytes, kind) = value.unzip();
            row.logo = Set(bytes);
            row.logo_content_type = Set(kind);
            changed.push("logo");
        }
        row.updated_at = Set(now);
        // `save` would take the set id for an update: say which it is.
        if is_new {
            row.insert(self.scope.connection()).await?;
        } else {
            row.update(self.scope.connection()).await?;
        }
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "portal.branding_updated",
                    "tenant",
                    Some(self.scope.tenant_id()),
                )
                .with_details(json!({ "changed": changed })),
            )
            .await?;
        Ok(self.branding().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_install_state() {
        assert_eq!(actions_for(None, true), vec!["install"]);
        assert_eq!(
            actions_for(Some(("install", InstallStatus::Failed)), true),
            vec!["retry"]
        );
        assert_eq!(
            actions_for(Some(("install", InstallStatus::Installed)), true),
            vec!["uninstall"]
        );
        assert!(actions_for(Some(("install", InstallStatus::Installed)), false).is_empty());
        assert!(actions_for(Some(("install", InstallStatus::Downloading)), true).is_empty());
        assert_eq!(
            actions_for(Some(("uninstall", InstallStatus::Uninstalled)), true),
            vec!["install"]
        );
    }

    #[test]
    fn colours_and_logos_are_checked() {
        assert_eq!(valid_color(" #1A73E8 ").unwrap(), "#1a73e8");
        assert!(valid_color("blue").is_err());
        assert!(valid_color("#12345").is_err());
        assert_eq!(
            logo_content_type(b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(logo_content_type(b"<svg onload=alert(1)>"), None);
        assert_eq!(
            logo_content_type(b"RIFF\0\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
    }
}
