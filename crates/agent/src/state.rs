//! The state directory: the device's private key, its certificates and
//! `state.json`.
//!
//! The directory is 0700 and every file 0600, because `key.pem` is the
//! device's identity: anyone who reads it can act as the device until its
//! certificate expires. Files are replaced atomically (temporary file in
//! the same directory, fsync, rename, fsync of the directory) so a crash or
//! power loss leaves either the old file or the new one, never half of one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The device's private key (PKCS#8 PEM); never sent anywhere.
pub const KEY_FILE: &str = "key.pem";
/// The device's client certificate (PEM), replaced on every renewal.
pub const CERT_FILE: &str = "cert.pem";
/// The tenant CA bundle the client certificate chains to.
pub const CA_FILE: &str = "ca.pem";
/// The CA of the server's device listener: the only root the agent trusts
/// for the server after enrolling.
pub const SERVER_CA_FILE: &str = "server-ca.pem";
/// Enrollment and heartbeat bookkeeping; written last when enrolling, so
/// its presence means "enrolled".
pub const STATE_FILE: &str = "state.json";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// What the agent remembers between runs, besides its PEM files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Base URL of the device listener.
    pub server_url: String,
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    pub site_id: Uuid,
    pub enrolled_at: DateTime<Utc>,
    /// As the server reported it; `status` reads the real one from cert.pem.
    pub certificate_expires_at: DateTime<Utc>,
    pub heartbeat_interval_secs: u64,
    /// From the last successful ping; `None` until then and right after a
    /// renewal (the old value would ask for another renewal at once).
    #[serde(default)]
    pub renew_after: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_renewed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_heartbeat_ok: Option<bool>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Not enrolled yet (or the state was removed): exit 1 with a hint.
#[derive(Debug, thiserror::Error)]
#[error(
    "not enrolled: no {STATE_FILE} in {}; run `mobius-agent enroll --server URL --token TOKEN` first",
    .dir.display()
)]
pub struct NotEnrolled {
    pub dir: PathBuf,
}

/// A state directory on disk.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory 0700 (or tightens an existing one to 0700) and
    /// proves it is writable. Enrollment calls this before it spends the
    /// one-time token, so a typo in `--state-dir` or a missing `sudo` does
    /// not burn the token.
    pub fn prepare(&self) -> Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.path)
            .with_context(|| format!("cannot create {}", self.path.display()))?;
        fs::set_permissions(&self.path, fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("cannot make {} private (0700)", self.path.display()))?;
        let (probe, file) = self.create_temp(".write-test")?;
        drop(file);
        fs::remove_file(&probe).with_context(|| format!("cannot remove {}", probe.display()))?;
        Ok(())
    }

    /// Replaces `name` with `contents`, atomically, mode 0600.
    pub fn write_atomic(&self, name: &str, contents: &[u8]) -> Result<()> {
        let target = self.file(name);
        let (temp, mut file) = self.create_temp(name)?;
        let written = file
            .write_all(contents)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temp, &target));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(err).with_context(|| format!("cannot write {}", target.display()));
        }
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(())
    }

    /// Opens a new file beside `name` with mode 0600 set at creation, so the
    /// key is never readable by others, not even for an instant.
    fn create_temp(&self, name: &str) -> Result<(PathBuf, File)> {
        for _ in 0..16 {
            let temp = self
                .path
                .join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&temp)
            {
                Ok(file) => return Ok((temp, file)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("cannot write in {}", self.path.display()));
                }
            }
        }
        anyhow::bail!("cannot create a temporary file in {}", self.path.display())
    }

    pub fn read_string(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    pub fn load_state(&self) -> Result<AgentState> {
        let path = self.file(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(NotEnrolled {
                    dir: self.path.clone(),
                }
                .into());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    pub fn save_state(&self, state: &AgentState) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(state).context("cannot encode the state")?;
        json.push(b'\n');
        self.write_atomic(STATE_FILE, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path)
            .map(|meta| meta.permissions().mode() & 0o777)
            .unwrap_or_default()
    }

    fn sample_state() -> AgentState {
        AgentState {
            server_url: "https://127.0.0.1:8443".into(),
            device_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            site_id: Uuid::from_u128(3),
            enrolled_at: Utc::now(),
            certificate_expires_at: Utc::now(),
            heartbeat_interval_secs: 60,
            renew_after: None,
            last_renewed_at: None,
            last_heartbeat_at: None,
            last_heartbeat_ok: None,
            last_error: None,
        }
    }

    #[test]
    fn files_are_private_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path().join("nested/state"));
        dir.prepare().unwrap();
        assert_eq!(mode(dir.path()), 0o700);

        dir.write_atomic(KEY_FILE, b"first").unwrap();
        dir.write_atomic(KEY_FILE, b"second").unwrap();
        assert_eq!(dir.read_string(KEY_FILE).unwrap(), "second");
        assert_eq!(mode(&dir.file(KEY_FILE)), 0o600);

        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name != KEY_FILE)
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn an_existing_loose_directory_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::new(root.path()).prepare().unwrap();
        assert_eq!(mode(root.path()), 0o700);
    }

    #[test]
    fn state_round_trips_and_missing_state_means_not_enrolled() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path());
        let err = dir.load_state().unwrap_err();
        assert!(err.is::<NotEnrolled>(), "{err:#}");
        assert!(err.to_string().contains("mobius-agent enroll"), "{err}");

        let mut state = sample_state();
        state.last_heartbeat_ok = Some(false);
        state.last_error = Some("connection refused".into());
        dir.save_state(&state).unwrap();
        assert_eq!(dir.load_state().unwrap(), state);
        assert_eq!(mode(&dir.file(STATE_FILE)), 0o600);
    }

    #[test]
    fn a_corrupt_state_file_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path());
        dir.write_atomic(STATE_FILE, b"{not json").unwrap();
        let err = dir.load_state().unwrap_err();
        assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
    }
}
