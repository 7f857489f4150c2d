//! Device management end to end, with the real `mobius-server` and
//! `mobius-agent` binaries on Postgres: host tables and live queries,
//! policies, layered agent options, the osquery TLS API, software and the
//! self-service portal.
//! One test binary with a module per area, so the server is linked once.

#[path = "management/agent_options.rs"]
mod agent_options;
#[path = "management/agent_tables.rs"]
mod agent_tables;
#[path = "management/osquery.rs"]
mod osquery;
#[path = "management/policies.rs"]
mod policies;
#[path = "management/portal.rs"]
mod portal;
#[path = "management/queries.rs"]
mod queries;
#[path = "management/software.rs"]
mod software;
