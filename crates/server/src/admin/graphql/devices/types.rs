//! Device object and input types, built from core rows.

use crate::admin::graphql::prelude::*;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum DeviceStatus {
    Online,
    Offline,
    NeverSeen,
    Revoked,
}

impl From<CoreStatus> for DeviceStatus {
    fn from(status: CoreStatus) -> DeviceStatus {
        match status {
            CoreStatus::Online => DeviceStatus::Online,
            CoreStatus::Offline => DeviceStatus::Offline,
            CoreStatus::NeverSeen => DeviceStatus::NeverSeen,
            CoreStatus::Revoked => DeviceStatus::Revoked,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum DeviceOrder {
    #[default]
    Hostname,
    LastSeen,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Device", complex)]
pub struct DeviceNode {
    pub id: ID,
    pub hostname: String,
    pub status: DeviceStatus,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_version: Option<String>,
    pub architecture: Option<String>,
    pub cpu_model: Option<String>,
    pub cpu_cores: Option<i32>,
    pub memory_bytes: Option<i64>,
    pub agent_version: Option<String>,
    pub hardware_uuid: Option<String>,
    /// The latest full facts report (disks, interfaces, ...).
    pub facts: Option<Json<serde_json::Value>>,
    pub facts_updated_at: Option<DateTime<Utc>>,
    pub certificate_serial: Option<String>,
    pub certificate_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[graphql(skip)]
    pub site_id: Uuid,
    #[graphql(skip)]
    pub team_id: Option<Uuid>,
}

impl DeviceNode {
    /// `interval_secs`: the heartbeat interval agents are told.
    pub fn new(d: mobius_core::devices::Device, now: DateTime<Utc>, interval_secs: u64) -> Self {
        DeviceNode {
            id: global_id("Device", d.id),
            status: CoreStatus::of(&d, now, interval_secs).into(),
            hostname: d.hostname,
            last_seen_at: d.last_seen_at,
            revoked_at: d.revoked_at,
            os_name: d.os_name,
            os_version: d.os_version,
            kernel_version: d.kernel_version,
            architecture: d.architecture,
            cpu_model: d.cpu_model,
            cpu_cores: d.cpu_cores,
            memory_bytes: d.memory_bytes,
            agent_version: d.agent_version,
            hardware_uuid: d.hardware_uuid,
            facts: d.facts.map(Json),
            facts_updated_at: d.facts_updated_at,
            certificate_serial: d.cert_serial,
            certificate_expires_at: d.cert_not_after,
            created_at: d.created_at,
            site_id: d.site_id,
            team_id: d.team_id,
        }
    }
}

#[ComplexObject]
impl DeviceNode {
    /// Batched: a page of devices costs one query for all their sites.
    async fn site(&self, ctx: &Context<'_>) -> Result<SiteNode> {
        ctx.data::<SiteLoads>()?
            .load_one(self.site_id)
            .await?
            .ok_or_else(|| errors::not_found("site"))
    }

    /// Batched like `site`.
    async fn team(&self, ctx: &Context<'_>) -> Result<Option<TeamNode>> {
        match self.team_id {
            None => Ok(None),
            Some(team) => ctx.data::<TeamLoads>()?.load_one(team).await,
        }
    }

    /// The device's latest result on each policy that has checked it.
    async fn policy_results(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<crate::admin::graphql::policies::PolicyResultNode>> {
        crate::admin::graphql::policies::device_policy_results(ctx, &self.id).await
    }
}

#[derive(SimpleObject)]
#[graphql(name = "CertificateAuthority")]
pub struct CertificateAuthorityNode {
    pub id: ID,
    pub certificate_pem: String,
    pub not_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl From<DeviceStatus> for CoreStatus {
    fn from(status: DeviceStatus) -> CoreStatus {
        match status {
            DeviceStatus::Online => CoreStatus::Online,
            DeviceStatus::Offline => CoreStatus::Offline,
            DeviceStatus::NeverSeen => CoreStatus::NeverSeen,
            DeviceStatus::Revoked => CoreStatus::Revoked,
        }
    }
}
