//! `mobius policies list|get|create|delete`.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Context;
use crate::cli::ListArgs;
use crate::output::{Tabular, or_dash};

#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// List policies with their pass/fail counts
    List(PolicyListArgs),
    /// Show a policy, its counts and failing devices
    Get(IdArg),
    /// Create a policy from a YAML or JSON file
    #[command(after_help = "Example policy.yaml:\n\
  name: Disk encryption on\n\
  sql: SELECT 1 FROM disk_encryption WHERE encrypted = '1'\n\
  description: Every disk is encrypted.\n\
  resolution: Turn on LUKS or FileVault.\n\
  platform: linux,darwin\n\
  intervalSecs: 3600\n\
  # teamId: VGVhbTo...   (omitted: global)\n")]
    Create(FileArg),
    /// Delete a policy and its results
    Delete(IdArg),
}

#[derive(Debug, Args)]
pub struct PolicyListArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Only this team's policies and the global ones
    #[arg(long, value_name = "ID")]
    pub team: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The policy's ID
    pub id: String,
}

#[derive(Debug, Args)]
pub struct FileArg {
    /// The policy file (`-` reads standard input)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
}

const FIELDS: &str = "id name sql description resolution platform intervalSecs teamId passing failing unknown createdAt";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyRow {
    id: String,
    name: String,
    sql: String,
    description: String,
    resolution: String,
    platform: Option<String>,
    interval_secs: i64,
    team_id: Option<String>,
    passing: i64,
    failing: i64,
    unknown: i64,
    created_at: String,
}

impl Tabular for PolicyRow {
    fn columns() -> &'static [&'static str] {
        &[
            "ID", "NAME", "TEAM", "PLATFORM", "INTERVAL", "PASSING", "FAILING", "UNKNOWN",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.team_id.clone().unwrap_or_else(|| "global".into()),
            or_dash(self.platform.as_deref()),
            format!("{}s", self.interval_secs),
            self.passing.to_string(),
            self.failing.to_string(),
            self.unknown.to_string(),
        ]
    }
}

pub async fn run(ctx: &Context, command: PoliciesCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        PoliciesCommand::List(args) => {
            let page: Value = client
                .query(
                    "policies",
                    &format!(
                        "query($first: Int, $team: ID) {{ policies(first: $first, teamId: $team) {{ nodes {{ {FIELDS} }} }} }}"
                    ),
                    json!({ "first": args.list.limit.min(500), "team": args.team }),
                )
                .await?;
            let rows: Vec<PolicyRow> = serde_json::from_value(page["nodes"].clone())?;
            ctx.output.list(&rows)
        }
        PoliciesCommand::Get(args) => {
            let policy: Value = client
                .query(
                    "policy",
                    &format!(
                        "query($id: ID!) {{ policy(id: $id) {{ {FIELDS} failingDevices(first: 100) {{ totalCount nodes {{ deviceId hostname checkedAt error }} }} }} }}"
                    ),
                    json!({ "id": args.id }),
                )
                .await?;
            ctx.output.raw_json(&policy)
        }
        PoliciesCommand::Create(args) => {
            let text = if args.file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&args.file)
                    .with_context(|| format!("reading {}", args.file))?
            };
            // YAML is a superset of JSON: one parser reads both.
            let input: Value = serde_norway::from_str(&text)
                .with_context(|| format!("{} is not a YAML or JSON policy", args.file))?;
            let created: PolicyRow = client
                .query(
                    "createPolicy",
                    &format!(
                        "mutation($input: CreatePolicyInput!) {{ createPolicy(input: $input) {{ {FIELDS} }} }}"
                    ),
                    json!({ "input": input }),
                )
                .await?;
            ctx.output.item(&created)
        }
        PoliciesCommand::Delete(args) => {
            let deleted: Value = client
                .query(
                    "deletePolicy",
                    "mutation($id: ID!) { deletePolicy(id: $id) { id name } }",
                    json!({ "id": args.id }),
                )
                .await?;
            ctx.output.confirmation(
                &format!(
                    "deleted policy {}",
                    deleted["name"].as_str().unwrap_or_default()
                ),
                &deleted,
            )
        }
    }
}
