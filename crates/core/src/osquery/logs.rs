//! Logs osquery ships to `/api/osquery/log`, in the formats its
//! filesystem logger writes (osquery `docs/wiki/deployment/logging.md`):
//!
//! - result logs, `log_type: "result"`, one object per query run, in one
//!   of three forms: an *event* (`columns` + `action: added|removed`), a
//!   *batch* (`diffResults: {added: [...], removed: [...]}`, with
//!   `--logger_event_type=false`), or a *snapshot* (`snapshot: [...]`,
//!   `action: snapshot`). Each row is stored as one entry with its
//!   action, the query name and the time osquery gave (`unixTime`).
//! - status logs, `log_type: "status"`: osquery's own glog lines
//!   (`severity`, `filename`, `line`, `message`, `version`).
//!
//! osquery sends numbers as strings in places (`unixTime`, `severity`,
//! `line`); both are accepted. Entries are kept for a retention period
//! (setting `osquery_log_retention_days`).

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use serde_json::Value;

use super::entities::{result_log, status_log};
use super::{OsqueryError, invalid};
use crate::{StoreResult, Uuid};

/// Rows written per INSERT statement.
const INSERT_CHUNK: usize = 500;
/// At most this many rows from one request (osquery batches far fewer
/// with its defaults: `--logger_tls_max_lines=1024`).
pub const MAX_ROWS_PER_REQUEST: usize = 20_000;

/// One stored result row.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultLogEntry {
    pub name: String,
    /// `added`, `removed` or `snapshot`.
    pub action: String,
    pub columns: Value,
    pub logged_at: chrono::DateTime<chrono::Utc>,
}

/// One stored status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusLogEntry {
    pub severity: i32,
    pub filename: String,
    pub line: i32,
    pub message: String,
    pub version: String,
    pub logged_at: chrono::DateTime<chrono::Utc>,
}

fn number(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(value: Option<&Value>, max: usize) -> String {
    match value {
        Some(Value::String(s)) => s.chars().take(max).collect(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string().chars().take(max).collect(),
    }
}

fn logged_at(entry: &Value) -> chrono::DateTime<chrono::Utc> {
    number(entry.get("unixTime"))
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .unwrap_or_else(chrono::Utc::now)
}

fn rows_of<'v>(at: &str, value: &'v Value) -> Result<&'v Vec<Value>, OsqueryError> {
    let rows = value
        .as_array()
        .ok_or_else(|| invalid(at, "must be a list of rows"))?;
    if rows.iter().any(|row| !row.is_object()) {
        return Err(invalid(at, "every row must be an object"));
    }
    Ok(rows)
}

/// Parses `data` of a result log request, whatever form each entry takes.
pub fn parse_result_logs(data: &Value) -> Result<Vec<ResultLogEntry>, OsqueryError> {
    let entries = data
        .as_array()
        .ok_or_else(|| invalid("data", "must be a list"))?;
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("data[{i}]");
        let name = match entry.get("name") {
            Some(Value::String(name)) if !name.trim().is_empty() => {
                name.chars().take(200).collect::<String>()
            }
            _ => return Err(invalid(format!("{at}.name"), "must name the query")),
        };
        let when = logged_at(entry);
        let mut push = |action: &str, row: &Value| {
            out.push(ResultLogEntry {
                name: name.clone(),
                action: action.to_owned(),
                columns: row.clone(),
                logged_at: when,
            });
        };
        if let Some(diff) = entry.get("diffResults") {
            for action in ["added", "removed"] {
                if let Some(rows) = diff.get(action) {
                    for row in rows_of(&format!("{at}.diffResults.{action}"), rows)? {
                        push(action, row);
                    }
                }
            }
        } else if let Some(snapshot) = entry.get("snapshot") {
            for row in rows_of(&format!("{at}.snapshot"), snapshot)? {
                push("snapshot", row);
            }
        } else if let Some(columns) = entry.get("columns") {
            if !columns.is_object() {
                return Err(invalid(format!("{at}.columns"), "must be an object"));
            }
            let action = match entry.get("action").and_then(Value::as_str) {
                Some(action @ ("added" | "removed" | "snapshot")) => action,
                _ => {
                    return Err(invalid(
                        format!("{at}.action"),
                        "must be added, removed or snapshot",
                    ));
                }
            };
            push(action, columns);
        } else {
            return Err(invalid(
                at,
                "must carry columns (event), diffResults (batch) or snapshot",
            ));
        }
        if out.len() > MAX_ROWS_PER_REQUEST {
            return Err(invalid(
                "data",
                format!("more than {MAX_ROWS_PER_REQUEST} rows in one request"),
            ));
        }
    }
    for entry in &out {
        crate::db::no_nul_in_json("data", &entry.columns)
            .map_err(|_| invalid("data", "holds a NUL character"))?;
    }
    Ok(out)
}

/// Parses `data` of a status log request.
pub fn parse_status_logs(data: &Value) -> Result<Vec<StatusLogEntry>, OsqueryError> {
    let entries = data
        .as_array()
        .ok_or_else(|| invalid("data", "must be a list"))?;
    if entries.len() > MAX_ROWS_PER_REQUEST {
        return Err(invalid(
            "data",
            format!("more than {MAX_ROWS_PER_REQUEST} lines in one request"),
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            if !entry.is_object() {
                return Err(invalid(format!("data[{i}]"), "must be an object"));
            }
            let clean = |s: String| s.replace('\0', "");
            Ok(StatusLogEntry {
                severity: number(entry.get("severity"))
                    .and_then(|s| i32::try_from(s).ok())
                    .unwrap_or(0),
                filename: clean(text(entry.get("filename"), 300)),
                line: number(entry.get("line"))
                    .and_then(|s| i32::try_from(s).ok())
                    .unwrap_or(0),
                message: clean(text(entry.get("message"), 8192)),
                version: clean(text(entry.get("version"), 60)),
                logged_at: logged_at(entry),
            })
        })
        .collect()
}

impl super::enroll::Osquery<'_> {
    pub async fn store_result_logs(
        &self,
        device_id: Uuid,
        entries: Vec<ResultLogEntry>,
    ) -> StoreResult<usize> {
        let count = entries.len();
        let now = chrono::Utc::now();
        let tenant_id = self.scope().tenant_id();
        let rows: Vec<result_log::ActiveModel> = entries
            .into_iter()
            .map(|entry| result_log::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(tenant_id),
                device_id: Set(device_id),
                name: Set(entry.name),
                action: Set(entry.action),
                columns: Set(entry.columns),
                logged_at: Set(entry.logged_at),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .collect();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
            result_log::Entity::insert_many(chunk)
                .exec_without_returning(self.scope().connection())
                .await?;
        }
        Ok(count)
    }

    pub async fn store_status_logs(
        &self,
        device_id: Uuid,
        entries: Vec<StatusLogEntry>,
    ) -> StoreResult<usize> {
        let count = entries.len();
        let now = chrono::Utc::now();
        let tenant_id = self.scope().tenant_id();
        let rows: Vec<status_log::ActiveModel> = entries
            .into_iter()
            .map(|entry| status_log::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(tenant_id),
                device_id: Set(device_id),
                severity: Set(entry.severity),
                filename: Set(entry.filename),
                line: Set(entry.line),
                message: Set(entry.message),
                version: Set(entry.version),
                logged_at: Set(entry.logged_at),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .collect();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
            status_log::Entity::insert_many(chunk)
                .exec_without_returning(self.scope().connection())
                .await?;
        }
        Ok(count)
    }

    /// A device's result rows, newest first, optionally for one query name.
    pub async fn result_logs(
        &self,
        device_id: Uuid,
        name: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<ResultLogEntry>> {
        let mut query = result_log::Entity::find()
            .filter(result_log::Column::TenantId.eq(self.scope().tenant_id()))
            .filter(result_log::Column::DeviceId.eq(device_id));
        if let Some(name) = name {
            query = query.filter(result_log::Column::Name.eq(name));
        }
        Ok(query
            .order_by_desc(result_log::Column::LoggedAt)
            .order_by_desc(result_log::Column::Id)
            .limit(limit)
            .all(self.scope().connection())
            .await?
            .into_iter()
            .map(|row| ResultLogEntry {
                name: row.name,
                action: row.action,
                columns: row.columns,
                logged_at: row.logged_at,
            })
            .collect())
    }

    /// A device's status lines, newest first.
    pub async fn status_logs(
        &self,
        device_id: Uuid,
        limit: u64,
    ) -> StoreResult<Vec<StatusLogEntry>> {
        Ok(status_log::Entity::find()
            .filter(status_log::Column::TenantId.eq(self.scope().tenant_id()))
            .filter(status_log::Column::DeviceId.eq(device_id))
            .order_by_desc(status_log::Column::LoggedAt)
            .order_by_desc(status_log::Column::Id)
            .limit(limit)
            .all(self.scope().connection())
            .await?
            .into_iter()
            .map(|row| StatusLogEntry {
                severity: row.severity,
                filename: row.filename,
                line: row.line,
                message: row.message,
                version: row.version,
                logged_at: row.logged_at,
            })
            .collect())
    }

    /// Deletes the tenant's log entries stored before `before`.
    pub async fn purge_logs(&self, before: chrono::DateTime<chrono::Utc>) -> StoreResult<u64> {
        let db = self.scope().connection();
        let results = result_log::Entity::delete_many()
            .filter(result_log::Column::TenantId.eq(self.scope().tenant_id()))
            .filter(result_log::Column::CreatedAt.lt(before))
            .exec(db)
            .await?;
        let statuses = status_log::Entity::delete_many()
            .filter(status_log::Column::TenantId.eq(self.scope().tenant_id()))
            .filter(status_log::Column::CreatedAt.lt(before))
            .exec(db)
            .await?;
        Ok(results.rows_affected + statuses.rows_affected)
    }
}

/// Deletes every tenant's osquery log entries stored before `before` (the
/// retention job): finds the tenants through the named lookup, then
/// deletes in a scope of each. Returns the rows removed.
pub async fn purge_expired_logs(
    store: &crate::Store,
    before: chrono::DateTime<chrono::Utc>,
) -> StoreResult<u64> {
    let mut removed = 0;
    for tenant in store.osquery_log_tenants(before).await? {
        let scope = store
            .begin(&crate::db::SystemTask::new(
                "osquery-log-retention",
                tenant.id(),
            ))
            .await?;
        removed += scope.osquery().purge_logs(before).await?;
        scope.commit().await?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn all_three_result_forms_parse() {
        let data = json!([
            {"name": "pack_x_procs", "hostIdentifier": "h", "unixTime": "1412123850",
             "columns": {"pid": "1"}, "action": "added"},
            {"name": "users", "unixTime": 1412123851,
             "diffResults": {"added": [{"u": "a"}], "removed": [{"u": "b"}, {"u": "c"}]}},
            {"name": "mounts", "unixTime": 1412123852, "action": "snapshot",
             "snapshot": [{"path": "/"}]},
        ]);
        let entries = parse_result_logs(&data).unwrap();
        let actions: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("pack_x_procs", "added"),
                ("users", "added"),
                ("users", "removed"),
                ("users", "removed"),
                ("mounts", "snapshot"),
            ]
        );
        assert_eq!(entries[0].logged_at.timestamp(), 1412123850);
        assert!(parse_result_logs(&json!([{"name": "x"}])).is_err());
        assert!(parse_result_logs(&json!({"name": "x"})).is_err());
    }

    #[test]
    fn status_numbers_may_be_strings() {
        let entries = parse_status_logs(&json!([
            {"severity": "1", "filename": "tls.cpp", "line": "68", "message": "m", "version": "5.12.1", "unixTime": "1484078931"}
        ]))
        .unwrap();
        assert_eq!(entries[0].severity, 1);
        assert_eq!(entries[0].line, 68);
        assert_eq!(entries[0].logged_at.timestamp(), 1484078931);
    }
}
