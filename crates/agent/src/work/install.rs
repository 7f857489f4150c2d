//! The `install_software` workload: download the installer through a
//! short-lived URL signed for this device (resuming with HTTP `Range`
//! after a cut, retrying a few times), check its SHA-256 before anything
//! runs, run the installer with a timeout, and report each step to the
//! server (DOWNLOADING with bytes, INSTALLING, then INSTALLED or FAILED
//! with a reason a person can act on).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mobius_api::plans::{ExecutionStatus, LogLine};
use mobius_api::software::{
    DEFAULT_INSTALL_TIMEOUT_SECS, DownloadUrlRequest, InstallProgress, InstallSoftwareParams,
    InstallStatus,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::workloads::{Context, Outcome, Spawn, Workload};
use crate::transport::{CallError, DeviceClient};

/// Download attempts before the install fails.
pub const DOWNLOAD_ATTEMPTS: u32 = 5;
/// A download that sends nothing for this long is cut and resumed.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// Progress is reported at most this often while downloading.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Output kept for the install's result.
const TAIL_LINES: usize = 40;

pub struct InstallSoftware;

#[async_trait::async_trait]
impl Workload for InstallSoftware {
    fn kind(&self) -> &'static str {
        "install_software"
    }

    async fn run(&self, params: &serde_json::Value, ctx: &Context) -> Outcome {
        let p: InstallSoftwareParams = match serde_json::from_value(params.clone()) {
            Ok(p) => p,
            Err(err) => return Outcome::failed(format!("bad parameters: {err}")),
        };
        let client = match super::client(&ctx.dir) {
            Ok(client) => client,
            Err(err) => return Outcome::failed(format!("no client for the server: {err:#}")),
        };
        let job = Job {
            client,
            request_id: p.request_id,
        };
        let (status, reason, exit_code, tail) = if p.action == "uninstall" {
            uninstall(&job, &p, ctx).await
        } else {
            install(&job, &p, ctx).await
        };
        job.report(InstallProgress {
            request_id: p.request_id,
            status,
            bytes_downloaded: 0,
            bytes_total: 0,
            reason: reason.clone(),
            exit_code,
            output_tail: tail,
        })
        .await;
        if matches!(
            status,
            InstallStatus::Installed | InstallStatus::Uninstalled
        ) {
            super::inventory::report(&ctx.dir).await;
        }
        match status {
            InstallStatus::Installed | InstallStatus::Uninstalled => Outcome {
                status: ExecutionStatus::Succeeded,
                exit_code,
                error: None,
            },
            _ => Outcome {
                status: if reason.as_deref().is_some_and(|r| r.starts_with("timeout")) {
                    ExecutionStatus::TimedOut
                } else if reason.as_deref() == Some("cancelled") {
                    ExecutionStatus::Cancelled
                } else {
                    ExecutionStatus::Failed
                },
                exit_code,
                error: reason,
            },
        }
    }
}

struct Job {
    client: DeviceClient,
    request_id: uuid::Uuid,
}

impl Job {
    /// Best effort, a few tries: the final outcome also reaches the server
    /// with the execution's report.
    async fn report(&self, progress: InstallProgress) {
        for attempt in 0..3u32 {
            match self.client.software_progress(&progress).await {
                Ok(_) => return,
                Err(CallError::Refused { message, .. }) => {
                    tracing::warn!(%message, "the server refused install progress");
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, attempt, "could not report install progress");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
    }

    async fn status(&self, status: InstallStatus, downloaded: u64, total: u64) {
        self.report(InstallProgress {
            request_id: self.request_id,
            status,
            bytes_downloaded: downloaded,
            bytes_total: total,
            reason: None,
            exit_code: None,
            output_tail: None,
        })
        .await;
    }
}

type Ended = (InstallStatus, Option<String>, Option<i32>, Option<String>);

fn failed(reason: impl Into<String>) -> Ended {
    (InstallStatus::Failed, Some(reason.into()), None, None)
}

/// Where an install's download lives: under the state directory, so a
/// retry of the same request can resume it.
fn work_dir(ctx: &Context, request_id: uuid::Uuid) -> PathBuf {
    ctx.dir
        .file("software")
        .join(request_id.simple().to_string())
}

async fn install(job: &Job, p: &InstallSoftwareParams, ctx: &Context) -> Ended {
    if let Some(condition) = p
        .pre_install_condition
        .as_ref()
        .filter(|c| !c.trim().is_empty())
    {
        // Like a policy query: the install goes ahead only if the host
        // tables answer at least one row. A condition that cannot be
        // evaluated fails closed.
        let sql = condition.clone();
        let info = crate::tables::AgentInfo::load(&ctx.dir);
        let answer = tokio::task::spawn_blocking(move || {
            crate::tables::run(&sql, &crate::tables::Limits::default(), &info)
        })
        .await;
        match answer {
            Ok(Ok(answer)) if !answer.rows.is_empty() => ctx.say(
                "stdout",
                format!("pre-install condition met ({} rows)", answer.rows.len()),
            ),
            Ok(Ok(_)) => {
                return failed(
                    "condition not met: the pre-install condition answered no rows on this device; nothing was installed",
                );
            }
            Ok(Err(err)) => {
                return failed(format!(
                    "condition not checked: the pre-install condition failed on this device: {err}"
                ));
            }
            Err(err) => return failed(format!("condition not checked: {err}")),
        }
    }
    let dir = work_dir(ctx, p.request_id);
    if let Err(err) = tokio::fs::create_dir_all(&dir).await {
        return failed(format!("cannot create {}: {err}", dir.display()));
    }
    let file = dir.join(&p.file_name);
    job.status(InstallStatus::Downloading, 0, p.size_bytes)
        .await;
    if let Err(reason) = download(job, p, ctx, &file).await {
        return failed(reason);
    }
    match sha256_of(&file).await {
        Ok(actual) if actual.eq_ignore_ascii_case(&p.sha256) => {
            ctx.say("stdout", format!("SHA-256 verified: {actual}"));
        }
        Ok(actual) => {
            let _ = tokio::fs::remove_file(&file).await;
            return failed(format!(
                "checksum mismatch: the downloaded installer has SHA-256 {actual}, expected {}; nothing was run (re-upload the installer)",
                p.sha256
            ));
        }
        Err(err) => return failed(format!("cannot read the downloaded installer: {err}")),
    }
    job.status(InstallStatus::Installing, p.size_bytes, p.size_bytes)
        .await;
    let timeout = Duration::from_secs(
        p.timeout_secs
            .unwrap_or(DEFAULT_INSTALL_TIMEOUT_SECS)
            .clamp(1, mobius_api::plans::MAX_TIMEOUT_SECS),
    );
    let env = script_env(p, &file, &dir);
    let (program, args) = match (&p.install_script, p.installer_kind.as_str()) {
        (Some(script), _) if !script.trim().is_empty() => {
            ("sh".to_owned(), vec!["-c".to_owned(), script.clone()])
        }
        (_, "deb") => (
            "dpkg".to_owned(),
            vec!["-i".to_owned(), file.display().to_string()],
        ),
        (_, "rpm") => (
            "rpm".to_owned(),
            vec![
                "-U".to_owned(),
                "--replacepkgs".to_owned(),
                file.display().to_string(),
            ],
        ),
        (_, kind) => return failed(format!("a {kind} installer needs an install script")),
    };
    let (outcome, tail) = run_captured(
        Spawn {
            program,
            args,
            env: env.clone(),
            cwd: Some(dir.clone()),
            user: None,
            timeout,
        },
        ctx,
    )
    .await;
    if let Some(ended) = ended_badly(&outcome, "installer", timeout, tail.clone()) {
        return ended;
    }
    let mut tail = tail;
    if let Some(script) = p
        .post_install_script
        .as_ref()
        .filter(|s| !s.trim().is_empty())
    {
        let (post, post_tail) = run_captured(
            Spawn {
                program: "sh".into(),
                args: vec!["-c".into(), script.clone()],
                env,
                cwd: Some(dir.clone()),
                user: None,
                timeout,
            },
            ctx,
        )
        .await;
        if let Some(ended) = ended_badly(&post, "post-install script", timeout, post_tail.clone()) {
            return ended;
        }
        tail = format!("{tail}{post_tail}");
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
    (InstallStatus::Installed, None, Some(0), Some(tail))
}

async fn uninstall(job: &Job, p: &InstallSoftwareParams, ctx: &Context) -> Ended {
    let Some(script) = p.uninstall_script.as_ref().filter(|s| !s.trim().is_empty()) else {
        return failed("this version has no uninstall script");
    };
    job.status(InstallStatus::Uninstalling, 0, 0).await;
    let timeout = Duration::from_secs(
        p.timeout_secs
            .unwrap_or(DEFAULT_INSTALL_TIMEOUT_SECS)
            .clamp(1, mobius_api::plans::MAX_TIMEOUT_SECS),
    );
    let dir = std::env::temp_dir();
    let (outcome, tail) = run_captured(
        Spawn {
            program: "sh".into(),
            args: vec!["-c".into(), script.clone()],
            env: script_env(p, Path::new(""), &dir),
            cwd: None,
            user: None,
            timeout,
        },
        ctx,
    )
    .await;
    if let Some(ended) = ended_badly(&outcome, "uninstall script", timeout, tail.clone()) {
        return ended;
    }
    (InstallStatus::Uninstalled, None, Some(0), Some(tail))
}

fn script_env(p: &InstallSoftwareParams, file: &Path, dir: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("INSTALLER_PATH".to_owned(), file.display().to_string()),
        ("INSTALLER_DIR".to_owned(), dir.display().to_string()),
        ("SOFTWARE_NAME".to_owned(), p.name.clone()),
        ("SOFTWARE_VERSION".to_owned(), p.version.clone()),
    ])
}

/// The reason for an outcome that is not success, with the output tail.
fn ended_badly(outcome: &Outcome, what: &str, timeout: Duration, tail: String) -> Option<Ended> {
    match outcome.status {
        ExecutionStatus::Succeeded => None,
        ExecutionStatus::TimedOut => Some((
            InstallStatus::Failed,
            Some(format!(
                "timeout: the {what} ran longer than {} s and was killed",
                timeout.as_secs()
            )),
            None,
            Some(tail),
        )),
        ExecutionStatus::Cancelled => Some((
            InstallStatus::Failed,
            Some("cancelled".into()),
            None,
            Some(tail),
        )),
        _ => Some((
            InstallStatus::Failed,
            Some(match outcome.exit_code {
                Some(code) => format!("{what} exit code {code}"),
                None => format!(
                    "{what} failed: {}",
                    outcome.error.clone().unwrap_or_default()
                ),
            }),
            outcome.exit_code,
            Some(tail),
        )),
    }
}

/// Runs `spawn`, passing its output on to the execution's log and keeping
/// the last lines.
async fn run_captured(spawn: Spawn, ctx: &Context) -> (Outcome, String) {
    let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
    let forward = ctx.output.clone();
    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let keep = tail.clone();
    let pump = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if let Ok(mut tail) = keep.lock() {
                tail.push_back(line.line.clone());
                if tail.len() > TAIL_LINES {
                    tail.pop_front();
                }
            }
            let _ = forward.send(line);
        }
    });
    let inner = Context {
        output: tx,
        cancel: ctx.cancel.clone(),
        started_group: ctx.started_group.clone(),
        dir: ctx.dir.clone(),
    };
    let outcome = spawn.run(&inner).await;
    drop(inner);
    let _ = pump.await;
    let text = tail
        .lock()
        .map(|t| t.iter().map(|l| format!("{l}\n")).collect::<String>())
        .unwrap_or_default();
    (outcome, text)
}

async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads into `file`, resuming from what is there. Each attempt asks
/// for a fresh URL (they expire in minutes).
async fn download(
    job: &Job,
    p: &InstallSoftwareParams,
    ctx: &Context,
    file: &Path,
) -> Result<(), String> {
    let mut last_error = String::new();
    for attempt in 1..=DOWNLOAD_ATTEMPTS {
        if *ctx.cancel.borrow() {
            return Err("cancelled".into());
        }
        let have = tokio::fs::metadata(file)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have >= p.size_bytes && p.size_bytes > 0 {
            return Ok(());
        }
        if have > 0 {
            ctx.say("stdout", format!("resuming download from byte {have}"));
            tracing::info!(request_id = %p.request_id, from_byte = have, attempt, "resuming download from byte {have}");
        }
        match download_once(job, p, file, have).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                let now = tokio::fs::metadata(file)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                ctx.say(
                    "stderr",
                    format!("download attempt {attempt} stopped at byte {now}: {err}"),
                );
                tracing::warn!(request_id = %p.request_id, attempt, at_byte = now, error = %err, "download interrupted");
                last_error = err;
                if attempt < DOWNLOAD_ATTEMPTS {
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(4))).await;
                }
            }
        }
    }
    Err(format!(
        "download failed after {DOWNLOAD_ATTEMPTS} retries: {last_error}"
    ))
}

async fn download_once(
    job: &Job,
    p: &InstallSoftwareParams,
    file: &Path,
    have: u64,
) -> Result<(), String> {
    let url = job
        .client
        .software_download_url(&DownloadUrlRequest {
            request_id: p.request_id,
        })
        .await
        .map_err(|e| format!("no download URL: {e}"))?;
    let mut response = job
        .client
        .download(&url.path, have)
        .await
        .map_err(|e| e.to_string())?;
    let mut from = have;
    match response.status().as_u16() {
        206 => {}
        200 => from = 0,
        416 => {
            // What we have is no prefix of the installer: start over.
            let _ = tokio::fs::remove_file(file).await;
            return Err("the partial download did not fit the installer; starting over".into());
        }
        other => return Err(format!("HTTP {other}")),
    }
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(from > 0)
        .write(true)
        .truncate(from == 0)
        .open(file)
        .await
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let mut written = from;
    let mut last_report = Instant::now();
    loop {
        let chunk = tokio::time::timeout(CHUNK_TIMEOUT, response.chunk())
            .await
            .map_err(|_| format!("no data for {} s", CHUNK_TIMEOUT.as_secs()))?
            .map_err(|e| crate::transport::describe(&e))?;
        let Some(chunk) = chunk else { break };
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        written += chunk.len() as u64;
        if last_report.elapsed() >= PROGRESS_INTERVAL {
            out.flush().await.map_err(|e| e.to_string())?;
            job.status(InstallStatus::Downloading, written, p.size_bytes)
                .await;
            last_report = Instant::now();
        }
    }
    out.flush().await.map_err(|e| e.to_string())?;
    out.sync_all().await.map_err(|e| e.to_string())?;
    job.status(InstallStatus::Downloading, written, p.size_bytes)
        .await;
    if written < p.size_bytes {
        return Err(format!(
            "the connection ended at byte {written} of {}",
            p.size_bytes
        ));
    }
    Ok(())
}
