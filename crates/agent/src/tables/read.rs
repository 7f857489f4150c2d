//! Small readers shared by the table sources. A file that is missing or
//! unreadable reads as nothing: the table then has fewer rows or empty
//! columns, as osquery's do, rather than failing the whole query.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The file's text, or `None`.
pub fn text(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The file's text trimmed, or `""`.
pub fn trimmed(path: impl AsRef<Path>) -> String {
    text(path).map(|t| t.trim().to_owned()).unwrap_or_default()
}

/// A symbolic link's target, or `""`.
pub fn link(path: impl AsRef<Path>) -> String {
    std::fs::read_link(path)
        .map(|target| target.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `KEY=value` lines (os-release), with the value's quotes removed.
pub fn key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            (key.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// A command's stdout when it exits 0 within `limit`; a command that hangs
/// is killed so a query never waits on it past its own time limit.
pub fn command(program: &str, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("LC_ALL", "C")
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?.ok()?;
    status
        .success()
        .then(|| String::from_utf8_lossy(&out).into_owned())
}

/// The numeric `/proc/<pid>` entries.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_lose_their_quotes() {
        let pairs = key_values("NAME=\"Debian GNU/Linux\"\n# comment\nID=debian\nX='y z'\n");
        assert_eq!(
            pairs,
            vec![
                ("NAME".into(), "Debian GNU/Linux".into()),
                ("ID".into(), "debian".into()),
                ("X".into(), "y z".into()),
            ]
        );
    }

    #[test]
    fn a_hanging_command_is_killed() {
        let started = Instant::now();
        assert_eq!(command("sleep", &["5"], Duration::from_millis(200)), None);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            command("echo", &["hi"], Duration::from_secs(5)).as_deref(),
            Some("hi\n")
        );
    }
}
