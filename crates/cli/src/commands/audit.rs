//! `audit list`: the tenant's audit log.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Context;
use crate::cli::AuditCommand;
use crate::output::{Tabular, or_dash};
use crate::pagination::fetch_list;

const LIST: &str = "query AuditEvents($first: Int, $after: String) {
  auditEvents(first: $first, after: $after) {
    nodes { id actorKind actorId action targetKind targetId ip userAgent details createdAt }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub id: String,
    pub actor_kind: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Value,
    pub created_at: String,
}

impl Tabular for AuditEvent {
    /// The user agent is left to `--output json`: it is long and rarely
    /// what one scans a log for.
    fn columns() -> &'static [&'static str] {
        &["ID", "TIME", "ACTOR", "ACTION", "TARGET", "IP", "DETAILS"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.created_at.clone(),
            kind_and_id(&self.actor_kind, self.actor_id.as_deref()),
            self.action.clone(),
            kind_and_id(&self.target_kind, self.target_id.as_deref()),
            or_dash(self.ip.as_deref()),
            details(&self.details),
        ]
    }
}

/// `user:0190...`, or just the kind when there is no ID (e.g. `system`).
fn kind_and_id(kind: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{kind}:{id}"),
        None => kind.to_owned(),
    }
}

fn details(details: &Value) -> String {
    match details {
        Value::Null => "-".to_owned(),
        Value::Object(map) if map.is_empty() => "-".to_owned(),
        other => other.to_string(),
    }
}

pub async fn run(ctx: &Context, command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::List(args) => {
            let mut client = ctx.client()?;
            let listing =
                fetch_list::<AuditEvent>(&mut client, "auditEvents", LIST, Map::new(), args.limit)
                    .await?;
            ctx.output.list(&listing.rows)?;
            listing.note_truncation("audit events");
            Ok(())
        }
    }
}
