//! Device management end to end, with the real `mobius-server` and
//! `mobius-agent` binaries on Postgres: host tables and live queries,
//! policies, layered agent options, the osquery TLS API and software.
//! One test binary with a module per area, so the server is linked once.

#[path = "management/agent_tables.rs"]
mod agent_tables;
#[path = "management/software.rs"]
mod software;
