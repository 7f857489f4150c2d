//! How results are printed. Results go to stdout and nothing else does, so
//! `--output json` can be piped into jq; notices go to stderr.

use std::io::{self, Write};

use anyhow::Result;
use comfy_table::{Table, presets};
use serde::Serialize;
use serde_json::Value;

use crate::cli::OutputFormat;

/// A result that can be shown as a table row.
pub trait Tabular: Serialize {
    /// Column headings, in the order [`Tabular::cells`] returns the values.
    fn columns() -> &'static [&'static str];

    /// The row's values: IDs in full, times as the server's RFC 3339,
    /// `-` for nothing.
    fn cells(&self) -> Vec<String>;
}

/// Prints results in the format the user chose.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    format: OutputFormat,
}

impl Output {
    pub fn new(format: OutputFormat) -> Self {
        Output { format }
    }

    /// Whether results are printed as JSON (`--output json`).
    pub fn is_json(&self) -> bool {
        matches!(self.format, OutputFormat::Json)
    }

    /// A list: a table with one row each, or a JSON array of the nodes.
    pub fn list<T: Tabular>(&self, rows: &[T]) -> Result<()> {
        write_stdout(&render_list(self.format, rows)?)
    }

    /// One object: a two-column field/value table, or a JSON object.
    pub fn item<T: Tabular>(&self, item: &T) -> Result<()> {
        write_stdout(&render_item(self.format, item)?)
    }

    /// A result that is only a confirmation, such as a deletion: `text` for
    /// people, `json` for scripts.
    pub fn confirmation(&self, text: &str, json: &impl Serialize) -> Result<()> {
        match self.format {
            OutputFormat::Table => write_stdout(text),
            OutputFormat::Json => write_stdout(&serde_json::to_string_pretty(json)?),
        }
    }

    /// Any JSON value, pretty-printed whatever the format (for `mobius graphql`).
    pub fn raw_json(&self, value: &Value) -> Result<()> {
        write_stdout(&serde_json::to_string_pretty(value)?)
    }
}

/// Something the user should know that is not the result itself.
pub fn notice(text: &str) {
    eprintln!("{text}");
}

pub fn render_list<T: Tabular>(format: OutputFormat, rows: &[T]) -> Result<String> {
    match format {
        OutputFormat::Json => Ok(serde_json::to_string_pretty(rows)?),
        OutputFormat::Table => {
            let mut table = plain_table();
            table.set_header(T::columns().to_vec());
            for row in rows {
                table.add_row(row.cells());
            }
            Ok(finish(table))
        }
    }
}

pub fn render_item<T: Tabular>(format: OutputFormat, item: &T) -> Result<String> {
    match format {
        OutputFormat::Json => Ok(serde_json::to_string_pretty(item)?),
        OutputFormat::Table => {
            let mut table = plain_table();
            for (column, value) in T::columns().iter().zip(item.cells()) {
                table.add_row(vec![column.to_ascii_lowercase(), value]);
            }
            Ok(finish(table))
        }
    }
}

/// A GraphQL enum value as people type it on the command line:
/// `NEVER_SEEN` becomes `never-seen`, `OWNER` becomes `owner`.
pub fn label(value: &str) -> String {
    value.to_ascii_lowercase().replace('_', "-")
}

/// An optional value for a table cell.
pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// Borderless columns in the style of `kubectl get`: easy to read, and easy
/// to cut with `awk` since empty cells are `-`. No wrapping, so IDs stay on
/// one line whatever the terminal width.
fn plain_table() -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table
}

fn finish(mut table: Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table.trim_fmt()
}

/// Writes one result to stdout. A closed pipe (`mobius ... | head`) comes
/// back as an `io::Error` for `main` to treat as a quiet exit, not a panic
/// as `println!` would.
fn write_stdout(text: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Fruit {
        id: String,
        display_name: String,
        ripe_at: Option<String>,
    }

    impl Tabular for Fruit {
        fn columns() -> &'static [&'static str] {
            &["ID", "NAME", "RIPE AT"]
        }

        fn cells(&self) -> Vec<String> {
            vec![
                self.id.clone(),
                self.display_name.clone(),
                or_dash(self.ripe_at.as_deref()),
            ]
        }
    }

    fn fruits() -> Vec<Fruit> {
        vec![
            Fruit {
                id: "0190a1b2-0000-7000-8000-000000000001".to_owned(),
                display_name: "apple".to_owned(),
                ripe_at: Some("2026-05-01T12:00:00Z".to_owned()),
            },
            Fruit {
                id: "0190a1b2-0000-7000-8000-000000000002".to_owned(),
                display_name: "banana split".to_owned(),
                ripe_at: None,
            },
        ]
    }

    #[test]
    fn a_list_renders_as_aligned_columns() {
        let text = render_list(OutputFormat::Table, &fruits()).expect("render");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ID                                     NAME           RIPE AT",
                "0190a1b2-0000-7000-8000-000000000001   apple          2026-05-01T12:00:00Z",
                "0190a1b2-0000-7000-8000-000000000002   banana split   -",
            ]
        );
    }

    #[test]
    fn an_empty_list_still_has_its_header() {
        let text = render_list::<Fruit>(OutputFormat::Table, &[]).expect("render");
        assert_eq!(text, "ID   NAME   RIPE AT");
        let json = render_list::<Fruit>(OutputFormat::Json, &[]).expect("render");
        assert_eq!(json, "[]");
    }

    #[test]
    fn a_list_renders_as_a_json_array_of_the_nodes() {
        let text = render_list(OutputFormat::Json, &fruits()).expect("render");
        let json: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!([
                {"id": "0190a1b2-0000-7000-8000-000000000001", "displayName": "apple", "ripeAt": "2026-05-01T12:00:00Z"},
                {"id": "0190a1b2-0000-7000-8000-000000000002", "displayName": "banana split", "ripeAt": null},
            ])
        );
    }

    #[test]
    fn an_item_renders_as_fields_or_an_object() {
        let fruit = &fruits()[1];
        let text = render_item(OutputFormat::Table, fruit).expect("render");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "id        0190a1b2-0000-7000-8000-000000000002",
                "name      banana split",
                "ripe at   -",
            ]
        );
        let json: Value =
            serde_json::from_str(&render_item(OutputFormat::Json, fruit).expect("render"))
                .expect("JSON");
        assert_eq!(json["displayName"], "banana split");
    }

    #[test]
    fn enum_values_read_like_the_flags() {
        assert_eq!(label("NEVER_SEEN"), "never-seen");
        assert_eq!(label("OWNER"), "owner");
    }
}
