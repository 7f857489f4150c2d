use std::time::{Duration, Instant};

use super::*;

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        max_rows: 10_000,
        max_bytes: 4 << 20,
    }
}

fn query(sql: &str) -> Result<Answer, QueryError> {
    run(sql, &limits(), &AgentInfo::default())
}

fn refused(sql: &str) -> String {
    match query(sql) {
        Err(QueryError::Refused(reason)) => reason,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn writes_are_refused() {
    for sql in [
        "INSERT INTO users (username) VALUES ('mallory')",
        "UPDATE processes SET name = 'x'",
        "DELETE FROM users",
        "CREATE TABLE t (x)",
        "CREATE TEMP TABLE t (x)",
        "CREATE VIEW v AS SELECT 1",
        "CREATE INDEX i ON users (uid)",
        "DROP TABLE users",
        "ALTER TABLE users ADD COLUMN x",
        "REPLACE INTO groups (gid) VALUES (1)",
        "CREATE TRIGGER t AFTER INSERT ON users BEGIN SELECT 1; END",
    ] {
        assert_eq!(refused(sql), "write statements are not allowed", "{sql}");
    }
}

#[test]
fn a_write_hidden_after_a_read_is_refused() {
    assert_eq!(
        refused("SELECT 1; DROP TABLE users"),
        "write statements are not allowed"
    );
    assert_eq!(
        query("SELECT 1; SELECT 2"),
        Err(QueryError::Invalid(
            "only one statement per query is allowed".into()
        ))
    );
}

#[test]
fn attach_detach_pragmas_and_extensions_are_refused() {
    assert_eq!(
        refused("ATTACH DATABASE '/tmp/x.db' AS x"),
        "ATTACH is not allowed"
    );
    assert_eq!(refused("DETACH DATABASE main"), "DETACH is not allowed");
    assert!(
        refused("PRAGMA writable_schema = 1").starts_with("PRAGMA writable_schema is not allowed")
    );
    assert!(refused("PRAGMA query_only = 0").starts_with("PRAGMA query_only is not allowed"));
    assert_eq!(
        refused("SELECT load_extension('/tmp/evil.so')"),
        "the function load_extension() is not allowed"
    );
    assert!(refused("BEGIN").starts_with("transactions are not allowed"));
    assert!(refused("VACUUM").contains("not allowed"));
    // Describing the schema stays possible.
    let columns = query("PRAGMA table_info(processes)").unwrap();
    assert!(columns.rows.iter().any(|row| row["name"] == "cmdline"));
}

#[test]
fn only_the_tables_a_query_names_are_filled() {
    let answer = query("SELECT hostname FROM system_info").unwrap();
    assert_eq!(
        answer.tables_read,
        BTreeSet::from(["system_info".to_owned()])
    );
    assert_eq!(answer.rows.len(), 1);

    let answer =
        query("SELECT count(*) AS n FROM processes WHERE pid IN (SELECT uid FROM users)").unwrap();
    assert_eq!(
        answer.tables_read,
        BTreeSet::from(["processes".to_owned(), "users".to_owned()])
    );
    // count(*) reads no column but still names the table.
    let answer = query("SELECT count(*) AS n FROM processes").unwrap();
    assert_eq!(answer.tables_read, BTreeSet::from(["processes".to_owned()]));
    assert!(answer.rows[0]["n"].parse::<u64>().unwrap() > 0);

    let answer = query("SELECT 1 AS one").unwrap();
    assert!(answer.tables_read.is_empty());
}

#[test]
fn values_are_strings_and_null_is_empty() {
    let answer = query("SELECT 1 AS i, 1.5 AS r, NULL AS n, 'x' AS t").unwrap();
    assert_eq!(answer.columns, ["i", "r", "n", "t"]);
    let row = &answer.rows[0];
    assert_eq!(
        (&*row["i"], &*row["r"], &*row["n"], &*row["t"]),
        ("1", "1.5", "", "x")
    );
}

#[test]
fn the_row_cap_and_the_byte_cap_truncate() {
    let counting =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT x FROM c";
    let capped = Limits {
        max_rows: 10,
        ..limits()
    };
    let answer = run(counting, &capped, &AgentInfo::default()).unwrap();
    assert_eq!(answer.rows.len(), 10);
    assert!(answer.truncated);

    // Each row is "x" + up to 3 digits: 100 bytes hold about 40 of them.
    let small = Limits {
        max_bytes: 100,
        ..limits()
    };
    let answer = run(counting, &small, &AgentInfo::default()).unwrap();
    assert!(answer.truncated);
    assert!(
        (30..50).contains(&answer.rows.len()),
        "{}",
        answer.rows.len()
    );

    // Exactly at the cap is not truncated.
    let exact = Limits {
        max_rows: 100,
        ..limits()
    };
    assert!(
        !run(counting, &exact, &AgentInfo::default())
            .unwrap()
            .truncated
    );
}

#[test]
fn a_runaway_query_times_out() {
    let short = Limits {
        timeout: Duration::from_millis(300),
        ..limits()
    };
    let started = Instant::now();
    let err = run(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        &short,
        &AgentInfo::default(),
    )
    .unwrap_err();
    assert_eq!(err, QueryError::TimedOut(300));
    assert_eq!(err.to_string(), "query timed out after 300 ms");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_huge_value_is_refused_not_built() {
    let err = query("SELECT length(randomblob(100000000)) AS big").unwrap_err();
    assert!(err.to_string().contains("too big"), "{err}");
}

#[test]
fn syntax_errors_read_as_sqlite_says_them() {
    let err = query("SELEC * FROM processes").unwrap_err();
    assert_eq!(err.to_string(), "near \"SELEC\": syntax error");
    let err = query("SELECT * FROM no_such_table").unwrap_err();
    assert_eq!(err.to_string(), "no such table: no_such_table");
    let err = query("SELECT nope FROM uptime").unwrap_err();
    assert_eq!(err.to_string(), "no such column: nope");
    assert_eq!(query("  ").unwrap_err().to_string(), "the query is empty");
}

#[test]
fn every_table_answers() {
    for table in TABLES {
        let answer = query(&format!("SELECT * FROM {}", table.name))
            .unwrap_or_else(|err| panic!("{}: {err}", table.name));
        assert_eq!(answer.columns.len(), table.columns.len(), "{}", table.name);
    }
    let me = query(&format!(
        "SELECT name, pid, parent FROM processes WHERE pid = {}",
        std::process::id()
    ))
    .unwrap();
    assert_eq!(me.rows.len(), 1);
    let root = query("SELECT username, directory FROM users WHERE uid = 0").unwrap();
    assert_eq!(root.rows[0]["username"], "root");
    let agent = query("SELECT version, pid FROM mobius_agent").unwrap();
    assert_eq!(agent.rows[0]["version"], env!("CARGO_PKG_VERSION"));
    let os = query("SELECT name, platform, arch FROM os_version").unwrap();
    assert_eq!(os.rows[0]["arch"], std::env::consts::ARCH);
}

#[test]
fn integer_columns_compare_as_numbers() {
    // One read of the table, so processes coming and going cannot differ.
    let answer = query(
        "SELECT count(*) AS n, sum(typeof(pid) = 'integer' AND pid > 0) AS numeric FROM processes",
    )
    .unwrap();
    assert_eq!(answer.rows[0]["n"], answer.rows[0]["numeric"]);
}

#[test]
fn vacuum_into_writes_no_file() {
    let target = std::env::temp_dir().join(format!("mobius-vacuum-{}.db", std::process::id()));
    let sql = format!("VACUUM INTO '{}'", target.display());
    let err = query(&sql).unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    assert!(!target.exists(), "VACUUM INTO wrote {}", target.display());
}

#[test]
fn schema_introspection_reads() {
    let tables =
        query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
    assert_eq!(tables.rows.len(), TABLES.len());
    let columns = query("SELECT name FROM pragma_table_info('users')").unwrap();
    assert!(columns.rows.iter().any(|row| row["name"] == "shell"));
    // Reading the schema fills no host table.
    assert!(tables.tables_read.iter().all(|t| t.starts_with("sqlite_")));
}
