//! The work journal: `journal.json` in the agent's state directory
//! (replaced atomically, mode 0600). It remembers the newest plan version
//! accepted (anything not newer is a replay), each execution accepted and
//! how it ended, and each operation by id, so a redelivery or a restart
//! never runs a finished operation twice and an operation that was
//! running when the agent died is reported INTERRUPTED.

use std::collections::BTreeMap;

use anyhow::Result;
use mobius_api::plans::{ExecutionStatus, SignedWork};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::StateDir;

pub const JOURNAL_FILE: &str = "journal.json";
/// Finished executions remembered (oldest forgotten first); their
/// operations go with them.
const KEEP_FINISHED: usize = 1000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Journal {
    pub last_plan_version: u64,
    #[serde(default)]
    pub executions: BTreeMap<Uuid, ExecutionEntry>,
    #[serde(default)]
    pub operations: BTreeMap<String, OperationEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecutionEntry {
    pub plan_version: u64,
    /// `None` while queued.
    pub status: Option<ExecutionStatus>,
    #[serde(default)]
    pub error: Option<String>,
    /// The server has acknowledged the final status.
    #[serde(default)]
    pub reported: bool,
    /// Kept while queued, so a restart resumes it.
    #[serde(default)]
    pub work: Option<SignedWork>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperationEntry {
    pub execution_id: Uuid,
    pub status: ExecutionStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    /// The process group of a running operation, to kill after a crash.
    #[serde(default)]
    pub process_group: Option<i32>,
}

impl Journal {
    pub fn load(dir: &StateDir) -> Result<Journal> {
        match std::fs::read(dir.file(JOURNAL_FILE)) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(err) => Err(err.into()),
        }
    }

    pub fn save(&mut self, dir: &StateDir) -> Result<()> {
        self.prune();
        dir.write_atomic(JOURNAL_FILE, &serde_json::to_vec(self)?)
    }

    fn prune(&mut self) {
        let finished: Vec<Uuid> = self
            .executions
            .iter()
            .filter(|(_, e)| e.reported && e.status.is_some())
            .map(|(id, _)| *id)
            .collect();
        if finished.len() <= KEEP_FINISHED {
            return;
        }
        // UUIDv7 ids sort by time: drop the oldest.
        for id in &finished[..finished.len() - KEEP_FINISHED] {
            self.executions.remove(id);
            self.operations.retain(|_, op| op.execution_id != *id);
        }
    }
}
