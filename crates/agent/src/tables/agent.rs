//! `mobius_agent`: the agent's own state, so a fleet-wide query can find
//! old versions, stale option bundles or agents pointed at the wrong server.

use std::path::PathBuf;

use super::schema::Record;
use crate::state::StateDir;

/// What the `mobius_agent` table shows; read once per query from the
/// state directory (whatever is missing reads as `""`).
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub state_dir: Option<PathBuf>,
    pub device_id: String,
    pub tenant_id: String,
    pub site_id: String,
    pub server: String,
    pub enrolled_at: String,
    pub last_heartbeat_at: String,
    pub options_version: Option<i64>,
}

impl AgentInfo {
    /// From `state.json` and `options.json`; an agent that is not enrolled
    /// (a local `mobius-agent query` on a fresh host) still answers with
    /// its version.
    pub fn load(dir: &StateDir) -> AgentInfo {
        let mut info = AgentInfo {
            state_dir: Some(dir.path().to_owned()),
            options_version: crate::queries::options::stored_version(dir),
            ..AgentInfo::default()
        };
        if let Ok(state) = dir.load_state() {
            info.device_id = state.device_id.to_string();
            info.tenant_id = state.tenant_id.to_string();
            info.site_id = state.site_id.to_string();
            info.server = state.server_url;
            info.enrolled_at = state.enrolled_at.to_rfc3339();
            info.last_heartbeat_at = state
                .last_heartbeat_at
                .map(|at| at.to_rfc3339())
                .unwrap_or_default();
        }
        info
    }
}

pub fn mobius_agent(info: &AgentInfo) -> Vec<Record> {
    vec![vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("device_id", info.device_id.clone()),
        ("tenant_id", info.tenant_id.clone()),
        ("site_id", info.site_id.clone()),
        ("server", info.server.clone()),
        (
            "state_dir",
            info.state_dir
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        ("enrolled_at", info.enrolled_at.clone()),
        (
            "options_version",
            info.options_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
        ("last_heartbeat_at", info.last_heartbeat_at.clone()),
        ("pid", std::process::id().to_string()),
    ]]
}
