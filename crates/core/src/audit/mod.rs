//! The audit log: who changed what, written in the same transaction as the
//! change so one never exists without the other.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement, prelude::Uuid,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod actor;

pub use actor::{Actor, ActorKind};

use crate::db::entities::audit_event;
use crate::db::locks::TenantLock;
use crate::db::{Backend, Store, StoreResult, SystemTask, TenantProof, TenantScope};

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

    /// Writes an event in the scope's transaction. On Postgres it is
    /// written unchained (`seq` and hashes NULL) and [`AuditLog::chain_pending`]
    /// links it later: appending to the chain here would serialize every
    /// audited write of the tenant on one lock from this insert to commit.
    /// SQLite has a single writer, so there the event is chained at once.
    /// The event reaches subscribers only when the scope commits.
    pub async fn record(&self, actor: &Actor, record: AuditRecord) -> StoreResult<AuditEvent> {
        let tenant_id = self.scope.tenant_id();
        let db = self.scope.connection();
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
            seq: None,
            prev_hash: None,
            hash: None,
            created_at: now,
            updated_at: now,
        };
        if self.scope.backend() == Backend::Sqlite {
            let (seq, prev_hash) = match self.last_link().await? {
                Some((seq, hash)) => (seq + 1, hash),
                None => (1, None),
            };
            event.seq = Some(seq);
            event.prev_hash = prev_hash;
            event.hash = Some(chain_hash(&event).to_vec());
        }
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

    /// The sequence number and hash of the tenant's newest chained event.
    async fn last_link(&self) -> StoreResult<Option<(i64, Option<Vec<u8>>)>> {
        let last = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(audit_event::Column::Seq.is_not_null())
            .order_by_desc(audit_event::Column::Seq)
            .one(self.scope.connection())
            .await?;
        Ok(last.and_then(|e| e.seq.map(|seq| (seq, e.hash))))
    }

    /// Links up to `limit` committed events not yet chained, oldest
    /// (`created_at`, then id) first, after the tenant's last chained one,
    /// and returns how many it linked. Events whose transactions commit
    /// late are simply linked by a later pass: the chain orders events by
    /// when the chainer saw them, which is creation order within a pass.
    ///
    /// The request role cannot update audit events; `mobius_audit_chain`
    /// (SECURITY DEFINER) fills the chain columns of unchained rows only
    /// and refuses links that do not continue the chain. Its per-tenant
    /// advisory lock is taken first here, so two chainers (two replicas,
    /// or a read that chains) take turns. Commit the scope to keep the work.
    pub async fn chain_pending(&self, limit: u64) -> StoreResult<u64> {
        if self.scope.backend() != Backend::Postgres {
            return Ok(0);
        }
        self.scope.lock(TenantLock::AuditChain).await?;
        let pending = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(audit_event::Column::Seq.is_null())
            .order_by_asc(audit_event::Column::CreatedAt)
            .order_by_asc(audit_event::Column::Id)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let (mut seq, mut previous) = match self.last_link().await? {
            Some((seq, hash)) => (seq, hash),
            None => (0, None),
        };
        let mut links = Vec::with_capacity(pending.len());
        for mut event in pending {
            seq += 1;
            event.seq = Some(seq);
            event.prev_hash = previous.take();
            let hash = chain_hash(&event).to_vec();
            links.push(serde_json::json!({
                "id": event.id,
                "seq": seq,
                "prev_hash": event.prev_hash.as_deref().map(hex::encode),
                "hash": hex::encode(&hash),
            }));
            previous = Some(hash);
        }
        let linked = links.len() as u64;
        self.scope
            .connection()
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT mobius_audit_chain($1)",
                [Value::Array(links).into()],
            ))
            .await?;
        Ok(linked)
    }

    /// A page of events, newest first, and the total count.
    pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<AuditEvent>, u64)> {
        let query = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()));
        let total = query.clone().count(self.scope.connection()).await?;
        // By creation, not by `seq`: unchained events are listed too.
        let rows = query
            .order_by_desc(audit_event::Column::CreatedAt)
            .order_by_desc(audit_event::Column::Id)
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
    /// Events the chainer has not reached yet are not part of the chain
    /// and are not counted; chain them first ([`AuditLog::chain_pending`])
    /// to verify everything written so far.
    pub async fn verify_chain(&self) -> StoreResult<ChainVerification> {
        let total = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(audit_event::Column::Seq.is_not_null())
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
                let intact = event.seq == Some(expected_seq)
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

    /// One event by id (the cluster bus relays ids; receivers read the event).
    pub async fn get(&self, id: Uuid) -> StoreResult<Option<AuditEvent>> {
        Ok(audit_event::Entity::find_by_id(id)
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?)
    }

    /// The newest `limit` events (chained or not), newest first.
    pub async fn recent(&self, limit: u64) -> StoreResult<Vec<AuditEvent>> {
        Ok(audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(audit_event::Column::CreatedAt)
            .order_by_desc(audit_event::Column::Id)
            .limit(limit)
            .all(self.scope.connection())
            .await?)
    }
}

/// Events linked per statement by the chainer.
pub const CHAIN_BATCH: u64 = 500;

impl Store {
    /// One chainer pass: links every tenant's committed, unchained audit
    /// events, in batches of [`CHAIN_BATCH`], one transaction per batch.
    /// Returns how many it linked. Safe to run from several servers at once
    /// (they take turns per tenant).
    pub async fn chain_audit_events(&self) -> StoreResult<u64> {
        let mut linked = 0;
        for tenant_id in self.tenants_with_unchained_audit().await? {
            linked += self
                .chain_tenant_audit(&SystemTask::new("audit-chainer", tenant_id))
                .await?;
        }
        Ok(linked)
    }

    /// Links the tenant's committed, unchained audit events (for a reader
    /// that wants the chain complete before it verifies or lists it).
    pub async fn chain_tenant_audit(&self, proof: &impl TenantProof) -> StoreResult<u64> {
        let mut linked = 0;
        loop {
            let scope = self.begin(proof).await?;
            let batch = scope.audit().chain_pending(CHAIN_BATCH).await?;
            scope.commit().await?;
            linked += batch;
            if batch < CHAIN_BATCH {
                return Ok(linked);
            }
        }
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
    h.update(event.seq.unwrap_or_default().to_be_bytes());
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
