//! The load side of `tests/bench/tunnel.sh` (not a test): a local HTTP
//! target and the clients that measure the backbone against a direct
//! connection and rathole. One JSON object per run on stdout.
//!
//! ```text
//! tunnel_bench target PORT                      serve /, /bytes/N, /count, /ws
//! tunnel_bench load URL HOST RATE SECS          open loop at RATE/s: latency percentiles
//! tunnel_bench max URL HOST SECS CONCURRENCY    closed loop: requests per second
//! tunnel_bench transfer BASE HOST BYTES PID     stream BYTES down and up; PID's RSS growth
//! tunnel_bench ws URL HOST SECS                 one WebSocket echoing every 100 ms
//! tunnel_bench probe URL_A URL_B HOST SECS      requests every 5 ms to A, then B once A fails:
//!                                               time from A's first failure to B's first success
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or_else(|| {
        eprintln!("missing argument {i}; see the doc comment of tests/examples/tunnel_bench.rs");
        std::process::exit(2)
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match arg(&args, 1) {
        "target" => target(arg(&args, 2).parse().unwrap()).await,
        "load" => {
            load(
                arg(&args, 2),
                arg(&args, 3),
                arg(&args, 4).parse().unwrap(),
                arg(&args, 5).parse().unwrap(),
            )
            .await
        }
        "max" => {
            max(
                arg(&args, 2),
                arg(&args, 3),
                arg(&args, 4).parse().unwrap(),
                arg(&args, 5).parse().unwrap(),
            )
            .await
        }
        "transfer" => {
            transfer(
                arg(&args, 2),
                arg(&args, 3),
                arg(&args, 4).parse().unwrap(),
                arg(&args, 5).parse().unwrap(),
            )
            .await
        }
        "ws" => ws(arg(&args, 2), arg(&args, 3), arg(&args, 4).parse().unwrap()).await,
        "probe" => {
            probe(
                arg(&args, 2),
                arg(&args, 3),
                arg(&args, 4),
                arg(&args, 5).parse().unwrap(),
            )
            .await
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2)
        }
    }
}

async fn target(port: u16) {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/bytes/{n}", get(stream_bytes))
        .route("/count", post(count_upload))
        .route("/ws", get(ws_echo));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}

async fn stream_bytes(UrlPath(n): UrlPath<u64>) -> Body {
    let chunk = axum::body::Bytes::from(vec![7u8; 256 * 1024]);
    let size = chunk.len() as u64;
    let chunks = n.div_ceil(size);
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        let len = if i + 1 == chunks { n - i * size } else { size };
        Ok::<_, std::io::Error>(chunk.slice(..len as usize))
    });
    Body::from_stream(stream)
}

async fn count_upload(body: Body) -> String {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        n += chunk.len() as u64;
    }
    n.to_string()
}

async fn ws_echo(ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && socket.send(message).await.is_err()
            {
                break;
            }
        }
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .http1_only()
        .build()
        .unwrap()
}

/// Open loop: requests are scheduled at fixed intervals whatever the
/// answers do, and latency counts from the scheduled time (no coordinated
/// omission).
async fn load(url: &str, host: &str, rate: u64, secs: u64) {
    let http = client();
    let histogram = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).unwrap(),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let total = rate * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (http, histogram, errors) = (http.clone(), histogram.clone(), errors.clone());
        let (url, host) = (url.to_owned(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let ok = match http.get(&url).header("host", host).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                let micros = due.elapsed().as_micros() as u64;
                histogram.lock().unwrap().record(micros.max(1)).unwrap();
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = histogram.lock().unwrap();
    println!(
        "{}",
        json!({
            "mode": "load", "rate": rate, "secs": secs, "ok": h.len(), "errors": errors.load(Ordering::Relaxed),
            "achieved_rps": h.len() as f64 / elapsed,
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": h.max() as f64 / 1000.0,
        })
    );
}

async fn max(url: &str, host: &str, secs: u64, concurrency: usize) {
    let http = client();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, done, errors) = (http.clone(), done.clone(), errors.clone());
        let (url, host) = (url.to_owned(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let ok = match http.get(&url).header("host", &host).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({ "mode": "max", "concurrency": concurrency, "ok": n, "errors": errors.load(Ordering::Relaxed),
                "rps": n as f64 / started.elapsed().as_secs_f64() })
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn transfer(base: &str, host: &str, bytes: u64, pid: u32) {
    let http = client();
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let response = http
        .get(format!("{base}/bytes/{bytes}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
    }
    let down = started.elapsed().as_secs_f64();
    let chunk = axum::body::Bytes::from(vec![1u8; 256 * 1024]);
    let chunks = bytes / chunk.len() as u64;
    let body = reqwest::Body::wrap_stream(
        futures_util::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let started = Instant::now();
    let counted: u64 = http
        .post(format!("{base}/count"))
        .header("host", host)
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(0);
    let up = started.elapsed().as_secs_f64();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(rss_kib(pid));
    println!(
        "{}",
        json!({ "mode": "transfer", "bytes": bytes, "downloaded": received, "uploaded": counted,
                "download_s": down, "upload_s": up,
                "download_mib_s": bytes as f64 / 1048576.0 / down, "upload_mib_s": bytes as f64 / 1048576.0 / up,
                "rss_before_mib": before as f64 / 1024.0, "rss_growth_mib": (peak - before) as f64 / 1024.0 })
    );
}

async fn ws(url: &str, host: &str, secs: u64) {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let started = Instant::now();
    let (mut echoed, mut errors, mut worst) = (0u64, 0u64, Duration::ZERO);
    while started.elapsed() < Duration::from_secs(secs) {
        let sent = Instant::now();
        let text = format!("ping {echoed}");
        if socket
            .send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .is_err()
        {
            errors += 1;
            break;
        }
        match socket.next().await {
            Some(Ok(m)) if m.to_text().ok() == Some(text.as_str()) => echoed += 1,
            _ => {
                errors += 1;
                break;
            }
        }
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{}",
        json!({ "mode": "ws", "secs": started.elapsed().as_secs_f64(), "echoed": echoed, "errors": errors,
                "worst_round_trip_ms": worst.as_secs_f64() * 1000.0 })
    );
}

async fn probe(url_a: &str, url_b: &str, host: &str, secs: u64) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut first_failure: Option<Instant> = None;
    let mut recovered: Option<Duration> = None;
    let mut failed = 0u64;
    while started.elapsed() < Duration::from_secs(secs) && recovered.is_none() {
        let url = if first_failure.is_some() {
            url_b
        } else {
            url_a
        };
        let ok = matches!(http.get(url).header("host", host).send().await, Ok(r) if r.status().is_success());
        match (ok, first_failure) {
            (false, None) => {
                first_failure = Some(Instant::now());
                failed += 1;
            }
            (false, Some(_)) => failed += 1,
            (true, Some(at)) => recovered = Some(at.elapsed()),
            (true, None) => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{}",
        json!({ "mode": "probe", "failed_requests": failed,
                "failover_s": recovered.map(|d| d.as_secs_f64()) })
    );
}
