//! Policies: CRUD, runs on demand, counts and failing devices, each
//! device's results, and the tenant's webhook with its delivery log.

use mobius_core::authz::Feature;
use mobius_core::policies::webhooks::{Webhook, validate_url};
use mobius_core::policies::{Policy, PolicyPatch, PolicyResult, PolicySpec, WebhookDelivery};

use super::queries::query_error;
use crate::admin::graphql::prelude::*;
use crate::queries::QueryServices;

fn require(ctx: &Context<'_>, tenant: Uuid, feature: Feature) -> Result<()> {
    ctx.data::<Arc<dyn mobius_core::authz::Entitlements>>()?
        .require(tenant, feature)
        .map_err(errors::license_required)
}

/// A policy: a device passes when the SQL answers at least one row.
pub struct PolicyNode(pub Policy);

#[derive(SimpleObject)]
pub struct PolicyCountsNode {
    pub passing: i64,
    pub failing: i64,
    /// Applicable devices with no result (or whose last check failed to run).
    pub unknown: i64,
}

#[Object(name = "Policy")]
impl PolicyNode {
    async fn id(&self) -> ID {
        global_id("Policy", self.0.id)
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn sql(&self) -> &str {
        &self.0.sql
    }

    async fn description(&self) -> &str {
        &self.0.description
    }

    async fn resolution(&self) -> &str {
        &self.0.resolution
    }

    /// Comma-separated platforms (`linux`, `darwin`, `windows`); null: all.
    async fn platform(&self) -> Option<&str> {
        self.0.platform.as_deref()
    }

    async fn interval_secs(&self) -> i64 {
        self.0.interval_secs
    }

    /// The team it is for; null: a global policy.
    async fn team_id(&self) -> Option<ID> {
        self.0.team_id.map(|t| global_id("Team", t))
    }

    async fn next_run_at(&self) -> DateTime<Utc> {
        self.0.next_run_at
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }

    /// Devices passing now (kept with every result, never stale).
    async fn passing(&self) -> i64 {
        self.0.passing_count.max(0)
    }

    async fn failing(&self) -> i64 {
        self.0.failing_count.max(0)
    }

    /// All three counts; `unknown` costs a count of applicable devices.
    async fn counts(&self, ctx: &Context<'_>) -> Result<PolicyCountsNode> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let counts = scope
            .policies()
            .counts(&self.0)
            .await
            .map_err(errors::store)?;
        Ok(PolicyCountsNode {
            passing: counts.passing as i64,
            failing: counts.failing as i64,
            unknown: counts.unknown as i64,
        })
    }

    async fn unknown(&self, ctx: &Context<'_>) -> Result<i64> {
        Ok(self.counts(ctx).await?.unknown)
    }

    /// The failing devices, most recently checked first.
    async fn failing_devices(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<PolicyResultNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let id = self.0.id;
        paged(
            window,
            |offset, limit| async move {
                scope
                    .policies()
                    .results_page(id, Some(false), offset, limit)
                    .await
            },
            PolicyResultNode,
        )
        .await
    }
}

/// A device's latest result on one policy.
pub struct PolicyResultNode(pub PolicyResult);

#[Object(name = "PolicyResult")]
impl PolicyResultNode {
    async fn policy_id(&self) -> ID {
        global_id("Policy", self.0.policy_id)
    }

    async fn policy(&self, ctx: &Context<'_>) -> Result<PolicyNode> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        Ok(PolicyNode(
            scope
                .policies()
                .get(self.0.policy_id)
                .await
                .map_err(errors::store)?,
        ))
    }

    async fn device_id(&self) -> ID {
        global_id("Device", self.0.device_id)
    }

    async fn hostname(&self, ctx: &Context<'_>) -> Result<String> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        match scope.devices().get(self.0.device_id).await {
            Ok(device) => Ok(device.hostname),
            Err(StoreError::NotFound { .. }) => Ok(String::new()),
            Err(err) => Err(errors::store(err)),
        }
    }

    /// Null when the check failed to run (`error` says why).
    async fn passes(&self) -> Option<bool> {
        self.0.passes
    }

    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    async fn checked_at(&self) -> DateTime<Utc> {
        self.0.checked_at
    }
}

/// The tenant's policy webhook (its secret is shown only when set).
pub struct PolicyWebhookNode(pub Webhook);

#[Object(name = "PolicyWebhook")]
impl PolicyWebhookNode {
    async fn url(&self) -> &str {
        &self.0.url
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

#[derive(SimpleObject)]
pub struct SetPolicyWebhookPayload {
    pub webhook: PolicyWebhookNode,
    /// The HMAC-SHA256 signing key, shown this once: receivers check
    /// `Mobius-Signature: t=<unix>,v1=<hex HMAC of "<t>.<body>">`.
    pub secret: String,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum WebhookDeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

/// One queued webhook delivery and its latest attempt.
pub struct WebhookDeliveryNode(pub WebhookDelivery);

#[Object(name = "WebhookDelivery")]
impl WebhookDeliveryNode {
    async fn id(&self) -> ID {
        global_id("WebhookDelivery", self.0.id)
    }

    /// `policy.newly_failing` or `policy.newly_passing`.
    async fn event(&self) -> &str {
        &self.0.event
    }

    /// The JSON body, exactly as signed and sent.
    async fn body(&self) -> &str {
        &self.0.body
    }

    async fn status(&self) -> WebhookDeliveryStatus {
        match self.0.status.as_str() {
            "DELIVERED" => WebhookDeliveryStatus::Delivered,
            "PENDING" => WebhookDeliveryStatus::Pending,
            _ => WebhookDeliveryStatus::Failed,
        }
    }

    async fn attempts(&self) -> i32 {
        self.0.attempts
    }

    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        (self.0.status == "PENDING").then_some(self.0.next_attempt_at)
    }

    async fn last_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_attempt_at
    }

    /// The receiver's HTTP status on the last attempt.
    async fn response_status(&self) -> Option<i32> {
        self.0.response_status
    }

    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }

    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.0.delivered_at
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(InputObject)]
pub struct CreatePolicyInput {
    pub name: String,
    pub sql: String,
    #[graphql(default)]
    pub description: String,
    #[graphql(default)]
    pub resolution: String,
    /// Comma-separated `linux`, `darwin`, `windows`; omitted: all.
    pub platform: Option<String>,
    /// Default 3600 (1 h); 60 to 604800.
    pub interval_secs: Option<i32>,
    /// Omitted: a global policy (needs the premium tier otherwise).
    pub team_id: Option<ID>,
}

#[derive(InputObject)]
pub struct UpdatePolicyInput {
    pub name: Option<String>,
    /// A new SQL text forgets the stored results.
    pub sql: Option<String>,
    pub description: Option<String>,
    pub resolution: Option<String>,
    /// Empty string: all platforms.
    pub platform: Option<String>,
    pub interval_secs: Option<i32>,
}

fn interval(value: Option<i32>) -> Result<Option<u64>> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| errors::bad_input("intervalSecs", "must be positive"))
        })
        .transpose()
}

/// A device's policy results (for `Device.policyResults`).
pub(crate) async fn device_policy_results(
    ctx: &Context<'_>,
    device: &ID,
) -> Result<Vec<PolicyResultNode>> {
    let device = parse_id(device, "Device")?;
    let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
    Ok(scope
        .policies()
        .results_of_device(device)
        .await
        .map_err(errors::store)?
        .into_iter()
        .map(PolicyResultNode)
        .collect())
}

#[derive(Default)]
pub struct PolicyQuery;

#[Object]
impl PolicyQuery {
    /// Policies by name; with `teamId`, that team's and the global ones.
    async fn policies(
        &self,
        ctx: &Context<'_>,
        team_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<PolicyNode>> {
        let window = Window::new(first, after, last, before)?;
        let team = team_id.map(|t| parse_id(&t, "Team")).transpose()?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, team).await?;
        paged(
            window,
            |offset, limit| async move { scope.policies().page(team, offset, limit).await },
            PolicyNode,
        )
        .await
    }

    async fn policy(&self, ctx: &Context<'_>, id: ID) -> Result<PolicyNode> {
        let id = parse_id(&id, "Policy")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        Ok(PolicyNode(
            scope.policies().get(id).await.map_err(errors::store)?,
        ))
    }

    /// The tenant's policy webhook, if one is set.
    async fn policy_webhook(&self, ctx: &Context<'_>) -> Result<Option<PolicyWebhookNode>> {
        let (_, scope) = gate::read(ctx, Operation::ManageTenant, None).await?;
        Ok(scope
            .webhooks()
            .get()
            .await
            .map_err(errors::store)?
            .map(PolicyWebhookNode))
    }

    /// The webhook delivery log, newest first.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<WebhookDeliveryNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ManageTenant, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.webhooks().deliveries(offset, limit).await },
            WebhookDeliveryNode,
        )
        .await
    }
}

/// For changes to one policy: finds it (NOT_FOUND outside the caller's
/// tenant), then checks ManageDevices against the policy's team before
/// opening the write transaction, as `gate::write_on_device` does for
/// devices.
async fn write_on_policy<'c>(
    ctx: &Context<'c>,
    id: Uuid,
) -> Result<(&'c mobius_core::authz::Principal, mobius_core::TenantScope)> {
    let team = {
        let (_, reads) = gate::read(ctx, Operation::ViewDevices, None).await?;
        reads
            .policies()
            .get(id)
            .await
            .map_err(errors::store)?
            .team_id
    };
    gate::write(ctx, Operation::ManageDevices, team).await
}

#[derive(Default)]
pub struct PolicyMutation;

#[Object]
impl PolicyMutation {
    async fn create_policy(
        &self,
        ctx: &Context<'_>,
        input: CreatePolicyInput,
    ) -> Result<PolicyNode> {
        let team = input.team_id.map(|t| parse_id(&t, "Team")).transpose()?;
        let spec = PolicySpec {
            name: input.name,
            sql: input.sql,
            description: input.description,
            resolution: input.resolution,
            platform: input.platform,
            interval_secs: interval(input.interval_secs)?,
            team_id: team,
        };
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, team).await?;
        if team.is_some() {
            require(ctx, principal.tenant_id, Feature::TeamPolicies)?;
        }
        let created = scope
            .policies()
            .create(&principal.actor(), spec)
            .await
            .map_err(query_error)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(PolicyNode(created))
    }

    async fn update_policy(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdatePolicyInput,
    ) -> Result<PolicyNode> {
        let id = parse_id(&id, "Policy")?;
        let patch = PolicyPatch {
            name: input.name,
            sql: input.sql,
            description: input.description,
            resolution: input.resolution,
            platform: input.platform,
            interval_secs: interval(input.interval_secs)?,
        };
        let (principal, scope) = write_on_policy(ctx, id).await?;
        let updated = scope
            .policies()
            .update(&principal.actor(), id, patch)
            .await
            .map_err(query_error)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(PolicyNode(updated))
    }

    /// Deletes a policy with its results; answers it as it was.
    async fn delete_policy(&self, ctx: &Context<'_>, id: ID) -> Result<PolicyNode> {
        let id = parse_id(&id, "Policy")?;
        let (principal, scope) = write_on_policy(ctx, id).await?;
        let deleted = scope
            .policies()
            .delete(&principal.actor(), id)
            .await
            .map_err(query_error)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(PolicyNode(deleted))
    }

    /// Pushes the policy now to every applicable online device.
    async fn run_policy(&self, ctx: &Context<'_>, id: ID) -> Result<PolicyNode> {
        let id = parse_id(&id, "Policy")?;
        let services = ctx.data::<QueryServices>()?;
        let (principal, scope) = write_on_policy(ctx, id).await?;
        let policy = scope
            .policies()
            .run_now(&principal.actor(), id)
            .await
            .map_err(query_error)?;
        scope.commit().await.map_err(errors::store)?;
        services.dispatch_policy(policy.tenant_id, policy.id).await;
        Ok(PolicyNode(policy))
    }

    /// Sets (or replaces) the tenant's policy webhook: `newly_failing` and
    /// `newly_passing` transitions are posted to it, signed. The answer
    /// carries the signing secret, shown only this once. Only http and
    /// https URLs; never this server's own addresses.
    async fn set_policy_webhook(
        &self,
        ctx: &Context<'_>,
        url: String,
    ) -> Result<SetPolicyWebhookPayload> {
        let services = ctx.data::<QueryServices>()?;
        let parsed = validate_url(&url).map_err(query_error)?;
        if crate::queries::names_this_server(&parsed, &services.own_addresses) {
            return Err(errors::bad_input(
                "url",
                "names this server itself; point the webhook at a receiver",
            ));
        }
        let (principal, scope) = gate::write(ctx, Operation::ManageTenant, None).await?;
        require(ctx, principal.tenant_id, Feature::CustomWebhooks)?;
        let (webhook, secret) = scope
            .webhooks()
            .set(&principal.actor(), services.sealer.as_ref(), &parsed)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(SetPolicyWebhookPayload {
            webhook: PolicyWebhookNode(webhook),
            secret,
        })
    }

    /// Removes the webhook; answers whether there was one.
    async fn clear_policy_webhook(&self, ctx: &Context<'_>) -> Result<bool> {
        let (principal, scope) = gate::write(ctx, Operation::ManageTenant, None).await?;
        let cleared = scope
            .webhooks()
            .clear(&principal.actor())
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(cleared)
    }
}
