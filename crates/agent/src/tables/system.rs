//! The host itself: hardware, OS, kernel, uptime, units and modules.

use std::collections::BTreeSet;
use std::time::Duration;

use super::agent::AgentInfo;
use super::read;
use super::schema::Record;

/// How long `systemctl` may take before the table stays empty.
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(5);

fn hostname() -> String {
    let name = read::trimmed("/proc/sys/kernel/hostname");
    if name.is_empty() {
        read::trimmed("/etc/hostname")
    } else {
        name
    }
}

pub fn system_info(_: &AgentInfo) -> Vec<Record> {
    let cpuinfo = read::text("/proc/cpuinfo").unwrap_or_default();
    let mut logical = 0usize;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let (mut brand, mut model, mut microcode) = (String::new(), String::new(), String::new());
    let mut physical_id = String::new();
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().to_owned());
        match key {
            "processor" => logical += 1,
            "model name" | "Model" if brand.is_empty() => brand = value,
            "model" if model.is_empty() => model = value,
            "microcode" if microcode.is_empty() => microcode = value,
            "physical id" => {
                sockets.insert(value.clone());
                physical_id = value;
            }
            "core id" => {
                cores.insert((physical_id.clone(), value));
            }
            _ => {}
        }
    }
    let logical = logical.max(1);
    let physical = if cores.is_empty() {
        logical
    } else {
        cores.len()
    };
    let memory = read::text("/proc/meminfo")
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or_default();
    let dmi = |name: &str| read::trimmed(format!("/sys/class/dmi/id/{name}"));
    let host = hostname();
    vec![vec![
        ("hostname", host.clone()),
        ("uuid", dmi("product_uuid").to_lowercase()),
        ("cpu_type", std::env::consts::ARCH.to_owned()),
        ("cpu_subtype", model),
        ("cpu_brand", brand),
        ("cpu_physical_cores", physical.to_string()),
        ("cpu_logical_cores", logical.to_string()),
        ("cpu_sockets", sockets.len().max(1).to_string()),
        ("cpu_microcode", microcode),
        ("physical_memory", memory.to_string()),
        ("hardware_vendor", dmi("sys_vendor")),
        ("hardware_model", dmi("product_name")),
        ("hardware_version", dmi("product_version")),
        ("hardware_serial", dmi("product_serial")),
        ("board_vendor", dmi("board_vendor")),
        ("board_model", dmi("board_name")),
        ("board_version", dmi("board_version")),
        ("board_serial", dmi("board_serial")),
        ("computer_name", host.clone()),
        ("local_hostname", host),
    ]]
}

fn os_release_pairs() -> Vec<(String, String)> {
    read::text("/etc/os-release")
        .or_else(|| read::text("/usr/lib/os-release"))
        .map(|text| read::key_values(&text))
        .unwrap_or_default()
}

pub fn os_version(_: &AgentInfo) -> Vec<Record> {
    let pairs = os_release_pairs();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let version_id = get("VERSION_ID");
    let mut parts = version_id.split('.').map(str::to_owned);
    let name = get("NAME");
    vec![vec![
        (
            "name",
            if name.is_empty() {
                "Linux".to_owned()
            } else {
                name
            },
        ),
        ("version", {
            let version = get("VERSION");
            if version.is_empty() {
                version_id.clone()
            } else {
                version
            }
        }),
        ("major", parts.next().unwrap_or_default()),
        ("minor", parts.next().unwrap_or_default()),
        ("patch", parts.next().unwrap_or_default()),
        ("build", get("BUILD_ID")),
        ("platform", get("ID")),
        ("platform_like", get("ID_LIKE")),
        ("codename", get("VERSION_CODENAME")),
        ("arch", std::env::consts::ARCH.to_owned()),
    ]]
}

pub fn os_release(_: &AgentInfo) -> Vec<Record> {
    os_release_pairs()
        .into_iter()
        .map(|(key, value)| vec![("key", key), ("value", value)])
        .collect()
}

pub fn kernel_info(_: &AgentInfo) -> Vec<Record> {
    let cmdline = read::trimmed("/proc/cmdline");
    let mut path = String::new();
    let mut device = String::new();
    let mut arguments = Vec::new();
    for word in cmdline.split_whitespace() {
        if let Some(image) = word.strip_prefix("BOOT_IMAGE=") {
            path = image.to_owned();
        } else {
            if let Some(root) = word.strip_prefix("root=") {
                device = root.to_owned();
            }
            arguments.push(word);
        }
    }
    vec![vec![
        ("version", read::trimmed("/proc/sys/kernel/osrelease")),
        ("arguments", arguments.join(" ")),
        ("path", path),
        ("device", device),
    ]]
}

pub fn uptime(_: &AgentInfo) -> Vec<Record> {
    let Some(total) = read::text("/proc/uptime").and_then(|text| {
        let first = text.split_whitespace().next()?;
        first.parse::<f64>().ok()
    }) else {
        return Vec::new();
    };
    // Whole seconds; uptime is never negative or beyond u64.
    let total = total.max(0.0) as u64;
    vec![vec![
        ("days", (total / 86_400).to_string()),
        ("hours", (total % 86_400 / 3_600).to_string()),
        ("minutes", (total % 3_600 / 60).to_string()),
        ("seconds", (total % 60).to_string()),
        ("total_seconds", total.to_string()),
    ]]
}

pub fn kernel_modules(_: &AgentInfo) -> Vec<Record> {
    read::text("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, size, _refs, used_by, status, address, ..] = fields.as_slice() else {
                return None;
            };
            Some(vec![
                ("name", (*name).to_owned()),
                ("size", (*size).to_owned()),
                ("used_by", used_by.trim_end_matches(',').to_owned()),
                ("status", (*status).to_owned()),
                ("address", (*address).to_owned()),
            ])
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Unit {
    unit: String,
    #[serde(default)]
    load: String,
    #[serde(default)]
    active: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    description: String,
}

pub fn systemd_units(_: &AgentInfo) -> Vec<Record> {
    let Some(json) = read::command(
        "systemctl",
        &["list-units", "--all", "--output=json", "--no-pager"],
        SYSTEMCTL_LIMIT,
    ) else {
        return Vec::new();
    };
    let units: Vec<Unit> = match serde_json::from_str(&json) {
        Ok(units) => units,
        Err(_) => return parse_plain_units(&json),
    };
    units
        .into_iter()
        .map(|unit| {
            vec![
                ("id", unit.unit),
                ("description", unit.description),
                ("load_state", unit.load),
                ("active_state", unit.active),
                ("sub_state", unit.sub),
                ("user", String::new()),
            ]
        })
        .collect()
}

/// Older systemd ignores `--output=json` and prints its table.
fn parse_plain_units(text: &str) -> Vec<Record> {
    text.lines()
        .map(|line| line.trim_start_matches(['●', '*', ' ']))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?;
            if !id.contains('.') {
                return None;
            }
            let load = words.next()?.to_owned();
            let active = words.next()?.to_owned();
            let sub = words.next()?.to_owned();
            let description = words.collect::<Vec<_>>().join(" ");
            Some(vec![
                ("id", id.to_owned()),
                ("description", description),
                ("load_state", load),
                ("active_state", active),
                ("sub_state", sub),
            ])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_systemctl_output_is_understood() {
        let text = "  ssh.service   loaded active running OpenBSD Secure Shell server\n\
                    ● foo.service loaded failed failed Foo\n\
                    \n\
                    LOAD   = Reflects whether the unit definition was properly loaded.\n";
        let units = parse_plain_units(text);
        assert_eq!(units.len(), 2, "{units:?}");
        assert_eq!(units[0][0].1, "ssh.service");
        assert_eq!(units[0][1].1, "OpenBSD Secure Shell server");
        assert_eq!(units[1][3].1, "failed");
    }
}
