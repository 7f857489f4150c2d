//! The audit log: who changed what, written in the same transaction as the
//! change so one never exists without the other.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, prelude::Uuid,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod actor;

pub use actor::{Actor, ActorKind};

use crate::db::entities::audit_event;
use crate::db::locks::TenantLock;
use crate::db::{StoreResult, TenantScope};

pub type AuditEvent = audit_event::Model;

/// Events read per query when verifying the chain.
const VERIFY_BATCH: u64 = 1000;

/// What happened, to what.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub action: &'static str,
    pub target_kind: &'static str,
    pub target_id: Option<Uuid>,
    pub details: Value,
}

impl AuditRecord {
    pub fn new(action: &'static str, target_kind: &'static str, target_id: Option<Uuid>) -> Self {
        AuditRecord {
            action,
            target_kind,
            target_id,
            details: Value::Object(Default::default()),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

pub struct AuditLog<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn audit(&self) -> AuditLog<'_> {
        AuditLog::new(self)
    }
}

impl<'s> AuditLog<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        AuditLog { scope }
    }

    /// Appends an event to the tenant's hash chain. On Postgres a
    /// transaction-level advisory lock per tenant serializes appends, so two
    /// concurrent changes cannot both claim the same predecessor (SQLite has
    /// a single writer already). The event reaches subscribers only when the
    /// scope commits.
    pub async fn record(&self, actor: &Actor, record: AuditRecord) -> StoreResult<AuditEvent> {
        let tenant_id = self.scope.tenant_id();
        let db = self.scope.connection();
        self.scope.lock(TenantLock::AuditChain).await?;
        let last = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(tenant_id))
            .order_by_desc(audit_event::Column::Seq)
            .one(db)
            .await?;
        let (seq, prev_hash) = match last {
            Some(last) => (last.seq + 1, last.hash),
            None => (1, None),
        };
        // Microseconds: what Postgres keeps, so the hash recomputes the same.
        let now = chrono::Utc::now();
        let now = chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let mut event = AuditEvent {
            id: Uuid::now_v7(),
            tenant_id,
            actor_kind: actor.kind.as_str().to_owned(),
            actor_id: actor.id,
            action: record.action.to_owned(),
            target_kind: record.target_kind.to_owned(),
            target_id: record.target_id,
            ip: actor.ip.clone(),
            user_agent: actor.user_agent.clone(),
            details: record.details,
            seq,
            prev_hash,
            hash: None,
            created_at: now,
            updated_at: now,
        };
        event.hash = Some(chain_hash(&event).to_vec());
        let inserted = audit_event::ActiveModel {
            id: Set(event.id),
            tenant_id: Set(event.tenant_id),
            actor_kind: Set(event.actor_kind.clone()),
            actor_id: Set(event.actor_id),
            action: Set(event.action.clone()),
            target_kind: Set(event.target_kind.clone()),
            target_id: Set(event.target_id),
            ip: Set(event.ip.clone()),
            user_agent: Set(event.user_agent.clone()),
            details: Set(event.details.clone()),
            seq: Set(event.seq),
            prev_hash: Set(event.prev_hash.clone()),
            hash: Set(event.hash.clone()),
            created_at: Set(event.created_at),
            updated_at: Set(event.updated_at),
        }
        .insert(db)
        .await?;
        self.scope.publish_on_commit(inserted.clone());
        Ok(inserted)
    }

    /// A page of events, newest first, and the total count.
    pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<AuditEvent>, u64)> {
        let query = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()));
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .order_by_desc(audit_event::Column::Seq)
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    /// Recomputes the tenant's whole chain: every event must follow its
    /// predecessor (`seq` without gaps, `prev_hash` = predecessor's hash)
    /// and hash to what it stores. Any edit or deletion shows up as the
    /// first broken link.
    ///
    /// The log is read in batches of [`VERIFY_BATCH`] by sequence number
    /// (keyset, not offset), so memory stays flat however long the chain.
    pub async fn verify_chain(&self) -> StoreResult<ChainVerification> {
        let total = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .count(self.scope.connection())
            .await?;
        let mut previous: Option<Vec<u8>> = None;
        let mut expected_seq: i64 = 1;
        loop {
            let batch = audit_event::Entity::find()
                .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(audit_event::Column::Seq.gte(expected_seq))
                .order_by_asc(audit_event::Column::Seq)
                .limit(VERIFY_BATCH)
                .all(self.scope.connection())
                .await?;
            let done = (batch.len() as u64) < VERIFY_BATCH;
            for event in &batch {
                let intact = event.seq == expected_seq
                    && event.prev_hash == previous
                    && event.hash.as_deref().is_some_and(|stored| {
                        crate::crypto::secrets::hashes_match(stored, &chain_hash(event))
                    });
                if !intact {
                    return Ok(ChainVerification {
                        events: total,
                        first_broken_seq: Some(expected_seq),
                    });
                }
                previous = event.hash.clone();
                expected_seq += 1;
            }
            if done {
                break;
            }
        }
        // Rows the batches never reached (below the first sequence number,
        // or a duplicate) break the chain at the first unverified number.
        let verified = (expected_seq - 1) as u64;
        Ok(ChainVerification {
            events: total,
            first_broken_seq: (verified != total).then_some(expected_seq),
        })
    }

    /// The newest `limit` events, newest first.
    pub async fn recent(&self, limit: u64) -> StoreResult<Vec<AuditEvent>> {
        Ok(audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(audit_event::Column::Seq)
            .limit(limit)
            .all(self.scope.connection())
            .await?)
    }
}

/// The outcome of [`AuditLog::verify_chain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainVerification {
    pub events: u64,
    /// The sequence number where the chain first fails, if it does.
    pub first_broken_seq: Option<i64>,
}

impl ChainVerification {
    pub fn is_intact(&self) -> bool {
        self.first_broken_seq.is_none()
    }
}

/// SHA-256 over the predecessor's hash and every field of the event, each
/// length-prefixed (and optional ones tagged) so no two events encode alike.
fn chain_hash(event: &AuditEvent) -> [u8; 32] {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    fn optional(h: &mut Sha256, bytes: Option<&[u8]>) {
        match bytes {
            Some(bytes) => {
                h.update([1]);
                field(h, bytes);
            }
            None => h.update([0]),
        }
    }
    let mut h = Sha256::new();
    h.update(b"mobius-audit-v1");
    optional(&mut h, event.prev_hash.as_deref());
    h.update(event.seq.to_be_bytes());
    field(&mut h, event.id.as_bytes());
    field(&mut h, event.tenant_id.as_bytes());
    field(&mut h, event.actor_kind.as_bytes());
    optional(
        &mut h,
        event.actor_id.as_ref().map(|id| id.as_bytes().as_slice()),
    );
    field(&mut h, event.action.as_bytes());
    field(&mut h, event.target_kind.as_bytes());
    optional(
        &mut h,
        event.target_id.as_ref().map(|id| id.as_bytes().as_slice()),
    );
    optional(&mut h, event.ip.as_deref().map(str::as_bytes));
    optional(&mut h, event.user_agent.as_deref().map(str::as_bytes));
    // serde_json orders object keys, so this is canonical for what we store.
    field(&mut h, event.details.to_string().as_bytes());
    h.update(event.created_at.timestamp_micros().to_be_bytes());
    h.finalize().into()
}
