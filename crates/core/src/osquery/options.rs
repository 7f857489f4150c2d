//! Layered agent options: one global document per tenant and one override
//! per team, merged server-side (team over global) into the view a device
//! gets: Mobius agents on the work stream, osquery hosts from
//! `/api/osquery/config`.
//!
//! Merging is JSON merge patch (RFC 7396): objects merge key by key at
//! every depth, any other team value replaces the global one, and a team
//! `null` removes the key from the merged view (so a team can drop a
//! global scheduled query).
//!
//! Versions: each write gives its layer the tenant's highest layer version
//! plus one, and a merged view's version is the highest of its two
//! layers'. So the version of every view a write affects grows, views it
//! does not affect keep theirs, and devices can compare versions to know
//! whether they have the newest.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use serde_json::{Map, Value, json};

use super::entities::option_layer;
use super::{OsqueryError, invalid};
use crate::audit::{Actor, AuditRecord};
use crate::db::no_nul_in_json;
use crate::{StoreResult, TenantScope, Uuid};

/// The layer key of the tenant-wide layer.
const GLOBAL: &str = "global";
/// A document is stored whole in one row and pushed to every device:
/// kept well below the push channel's and osquery's comfort.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Top-level keys osquery's configuration knows, plus `agent` (Mobius
/// agents' own settings). Anything else is most likely a typo.
const TOP_LEVEL_KEYS: &[&str] = &[
    "options",
    "schedule",
    "packs",
    "decorators",
    "file_paths",
    "file_accesses",
    "exclude_paths",
    "events",
    "yara",
    "prometheus_targets",
    "views",
    "auto_table_construction",
    "feature_vectors",
    "agent",
];

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// One stored layer (an unset layer reads as `{}` at version 0).
#[derive(Clone, Debug, PartialEq)]
pub struct OptionLayer {
    pub team_id: Option<Uuid>,
    pub document: Value,
    pub version: i64,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The merged view for a team (or for devices in no team).
#[derive(Clone, Debug, PartialEq)]
pub struct MergedOptions {
    pub team_id: Option<Uuid>,
    pub version: i64,
    pub document: Value,
}

/// Checks a layer document; `Err((field, reason))` names the offending
/// path (`schedule.processes.interval`).
pub fn validate_document(document: &Value) -> Result<(), OsqueryError> {
    let Value::Object(top) = document else {
        return Err(invalid("document", "must be a JSON object"));
    };
    if serde_json::to_vec(document).map_or(0, |v| v.len()) > MAX_DOCUMENT_BYTES {
        return Err(invalid(
            "document",
            format!("must be at most {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    no_nul_in_json("document", document)
        .map_err(|_| invalid("document", "holds a NUL character"))?;
    for (key, value) in top {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            return Err(invalid(
                key.clone(),
                format!(
                    "unknown top-level key (known: {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
        // `null` removes the key in an override: always allowed.
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "options" => validate_options(value)?,
            "schedule" => validate_schedule("schedule", value)?,
            "packs" => validate_packs(value)?,
            "agent" => validate_agent(value)?,
            "decorators"
            | "file_paths"
            | "file_accesses"
            | "events"
            | "yara"
            | "views"
            | "prometheus_targets"
            | "auto_table_construction"
            | "feature_vectors"
            | "exclude_paths"
                if !value.is_object() && !value.is_array() =>
            {
                return Err(invalid(key.clone(), "must be an object"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn object<'v>(field: &str, value: &'v Value) -> Result<&'v Map<String, Value>, OsqueryError> {
    value
        .as_object()
        .ok_or_else(|| invalid(field, "must be an object"))
}

fn validate_options(value: &Value) -> Result<(), OsqueryError> {
    for (name, option) in object("options", value)? {
        if option.is_object() || option.is_array() {
            return Err(invalid(
                format!("options.{name}"),
                "must be a string, number, boolean or null (osquery flags are scalars)",
            ));
        }
    }
    Ok(())
}

fn positive_int(field: &str, value: &Value, max: u64) -> Result<(), OsqueryError> {
    // osquery accepts numbers given as strings in its own config; so do we.
    let number = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match number {
        Some(n) if (1..=max).contains(&n) => Ok(()),
        _ => Err(invalid(
            field,
            format!("must be a whole number from 1 to {max}"),
        )),
    }
}

fn agent_int(field: &str, value: &Value, max: u64) -> Result<(), OsqueryError> {
    if !value.is_number() {
        return Err(invalid(field, format!("must be a number from 1 to {max}")));
    }
    positive_int(field, value, max)
}

fn validate_schedule(at: &str, value: &Value) -> Result<(), OsqueryError> {
    for (name, query) in object(at, value)? {
        let path = format!("{at}.{name}");
        if query.is_null() {
            continue;
        }
        let query = object(&path, query)?;
        match query.get("query") {
            Some(Value::String(sql)) if !sql.trim().is_empty() => {}
            _ => {
                return Err(invalid(
                    format!("{path}.query"),
                    "must be a non-empty SQL string",
                ));
            }
        }
        match query.get("interval") {
            Some(interval) => positive_int(&format!("{path}.interval"), interval, 604_800)?,
            None => return Err(invalid(format!("{path}.interval"), "is required (seconds)")),
        }
    }
    Ok(())
}

fn validate_packs(value: &Value) -> Result<(), OsqueryError> {
    for (name, pack) in object("packs", value)? {
        let path = format!("packs.{name}");
        match pack {
            // A pack may be a path on the host, as in osquery.
            Value::String(_) | Value::Null => {}
            Value::Object(pack) => {
                if let Some(queries) = pack.get("queries") {
                    validate_schedule(&format!("{path}.queries"), queries)?;
                }
            }
            _ => return Err(invalid(path, "must be an object or a path")),
        }
    }
    Ok(())
}

/// `agent.*`: what Mobius agents apply. Known keys are type-checked; others
/// pass through for newer agents.
fn validate_agent(value: &Value) -> Result<(), OsqueryError> {
    for (key, setting) in object("agent", value)? {
        let path = format!("agent.{key}");
        if setting.is_null() {
            continue;
        }
        match key.as_str() {
            "log_level" => match setting.as_str() {
                Some(level) if LOG_LEVELS.contains(&level) => {}
                _ => {
                    return Err(invalid(
                        path,
                        format!("must be one of {}", LOG_LEVELS.join(", ")),
                    ));
                }
            },
            // What `mobius-agent` reads (crates/agent/src/queries/options.rs):
            // JSON numbers only, as the agent ignores anything else.
            "query_timeout_ms" => agent_int(&path, setting, 600_000)?,
            "query_max_rows" => agent_int(&path, setting, 1_000_000)?,
            "query_max_bytes" => agent_int(&path, setting, 64 * 1024 * 1024)?,
            _ => {}
        }
    }
    Ok(())
}

/// `over` applied to `base` as a JSON merge patch (see the module comment).
pub fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            let mut merged = base.clone();
            for (key, value) in over {
                if value.is_null() {
                    merged.remove(key);
                } else {
                    let next = match merged.get(key) {
                        Some(existing) => merge(existing, value),
                        None => merge(&Value::Object(Map::new()), value),
                    };
                    merged.insert(key.clone(), next);
                }
            }
            Value::Object(merged)
        }
        (_, Value::Object(over)) => {
            // Replacing a scalar with an object: drop the object's nulls.
            merge(&Value::Object(Map::new()), &Value::Object(over.clone()))
        }
        (_, over) => over.clone(),
    }
}

pub struct AgentOptionLayers<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn agent_options(&self) -> AgentOptionLayers<'_> {
        AgentOptionLayers { scope: self }
    }
}

fn layer_key(team: Option<Uuid>) -> String {
    team.map_or_else(|| GLOBAL.to_owned(), |team| team.to_string())
}

impl AgentOptionLayers<'_> {
    async fn rows(&self, team: Option<Uuid>) -> StoreResult<Vec<option_layer::Model>> {
        let mut keys = vec![GLOBAL.to_owned()];
        if let Some(team) = team {
            keys.push(team.to_string());
        }
        Ok(option_layer::Entity::find()
            .filter(option_layer::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(option_layer::Column::Layer.is_in(keys))
            .all(self.scope.connection())
            .await?)
    }

    /// One layer as stored (the global one for `None`). A team of another
    /// tenant, or none, is NOT_FOUND.
    pub async fn layer(&self, team: Option<Uuid>) -> StoreResult<OptionLayer> {
        if let Some(team) = team {
            self.scope.teams().get(team).await?;
        }
        let key = layer_key(team);
        let row = self
            .rows(team)
            .await?
            .into_iter()
            .find(|row| row.layer == key);
        Ok(match row {
            Some(row) => OptionLayer {
                team_id: row.team_id,
                document: row.document,
                version: row.version,
                updated_at: Some(row.updated_at),
            },
            None => OptionLayer {
                team_id: team,
                document: json!({}),
                version: 0,
                updated_at: None,
            },
        })
    }

    /// The merged view for devices of `team` (or in no team), read in one
    /// statement. The team is not checked: a device's team is.
    pub async fn merged(&self, team: Option<Uuid>) -> StoreResult<MergedOptions> {
        let rows = self.rows(team).await?;
        let global = rows.iter().find(|row| row.layer == GLOBAL);
        let over = team.and_then(|team| {
            let key = team.to_string();
            rows.iter().find(|row| row.layer == key)
        });
        let empty = json!({});
        let base = global.map_or(&empty, |row| &row.document);
        let document = match over {
            Some(over) => merge(base, &over.document),
            // Merging with nothing still strips a global layer's nulls.
            None => merge(&empty, base),
        };
        let version = global
            .map_or(0, |row| row.version)
            .max(over.map_or(0, |row| row.version));
        Ok(MergedOptions {
            team_id: team,
            version,
            document,
        })
    }

    /// Replaces one layer (global for `None`) after validating it; its new
    /// version is above every layer of the tenant. Audited with the old
    /// and new versions.
    pub async fn set(
        &self,
        actor: &Actor,
        team: Option<Uuid>,
        document: Value,
    ) -> Result<OptionLayer, OsqueryError> {
        validate_document(&document)?;
        if let Some(team) = team {
            self.scope.teams().get(team).await?;
        }
        let db = self.scope.connection();
        let newest = option_layer::Entity::find()
            .filter(option_layer::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(option_layer::Column::Version)
            .one(db)
            .await?
            .map_or(0, |row| row.version);
        let key = layer_key(team);
        let existing = option_layer::Entity::find()
            .filter(option_layer::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(option_layer::Column::Layer.eq(key.as_str()))
            .one(db)
            .await?;
        let now = chrono::Utc::now();
        let previous = existing.as_ref().map_or(0, |row| row.version);
        let version = newest.max(previous) + 1;
        let row = match existing {
            Some(row) => {
                let mut active: option_layer::ActiveModel = row.into();
                active.document = Set(document);
                active.version = Set(version);
                active.updated_at = Set(now);
                active.update(db).await?
            }
            None => option_layer::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(self.scope.tenant_id()),
                layer: Set(key),
                team_id: Set(team),
                document: Set(document),
                version: Set(version),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(db)
            .await
            .map_err(crate::db::conflict_on("agent options layer", "teamId"))?,
        };
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("agent_options.updated", "agent_options", team).with_details(
                    json!({
                        "layer": if team.is_some() { "team" } else { "global" },
                        "team_id": team,
                        "previous_version": previous,
                        "version": version,
                    }),
                ),
            )
            .await?;
        Ok(OptionLayer {
            team_id: row.team_id,
            document: row.document,
            version: row.version,
            updated_at: Some(row.updated_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_overrides_global_deeply_and_null_removes() {
        let global = json!({
            "options": {"distributed_interval": 60, "logger_tls_period": 10},
            "schedule": {"procs": {"query": "SELECT 1", "interval": 60}, "users": {"query": "SELECT 2", "interval": 30}},
        });
        let team = json!({
            "options": {"distributed_interval": 10},
            "schedule": {"users": null},
            "agent": {"log_level": "debug"},
        });
        assert_eq!(
            merge(&global, &team),
            json!({
                "options": {"distributed_interval": 10, "logger_tls_period": 10},
                "schedule": {"procs": {"query": "SELECT 1", "interval": 60}},
                "agent": {"log_level": "debug"},
            })
        );
    }

    #[test]
    fn validation_names_the_offending_path() {
        let err = |doc: Value| match validate_document(&doc) {
            Err(OsqueryError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(err(json!([])), "document");
        assert_eq!(err(json!({"optoins": {}})), "optoins");
        assert_eq!(err(json!({"options": {"x": {"y": 1}}})), "options.x");
        assert_eq!(
            err(json!({"schedule": {"p": {"query": "SELECT 1", "interval": 0}}})),
            "schedule.p.interval"
        );
        assert_eq!(
            err(json!({"schedule": {"p": {"interval": 5}}})),
            "schedule.p.query"
        );
        assert_eq!(
            err(json!({"agent": {"log_level": "loud"}})),
            "agent.log_level"
        );
        assert_eq!(
            err(json!({"packs": {"it": {"queries": {"q": {"query": "", "interval": 5}}}}})),
            "packs.it.queries.q.query"
        );
        assert_eq!(
            err(json!({"agent": {"query_max_rows": "100"}})),
            "agent.query_max_rows"
        );
        assert!(
            validate_document(&json!({"options": {"a": "1"}, "agent": {"query_max_rows": 100, "future_key": true}}))
                .is_ok()
        );
    }
}
