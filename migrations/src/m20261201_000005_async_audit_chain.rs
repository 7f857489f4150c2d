//! Audit events are chained after they commit, and enrollment claims a
//! token use before its transaction (Postgres only; SQLite, with its single
//! writer, keeps chaining each event as it is written).
//!
//! Appending to a tenant's hash chain inside every audited transaction
//! serialized all of that tenant's writes on one advisory lock, from the
//! audit insert to commit (docs/performance.md, "Analysis"). Events are now
//! inserted with `seq`, `prev_hash` and `hash` NULL, and a chainer assigns
//! them in order, in batches, through `mobius_audit_chain`. The request
//! role still has only SELECT and INSERT on `audit_events`: the function is
//! its one way to touch a row afterwards, and it only fills the chain
//! columns of rows not yet chained, continuing the tenant's chain without a
//! gap.
//!
//! `mobius_claim_enrollment_token` finds a token by the hash of its secret
//! and takes one use in the same autocommit statement, so the token row is
//! locked for one statement, not for a whole enrollment.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::CURRENT_TENANT;

const FUNCTIONS: &str = r#"
-- Tenants with events not yet chained (ids only), for the chainer.
CREATE FUNCTION mobius_audit_unchained_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT DISTINCT tenant_id FROM audit_events WHERE seq IS NULL
$$;

-- Fills the chain columns of the current tenant's unchained events. The
-- links are [{id, seq, prev_hash, hash}] (hashes in hex), in chain order;
-- the first must follow the tenant's last chained event. Anything else
-- (a gap, a chained or unknown id, no tenant set) raises, so a caller can
-- extend the chain but never rewrite it.
CREATE FUNCTION mobius_audit_chain(p_links jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_tenant uuid := __CURRENT_TENANT__;
    v_last bigint;
    v_first bigint;
    v_count bigint;
    v_updated bigint;
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'mobius_audit_chain: no tenant set';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('audit:' || v_tenant::text, 727));
    SELECT max(seq) INTO v_last FROM audit_events WHERE tenant_id = v_tenant;
    SELECT min(l.seq), count(*) INTO v_first, v_count
        FROM jsonb_to_recordset(p_links) AS l(seq bigint);
    IF v_count = 0 THEN
        RETURN 0;
    END IF;
    IF v_first <> coalesce(v_last, 0) + 1
       OR (SELECT max(l.seq) - min(l.seq) + 1 <> count(DISTINCT l.seq)
           FROM jsonb_to_recordset(p_links) AS l(seq bigint)) THEN
        RAISE EXCEPTION 'mobius_audit_chain: links do not continue the chain at %', coalesce(v_last, 0) + 1;
    END IF;
    UPDATE audit_events a
        SET seq = l.seq, prev_hash = decode(l.prev_hash, 'hex'), hash = decode(l.hash, 'hex')
        FROM jsonb_to_recordset(p_links) AS l(id uuid, seq bigint, prev_hash text, hash text)
        WHERE a.id = l.id AND a.tenant_id = v_tenant AND a.seq IS NULL;
    GET DIAGNOSTICS v_updated = ROW_COUNT;
    IF v_updated <> v_count THEN
        RAISE EXCEPTION 'mobius_audit_chain: % of % events were not waiting to be chained', v_count - v_updated, v_count;
    END IF;
    RETURN v_updated;
END
$$;

-- Claims one use of the enrollment token whose secret hashes to p_token_hash,
-- if it has one left and is neither revoked nor expired. Returns the token
-- (with `claimed`) either way, so the caller can say why it was refused; no
-- row means no such token.
CREATE FUNCTION mobius_claim_enrollment_token(p_token_hash bytea)
RETURNS TABLE (tenant_id uuid, token_id uuid, site_id uuid, allowed_ips jsonb,
               expired boolean, revoked boolean, used_up boolean, claimed boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        UPDATE enrollment_tokens t SET uses = t.uses + 1, updated_at = now()
        WHERE t.token_hash = p_token_hash AND t.revoked_at IS NULL
          AND t.expires_at > now() AND t.uses < t.max_uses
        RETURNING t.tenant_id, t.id, t.site_id, t.allowed_ips, false, false, false, true;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT t.tenant_id, t.id, t.site_id, t.allowed_ips, t.expires_at <= now(),
                   t.revoked_at IS NOT NULL, t.uses >= t.max_uses, false
            FROM enrollment_tokens t WHERE t.token_hash = p_token_hash;
    END IF;
END
$$;

REVOKE ALL ON FUNCTION mobius_audit_unchained_tenants() FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_audit_chain(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_claim_enrollment_token(bytea) FROM PUBLIC;

-- The functions run as the owner, and RLS is forced on owners too: these
-- policies name the owner and cover exactly what the functions do.
CREATE POLICY owner_chain_read ON audit_events FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_chain ON audit_events FOR UPDATE TO CURRENT_USER
    USING (seq IS NULL) WITH CHECK (seq IS NOT NULL AND hash IS NOT NULL);
CREATE POLICY owner_claim ON enrollment_tokens FOR UPDATE TO CURRENT_USER USING (true);

ALTER TABLE audit_events ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE audit_events ALTER COLUMN seq DROP DEFAULT;
CREATE INDEX ix_audit_events_unchained ON audit_events (tenant_id, created_at, id) WHERE seq IS NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS ix_audit_events_unchained;
DROP POLICY IF EXISTS owner_claim ON enrollment_tokens;
DROP POLICY IF EXISTS owner_chain ON audit_events;
DROP POLICY IF EXISTS owner_chain_read ON audit_events;
DROP FUNCTION IF EXISTS mobius_claim_enrollment_token(bytea);
DROP FUNCTION IF EXISTS mobius_audit_chain(jsonb);
DROP FUNCTION IF EXISTS mobius_audit_unchained_tenants();
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let sql = FUNCTIONS.replace("__CURRENT_TENANT__", CURRENT_TENANT);
        manager.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
