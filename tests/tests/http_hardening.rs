//! HTTP hardening of the admin listener, seen from outside the real
//! `mobius-server` binary: security headers, CORS, the body limit, coded
//! GraphQL errors, TLS, and graceful shutdown with a request in flight.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mobius_tests::{ServerProcess, eventually, workspace_binary};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("an ASCII header value"))
}

fn assert_security_headers(response: &reqwest::Response) {
    let url = response.url().clone();
    assert_eq!(
        header(response, "x-content-type-options"),
        Some("nosniff"),
        "{url}"
    );
    assert_eq!(header(response, "x-frame-options"), Some("DENY"), "{url}");
    assert_eq!(
        header(response, "referrer-policy"),
        Some("no-referrer"),
        "{url}"
    );
    let csp = header(response, "content-security-policy")
        .unwrap_or_else(|| panic!("{url}: no Content-Security-Policy"));
    assert!(csp.contains("frame-ancestors 'none'"), "{url}: {csp}");
}

async fn post_graphql(http: &reqwest::Client, server: &ServerProcess, query: &str) -> Value {
    let response = http
        .post(server.url("/api/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("POST /api/graphql");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a GraphQL answer")
}

fn first_error_code(answer: &Value) -> &str {
    answer["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error with extensions.code: {answer}"))
}

/// Starts `mobius-server serve` with settings it should refuse, and returns
/// its exit code and stderr. A server that starts serving instead is
/// stopped after 10 s and reported with exit code `None`.
fn refused_start(dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(workspace_binary("mobius-server"))
        .current_dir(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mobius-server");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for mobius-server") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, reader.join().expect("stderr reader"))
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_no_hsts_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();

    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_security_headers(&health);
    assert_eq!(header(&health, "strict-transport-security"), None);

    let graphiql = http
        .get(server.url("/api/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(graphiql.status(), 200);
    assert_security_headers(&graphiql);
    assert_eq!(header(&graphiql, "strict-transport-security"), None);
    assert!(
        header(&graphiql, "content-type").is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        graphiql.headers()
    );
    let page = graphiql.text().await.unwrap();
    assert!(page.to_lowercase().contains("graphiql"), "{page}");

    // Errors too: a browser must not sniff or frame them either.
    let missing = http.get(server.url("/no/such/page")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_security_headers(&missing);
}

/// A browser's preflight for a cross-origin POST with a bearer token.
async fn preflight(
    http: &reqwest::Client,
    server: &ServerProcess,
    origin: &str,
) -> reqwest::Response {
    http.request(Method::OPTIONS, server.url("/api/graphql"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("OPTIONS /api/graphql")
}

#[tokio::test]
async fn cross_origin_calls_are_allowed_only_from_configured_origins() {
    let http = reqwest::Client::new();

    let dir = tempfile::tempdir().unwrap();
    let closed = ServerProcess::start(dir.path(), &[], &[]);
    let refused = preflight(&http, &closed, "https://evil.example").await;
    assert_eq!(
        header(&refused, "access-control-allow-origin"),
        None,
        "no origin is allowed by default"
    );
    drop(closed);

    let dir = tempfile::tempdir().unwrap();
    let open = ServerProcess::start(
        dir.path(),
        &[],
        &[(
            "MOBIUS_CORS_ALLOWED_ORIGINS",
            r#"["https://admin.example.com"]"#,
        )],
    );
    let allowed = preflight(&http, &open, "https://admin.example.com").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some("https://admin.example.com")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-credentials"),
        Some("true")
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&allowed, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");

    let other = preflight(&http, &open, "https://evil.example").await;
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    // The actual call: only the allowed origin may read the answer.
    for (origin, expected) in [
        (
            "https://admin.example.com",
            Some("https://admin.example.com"),
        ),
        ("https://evil.example", None),
    ] {
        let response = http
            .post(open.url("/api/graphql"))
            .header("origin", origin)
            .json(&json!({ "query": "{ __typename }" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            expected,
            "{origin}"
        );
    }
}

#[test]
fn an_origin_that_is_not_a_url_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused_start(
        dir.path(),
        &[("MOBIUS_CORS_ALLOWED_ORIGINS", r#"["not a url"]"#)],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cors_allowed_origins"), "{stderr}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[],
        &[("MOBIUS_REQUEST_BODY_LIMIT_BYTES", "1024")],
    );
    let http = reqwest::Client::new();

    let small = post_graphql(&http, &server, "{ __typename }").await;
    assert_eq!(small, json!({ "data": { "__typename": "Query" } }));

    // 4 KiB of valid JSON: only its size is wrong.
    let padded = format!("{{\"query\": \"{{ __typename }}\"{}}}", " ".repeat(4096));
    let large = http
        .post(server.url("/api/graphql"))
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 413);
}

#[tokio::test]
async fn graphql_errors_carry_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();

    let syntax = post_graphql(&http, &server, "{ viewer { kind ").await;
    assert_eq!(first_error_code(&syntax), "BAD_USER_INPUT", "{syntax}");

    let anonymous = post_graphql(&http, &server, "{ viewer { kind role } }").await;
    assert_eq!(
        first_error_code(&anonymous),
        "UNAUTHENTICATED",
        "{anonymous}"
    );
    assert!(anonymous["data"].is_null(), "{anonymous}");

    // Depth 15 is allowed (GraphiQL's introspection query needs it); 16
    // is refused.
    let nested = |depth: usize| {
        // `__schema`, `types`, `fields`, `type` and `name` are 5 levels.
        let wrappers = depth - 5;
        format!(
            "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
            "ofType { ".repeat(wrappers),
            "} ".repeat(wrappers)
        )
    };
    let deepest_allowed = post_graphql(&http, &server, &nested(15)).await;
    assert!(deepest_allowed.get("errors").is_none(), "{deepest_allowed}");
    assert!(deepest_allowed["data"]["__schema"]["types"].is_array());
    let too_deep = post_graphql(&http, &server, &nested(16)).await;
    assert!(!first_error_code(&too_deep).is_empty(), "{too_deep}");
    assert!(too_deep["data"].is_null(), "{too_deep}");
}

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost.
struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, key)
}

fn test_pki() -> TestPki {
    let (ca_params, ca_key) = ca("Mobius test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("sign the server certificate");
    TestPki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// `mobius-server serve` started by hand, for the "admin API listening"
/// event's fields that [`ServerProcess`] does not keep (the URL); killed
/// on drop.
struct LoggedServer {
    child: Child,
    listening: Value,
}

impl LoggedServer {
    fn start(dir: &Path, env: &[(&str, &str)]) -> LoggedServer {
        let mut child = Command::new(workspace_binary("mobius-server"))
            .current_dir(dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--device-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mobius-server");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let listening = loop {
            let line = lines
                .next()
                .expect("mobius-server exited before listening")
                .expect("read mobius-server output");
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "admin API listening"
            {
                break event;
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        LoggedServer { child, listening }
    }

    fn port(&self) -> u16 {
        let address: std::net::SocketAddr = self.listening["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address: {}", self.listening));
        address.port()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_trusting(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("HTTPS client")
}

#[tokio::test]
async fn tls_serves_https_with_hsts_to_clients_that_trust_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki();
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, &pki.server_cert_pem).unwrap();
    std::fs::write(&key_file, &pki.server_key_pem).unwrap();
    let server = LoggedServer::start(
        dir.path(),
        &[
            ("MOBIUS_TLS_CERT_FILE", cert_file.to_str().unwrap()),
            ("MOBIUS_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ],
    );
    let port = server.port();
    assert_eq!(
        server.listening["url"],
        format!("https://127.0.0.1:{port}"),
        "{}",
        server.listening
    );

    let health = client_trusting(&pki.ca_pem)
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("HTTPS to a server whose CA the client trusts");
    assert_eq!(health.status(), 200);
    assert_security_headers(&health);
    let hsts = header(&health, "strict-transport-security").expect("HSTS over TLS");
    assert!(hsts.starts_with("max-age="), "{hsts}");

    let (other_ca_params, other_ca_key) = ca("Some other CA");
    let other_ca = other_ca_params.self_signed(&other_ca_key).unwrap();
    let untrusted = client_trusting(&other_ca.pem())
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    let err = untrusted.expect_err("a client that does not trust the CA is refused");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP to the TLS port gets no answer: {plain:?}"
    );
}

#[test]
fn a_tls_certificate_without_its_key_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki();
    let cert_file = dir.path().join("server.crt");
    std::fs::write(&cert_file, &pki.server_cert_pem).unwrap();
    let (code, stderr) = refused_start(
        dir.path(),
        &[("MOBIUS_TLS_CERT_FILE", cert_file.to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("tls_cert_file") && stderr.contains("tls_key_file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let addr = server.addr;

    // A slow upload: headers and half the body now, the rest after SIGTERM.
    let body = format!("{{\"query\": \"{{ __typename }}\"{}}}", " ".repeat(2000));
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut upload = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(first).await.unwrap();
    upload.flush().await.unwrap();
    // Time for the server to read the headers: a connection whose request
    // has not started yet is simply closed on shutdown.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopping = tokio::task::spawn_blocking(move || server.terminate());
    // The listener closes once shutdown has begun: new connections are
    // refused while the upload is still open.
    assert!(
        eventually(Duration::from_secs(5), async || TcpStream::connect(addr)
            .await
            .is_err())
        .await,
        "the server stops accepting connections after SIGTERM"
    );
    assert!(!stopping.is_finished(), "the server waits for the upload");

    upload.write_all(rest).await.unwrap();
    upload.flush().await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), upload.read_to_end(&mut response))
        .await
        .expect("the response arrives and the connection closes")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(r#"{"data":{"__typename":"Query"}}"#),
        "{response}"
    );

    assert_eq!(stopping.await.unwrap(), Some(0));
}

/// Asserts an error answer in the REST and device shape: JSON, a stable
/// code, and none of the library's internal wording.
async fn assert_json_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        header(&response, "content-type"),
        Some("application/json"),
        "status {status}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// Asserts an error answer in GraphQL's shape.
async fn assert_graphql_error(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual, status, "{body}");
    assert_eq!(first_error_code(&body), "BAD_USER_INPUT", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    for internal in ["InvalidRequest", "BatchRequest", "serde", "invalid type"] {
        assert!(!message.contains(internal), "{body}");
    }
    body
}

/// An HTTPS client for the device listener of a server started in `dir`,
/// trusting its generated CA, presenting no client certificate.
fn device_client(dir: &Path) -> reqwest::Client {
    let ca = std::fs::read(dir.join("mobius-data/device-ca.pem")).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn malformed_requests_get_json_errors_with_codes_on_both_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[],
        &[("MOBIUS_REQUEST_BODY_LIMIT_BYTES", "1024")],
    );
    let http = reqwest::Client::new();
    let graphql = server.url("/api/graphql");

    // Bodies that are JSON but not GraphQL requests.
    for body in [
        r#"{"query": 5}"#,
        "[1,2]",
        "not json",
        r#"{"query": "{ __typename }", "variables": 3}"#,
    ] {
        let answer = http
            .post(&graphql)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_graphql_error(answer, 400).await;
    }
    // Too large: announced with content-length, and streamed without one.
    let padded = format!("{{\"query\": \"{{ __typename }}\"{}}}", " ".repeat(4096));
    let large = http
        .post(&graphql)
        .header("content-type", "application/json")
        .body(padded.clone())
        .send()
        .await
        .unwrap();
    let body = assert_graphql_error(large, 413).await;
    assert_eq!(
        body["errors"][0]["message"],
        "request body larger than 1024 bytes"
    );
    // Chunked, so only reading the body finds it too large.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let chunked = format!(
        "POST /api/graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{padded}\r\n0\r\n\r\n",
        padded.len()
    );
    tcp.write_all(chunked.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains(r#""code":"BAD_USER_INPUT""#), "{raw}");
    assert!(raw.contains(r#""errors""#), "{raw}");
    let wrong_method = http.put(&graphql).send().await.unwrap();
    assert!(header(&wrong_method, "allow").is_some());
    assert_graphql_error(wrong_method, 405).await;

    // REST paths on the admin listener.
    let wrong_method = http.post(server.url("/healthz")).send().await.unwrap();
    assert_json_error(wrong_method, 405, "BAD_USER_INPUT").await;
    let long_uri = http
        .get(server.url(&format!("/healthz?{}", "a".repeat(10_000))))
        .send()
        .await
        .unwrap();
    assert_json_error(long_uri, 414, "BAD_USER_INPUT").await;
    let mut large = http.get(server.url("/healthz"));
    for i in 0..40 {
        large = large.header(format!("x-filler-{i}"), "x".repeat(1024));
    }
    assert_json_error(large.send().await.unwrap(), 431, "BAD_USER_INPUT").await;

    // The device listener, without a client certificate.
    let device = device_client(dir.path());
    let base = format!("https://{}", server.device_addr);
    let ping = format!("{base}{}", mobius_api::device::PING_PATH);
    let enroll = format!("{base}{}", mobius_api::device::ENROLL_PATH);
    assert_json_error(
        device.get(&ping).send().await.unwrap(),
        405,
        "BAD_USER_INPUT",
    )
    .await;
    let not_json = device
        .post(&enroll)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_json_error(not_json, 400, "BAD_USER_INPUT").await;
    let long_uri = device
        .post(format!("{enroll}?{}", "a".repeat(10_000)))
        .send()
        .await
        .unwrap();
    assert_json_error(long_uri, 414, "BAD_USER_INPUT").await;
    let mut many = device.post(&enroll);
    for i in 0..150 {
        many = many.header(format!("x-filler-{i}"), "x");
    }
    assert_json_error(many.send().await.unwrap(), 431, "BAD_USER_INPUT").await;
    let big = device
        .post(&enroll)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    let body = assert_json_error(big, 413, "BAD_USER_INPUT").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );
}

#[tokio::test]
async fn a_fragment_bomb_is_refused_before_validation_expands_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();
    // 25 fragments, each spreading the next twice: 1 KB that expands to
    // 2^25 selections.
    let mut bomb = String::from("query { ...F0 }");
    for i in 0..24 {
        bomb.push_str(&format!(
            " fragment F{i} on Query {{ ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    bomb.push_str(" fragment F24 on Query { viewer { kind } }");
    assert!(bomb.len() < 1100);

    let started = Instant::now();
    let answer = post_graphql(&http, &server, &bomb).await;
    let took = started.elapsed();
    assert_eq!(first_error_code(&answer), "BAD_USER_INPUT", "{answer}");
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("10000"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kib < 200 * 1024, "server RSS {rss_kib} KiB");

    // The same shape, small, still runs (and is merely unauthenticated).
    let mut small = String::from("query { ...F0 }");
    for i in 0..3 {
        small.push_str(&format!(
            " fragment F{i} on Query {{ ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    small.push_str(" fragment F3 on Query { viewer { kind } }");
    let answer = post_graphql(&http, &server, &small).await;
    assert_eq!(first_error_code(&answer), "UNAUTHENTICATED", "{answer}");
}

/// Sends `bytes`, then waits for the server to close the connection;
/// returns how long after connecting it did (`None`: still open at 10 s).
async fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut sink = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn clients_that_stall_before_a_request_head_is_complete_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[("MOBIUS_CLIENT_READ_TIMEOUT_SECS", "1")]);
    // The first 5 bytes of a TLS ClientHello: record header, no body.
    let half_hello = [0x16, 0x03, 0x01, 0x02, 0x00];
    let half_head = b"POST /api/graphql HTTP/1.1\r\nhost: x\r\n";
    for (listener, addr, bytes) in [
        ("device, silent", server.device_addr, &[][..]),
        (
            "device, half a ClientHello",
            server.device_addr,
            &half_hello[..],
        ),
        ("admin, silent", server.addr, &[][..]),
        ("admin, half a request head", server.addr, &half_head[..]),
    ] {
        let closed = closed_after(addr, bytes).await;
        assert!(
            closed.is_some_and(|t| t < Duration::from_secs(4)),
            "{listener}: closed after {closed:?}"
        );
    }

    // A prompt client is still served.
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[tokio::test]
async fn bursts_of_failed_logins_do_not_grow_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[],
        &[
            ("MOBIUS_LOGIN_ATTEMPTS_PER_MINUTE_PER_CLIENT", "100000"),
            ("MOBIUS_LOGIN_ATTEMPTS_PER_MINUTE_PER_ACCOUNT", "100000"),
        ],
    );
    let http = reqwest::Client::new();
    let password = "correct horse battery staple";
    let code = server.setup_code.clone().expect("setup code");
    let setup = http
        .post(server.url("/api/graphql"))
        .json(&json!({
            "query": "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
            "variables": { "i": { "code": code, "email": "owner@example.test", "password": password, "displayName": "O" } }
        }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(setup["errors"].is_null(), "{setup}");
    let login = async |email: String, password: &str| -> Value {
        http.post(server.url("/api/graphql"))
            .json(&json!({
                "query": "mutation($e: String!, $p: String!) { login(input: { email: $e, password: $p }) { accessToken } }",
                "variables": { "e": email, "p": password }
            }))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // One of each first, so the pool and the dummy hash exist.
    login("owner@example.test".into(), "wrong password 1").await;
    let before = rss_mib(server.pid());

    // Before the fix: +840 MiB over two such bursts (debug build).
    for burst in 0..3 {
        let attempts = (0..25).map(|i| {
            let email = if i % 2 == 0 {
                "owner@example.test".to_owned()
            } else {
                format!("nobody{burst}-{i}@example.test")
            };
            login(email, "wrong password 12")
        });
        for answer in futures_util::future::join_all(attempts).await {
            assert_eq!(first_error_code(&answer), "UNAUTHENTICATED", "{answer}");
        }
    }
    let growth = rss_mib(server.pid()).saturating_sub(before);
    assert!(growth < 100, "RSS grew {growth} MiB over 75 failed logins");

    let ok = login("owner@example.test".into(), password).await;
    assert!(ok["data"]["login"]["accessToken"].is_string(), "{ok}");
}

/// One HTTP/1.1 request on an open connection; answers the status line,
/// or `None` when the server closed the connection instead.
async fn head_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> Option<String> {
    let request = format!("HEAD {path} HTTP/1.1\r\nhost: mobius\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .map(str::to_owned)
}

/// A TLS connection to the device listener, with the enrolled agent's
/// certificate when `identity` names its state directory.
async fn device_connection(
    addr: std::net::SocketAddr,
    state: &Path,
    identity: bool,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(state.join("server-ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if identity {
        let chain = CertificateDer::pem_file_iter(state.join("cert.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(state.join("key.pem")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn device_connections_stay_open_between_heartbeats_and_anonymous_ones_do_not() {
    // Stalled clients are cut after 1 s here; an agent's heartbeat comes
    // every 60 s (Fleet's setting), so its connection must outlive both.
    let fleet =
        mobius_tests::fleet::Fleet::start(&[("MOBIUS_CLIENT_READ_TIMEOUT_SECS", "1")]).await;
    fleet.enroll().await;
    let state = fleet.agent_dir();
    let addr = fleet.server.device_addr;
    let ping = "/api/mobius/device/ping";

    let mut device = device_connection(addr, &state, true).await;
    let mut anonymous = device_connection(addr, &state, false).await;
    let first = head_request(&mut device, ping).await;
    assert!(
        first
            .as_deref()
            .is_some_and(|l| l.starts_with("HTTP/1.1 2")),
        "{first:?}"
    );
    let first = head_request(&mut anonymous, ping).await;
    assert!(first.is_some(), "the anonymous client gets an answer first");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = head_request(&mut device, ping).await;
    assert!(
        again
            .as_deref()
            .is_some_and(|l| l.starts_with("HTTP/1.1 2")),
        "a device's keep-alive connection carries its next heartbeat: {again:?}"
    );
    assert_eq!(
        head_request(&mut anonymous, ping).await,
        None,
        "a connection without a device certificate is closed when idle"
    );
}
