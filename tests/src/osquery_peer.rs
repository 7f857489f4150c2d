//! An osquery TLS-plugin peer, written from osquery's documented formats
//! (`docs/wiki/deployment/remote.md` and `logging.md` in osquery/osquery):
//! what a stock `osqueryd --config_plugin=tls --logger_plugin=tls
//! --distributed_plugin=tls` sends, quirks included, so the server can be
//! tested without osquery installed.
//!
//! Each call answers the HTTP status and the JSON body; on a 401 with
//! `node_invalid: true` the peer forgets its node key, as osquery does
//! before enrolling again.

use reqwest::StatusCode;
use serde_json::{Value, json};

/// The endpoints a flags file names (`--enroll_tls_endpoint` etc.).
pub const ENROLL: &str = "/api/osquery/enroll";
pub const CONFIG: &str = "/api/osquery/config";
pub const DISTRIBUTED_READ: &str = "/api/osquery/distributed/read";
pub const DISTRIBUTED_WRITE: &str = "/api/osquery/distributed/write";
pub const LOG: &str = "/api/osquery/log";

pub struct OsqueryPeer {
    http: reqwest::Client,
    /// `https://<tls_hostname>` (or http in tests without TLS).
    base: String,
    pub host_identifier: String,
    pub node_key: Option<String>,
    counter: u64,
}

impl OsqueryPeer {
    pub fn new(base: &str, host_identifier: &str) -> OsqueryPeer {
        OsqueryPeer::with_client(reqwest::Client::new(), base, host_identifier)
    }

    /// With a client that trusts only the server's CA, as
    /// `--tls_server_certs` makes osquery do.
    pub fn with_client(http: reqwest::Client, base: &str, host_identifier: &str) -> OsqueryPeer {
        OsqueryPeer {
            http,
            base: base.trim_end_matches('/').to_owned(),
            host_identifier: host_identifier.to_owned(),
            node_key: None,
            counter: 0,
        }
    }

    async fn post(&mut self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            // osquery's TLS client identifies itself so.
            .header("user-agent", "osquery/5.12.1")
            .json(body)
            .send()
            .await
            .expect("osquery peer request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED && body["node_invalid"] == true {
            self.node_key = None;
        }
        (status, body)
    }

    /// The `host_details` osquery sends at enrollment: a few of its tables,
    /// every value a string.
    pub fn host_details(&self) -> Value {
        json!({
            "os_version": {"name": "Ubuntu", "version": "24.04.1 LTS (Noble Numbat)", "major": "24", "minor": "4", "platform": "ubuntu", "arch": "x86_64"},
            "osquery_info": {"version": "5.12.1", "build_platform": "ubuntu", "config_valid": "1"},
            "system_info": {"hostname": format!("{}.example.test", self.host_identifier), "uuid": "4C4C4544-0042-3510-8052-B4C04F4B4D32", "cpu_brand": "Intel(R) Xeon(R) CPU", "cpu_logical_cores": "8", "physical_memory": "17179869184", "cpu_type": "x86_64"},
            "platform_info": {"vendor": "Dell Inc.", "version": "2.1.0"}
        })
    }

    /// `POST enroll` with `--enroll_secret_path`'s content; keeps the key.
    pub async fn enroll(&mut self, secret: &str) -> (StatusCode, Value) {
        let body = json!({
            "enroll_secret": secret,
            "host_identifier": self.host_identifier,
            "platform_type": "9",
            "host_details": self.host_details(),
        });
        let (status, body) = self.post(ENROLL, &body).await;
        if status.is_success()
            && let Some(key) = body["node_key"].as_str()
        {
            self.node_key = Some(key.to_owned());
        }
        (status, body)
    }

    fn key(&self) -> String {
        self.node_key.clone().unwrap_or_default()
    }

    pub async fn config(&mut self) -> (StatusCode, Value) {
        let body = json!({ "node_key": self.key() });
        self.post(CONFIG, &body).await
    }

    pub async fn distributed_read(&mut self) -> (StatusCode, Value) {
        let body = json!({ "node_key": self.key() });
        self.post(DISTRIBUTED_READ, &body).await
    }

    /// `POST distributed/write` as osquery >= 3 sends it: rows per query
    /// name, numeric statuses, error messages.
    pub async fn distributed_write(
        &mut self,
        queries: Value,
        statuses: Value,
        messages: Value,
    ) -> (StatusCode, Value) {
        let body = json!({
            "node_key": self.key(),
            "queries": queries,
            "statuses": statuses,
            "messages": messages,
        });
        self.post(DISTRIBUTED_WRITE, &body).await
    }

    /// A raw write body (for the quirks: statuses as strings, `""` rows).
    pub async fn distributed_write_raw(&mut self, mut body: Value) -> (StatusCode, Value) {
        body["node_key"] = json!(self.key());
        self.post(DISTRIBUTED_WRITE, &body).await
    }

    fn envelope(&mut self, name: &str) -> Value {
        self.counter += 1;
        json!({
            "name": name,
            "hostIdentifier": self.host_identifier,
            "calendarTime": "Tue Dec  1 10:00:00 2026 UTC",
            "unixTime": 1_796_119_200u64 + self.counter,
            "epoch": 0,
            "counter": self.counter,
            "numerics": false,
            "decorations": {"host_uuid": "4C4C4544-0042-3510-8052-B4C04F4B4D32"},
        })
    }

    /// A result log in event form: one line per changed row.
    pub fn event(&mut self, name: &str, action: &str, columns: Value) -> Value {
        let mut line = self.envelope(name);
        line["columns"] = columns;
        line["action"] = json!(action);
        line
    }

    /// A result log in batched form (`--logger_event_type=false`).
    pub fn batch(&mut self, name: &str, added: Value, removed: Value) -> Value {
        let mut line = self.envelope(name);
        line["diffResults"] = json!({"added": added, "removed": removed});
        line
    }

    /// A result log in snapshot form (`"snapshot": true` queries).
    pub fn snapshot(&mut self, name: &str, rows: Value) -> Value {
        let mut line = self.envelope(name);
        line["snapshot"] = rows;
        line["action"] = json!("snapshot");
        // osquery sends `unixTime` as a string in snapshots of some versions.
        line["unixTime"] = json!(line["unixTime"].to_string());
        line
    }

    /// A status log line as glog writes it through the TLS logger
    /// (numbers as strings).
    pub fn status_line(&self, severity: u8, message: &str) -> Value {
        json!({
            "hostIdentifier": self.host_identifier,
            "calendarTime": "Tue Dec  1 10:00:00 2026 UTC",
            "unixTime": "1796119200",
            "severity": severity.to_string(),
            "filename": "tls.cpp",
            "line": "68",
            "message": message,
            "version": "5.12.1",
            "decorations": {},
        })
    }

    pub async fn log(&mut self, log_type: &str, data: Vec<Value>) -> (StatusCode, Value) {
        let body = json!({ "node_key": self.key(), "log_type": log_type, "data": data });
        self.post(LOG, &body).await
    }
}
