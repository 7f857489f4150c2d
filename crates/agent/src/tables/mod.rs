//! Host tables: the agent answers SQL about its host itself, without
//! osquery, from an embedded SQLite whose tables and columns follow
//! osquery's (`processes`, `users`, `listening_ports`, ...), so the same
//! query runs against Mobius agents and osquery hosts.
//!
//! Every query gets a fresh in-memory database. All tables are created
//! empty; the query is prepared under an authorizer that records which
//! tables it reads and refuses anything but reading; only those tables are
//! then filled from `/proc`, `/sys`, `/etc` and friends; then it runs under
//! a time limit, a row cap and a byte cap. Values come back as strings
//! (NULL as `""`), as osquery's do.

mod accounts;
mod agent;
mod network;
mod packages;
mod processes;
mod read;
mod schema;
mod storage;
mod system;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mobius_api::queries::Row;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode};

pub use agent::AgentInfo;
pub use schema::{TABLES, Table};

/// How long, how many rows and how many bytes one query may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_rows: usize,
    /// Counted as the bytes of every column name and value of every row.
    pub max_bytes: usize,
}

impl Default for Limits {
    /// Generous for a real inventory query (every process, every package),
    /// small enough that one query cannot hold the agent or flood the server.
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_secs(10),
            max_rows: 10_000,
            max_bytes: 4 << 20,
        }
    }
}

/// What a query answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The result's column names, in the query's order.
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// The row or byte cap cut the answer short.
    pub truncated: bool,
    /// The tables the query read (and so were filled).
    pub tables_read: BTreeSet<String>,
}

/// Why a query did not answer, in words safe to show an admin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The authorizer refused a part of the statement.
    #[error("{0}")]
    Refused(String),
    #[error("query timed out after {0} ms")]
    TimedOut(u64),
    /// SQLite could not make sense of the SQL (a syntax error, an unknown
    /// table or column), in SQLite's own words.
    #[error("{0}")]
    Invalid(String),
}

/// The longest SQL text accepted: a query, not a program.
const MAX_SQL_BYTES: i32 = 100_000;
/// The longest single value (string or blob) a query may build, so
/// `printf('%.*c', 2000000000, 'x')` or `zeroblob(...)` cannot exhaust memory.
const MAX_VALUE_BYTES: i32 = 16 << 20;
/// How many virtual-machine steps between two looks at the clock.
const PROGRESS_STEPS: i32 = 1_000;

/// Pragmas that only describe the schema; every other one is refused,
/// because most of them change the connection's state.
const READ_ONLY_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "function_list",
    "module_list",
    "pragma_list",
    "collation_list",
    "database_list",
];

/// Functions refused even though they read: they reach outside the
/// database (`load_extension` runs native code from a file).
const REFUSED_FUNCTIONS: &[&str] = &["load_extension", "readfile", "writefile", "edit"];

/// Who is preparing a statement right now: the agent itself (creating and
/// filling tables) or the query it was sent.
#[derive(Default)]
struct Guard {
    user: bool,
    tables_read: BTreeSet<String>,
    refusal: Option<String>,
}

/// Runs one read-only query against the host tables.
pub fn run(sql: &str, limits: &Limits, agent: &AgentInfo) -> Result<Answer, QueryError> {
    if sql.trim().is_empty() {
        return Err(QueryError::Invalid("the query is empty".into()));
    }
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let timeout_ms = u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX);
    let guard = Arc::new(Mutex::new(Guard::default()));
    let conn = open(&guard).map_err(|err| internal("cannot open the host tables", &err))?;

    set_user(&guard, true);
    let prepared = conn.prepare(sql);
    set_user(&guard, false);
    let mut statement = match prepared {
        Ok(statement) => statement,
        Err(err) => {
            return Err(match lock(&guard).refusal.take() {
                Some(refusal) => QueryError::Refused(refusal),
                None => describe(&err, timeout_ms),
            });
        }
    };
    // Only comments or `;`: SQLite prepares nothing.
    if statement.expanded_sql().is_none() {
        return Err(QueryError::Invalid("the query is empty".into()));
    }
    if !statement.readonly() {
        // The authorizer should have refused it already; belt and braces.
        return Err(QueryError::Refused(
            "write statements are not allowed".into(),
        ));
    }

    let tables_read = lock(&guard).tables_read.clone();
    for name in &tables_read {
        if let Some(table) = TABLES.iter().find(|t| t.name == name) {
            fill(&conn, table, agent).map_err(|err| internal("cannot fill a table", &err))?;
        }
        if Instant::now() >= deadline {
            return Err(QueryError::TimedOut(timeout_ms));
        }
    }
    // From here on nothing may write, whatever the authorizer missed.
    conn.pragma_update(None, "query_only", true)
        .map_err(|err| internal("cannot make the tables read-only", &err))?;
    set_user(&guard, true);
    conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline))
        .map_err(|err| internal("cannot set the time limit", &err))?;

    let columns: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut answer = Answer {
        columns: columns.clone(),
        tables_read,
        ..Answer::default()
    };
    let mut bytes = 0usize;
    let mut rows = statement.raw_query();
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(err) => return Err(describe(&err, timeout_ms)),
        };
        if answer.rows.len() >= limits.max_rows {
            answer.truncated = true;
            break;
        }
        let mut record = Row::new();
        let mut size = 0usize;
        for (index, name) in columns.iter().enumerate() {
            let value = row
                .get_ref(index)
                .map(as_text)
                .map_err(|err| describe(&err, timeout_ms))?;
            size += name.len() + value.len();
            record.insert(name.clone(), value);
        }
        if bytes + size > limits.max_bytes {
            answer.truncated = true;
            break;
        }
        bytes += size;
        answer.rows.push(record);
    }
    Ok(answer)
}

/// A fresh in-memory database with every table created empty and the
/// guard installed.
fn open(guard: &Arc<Mutex<Guard>>) -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    let hook = guard.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&hook, ctx)))?;
    for table in TABLES {
        conn.execute_batch(&table.create_sql())?;
    }
    Ok(conn)
}

fn lock(guard: &Mutex<Guard>) -> std::sync::MutexGuard<'_, Guard> {
    match guard.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn set_user(guard: &Mutex<Guard>, user: bool) {
    lock(guard).user = user;
}

/// The read-only rule. The agent's own statements pass; the query's may
/// only read, and its first refused action is remembered for the error.
fn authorize(guard: &Mutex<Guard>, ctx: AuthContext<'_>) -> Authorization {
    let mut guard = lock(guard);
    if !guard.user {
        return Authorization::Allow;
    }
    let refusal = match ctx.action {
        AuthAction::Select | AuthAction::Recursive => None,
        AuthAction::Read { table_name, .. } => {
            guard.tables_read.insert(table_name.to_ascii_lowercase());
            None
        }
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            REFUSED_FUNCTIONS
                .contains(&name.as_str())
                .then(|| format!("the function {name}() is not allowed"))
        }
        AuthAction::Pragma { pragma_name, .. } => {
            let name = pragma_name.to_ascii_lowercase();
            (!READ_ONLY_PRAGMAS.contains(&name.as_str())).then(|| {
                format!("PRAGMA {name} is not allowed (only schema-describing pragmas are)")
            })
        }
        AuthAction::Attach { .. } => Some("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Some("DETACH is not allowed".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Some("transactions are not allowed (queries are read-only)".into())
        }
        AuthAction::Insert { .. }
        | AuthAction::Update { .. }
        | AuthAction::Delete { .. }
        | AuthAction::CreateIndex { .. }
        | AuthAction::CreateTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTrigger { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::CreateVtable { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropView { .. }
        | AuthAction::DropVtable { .. }
        | AuthAction::AlterTable { .. }
        | AuthAction::Reindex { .. }
        | AuthAction::Analyze { .. } => Some("write statements are not allowed".into()),
        _ => Some("this statement is not allowed (queries are read-only)".into()),
    };
    match refusal {
        None => Authorization::Allow,
        Some(reason) => {
            guard.refusal.get_or_insert(reason);
            Authorization::Deny
        }
    }
}

/// Fills one table from its source.
fn fill(conn: &Connection, table: &Table, agent: &AgentInfo) -> rusqlite::Result<()> {
    let records = (table.rows)(agent);
    if records.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    let placeholders = vec!["?"; names.len()].join(", ");
    let sql = format!(
        "INSERT INTO \"{}\" ({}) VALUES ({placeholders})",
        table.name,
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare(&sql)?;
        for record in &records {
            let values: Vec<&str> = names
                .iter()
                .map(|name| {
                    record
                        .iter()
                        .find(|(column, _)| column == name)
                        .map_or("", |(_, value)| value.as_str())
                })
                .collect();
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    tx.commit()
}

/// osquery's convention: every value a string, NULL as the empty string.
fn as_text(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
    }
}

/// SQLite's message without its internals (error codes, the "near" offset
/// stays: it helps find the typo).
fn describe(err: &rusqlite::Error, timeout_ms: u64) -> QueryError {
    match err {
        rusqlite::Error::SqliteFailure(code, message) => {
            if code.code == ErrorCode::OperationInterrupted {
                return QueryError::TimedOut(timeout_ms);
            }
            if code.code == ErrorCode::TooBig {
                return QueryError::Invalid(
                    "a value or the query is too big (values are limited to 16 MiB, queries to 100 kB)"
                        .into(),
                );
            }
            let text = message
                .clone()
                .unwrap_or_else(|| code.to_string())
                .trim_start_matches("in prepare, ")
                .to_owned();
            QueryError::Invalid(text)
        }
        rusqlite::Error::SqlInputError { msg, .. } => QueryError::Invalid(msg.clone()),
        rusqlite::Error::MultipleStatement => {
            QueryError::Invalid("only one statement per query is allowed".into())
        }
        rusqlite::Error::InvalidQuery => QueryError::Invalid("the query is empty".into()),
        other => QueryError::Invalid(other.to_string()),
    }
}

/// An agent-side failure (not the query's fault), logged with its cause.
fn internal(what: &str, err: &rusqlite::Error) -> QueryError {
    tracing::error!(error = %err, "{what}");
    QueryError::Invalid(format!("{what} on this agent"))
}

#[cfg(test)]
mod tests;
