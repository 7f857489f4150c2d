//! `mobius config get|set`: the layered agent options (the global layer
//! and per-team overrides) as YAML files.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Context;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a layer of the agent options as YAML (JSON with `--output json`)
    #[command(after_help = "Examples:\n  mobius config get > options.yaml\n  \
                            mobius config get --team linux-servers --merged\n  \
                            mobius config get --output json | jq .merged.options")]
    Get(GetArgs),
    /// Replace a layer of the agent options with a YAML or JSON file
    #[command(after_help = "Example options.yaml:\n\
  options:\n    distributed_interval: 10\n    logger_tls_period: 10\n\
  schedule:\n    processes:\n      query: SELECT pid, name FROM processes\n      interval: 300\n\
  agent:\n    query_timeout_ms: 20000\n\n\
A team layer overrides the global one key by key; `null` removes a global key.\n\
  mobius config set -f options.yaml --team linux-servers --dry-run\n")]
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The team's override (ID or name); omitted: the global layer
    #[arg(long, value_name = "TEAM")]
    pub team: Option<String>,
    /// Print the merged view devices of the team get, not the layer
    #[arg(long)]
    pub merged: bool,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The options file, YAML or JSON (`-` reads standard input)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
    /// The team's override (ID or name); omitted: the global layer
    #[arg(long, value_name = "TEAM")]
    pub team: Option<String>,
    /// Validate and print how the merged view would change; store nothing
    #[arg(long)]
    pub dry_run: bool,
}

const FIELDS: &str = "teamId layer layerVersion merged optionsVersion updatedAt dryRun";

/// A team's ID from its ID or name.
async fn team_id(client: &mut Client, team: Option<&str>) -> Result<Option<String>> {
    let Some(team) = team else {
        return Ok(None);
    };
    let teams: Value = client
        .query(
            "teams",
            "query { teams(first: 500) { nodes { id name } } }",
            json!({}),
        )
        .await?;
    let nodes = teams["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .find(|t| t["id"] == team)
        .or_else(|| nodes.iter().find(|t| t["name"] == team))
        .and_then(|t| t["id"].as_str().map(str::to_owned))
        .map(Some)
        .with_context(|| format!("no team with the ID or name {team:?}"))
}

fn yaml(value: &Value) -> Result<String> {
    Ok(serde_norway::to_string(value)?)
}

/// Every leaf of a document by its dotted path (objects only; lists and
/// scalars are leaves).
fn flatten(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(child, &path, out);
            }
        }
        Value::Object(_) if prefix.is_empty() => {}
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// `- path: old`, `+ path: new` lines for what changes between two
/// documents; empty when nothing does.
pub fn diff(before: &Value, after: &Value) -> Vec<String> {
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten(before, "", &mut old);
    flatten(after, "", &mut new);
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut lines = Vec::new();
    for path in paths {
        match (old.get(path), new.get(path)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                if let Some(a) = a {
                    lines.push(format!("- {path}: {a}"));
                }
                if let Some(b) = b {
                    lines.push(format!("+ {path}: {b}"));
                }
            }
        }
    }
    lines
}

pub async fn run(ctx: &Context, command: ConfigCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        ConfigCommand::Get(args) => {
            let team = team_id(&mut client, args.team.as_deref()).await?;
            let options: Value = client
                .query(
                    "agentOptions",
                    &format!("query($t: ID) {{ agentOptions(teamId: $t) {{ {FIELDS} }} }}"),
                    json!({ "t": team }),
                )
                .await?;
            if ctx.output.is_json() {
                return ctx.output.raw_json(&options);
            }
            let (what, document, version) = if args.merged {
                (
                    "merged view",
                    &options["merged"],
                    &options["optionsVersion"],
                )
            } else {
                ("layer", &options["layer"], &options["layerVersion"])
            };
            let layer = if team.is_some() { "team" } else { "global" };
            print!(
                "# {layer} agent options ({what}), version {version}\n{}",
                yaml(document)?
            );
            Ok(())
        }
        ConfigCommand::Set(args) => {
            let text = if args.file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&args.file)
                    .with_context(|| format!("reading {}", args.file))?
            };
            // YAML is a superset of JSON: one parser reads both. An empty
            // file is an empty layer.
            let document: Value = if text.trim().is_empty() {
                json!({})
            } else {
                serde_norway::from_str(&text)
                    .with_context(|| format!("{} is not a YAML or JSON document", args.file))?
            };
            if !document.is_object() {
                bail!(
                    "{} must hold a mapping (options, schedule, packs, agent, ...)",
                    args.file
                );
            }
            let team = team_id(&mut client, args.team.as_deref()).await?;
            let current: Value = client
                .query(
                    "agentOptions",
                    &format!("query($t: ID) {{ agentOptions(teamId: $t) {{ {FIELDS} }} }}"),
                    json!({ "t": team }),
                )
                .await?;
            let result: Value = client
                .query(
                    "setAgentOptions",
                    &format!(
                        "mutation($t: ID, $d: JSON!, $dry: Boolean!) {{ setAgentOptions(teamId: $t, document: $d, dryRun: $dry) {{ {FIELDS} }} }}"
                    ),
                    json!({ "t": team, "d": document, "dry": args.dry_run }),
                )
                .await?;
            if ctx.output.is_json() {
                let mut answer = result.clone();
                answer["diff"] = json!(diff(&current["merged"], &result["merged"]));
                return ctx.output.raw_json(&answer);
            }
            let changes = diff(&current["merged"], &result["merged"]);
            if args.dry_run {
                println!("dry run: nothing stored; the merged view would change so:");
            } else {
                println!(
                    "agent options set: options version {} (devices get it now)",
                    result["optionsVersion"]
                );
            }
            if changes.is_empty() {
                println!("(no change to the merged view)");
            }
            for line in changes {
                println!("{line}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lists_changed_added_and_removed_paths() {
        let before = json!({"options": {"a": 1, "b": 2}, "schedule": {"q": {"query": "SELECT 1", "interval": 60}}});
        let after = json!({"options": {"a": 1, "b": 3, "c": true}});
        assert_eq!(
            diff(&before, &after),
            vec![
                "- options.b: 2",
                "+ options.b: 3",
                "+ options.c: true",
                "- schedule.q.interval: 60",
                "- schedule.q.query: \"SELECT 1\"",
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }
}
