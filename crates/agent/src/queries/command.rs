//! `mobius-agent query "SELECT ..."`: one query against this host's
//! tables, locally, with the limits a pushed query gets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::cli::DEFAULT_STATE_DIR;
use crate::output;
use crate::state::StateDir;
use crate::tables::{self, AgentInfo, Limits, TABLES};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One read-only SQL statement (SQLite dialect), e.g.
    /// "SELECT name, pid FROM processes WHERE uid = 0".
    #[arg(value_name = "SQL", required_unless_present = "tables")]
    pub sql: Option<String>,

    /// `table` aligns columns for reading; `json` prints an array of rows,
    /// every value a string, as `osqueryi --json` does.
    #[arg(long, value_enum, default_value_t = QueryOutput::Table)]
    pub output: QueryOutput,

    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,

    /// Stop after this many rows (the answer is then marked truncated).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows: u64,

    /// List the tables and their columns instead of running a query.
    #[arg(long, conflicts_with = "sql")]
    pub tables: bool,

    /// The agent's state directory, read for the `mobius_agent` table
    /// (missing is fine: its columns are then empty).
    #[arg(long, env = "MOBIUS_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR,
          value_name = "DIR")]
    pub state_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryOutput {
    Table,
    Json,
}

pub fn query(args: QueryArgs) -> Result<()> {
    let Some(sql) = args.sql.as_deref() else {
        return output::print(&tables_listing()).map_err(Into::into);
    };
    let limits = Limits {
        timeout: Duration::from_millis(args.timeout_ms),
        max_rows: usize::try_from(args.max_rows).unwrap_or(usize::MAX),
        max_bytes: crate::queries::options::default_limits().max_bytes * 16,
    };
    let info = AgentInfo::load(&StateDir::new(&args.state_dir));
    let started = Instant::now();
    let answer = tables::run(sql, &limits, &info)?;
    match args.output {
        QueryOutput::Json => output::print(&serde_json::to_string_pretty(&answer.rows)?)?,
        QueryOutput::Table => output::print(&render_table(&answer.columns, &answer.rows))?,
    }
    if answer.truncated {
        eprintln!(
            "mobius-agent: the answer was cut at {} rows (--max-rows, or the 16 MiB cap)",
            answer.rows.len()
        );
    }
    tracing::debug!(
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "query done"
    );
    Ok(())
}

/// The rows under a header, columns in the query's order.
fn render_table(columns: &[String], rows: &[mobius_api::queries::Row]) -> String {
    let cell = |row: &mobius_api::queries::Row, column: &str| {
        row.get(column)
            .map(|v| v.replace(['\n', '\t'], " "))
            .unwrap_or_default()
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|column| {
            rows.iter()
                .map(|row| cell(row, column).chars().count())
                .chain([column.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| -> String {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(columns.to_vec());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(columns.iter().map(|c| cell(row, c)).collect()));
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

fn tables_listing() -> String {
    TABLES
        .iter()
        .map(|table| {
            let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
            format!(
                "{}\n  columns: {}\n  source:  {}\n",
                table.name,
                columns.join(", "),
                table.source
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_output_aligns_columns_in_query_order() {
        let mut row = mobius_api::queries::Row::new();
        row.insert("pid".into(), "1".into());
        row.insert("name".into(), "init".into());
        let text = render_table(&["pid".into(), "name".into()], &[row]);
        assert_eq!(text, "pid  name\n---  ----\n1    init\n(1 row)\n");
    }
}
