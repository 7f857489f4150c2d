//! `users`, `groups` and `logged_in_users`.

use super::agent::AgentInfo;
use super::read;
use super::schema::Record;

/// osquery's `_signed` columns: the id as a signed 32-bit number, so
/// `nobody`'s 4294967294 reads -2 there.
fn signed(id: &str) -> String {
    id.parse::<u32>()
        .map(|id| (id as i32).to_string())
        .unwrap_or_default()
}

pub fn users(_: &AgentInfo) -> Vec<Record> {
    parse_passwd(&read::text("/etc/passwd").unwrap_or_default())
}

fn parse_passwd(text: &str) -> Vec<Record> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, uid, gid, gecos, home, shell, ..] = fields.as_slice() else {
                return None;
            };
            Some(vec![
                ("uid", (*uid).to_owned()),
                ("gid", (*gid).to_owned()),
                ("uid_signed", signed(uid)),
                ("gid_signed", signed(gid)),
                ("username", (*name).to_owned()),
                ("description", (*gecos).to_owned()),
                ("directory", (*home).to_owned()),
                ("shell", (*shell).to_owned()),
            ])
        })
        .collect()
}

pub fn groups(_: &AgentInfo) -> Vec<Record> {
    read::text("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, gid, ..] = fields.as_slice() else {
                return None;
            };
            Some(vec![
                ("gid", (*gid).to_owned()),
                ("gid_signed", signed(gid)),
                ("groupname", (*name).to_owned()),
            ])
        })
        .collect()
}

/// `struct utmp` on Linux (glibc, every 64-bit and 32-bit ABI alike).
const UTMP_SIZE: usize = 384;

pub fn logged_in_users(_: &AgentInfo) -> Vec<Record> {
    ["/var/run/utmp", "/run/utmp"]
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .map(|bytes| parse_utmp(&bytes))
        .unwrap_or_default()
}

fn parse_utmp(bytes: &[u8]) -> Vec<Record> {
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let i32_at = |b: &[u8], at: usize| i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    bytes
        .chunks_exact(UTMP_SIZE)
        .filter_map(|entry| {
            let kind = match i16::from_ne_bytes([entry[0], entry[1]]) {
                1 => "runlevel",
                2 => "boottime",
                3 => "new_time",
                4 => "old_time",
                5 => "init",
                6 => "login",
                7 => "user",
                8 => "dead",
                9 => "accounting",
                _ => return None,
            };
            Some(vec![
                ("type", kind.to_owned()),
                ("pid", i32_at(entry, 4).to_string()),
                ("tty", text(&entry[8..40])),
                ("user", text(&entry[44..76])),
                ("host", text(&entry[76..332])),
                ("time", i32_at(entry, 340).to_string()),
            ])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_become_users() {
        let rows = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nbad line\n",
        );
        assert_eq!(rows.len(), 2);
        assert!(rows[0].contains(&("username", "root".into())));
        assert!(rows[1].contains(&("shell", "/usr/sbin/nologin".into())));
        assert_eq!(signed("4294967294"), "-2");
    }

    #[test]
    fn a_utmp_user_entry_is_read() {
        let mut entry = vec![0u8; UTMP_SIZE];
        entry[0..2].copy_from_slice(&7i16.to_ne_bytes());
        entry[4..8].copy_from_slice(&4242i32.to_ne_bytes());
        entry[8..13].copy_from_slice(b"pts/0");
        entry[44..49].copy_from_slice(b"alice");
        entry[76..85].copy_from_slice(b"10.0.0.9\0");
        entry[340..344].copy_from_slice(&1_700_000_000i32.to_ne_bytes());
        let mut bytes = entry.clone();
        bytes.extend(vec![0u8; UTMP_SIZE]); // an EMPTY entry, skipped
        let rows = parse_utmp(&bytes);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert!(row.contains(&("type", "user".into())));
        assert!(row.contains(&("user", "alice".into())));
        assert!(row.contains(&("tty", "pts/0".into())));
        assert!(row.contains(&("host", "10.0.0.9".into())));
        assert!(row.contains(&("pid", "4242".into())));
        assert!(row.contains(&("time", "1700000000".into())));
    }
}
