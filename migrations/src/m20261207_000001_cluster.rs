//! What several servers on one Postgres share beyond tenant data: the
//! cluster bus's message log, the job scheduler's run records, shared
//! rate-limit counters and the device listener's CA. None of these tables
//! carries tenant data (bus payloads hold ids only, rate-limit keys are
//! hashed), so they are shared tables with narrow grants (`SHARED_TABLES`),
//! not tenant tables under RLS.
//!
//! `mobius_purge_expired` is the cleanup job's one cross-tenant write: it
//! deletes, in the caller's transaction, rows whose time is up (expired
//! enrollment tokens, refresh tokens and invitations; revocation records
//! older than one certificate lifetime). The owner may delete exactly
//! those rows (the `owner_purge` policies repeat the conditions), so the
//! function cannot be turned into a general delete.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Tables common to both backends (SQLite types are loose enough to take
/// the same statements, except the `bytea` and `timestamptz` spellings).
const POSTGRES_TABLES: &str = r#"
CREATE TABLE cluster_messages (
    id uuid PRIMARY KEY,
    topic text NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_cluster_messages_created_at ON cluster_messages (created_at);

CREATE TABLE job_runs (
    name text PRIMARY KEY,
    next_due_at timestamptz NOT NULL,
    last_started_at timestamptz,
    last_finished_at timestamptz,
    last_duration_ms bigint,
    last_outcome text,
    last_node text,
    runs bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rate_limit_counters (
    key text NOT NULL,
    window_start timestamptz NOT NULL,
    hits integer NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX ix_rate_limit_counters_window ON rate_limit_counters (window_start);

CREATE TABLE device_listener_ca (
    id text PRIMARY KEY CHECK (id = 'current'),
    cert_pem text NOT NULL,
    key_sealed bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#;

const SQLITE_TABLES: &str = r#"
CREATE TABLE cluster_messages (
    id uuid_text PRIMARY KEY,
    topic text NOT NULL,
    payload text NOT NULL,
    created_at timestamp_with_timezone_text NOT NULL
);
CREATE INDEX ix_cluster_messages_created_at ON cluster_messages (created_at);

CREATE TABLE job_runs (
    name text PRIMARY KEY,
    next_due_at timestamp_with_timezone_text NOT NULL,
    last_started_at timestamp_with_timezone_text,
    last_finished_at timestamp_with_timezone_text,
    last_duration_ms bigint,
    last_outcome text,
    last_node text,
    runs bigint NOT NULL DEFAULT 0,
    updated_at timestamp_with_timezone_text NOT NULL
);

CREATE TABLE rate_limit_counters (
    key text NOT NULL,
    window_start timestamp_with_timezone_text NOT NULL,
    hits integer NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX ix_rate_limit_counters_window ON rate_limit_counters (window_start);

CREATE TABLE device_listener_ca (
    id text PRIMARY KEY CHECK (id = 'current'),
    cert_pem text NOT NULL,
    key_sealed blob NOT NULL,
    created_at timestamp_with_timezone_text NOT NULL
);
"#;

const POSTGRES_PURGE: &str = r#"
-- Deletes what has expired, across tenants, and says how much per kind.
-- p_revoked_before: revocation records older than this (now minus one
-- certificate lifetime) only concern certificates that have expired.
CREATE FUNCTION mobius_purge_expired(p_revoked_before timestamptz)
RETURNS TABLE (kind text, removed bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF p_revoked_before > now() - interval '1 minute' THEN
        RAISE EXCEPTION 'mobius_purge_expired: revocations must be older than a certificate lifetime';
    END IF;
    DELETE FROM enrollment_tokens WHERE expires_at < now();
    GET DIAGNOSTICS n = ROW_COUNT;
    kind := 'enrollment_tokens'; removed := n; RETURN NEXT;
    DELETE FROM refresh_tokens WHERE expires_at < now();
    GET DIAGNOSTICS n = ROW_COUNT;
    kind := 'refresh_tokens'; removed := n; RETURN NEXT;
    DELETE FROM invitations WHERE expires_at < now() AND accepted_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    kind := 'invitations'; removed := n; RETURN NEXT;
    DELETE FROM revoked_devices WHERE revoked_at < p_revoked_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    kind := 'revoked_devices'; removed := n; RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION mobius_purge_expired(timestamptz) FROM PUBLIC;

-- RLS is forced on the owner too: it may read (to evaluate the WHERE) and
-- delete exactly the expired rows, nothing else.
CREATE POLICY owner_purge_read ON enrollment_tokens FOR SELECT TO CURRENT_USER USING (expires_at < now());
CREATE POLICY owner_purge ON enrollment_tokens FOR DELETE TO CURRENT_USER USING (expires_at < now());
CREATE POLICY owner_purge_read ON refresh_tokens FOR SELECT TO CURRENT_USER USING (expires_at < now());
CREATE POLICY owner_purge ON refresh_tokens FOR DELETE TO CURRENT_USER USING (expires_at < now());
CREATE POLICY owner_purge_read ON invitations FOR SELECT TO CURRENT_USER USING (expires_at < now());
CREATE POLICY owner_purge ON invitations FOR DELETE TO CURRENT_USER USING (expires_at < now() AND accepted_at IS NULL);
CREATE POLICY owner_purge_read ON revoked_devices FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_purge ON revoked_devices FOR DELETE TO CURRENT_USER USING (revoked_at < now() - interval '1 minute');
"#;

const POSTGRES_DOWN: &str = r#"
DROP POLICY IF EXISTS owner_purge ON revoked_devices;
DROP POLICY IF EXISTS owner_purge_read ON revoked_devices;
DROP POLICY IF EXISTS owner_purge ON invitations;
DROP POLICY IF EXISTS owner_purge_read ON invitations;
DROP POLICY IF EXISTS owner_purge ON refresh_tokens;
DROP POLICY IF EXISTS owner_purge_read ON refresh_tokens;
DROP POLICY IF EXISTS owner_purge ON enrollment_tokens;
DROP POLICY IF EXISTS owner_purge_read ON enrollment_tokens;
DROP FUNCTION IF EXISTS mobius_purge_expired(timestamptz);
"#;

const DROP_TABLES: &str = r#"
DROP TABLE IF EXISTS device_listener_ca;
DROP TABLE IF EXISTS rate_limit_counters;
DROP TABLE IF EXISTS job_runs;
DROP TABLE IF EXISTS cluster_messages;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(POSTGRES_TABLES).await?;
                db.execute_unprepared(POSTGRES_PURGE).await?;
            }
            _ => {
                db.execute_unprepared(SQLITE_TABLES).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(POSTGRES_DOWN).await?;
        }
        db.execute_unprepared(DROP_TABLES).await?;
        Ok(())
    }
}
