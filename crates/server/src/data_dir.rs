//! The data directory: private to the server's user, and used by one
//! server at a time.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// The lock file inside the data directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "mobius.lock";

/// Creates the data directory (mode 0700) or tightens an existing one to
/// 0700. It holds the master key, the server's private keys and, without
/// Postgres, the whole database: nobody else on the host should read it.
pub fn make_private(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("reading the data directory {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
                || format!("making the data directory {} private (0700)", dir.display()),
            )?;
            tracing::info!(dir = %dir.display(), "data directory was readable by others: now 0700");
        }
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    Ok(())
}

/// An exclusive claim on a data directory, held until dropped (or until
/// the process ends, when the OS releases it: a crash leaves no stale lock).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock or refuses, naming the process that holds it. Two
    /// servers on one embedded SQLite store would both accept writes and
    /// each believe its caches; the second must not start.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        let path = dir.join(LOCK_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another Mobius server (pid {holder})")
                };
                bail!(
                    "the data directory {} is in use by {who}: it holds {}. \
                     Stop that server, or give this one its own --data-dir",
                    dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DataDirLock { _file: file })
    }
}
