//! `mobius query run`: a live query, its rows printed per device as they
//! arrive and a per-device status summary at the end.
//!
//! Answers are followed by polling `liveQuery` four times a second (as
//! `plans logs --follow` does); the subscription `liveQueryResults` pushes
//! the same rows to clients that hold a WebSocket.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Context;
use crate::output::{Tabular, label, or_dash};

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Run read-only SQL on devices now and print their rows as they come
    #[command(after_help = "Examples:\n  \
  mobius query run --sql 'SELECT hostname, cpu_brand FROM system_info' --site U2l0ZTo...\n  \
  mobius query run --sql 'SELECT name FROM processes' --device RGV2aWNlOi... --timeout 30s --output json")]
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The SQL (osquery's table names)
    #[arg(long)]
    pub sql: String,
    /// Ask this device (repeatable)
    #[arg(long = "device", value_name = "ID")]
    pub devices: Vec<String>,
    /// Ask every device of this site (repeatable)
    #[arg(long = "site", value_name = "ID")]
    pub sites: Vec<String>,
    /// Ask every device of this team (repeatable)
    #[arg(long = "team", value_name = "ID")]
    pub teams: Vec<String>,
    /// Stop waiting for answers after this long (`90`, `90s`, `2m`)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: u64,
}

/// Seconds from `60`, `60s` or `2m`.
fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 60s or 2m"))?;
    match unit {
        "s" => Ok(value),
        "m" => Ok(value * 60),
        _ => Err(format!("`{text}` is not a duration like 60s or 2m")),
    }
}

const RUN: &str = "mutation Run($input: RunLiveQueryInput!) {
  runLiveQuery(input: $input) { id status }
}";

const STATE: &str = "query LiveQuery($id: ID!) {
  liveQuery(id: $id) {
    id status
    results { deviceId hostname status error rows rowCount truncated }
  }
}";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Campaign {
    id: String,
    status: String,
    #[serde(default)]
    results: Vec<DeviceResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceResult {
    device_id: String,
    hostname: String,
    status: String,
    error: Option<String>,
    #[serde(default, skip_serializing)]
    rows: Value,
    row_count: i64,
    truncated: bool,
}

impl Tabular for DeviceResult {
    fn columns() -> &'static [&'static str] {
        &["DEVICE", "HOSTNAME", "STATUS", "ROWS", "ERROR"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.device_id.clone(),
            self.hostname.clone(),
            label(&self.status),
            self.row_count.to_string(),
            or_dash(self.error.as_deref()),
        ]
    }
}

pub async fn run(ctx: &Context, command: QueryCommand) -> Result<()> {
    match command {
        QueryCommand::Run(args) => run_live(ctx, args).await,
    }
}

async fn run_live(ctx: &Context, args: RunArgs) -> Result<()> {
    if args.devices.is_empty() && args.sites.is_empty() && args.teams.is_empty() {
        bail!("name where to ask: --device, --site or --team");
    }
    let json_output = ctx.output.is_json();
    let mut client = ctx.client()?;
    let started: Campaign = client
        .query(
            "runLiveQuery",
            RUN,
            json!({ "input": {
                "sql": args.sql,
                "targets": { "deviceIds": args.devices, "siteIds": args.sites, "teamIds": args.teams },
                "timeoutSecs": args.timeout,
            }}),
        )
        .await?;
    if !json_output {
        eprintln!("live query {} ({})", started.id, label(&started.status));
    }
    let mut printed: HashSet<String> = HashSet::new();
    loop {
        let state: Campaign = client
            .query("liveQuery", STATE, json!({ "id": started.id }))
            .await?;
        for result in &state.results {
            if matches!(result.status.as_str(), "PENDING") || printed.contains(&result.device_id) {
                continue;
            }
            printed.insert(result.device_id.clone());
            print_result(result, json_output);
        }
        if state.status != "RUNNING" {
            if json_output {
                let summary = json!({
                    "liveQuery": state.id,
                    "status": state.status,
                    "devices": state.results,
                });
                println!("{summary}");
            } else {
                eprintln!("live query {}", label(&state.status));
                ctx.output.list(&state.results)?;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One device's answer: a line of JSON per row (`--output json`), or a
/// `hostname | col=value ...` line per row.
fn print_result(result: &DeviceResult, json_output: bool) {
    let rows: Vec<BTreeMap<String, String>> =
        serde_json::from_value(result.rows.clone()).unwrap_or_default();
    if json_output {
        for row in &rows {
            println!(
                "{}",
                json!({ "deviceId": result.device_id, "hostname": result.hostname, "row": row })
            );
        }
        return;
    }
    match result.status.as_str() {
        "ANSWERED" => {
            for row in &rows {
                let cells: Vec<String> = row.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{} | {}", result.hostname, cells.join(" "));
            }
            if rows.is_empty() {
                eprintln!("{}: no rows", result.hostname);
            }
        }
        status => eprintln!(
            "{}: {}{}",
            result.hostname,
            label(status),
            result
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
}
