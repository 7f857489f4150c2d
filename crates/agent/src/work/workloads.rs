//! The workloads an operation can name, behind one trait: each parses its
//! own parameters and runs, streaming output lines to `output` and
//! stopping when `cancel` turns true.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use mobius_api::plans::{
    DEFAULT_TIMEOUT_SECS, ExecParams, ExecutionStatus, FileParams, LogLine, MAX_TIMEOUT_SECS,
    Operation, SCRIPT_INTERPRETERS, SERVICE_ACTIONS, ScriptParams, ServiceParams,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Group, Pid, User};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

impl Outcome {
    pub(super) fn ok() -> Outcome {
        Outcome {
            status: ExecutionStatus::Succeeded,
            exit_code: None,
            error: None,
        }
    }

    pub(super) fn failed(error: impl Into<String>) -> Outcome {
        Outcome {
            status: ExecutionStatus::Failed,
            exit_code: None,
            error: Some(error.into()),
        }
    }
}

/// What a running operation may use.
pub struct Context {
    pub output: mpsc::UnboundedSender<LogLine>,
    pub cancel: watch::Receiver<bool>,
    /// Told the process group of a spawned child, so a restarted agent can
    /// kill what an agent that died left behind.
    pub started_group: std::sync::Arc<dyn Fn(i32) + Send + Sync>,
    /// The agent's state directory (its client identity; downloads).
    pub dir: crate::state::StateDir,
}

impl Context {
    pub(super) fn say(&self, stream: &str, line: impl Into<String>) {
        let _ = self.output.send(LogLine {
            stream: stream.into(),
            time: Utc::now().to_rfc3339(),
            line: line.into(),
        });
    }
}

/// One kind of work an agent can do.
#[async_trait::async_trait]
pub trait Workload: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn run(&self, params: &serde_json::Value, ctx: &Context) -> Outcome;
}

/// Every workload this agent has.
pub fn all() -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(Exec),
        Box::new(Script),
        Box::new(FileWorkload),
        Box::new(Service),
        Box::new(super::install::InstallSoftware),
        Box::new(Noop),
    ]
}

/// Runs `op` with the workload of its kind.
pub async fn run(op: &Operation, ctx: &Context) -> Outcome {
    for workload in all() {
        if workload.kind() == op.kind {
            return workload.run(&op.params, ctx).await;
        }
    }
    Outcome::failed(format!("this agent has no workload {:?}", op.kind))
}

fn parse<T: serde::de::DeserializeOwned>(params: &serde_json::Value) -> Result<T, Outcome> {
    serde_json::from_value(params.clone())
        .map_err(|e| Outcome::failed(format!("bad parameters: {e}")))
}

struct Exec;

#[async_trait::async_trait]
impl Workload for Exec {
    fn kind(&self) -> &'static str {
        "exec"
    }

    async fn run(&self, params: &serde_json::Value, ctx: &Context) -> Outcome {
        let p: ExecParams = match parse(params) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        let Some((program, args)) = p.argv.split_first() else {
            return Outcome::failed("argv is empty");
        };
        let command = Spawn {
            program: program.into(),
            args: args.to_vec(),
            env: p.env,
            cwd: p.cwd.map(PathBuf::from),
            user: p.user,
            timeout: timeout(p.timeout_secs),
        };
        command.run(ctx).await
    }
}

struct Script;

#[async_trait::async_trait]
impl Workload for Script {
    fn kind(&self) -> &'static str {
        "script"
    }

    async fn run(&self, params: &serde_json::Value, ctx: &Context) -> Outcome {
        let p: ScriptParams = match parse(params) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        if !SCRIPT_INTERPRETERS.contains(&p.interpreter.as_str()) {
            return Outcome::failed(format!("unknown interpreter {:?}", p.interpreter));
        }
        // A private file (0600, or 0400 for the run-as user) that nobody
        // else can read or swap while it runs.
        let path =
            std::env::temp_dir().join(format!("mobius-script-{:016x}", rand::random::<u64>()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, p.body.as_bytes()));
        if let Err(err) = written {
            return Outcome::failed(format!("cannot write the script file: {err}"));
        }
        if let Some(user) = &p.user {
            match lookup_user(user) {
                Ok((uid, gid)) => {
                    if let Err(err) = std::os::unix::fs::chown(&path, Some(uid), Some(gid)) {
                        let _ = std::fs::remove_file(&path);
                        return Outcome::failed(format!("cannot hand the script to {user}: {err}"));
                    }
                }
                Err(outcome) => {
                    let _ = std::fs::remove_file(&path);
                    return outcome;
                }
            }
        }
        let outcome = Spawn {
            program: p.interpreter.clone(),
            args: vec![path.display().to_string()],
            env: p.env,
            cwd: None,
            user: p.user,
            timeout: timeout(p.timeout_secs),
        }
        .run(ctx)
        .await;
        let _ = std::fs::remove_file(&path);
        outcome
    }
}

struct FileWorkload;

#[async_trait::async_trait]
impl Workload for FileWorkload {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn run(&self, params: &serde_json::Value, ctx: &Context) -> Outcome {
        let p: FileParams = match parse(params) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        match write_file(&p) {
            Ok(true) => {
                ctx.say("stdout", format!("wrote {}", p.path));
                Outcome::ok()
            }
            Ok(false) => {
                ctx.say("stdout", format!("{} already up to date", p.path));
                Outcome::ok()
            }
            Err(err) => Outcome::failed(err),
        }
    }
}

/// Writes the file atomically (temp file beside it, then rename); `false`
/// when content, mode and owner were already as asked.
fn write_file(p: &FileParams) -> Result<bool, String> {
    let actual = hex::encode(Sha256::digest(p.content.as_bytes()));
    if let Some(expected) = &p.sha256
        && !expected.eq_ignore_ascii_case(&actual)
    {
        return Err("content does not match the expected sha256".into());
    }
    let path = Path::new(&p.path);
    let mode = match &p.mode {
        Some(mode) => Some(u32::from_str_radix(mode, 8).map_err(|_| format!("bad mode {mode:?}"))?),
        None => None,
    };
    let owner = match &p.owner {
        Some(owner) => {
            let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
            let (uid, mut gid) = lookup_user(user).map_err(|o| o.error.unwrap_or_default())?;
            if !group.is_empty() {
                gid = Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("no group {group:?} on this host"))?
                    .gid
                    .as_raw();
            }
            Some((uid, gid))
        }
        None => None,
    };
    if let Ok(existing) = std::fs::read(path) {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        let same_mode = mode.is_none_or(|m| meta.permissions().mode() & 0o7777 == m);
        let same_owner = owner.is_none_or(|(u, g)| meta.uid() == u && meta.gid() == g);
        if existing == p.content.as_bytes() && same_mode && same_owner {
            return Ok(false);
        }
    }
    let dir = path.parent().ok_or("the path has no directory")?;
    let temp = dir.join(format!(
        ".{}.mobius-{:016x}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        rand::random::<u64>()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        std::io::Write::write_all(&mut file, p.content.as_bytes())?;
        file.sync_all()?;
        std::fs::set_permissions(
            &temp,
            std::fs::Permissions::from_mode(mode.unwrap_or(0o644)),
        )?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&temp, Some(uid), Some(gid))?;
        }
        std::fs::rename(&temp, path)
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("cannot write {}: {err}", p.path));
    }
    Ok(true)
}

struct Service;

#[async_trait::async_trait]
impl Workload for Service {
    fn kind(&self) -> &'static str {
        "service"
    }

    async fn run(&self, params: &serde_json::Value, ctx: &Context) -> Outcome {
        let p: ServiceParams = match parse(params) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        if !SERVICE_ACTIONS.contains(&p.action.as_str()) {
            return Outcome::failed(format!("unknown action {:?}", p.action));
        }
        // systemd's own test for "booted with systemd" (sd_booted).
        if !Path::new("/run/systemd/system").is_dir() {
            return Outcome::failed(
                "systemd is not running on this host (no /run/systemd/system): service operations need systemd",
            );
        }
        Spawn {
            program: "systemctl".into(),
            args: vec![p.action.clone(), "--".into(), p.unit.clone()],
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        }
        .run(ctx)
        .await
    }
}

/// Does nothing and succeeds: for load tests of the delivery path.
struct Noop;

#[async_trait::async_trait]
impl Workload for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }

    async fn run(&self, _: &serde_json::Value, _: &Context) -> Outcome {
        Outcome::ok()
    }
}

fn timeout(secs: Option<u64>) -> Duration {
    Duration::from_secs(
        secs.unwrap_or(DEFAULT_TIMEOUT_SECS)
            .clamp(1, MAX_TIMEOUT_SECS),
    )
}

fn lookup_user(name: &str) -> Result<(u32, u32), Outcome> {
    match User::from_name(name) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        Ok(None) => Err(Outcome::failed(format!("no user {name:?} on this host"))),
        Err(err) => Err(Outcome::failed(format!(
            "cannot look up user {name:?}: {err}"
        ))),
    }
}

/// A child process in its own process group, so timeout and cancel kill
/// everything it started.
pub(super) struct Spawn {
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) user: Option<String>,
    pub(super) timeout: Duration,
}

/// After SIGTERM to the group, how long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

impl Spawn {
    pub(super) async fn run(self, ctx: &Context) -> Outcome {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        if let Some(user) = &self.user {
            match lookup_user(user) {
                Ok((uid, gid)) => {
                    command.uid(uid).gid(gid);
                }
                Err(outcome) => return outcome,
            }
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => return Outcome::failed(format!("cannot start {}: {err}", self.program)),
        };
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        if let Some(pgid) = pgid {
            (ctx.started_group)(pgid);
        }
        let readers = [
            child
                .stdout
                .take()
                .map(|s| pump(s, "stdout", ctx.output.clone())),
            child
                .stderr
                .take()
                .map(|s| pump(s, "stderr", ctx.output.clone())),
        ];
        let mut cancel = ctx.cancel.clone();
        let ended = tokio::select! {
            status = child.wait() => Ok(status),
            () = tokio::time::sleep(self.timeout) => Err(ExecutionStatus::TimedOut),
            _ = cancel.wait_for(|c| *c) => Err(ExecutionStatus::Cancelled),
        };
        let outcome = match ended {
            Ok(Ok(status)) => match status.code() {
                Some(0) => Outcome {
                    status: ExecutionStatus::Succeeded,
                    exit_code: Some(0),
                    error: None,
                },
                Some(code) => Outcome {
                    status: ExecutionStatus::Failed,
                    exit_code: Some(code),
                    error: Some(format!("exited with status {code}")),
                },
                None => Outcome::failed("killed by a signal"),
            },
            Ok(Err(err)) => Outcome::failed(format!("waiting for the process failed: {err}")),
            Err(status) => {
                if let Some(pgid) = pgid {
                    kill_group(pgid, &mut child).await;
                }
                Outcome {
                    status,
                    exit_code: None,
                    error: Some(match status {
                        ExecutionStatus::TimedOut => {
                            format!(
                                "timed out after {} s; process group killed",
                                self.timeout.as_secs()
                            )
                        }
                        _ => "cancelled; process group killed".to_owned(),
                    }),
                }
            }
        };
        // The group may leave a grandchild holding the pipes: read what is
        // there for a moment, then go on.
        for reader in readers.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
        outcome
    }
}

/// SIGTERM to the whole group, SIGKILL after a grace period.
async fn kill_group(pgid: i32, child: &mut tokio::process::Child) {
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Members that ignored SIGTERM outlive the leader: make sure.
    let _ = killpg(group, Signal::SIGKILL);
}

/// Kills a group left running by an agent that died (best effort).
pub fn kill_leftover_group(pgid: i32) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

fn pump(
    stream: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    output: mpsc::UnboundedSender<LogLine>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    let _ = output.send(LogLine {
                        stream: name.into(),
                        time: Utc::now().to_rfc3339(),
                        line: String::from_utf8_lossy(&buf).into_owned(),
                    });
                }
            }
        }
    })
}
