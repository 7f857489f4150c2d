//! The saved login: `<config dir>/mobius/credentials.json`.
//!
//! The file holds a refresh token, which is as good as a password until it
//! expires, so it is created readable by its owner only (0600, in a 0700
//! directory) and replaced atomically: a crash mid-write, or two `mobius`
//! processes refreshing at once, leave either the old file or the new one,
//! never a torn one that would lose the session.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "credentials.json";

/// How long before its stated expiry an access token is treated as expired.
/// Covers clock drift between this machine and the server and the time the
/// request takes, so a token is not refused mid-flight.
const EXPIRY_MARGIN_SECONDS: i64 = 30;

/// A token or password: printing it with `{:?}` shows `***`, never the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A session from `login` or `setup`, as saved on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The server the tokens belong to; they are never sent anywhere else.
    pub server: String,
    pub access_token: Secret,
    /// RFC 3339, as the server sent it.
    pub access_token_expires_at: String,
    /// Null only when the server keeps the refresh token in a cookie, which
    /// the CLI never asks for; without it the session cannot be refreshed.
    pub refresh_token: Option<Secret>,
    pub email: String,
}

impl Credentials {
    /// Whether the access token has expired (or is about to), so a request
    /// with it would be refused. An unreadable expiry counts as unexpired:
    /// the server's UNAUTHENTICATED answer then triggers the refresh.
    pub fn access_token_expired(&self, now: SystemTime) -> bool {
        let Some(expires_at) = unix_seconds_from_rfc3339(&self.access_token_expires_at) else {
            return false;
        };
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        };
        now.saturating_add(EXPIRY_MARGIN_SECONDS) >= expires_at
    }
}

/// Where credentials are read from and written to.
#[derive(Clone, Debug)]
pub struct CredentialStore {
    /// `None` when the platform has no configuration directory and none was
    /// given; then only `--token` works.
    dir: Option<PathBuf>,
}

impl CredentialStore {
    /// `dir` is the whole `mobius` directory (`--config-dir` /
    /// `MOBIUS_CONFIG_DIR`); without it, `<config dir>/mobius`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        let dir = dir.or_else(|| dirs::config_dir().map(|config| config.join("mobius")));
        CredentialStore { dir }
    }

    pub fn path(&self) -> Result<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(FILE_NAME)).ok_or_else(|| {
            anyhow!("cannot find a configuration directory; set MOBIUS_CONFIG_DIR or pass --config-dir")
        })
    }

    /// The saved session, or `None` when there is none.
    pub fn load(&self) -> Result<Option<Credentials>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let credentials = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a saved login; run 'mobius login' again",
                path.display()
            )
        })?;
        Ok(Some(credentials))
    }

    /// Replaces the saved session atomically (see the module docs).
    pub fn save(&self, credentials: &Credentials) -> Result<()> {
        let path = self.path()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut json = serde_json::to_vec_pretty(credentials)?;
        json.push(b'\n');
        write_private_file_atomically(&path, &json)
            .with_context(|| format!("cannot save the login to {}", path.display()))
    }

    /// Deletes the saved session; `false` when there was none.
    pub fn delete(&self) -> Result<bool> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let path = dir.join(FILE_NAME);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err).with_context(|| format!("cannot delete {}", path.display())),
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// Writes `contents` to a fresh temporary file beside `path` and renames it
/// over `path`. The temporary file is created with mode 0600 in the same
/// `open` call, so the secret is never readable by others, not even for the
/// moment between creating the file and a later chmod.
fn write_private_file_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let temp = dir.join(format!(".{FILE_NAME}.{}.{nanos}.tmp", std::process::id()));

    let result = (|| {
        let mut file = open_private_new(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        // Best effort: the write already failed, and that error is the one to report.
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(unix)]
fn open_private_new(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private_new(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Seconds since the Unix epoch for an RFC 3339 timestamp such as
/// `2026-05-01T12:00:00.123456Z` or `2026-05-01T14:00:00+02:00`; `None` if
/// it is not one. Only expiry checks need this, which does not justify a
/// date library.
fn unix_seconds_from_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let separator =
        |index: usize, allowed: &[u8]| bytes.get(index).is_some_and(|b| allowed.contains(b));

    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut rest = text.get(19..)?;
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        rest = &fraction[end..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };

    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Credentials {
        Credentials {
            server: "http://127.0.0.1:8080".to_owned(),
            access_token: Secret::from("eyJ.access".to_owned()),
            access_token_expires_at: "2026-05-01T12:00:00Z".to_owned(),
            refresh_token: Some(Secret::from("refresh-1".to_owned())),
            email: "owner@example.com".to_owned(),
        }
    }

    #[test]
    fn credentials_round_trip_through_the_file() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = CredentialStore::new(Some(temp.path().join("mobius")));
        assert_eq!(store.load().expect("load"), None);

        store.save(&sample()).expect("save");
        assert_eq!(store.load().expect("load"), Some(sample()));

        let mut rotated = sample();
        rotated.refresh_token = Some(Secret::from("refresh-2".to_owned()));
        store.save(&rotated).expect("save again");
        assert_eq!(store.load().expect("load"), Some(rotated));

        assert!(store.delete().expect("delete"));
        assert!(!store.delete().expect("delete again"));
        assert_eq!(store.load().expect("load"), None);
    }

    #[test]
    fn the_file_uses_the_documented_field_names() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = CredentialStore::new(Some(temp.path().to_owned()));
        store.save(&sample()).expect("save");
        let text = fs::read_to_string(temp.path().join(FILE_NAME)).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        for key in [
            "server",
            "access_token",
            "access_token_expires_at",
            "refresh_token",
            "email",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {text}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_and_no_temporary_file_is_left() {
        use std::os::unix::fs::PermissionsExt;

        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("nested").join("mobius");
        let store = CredentialStore::new(Some(dir.clone()));
        store.save(&sample()).expect("save");
        store.save(&sample()).expect("save over");

        let file_mode = fs::metadata(dir.join(FILE_NAME))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&dir).expect("dir").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn a_corrupt_file_says_to_log_in_again() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::write(temp.path().join(FILE_NAME), "{not json").expect("write");
        let store = CredentialStore::new(Some(temp.path().to_owned()));
        let err = store.load().expect_err("corrupt");
        assert!(format!("{err:#}").contains("mobius login"), "{err:#}");
    }

    #[test]
    fn secrets_do_not_print() {
        let printed = format!("{:?}", sample());
        assert!(!printed.contains("eyJ.access"), "{printed}");
        assert!(!printed.contains("refresh-1"), "{printed}");
    }

    #[test]
    fn rfc3339_timestamps_parse() {
        assert_eq!(unix_seconds_from_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds_from_rfc3339("2000-03-01T00:00:00Z"),
            Some(951_868_800)
        );
        assert_eq!(
            unix_seconds_from_rfc3339("2026-05-01T12:00:00.123456+02:00"),
            unix_seconds_from_rfc3339("2026-05-01T10:00:00Z")
        );
        assert_eq!(
            unix_seconds_from_rfc3339("2026-05-01T12:00:00-01:30"),
            unix_seconds_from_rfc3339("2026-05-01T13:30:00Z")
        );
        for bad in [
            "",
            "yesterday",
            "2026-05-01",
            "2026-13-01T00:00:00Z",
            "2026-05-01T00:00:00",
            "2026-05-01T00:00:00.Z",
        ] {
            assert_eq!(unix_seconds_from_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_count_as_expired_shortly_before_their_expiry() {
        let expiry = UNIX_EPOCH + Duration::from_secs(1_777_636_800); // 2026-05-01T12:00:00Z
        let credentials = sample();
        assert_eq!(
            unix_seconds_from_rfc3339(&credentials.access_token_expires_at),
            Some(1_777_636_800)
        );
        assert!(!credentials.access_token_expired(expiry - Duration::from_secs(120)));
        assert!(credentials.access_token_expired(expiry - Duration::from_secs(10)));
        assert!(credentials.access_token_expired(expiry + Duration::from_secs(10)));

        let unreadable = Credentials {
            access_token_expires_at: "soon".to_owned(),
            ..sample()
        };
        assert!(!unreadable.access_token_expired(expiry + Duration::from_secs(10)));
    }
}
