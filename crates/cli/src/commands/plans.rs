//! `mobius plans apply|list|get|logs|cancel` and `mobius run`.
//!
//! Following output polls the API twice a second (`afterSeq` picks up where
//! the last read ended); the GraphQL subscription `executionLogs` offers
//! the same lines pushed, for clients that hold a WebSocket.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Context;
use crate::cli::ListArgs;
use crate::client::Client;
use crate::output::{Tabular, label, or_dash};

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Apply a plan from a YAML or JSON file
    #[command(after_help = "Example plan.yaml:\n\
  idempotencyKey: restart-nginx-2026-12-01\n\
  targets:\n\
    siteIds: [U2l0ZTo...]\n\
  operations:\n\
    - kind: exec\n\
      params: { argv: [systemctl, restart, nginx], timeout_secs: 60 }\n")]
    Apply(ApplyArgs),
    /// List plans, newest first
    List(ListArgs),
    /// Show a plan and its executions
    Get(IdArg),
    /// Print an execution's output
    Logs(LogsArgs),
    /// Cancel a plan, or one execution with --execution
    Cancel(CancelArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The plan file (`-` reads standard input)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The plan's ID
    pub id: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The execution's ID
    pub execution_id: String,
    /// Keep printing new lines until the execution ends
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The plan's ID (or, with --execution, the execution's)
    pub id: String,
    /// Cancel only this one execution
    #[arg(long)]
    pub execution: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  mobius run --device RGV2aWNlOi... -- uname -a")]
pub struct RunArgs {
    /// Run on this device (repeatable)
    #[arg(long = "device", value_name = "ID")]
    pub devices: Vec<String>,
    /// Run on every device of this site (repeatable)
    #[arg(long = "site", value_name = "ID")]
    pub sites: Vec<String>,
    /// Run on every device of this team (repeatable)
    #[arg(long = "team", value_name = "ID")]
    pub teams: Vec<String>,
    /// Give up (the remote command is killed) after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

const APPLY: &str = "mutation Apply($input: ApplyPlanInput!) {
  applyPlan(input: $input) {
    created
    plan { id idempotencyKey payloadSha256 createdAt executions { id deviceId planVersion status } }
  }
}";

const LIST: &str = "query Plans($first: Int) {
  plans(first: $first) {
    nodes { id idempotencyKey payloadSha256 createdAt statusCounts { status count } }
  }
}";

const GET: &str = "query Plan($id: ID!) {
  plan(id: $id) {
    id idempotencyKey payloadSha256 createdAt
    operations { operationId kind params }
    executions {
      id deviceId planVersion status error startedAt finishedAt
      results { operationId status exitCode durationMs error }
    }
  }
}";

const EXECUTION: &str = "query Execution($id: ID!, $after: Int) {
  planExecution(id: $id) {
    id status error
    results { operationId status exitCode durationMs error }
    logs(afterSeq: $after) { seq stream time line }
  }
}";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanRow {
    id: String,
    idempotency_key: Option<String>,
    payload_sha256: String,
    created_at: String,
    #[serde(default)]
    status_counts: Vec<StatusCount>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatusCount {
    status: String,
    count: i64,
}

impl Tabular for PlanRow {
    fn columns() -> &'static [&'static str] {
        &["ID", "IDEMPOTENCY KEY", "EXECUTIONS", "CREATED"]
    }

    fn cells(&self) -> Vec<String> {
        let counts = self
            .status_counts
            .iter()
            .map(|c| format!("{} {}", c.count, label(&c.status)))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            self.id.clone(),
            or_dash(self.idempotency_key.as_deref()),
            counts,
            self.created_at.clone(),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionRow {
    id: String,
    device_id: String,
    plan_version: i64,
    status: String,
    #[serde(default)]
    error: Option<String>,
}

impl Tabular for ExecutionRow {
    fn columns() -> &'static [&'static str] {
        &["EXECUTION", "DEVICE", "VERSION", "STATUS", "ERROR"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.device_id.clone(),
            self.plan_version.to_string(),
            label(&self.status),
            or_dash(self.error.as_deref()),
        ]
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionState {
    status: String,
    error: Option<String>,
    #[serde(default)]
    results: Vec<OperationResult>,
    #[serde(default)]
    logs: Vec<Line>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationResult {
    exit_code: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct Line {
    seq: i64,
    stream: String,
    line: String,
}

const FINAL: &[&str] = &[
    "SUCCEEDED",
    "FAILED",
    "TIMED_OUT",
    "CANCELLED",
    "INTERRUPTED",
    "REJECTED",
];

pub async fn run(ctx: &Context, command: PlansCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        PlansCommand::Apply(args) => {
            let text = if args.file == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(&args.file)
                    .with_context(|| format!("cannot read {}", args.file))?
            };
            // YAML is a superset of JSON: one parser reads both.
            let input: Value = serde_norway::from_str(&text)
                .with_context(|| format!("{} is not a YAML or JSON plan", args.file))?;
            let applied: Value = client
                .query("applyPlan", APPLY, json!({ "input": input }))
                .await?;
            ctx.output.raw_json(&applied)
        }
        PlansCommand::List(args) => {
            let page: Value = client
                .query("plans", LIST, json!({ "first": args.limit.min(500) }))
                .await?;
            let rows: Vec<PlanRow> = serde_json::from_value(page["nodes"].clone())?;
            ctx.output.list(&rows)
        }
        PlansCommand::Get(args) => {
            let plan: Value = client.query("plan", GET, json!({ "id": args.id })).await?;
            ctx.output.raw_json(&plan)
        }
        PlansCommand::Logs(args) => {
            let state = follow(&mut client, &args.execution_id, args.follow).await?;
            if args.follow {
                eprintln!("execution {}", label(&state.status));
            }
            Ok(())
        }
        PlansCommand::Cancel(args) => {
            if args.execution {
                let execution: ExecutionRow = client
                    .query(
                        "cancelExecution",
                        "mutation($id: ID!) { cancelExecution(id: $id) { id deviceId planVersion status error } }",
                        json!({ "id": args.id }),
                    )
                    .await?;
                ctx.output.item(&execution)
            } else {
                let plan: Value = client
                    .query(
                        "cancelPlan",
                        "mutation($id: ID!) { cancelPlan(id: $id) { id executions { id status } } }",
                        json!({ "id": args.id }),
                    )
                    .await?;
                ctx.output.raw_json(&plan)
            }
        }
    }
}

/// Prints an execution's output; with `follow`, until it ends.
async fn follow(client: &mut Client, id: &str, follow: bool) -> Result<ExecutionState> {
    let mut after = 0i64;
    loop {
        let state: ExecutionState = client
            .query(
                "planExecution",
                EXECUTION,
                json!({ "id": id, "after": after }),
            )
            .await?;
        for line in &state.logs {
            after = after.max(line.seq);
            if line.stream == "stderr" {
                eprintln!("{}", line.line);
            } else {
                println!("{}", line.line);
            }
        }
        if !follow || FINAL.contains(&state.status.as_str()) {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `mobius run`: a one-operation plan, its output streamed, its exit
/// status ours.
pub async fn run_command(ctx: &Context, args: RunArgs) -> Result<i32> {
    if args.devices.is_empty() && args.sites.is_empty() && args.teams.is_empty() {
        bail!("name where to run: --device, --site or --team");
    }
    let mut client = ctx.client()?;
    let key = format!("mobius-run-{}", uuid_like());
    let input = json!({
        "idempotencyKey": key,
        "targets": { "deviceIds": args.devices, "siteIds": args.sites, "teamIds": args.teams },
        "operations": [{
            "kind": "exec",
            "params": { "argv": args.command, "timeout_secs": args.timeout },
        }],
    });
    let applied: Value = client
        .query("applyPlan", APPLY, json!({ "input": input }))
        .await?;
    let executions: Vec<ExecutionRow> =
        serde_json::from_value(applied["plan"]["executions"].clone())?;
    let mut worst = 0;
    for execution in &executions {
        if executions.len() > 1 {
            eprintln!("== device {} ==", execution.device_id);
        }
        let state = follow(&mut client, &execution.id, true).await?;
        let code = match state.status.as_str() {
            "SUCCEEDED" => 0,
            _ => state
                .results
                .iter()
                .find_map(|r| r.exit_code.filter(|c| *c != 0))
                .unwrap_or(1),
        };
        if code != 0 {
            eprintln!(
                "remote: {}{}",
                label(&state.status),
                state.error.map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
        if worst == 0 {
            worst = code;
        }
    }
    Ok(worst)
}

/// A unique-enough key for a one-off run (time and randomness from the OS).
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", std::process::id())
}
