//! The per-tenant policy webhook and its delivery log.
//!
//! An admin sets one URL per tenant; the answer carries the signing secret
//! once, and only its sealed form is stored (bound to tenant and webhook
//! id). Transitions queue a delivery in the transaction that records them;
//! the server's delivery job posts each one with
//! `Mobius-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! (the Stripe scheme: the timestamp in the signed text lets a receiver
//! refuse replays of old deliveries), and retries failures with
//! exponential backoff ([`backoff`]) up to [`MAX_ATTEMPTS`].

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;

use super::entities::{delivery, webhook};
use super::{QueryError, WebhookDelivery};
use crate::Uuid;
use crate::audit::{Actor, AuditRecord};
use crate::crypto::sealing::{SealContext, SecretSealer};
use crate::db::{StoreError, StoreResult, TenantScope};

pub use webhook::Model as Webhook;

/// Attempts before a delivery is given up (FAILED): with [`backoff`]
/// that is about a day of retrying.
pub const MAX_ATTEMPTS: i32 = 12;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "Mobius-Signature";
const SEAL_PURPOSE: &str = "policy-webhook";
const SECRET_PREFIX: &str = "mob_whsec_";

/// Wait before attempt `attempts + 1`: 2 s, 4 s, 8 s, ... capped at 6 h.
pub fn backoff(attempts: i32) -> chrono::Duration {
    let exp = attempts.clamp(0, 14) as u32;
    chrono::Duration::seconds((2_i64.pow(exp + 1)).min(6 * 3600))
}

/// The header value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mac = crate::crypto::secrets::hmac_sha256(
        secret,
        &[timestamp.to_string().as_bytes(), b".", body.as_bytes()],
    );
    format!("t={timestamp},v1={}", hex::encode(mac))
}

/// Checks a webhook URL: absolute http or https with a host, no
/// credentials. (Where it may point is the server's call: it refuses its
/// own addresses; see docs/operations/queries.md on SSRF.)
pub fn validate_url(value: &str) -> Result<url::Url, QueryError> {
    let bad = |reason: &str| QueryError::Invalid {
        field: "url".into(),
        reason: reason.into(),
    };
    if value.len() > 2048 {
        return Err(bad("must be at most 2048 characters"));
    }
    let url = url::Url::parse(value.trim()).map_err(|_| bad("is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(url)
}

/// What one delivery attempt came to.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub delivered: bool,
    pub response_status: Option<u16>,
    pub error: Option<String>,
}

pub struct Webhooks<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn webhooks(&self) -> Webhooks<'_> {
        Webhooks { scope: self }
    }
}

impl<'s> Webhooks<'s> {
    /// Sets (or replaces) the tenant's webhook; answers it and its new
    /// signing secret, which is never shown again.
    pub async fn set(
        &self,
        actor: &Actor,
        sealer: &dyn SecretSealer,
        url: &url::Url,
    ) -> StoreResult<(Webhook, String)> {
        let db = self.scope.connection();
        let now = chrono::Utc::now();
        let secret = crate::crypto::secrets::generate(SECRET_PREFIX);
        let existing = self.get().await?;
        let id = existing.as_ref().map_or_else(Uuid::now_v7, |w| w.id);
        let sealed = sealer
            .seal(
                &SealContext::tenant(self.scope.tenant_id(), SEAL_PURPOSE, id),
                secret.as_bytes(),
            )
            .await
            .map_err(StoreError::internal("sealing a webhook secret"))?;
        let row = match existing {
            Some(found) => {
                let mut row = found.into_active_model();
                row.url = Set(url.to_string());
                row.sealed_secret = Set(sealed);
                row.updated_at = Set(now);
                row.update(db).await?
            }
            None => {
                webhook::ActiveModel {
                    id: Set(id),
                    tenant_id: Set(self.scope.tenant_id()),
                    url: Set(url.to_string()),
                    sealed_secret: Set(sealed),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(db)
                .await?
            }
        };
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("policy.webhook_set", "policy_webhook", Some(id))
                    .with_details(json!({ "url": row.url })),
            )
            .await?;
        Ok((row, secret))
    }

    /// Removes the webhook (queued deliveries stay in the log, and fail).
    pub async fn clear(&self, actor: &Actor) -> StoreResult<bool> {
        let Some(found) = self.get().await? else {
            return Ok(false);
        };
        webhook::Entity::delete_many()
            .filter(webhook::Column::TenantId.eq(self.scope.tenant_id()))
            .exec(self.scope.connection())
            .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("policy.webhook_cleared", "policy_webhook", Some(found.id)),
            )
            .await?;
        Ok(true)
    }

    pub async fn get(&self) -> StoreResult<Option<Webhook>> {
        Ok(webhook::Entity::find()
            .filter(webhook::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?)
    }

    /// The URL and the opened signing secret, for the delivery job.
    pub async fn target(
        &self,
        sealer: &dyn SecretSealer,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        let Some(found) = self.get().await? else {
            return Ok(None);
        };
        let secret = sealer
            .open(
                &SealContext::tenant(self.scope.tenant_id(), SEAL_PURPOSE, found.id),
                &found.sealed_secret,
            )
            .await
            .map_err(StoreError::internal("opening a webhook secret"))?;
        Ok(Some((found.url, secret)))
    }

    /// Queues a delivery of `event` when the tenant has a webhook.
    pub(crate) async fn enqueue(
        &self,
        event: &'static str,
        data: serde_json::Value,
    ) -> StoreResult<Option<Uuid>> {
        if self.get().await?.is_none() {
            return Ok(None);
        }
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let body = json!({
            "id": id,
            "event": event,
            "tenant_id": self.scope.tenant_id(),
            "created_at": now,
            "data": data,
        })
        .to_string();
        delivery::ActiveModel {
            id: Set(id),
            tenant_id: Set(self.scope.tenant_id()),
            event: Set(event.to_owned()),
            body: Set(body),
            status: Set("PENDING".into()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            last_attempt_at: Set(None),
            response_status: Set(None),
            last_error: Set(None),
            delivered_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        Ok(Some(id))
    }

    /// The delivery log, newest first.
    pub async fn deliveries(
        &self,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<WebhookDelivery>, u64)> {
        let query = delivery::Entity::find()
            .filter(delivery::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(delivery::Column::Id);
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    /// Deliveries due for an attempt, oldest first.
    pub async fn due(&self, limit: u64) -> StoreResult<Vec<WebhookDelivery>> {
        Ok(delivery::Entity::find()
            .filter(delivery::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(delivery::Column::Status.eq("PENDING"))
            .filter(delivery::Column::NextAttemptAt.lte(chrono::Utc::now()))
            .order_by_asc(delivery::Column::Id)
            .limit(limit)
            .all(self.scope.connection())
            .await?)
    }

    /// Records an attempt: DELIVERED, retried after [`backoff`], or FAILED
    /// after [`MAX_ATTEMPTS`].
    pub async fn attempted(&self, id: Uuid, attempt: &Attempt) -> StoreResult<WebhookDelivery> {
        let found = delivery::Entity::find_by_id(id)
            .filter(delivery::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "webhook delivery",
            })?;
        let now = chrono::Utc::now();
        let attempts = found.attempts + 1;
        let mut row = found.into_active_model();
        row.attempts = Set(attempts);
        row.last_attempt_at = Set(Some(now));
        row.response_status = Set(attempt.response_status.map(i32::from));
        row.last_error = Set(attempt.error.clone());
        if attempt.delivered {
            row.status = Set("DELIVERED".into());
            row.delivered_at = Set(Some(now));
        } else if attempts >= MAX_ATTEMPTS {
            row.status = Set("FAILED".into());
        } else {
            row.next_attempt_at = Set(now + backoff(attempts - 1));
        }
        row.updated_at = Set(now);
        Ok(row.update(self.scope.connection()).await?)
    }
}

/// Re-seals the tenant's webhook signing secret under the new sealer (the
/// `reseal` command visits every area's sealed secrets).
pub(crate) async fn reseal_webhook_secret(
    scope: &TenantScope,
    rewrap: &crate::crypto::reseal::Rewrap<'_>,
    report: &mut crate::crypto::reseal::ResealReport,
) -> StoreResult<()> {
    let Some(found) = scope.webhooks().get().await? else {
        return Ok(());
    };
    let context = SealContext::tenant(scope.tenant_id(), SEAL_PURPOSE, found.id);
    if let Some(sealed) = rewrap.value(report, &context, &found.sealed_secret).await? {
        let mut row = found.into_active_model();
        row.sealed_secret = Set(sealed);
        row.updated_at = Set(chrono::Utc::now());
        row.update(scope.connection()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        use hmac::{Hmac, Mac};
        use sha2::Sha256;
        // What is signed is "<t>.<body>", and the header carries both.
        let header = signature(b"key", 1_700_000_000, "{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"1700000000.{}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
        assert_ne!(signature(b"other", 1_700_000_000, "{}"), header);
        assert_ne!(signature(b"key", 1_700_000_001, "{}"), header);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_six_hours() {
        assert_eq!(backoff(0), chrono::Duration::seconds(2));
        assert_eq!(backoff(1), chrono::Duration::seconds(4));
        assert_eq!(backoff(5), chrono::Duration::seconds(64));
        assert_eq!(backoff(40), chrono::Duration::hours(6));
    }

    #[test]
    fn only_http_urls_with_a_host_and_no_credentials_are_accepted() {
        assert!(validate_url("https://hooks.example.com/x").is_ok());
        assert!(validate_url("http://10.0.0.5:8080/hook").is_ok());
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "not a url",
            "https://user:pw@example.com/x",
            "unix:/var/run/x.sock",
        ] {
            assert!(
                matches!(validate_url(bad), Err(QueryError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
