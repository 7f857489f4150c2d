//! `mounts` and `disk_encryption`.

use std::path::Path;

use nix::sys::statvfs::statvfs;

use super::agent::AgentInfo;
use super::read;
use super::schema::Record;

/// `/proc/mounts` escapes spaces, tabs, newlines and backslashes in octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn mounts(_: &AgentInfo) -> Vec<Record> {
    read::text("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [device, path, kind, flags, ..] = fields.as_slice() else {
                return None;
            };
            let (device, path) = (unescape(device), unescape(path));
            let alias = if device.starts_with('/') {
                std::fs::canonicalize(&device)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| device.clone())
            } else {
                device.clone()
            };
            let mut row = vec![
                ("device", device),
                ("device_alias", alias),
                ("type", (*kind).to_owned()),
                ("flags", (*flags).to_owned()),
            ];
            if let Ok(stats) = statvfs(Path::new(&path)) {
                row.extend([
                    ("blocks_size", stats.fragment_size().to_string()),
                    ("blocks", stats.blocks().to_string()),
                    ("blocks_free", stats.blocks_free().to_string()),
                    ("blocks_available", stats.blocks_available().to_string()),
                    ("inodes", stats.files().to_string()),
                    ("inodes_free", stats.files_free().to_string()),
                ]);
            }
            row.push(("path", path));
            Some(row)
        })
        .collect()
}

pub fn disk_encryption(_: &AgentInfo) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let dm_uuid = read::trimmed(format!("/sys/class/block/{name}/dm/uuid"));
            let (encrypted, kind, uuid) = describe_dm_uuid(&dm_uuid);
            vec![
                ("name", format!("/dev/{name}")),
                ("uuid", uuid),
                ("encrypted", if encrypted { "1" } else { "0" }.to_owned()),
                ("type", kind),
                (
                    "encryption_status",
                    if encrypted {
                        "encrypted"
                    } else {
                        "not encrypted"
                    }
                    .to_owned(),
                ),
            ]
        })
        .collect()
}

/// device-mapper names dm-crypt devices `CRYPT-<TYPE>-<uuid>-<name>`
/// (TYPE being LUKS1, LUKS2, PLAIN, ...).
fn describe_dm_uuid(dm_uuid: &str) -> (bool, String, String) {
    match dm_uuid.strip_prefix("CRYPT-") {
        Some(rest) => {
            let mut parts = rest.splitn(2, '-');
            let kind = parts.next().unwrap_or_default().to_lowercase();
            let remainder = parts.next().unwrap_or_default();
            // A LUKS uuid is 32 hex digits without dashes here.
            let uuid = remainder.split('-').next().unwrap_or_default().to_owned();
            (true, kind, uuid)
        }
        None => (false, String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_crypt_devices_are_encrypted() {
        let (encrypted, kind, uuid) =
            describe_dm_uuid("CRYPT-LUKS2-0123456789abcdef0123456789abcdef-luks-root");
        assert!(encrypted);
        assert_eq!(kind, "luks2");
        assert_eq!(uuid, "0123456789abcdef0123456789abcdef");
        assert!(!describe_dm_uuid("LVM-abc").0);
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
    }
}
