//! The merged agent options the server pushes (`WorkFrame::Options`):
//! kept in `options.json` so a restart starts from the last bundle, and
//! applied to what the agent itself controls.
//!
//! Keys the agent reads (all optional, under the bundle's `agent` object):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `agent.query_timeout_ms` | the longest any query may run (a request asking longer is cut to this) | 30000 |
//! | `agent.query_max_rows` | rows per answer before it is truncated | 10000 |
//! | `agent.query_max_bytes` | bytes (column names + values) per answer before it is truncated | 1048576 |
//!
//! Everything else in the bundle (`options`, `schedule`, `packs`, ...) is
//! osquery's and kept as is.

use std::time::Duration;

use anyhow::{Context as _, Result};
use mobius_api::queries::AgentOptions;

use crate::state::StateDir;
use crate::tables::Limits;

pub const OPTIONS_FILE: &str = "options.json";

/// The limits when the options set none: a ceiling for live queries and
/// policies, and an answer small enough for the server's request limit.
pub fn default_limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(30),
        max_rows: 10_000,
        max_bytes: 1 << 20,
    }
}

/// The bundle last applied, if any.
pub fn stored(dir: &StateDir) -> Option<AgentOptions> {
    let text = std::fs::read_to_string(dir.file(OPTIONS_FILE)).ok()?;
    match serde_json::from_str(&text) {
        Ok(options) => Some(options),
        Err(err) => {
            tracing::warn!(error = %err, "options.json is unreadable; using default options");
            None
        }
    }
}

pub fn stored_version(dir: &StateDir) -> Option<i64> {
    stored(dir).map(|options| options.options_version)
}

/// Saves the bundle (atomically, 0600: it may name internal hosts).
pub fn save(dir: &StateDir, options: &AgentOptions) -> Result<()> {
    let text = serde_json::to_vec_pretty(options).context("cannot encode the agent options")?;
    dir.write_atomic(OPTIONS_FILE, &text)
}

/// The query limits the bundle sets, over the defaults. A value that is
/// not a positive integer is ignored (and logged), not fatal.
pub fn limits(options: Option<&AgentOptions>) -> Limits {
    let mut limits = default_limits();
    let Some(agent) = options.and_then(|o| o.options.get("agent")) else {
        return limits;
    };
    let read = |key: &str| -> Option<u64> {
        let value = agent.get(key)?;
        match value.as_u64().filter(|v| *v > 0) {
            Some(v) => Some(v),
            None => {
                tracing::warn!(key, %value, "agent option ignored: not a positive integer");
                None
            }
        }
    };
    if let Some(ms) = read("query_timeout_ms") {
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(rows) = read("query_max_rows") {
        limits.max_rows = usize::try_from(rows).unwrap_or(usize::MAX);
    }
    if let Some(bytes) = read("query_max_bytes") {
        limits.max_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    limits
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn agent_keys_set_the_limits_and_bad_values_are_ignored() {
        let options = AgentOptions {
            options_version: 7,
            options: json!({"agent": {"query_timeout_ms": 1500, "query_max_rows": 5, "query_max_bytes": "lots"}, "options": {"logger_plugin": "tls"}}),
        };
        let limits = limits(Some(&options));
        assert_eq!(limits.timeout, Duration::from_millis(1500));
        assert_eq!(limits.max_rows, 5);
        assert_eq!(limits.max_bytes, default_limits().max_bytes);
        assert_eq!(super::limits(None), default_limits());
    }

    #[test]
    fn the_bundle_survives_a_restart_privately() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        assert_eq!(stored_version(&dir), None);
        let options = AgentOptions {
            options_version: 3,
            options: json!({"agent": {"query_max_rows": 2}}),
        };
        save(&dir, &options).unwrap();
        assert_eq!(stored(&dir), Some(options));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.file(OPTIONS_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
