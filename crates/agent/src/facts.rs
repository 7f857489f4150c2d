//! What the agent reports about its host, and the host's stable
//! fingerprint.
//!
//! sysinfo covers most facts portably; `/dev/kvm` and the DMI files come
//! straight from the kernel. Collection never fails as a whole: a fact the
//! agent cannot read is left empty rather than stopping the heartbeat.

use std::fs::OpenOptions;
use std::path::Path;

use mobius_api::device::{Disk, HostFacts, NetworkInterface};
use sha2::{Digest, Sha256};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, Product, RefreshKind, System};

/// File systems that hold no user data even though sysinfo lists them
/// (it already drops proc, sysfs, tmpfs and friends): snap and container
/// image layers would bury the real disks.
const SKIPPED_FILE_SYSTEMS: &[&str] = &["squashfs", "nsfs", "autofs", "ramfs", "efivarfs"];

/// DMI values firmware vendors ship instead of a real one.
const PLACEHOLDERS: &[&str] = &[
    "",
    "0",
    "none",
    "default string",
    "not specified",
    "not applicable",
    "to be filled by o.e.m.",
    "system serial number",
    "03000200-0400-0500-0006-000700080009",
    "00000000-0000-0000-0000-000000000000",
];

pub fn collect() -> HostFacts {
    let system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .ok()
    .map(|mut system| {
        system.refresh_cpu_list(CpuRefreshKind::nothing());
        system
    });
    let cpus = system.as_ref().map(|system| system.cpus()).unwrap_or(&[]);
    let cpu_model = cpus
        .iter()
        .map(|cpu| cpu.brand().trim())
        .find(|brand| !brand.is_empty())
        .unwrap_or_default()
        .to_owned();
    // Logical CPUs of the host, not of this process's cgroup or affinity mask.
    let cpu_cores = if cpus.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cpus.len()
    };

    HostFacts {
        hostname: hostname(),
        os_name: System::name().unwrap_or_default(),
        os_version: System::os_version().unwrap_or_default(),
        kernel_version: System::kernel_version().unwrap_or_default(),
        architecture: std::env::consts::ARCH.to_owned(),
        cpu_model,
        cpu_cores: u32::try_from(cpu_cores).unwrap_or(u32::MAX),
        memory_bytes: system.as_ref().map_or(0, System::total_memory),
        disks: disks(),
        interfaces: interfaces(),
        uptime_secs: System::uptime().unwrap_or_default(),
        kvm_available: kvm_available(Path::new("/dev/kvm")),
        hardware_uuid: meaningful(Product::uuid().ok()).map(|uuid| uuid.to_lowercase()),
        serial_number: meaningful(Product::serial_number().ok()),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn hostname() -> String {
    System::host_name()
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
        .unwrap_or_default()
}

fn disks() -> Vec<Disk> {
    let Ok(disks) = Disks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut out: Vec<Disk> = disks
        .iter()
        .filter(|disk| disk.total_space() > 0)
        .filter(|disk| {
            let fs = disk.file_system().to_string_lossy();
            !SKIPPED_FILE_SYSTEMS.contains(&fs.as_ref()) && !fs.starts_with("fuse.")
        })
        .map(|disk| Disk {
            mount_point: disk.mount_point().to_string_lossy().into_owned(),
            total_bytes: disk.total_space(),
            available_bytes: disk.available_space(),
        })
        .collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    // Bind mounts of one file system show up once per mount point: keep them,
    // they are what an operator sees in `df`.
    out
}

fn interfaces() -> Vec<NetworkInterface> {
    let Ok(networks) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut out: Vec<NetworkInterface> = networks
        .iter()
        .map(|(name, data)| {
            let mac = data.mac_address();
            let mut addresses: Vec<String> = data
                .ip_networks()
                .iter()
                .map(|network| network.to_string())
                .collect();
            addresses.sort();
            NetworkInterface {
                name: name.to_string_lossy().into_owned(),
                mac_address: (!mac.is_unspecified()).then(|| mac.to_string()),
                addresses,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `/dev/kvm` exists *and* this process may open it read-write: what a
/// hypervisor started by the agent would need, not merely a loaded module.
fn kvm_available(device: &Path) -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .is_ok()
}

fn meaningful(value: Option<String>) -> Option<String> {
    value
        .map(|value| value.trim().to_owned())
        .filter(|value| !PLACEHOLDERS.contains(&value.to_lowercase().as_str()))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// Whether `current` differs from what was last sent in a way worth
/// reporting. Uptime and free space change on every heartbeat; counting
/// them would send the full facts every time and defeat "only when they
/// changed".
pub fn changed_meaningfully(previous: &HostFacts, current: &HostFacts) -> bool {
    fn stable(facts: &HostFacts) -> HostFacts {
        let mut facts = facts.clone();
        facts.uptime_secs = 0;
        for disk in &mut facts.disks {
            disk.available_bytes = 0;
        }
        facts
    }
    stable(previous) != stable(current)
}

/// A stable identity for the host, so re-enrolling the same machine keeps
/// its device record. Hashed so the raw machine id (which some software
/// treats as confidential) never leaves the host.
pub fn host_fingerprint(facts: &HostFacts) -> String {
    let source = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| read_trimmed(path))
        .unwrap_or_else(|| fallback_identity(facts));
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// Hostname plus the first hardware address, for hosts without a machine
/// id (some containers and minimal images).
fn fallback_identity(facts: &HostFacts) -> String {
    let mac = facts
        .interfaces
        .iter()
        .find_map(|interface| interface.mac_address.clone())
        .unwrap_or_default();
    format!("{}\n{mac}", facts.hostname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_plausible_facts() {
        let facts = collect();
        assert!(!facts.hostname.is_empty(), "{facts:?}");
        assert!(facts.cpu_cores >= 1, "{facts:?}");
        assert!(facts.memory_bytes > 0, "{facts:?}");
        assert!(!facts.interfaces.is_empty(), "{facts:?}");
        assert!(!facts.kernel_version.is_empty(), "{facts:?}");
        assert!(!facts.architecture.is_empty());
        assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
        let lo = facts.interfaces.iter().find(|i| i.name == "lo");
        if let Some(lo) = lo {
            assert!(lo.addresses.iter().any(|a| a == "127.0.0.1/8"), "{lo:?}");
        }
    }

    #[test]
    fn the_fingerprint_is_stable_and_hex() {
        let facts = collect();
        let first = host_fingerprint(&facts);
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(host_fingerprint(&collect()), first);
    }

    #[test]
    fn the_fallback_identity_uses_hostname_and_first_mac() {
        let facts = HostFacts {
            hostname: "web-1".into(),
            interfaces: vec![
                NetworkInterface {
                    name: "lo".into(),
                    mac_address: None,
                    addresses: vec![],
                },
                NetworkInterface {
                    name: "eth0".into(),
                    mac_address: Some("52:54:00:12:34:56".into()),
                    addresses: vec![],
                },
            ],
            ..HostFacts::default()
        };
        assert_eq!(fallback_identity(&facts), "web-1\n52:54:00:12:34:56");
    }

    #[test]
    fn uptime_and_free_space_alone_are_not_a_change() {
        let before = HostFacts {
            hostname: "a".into(),
            uptime_secs: 10,
            disks: vec![Disk {
                mount_point: "/".into(),
                total_bytes: 100,
                available_bytes: 50,
            }],
            ..HostFacts::default()
        };
        let mut after = before.clone();
        after.uptime_secs = 70;
        after.disks[0].available_bytes = 40;
        assert!(!changed_meaningfully(&before, &after));
        after.hostname = "b".into();
        assert!(changed_meaningfully(&before, &after));
    }

    #[test]
    fn kvm_needs_an_openable_device() {
        assert!(!kvm_available(Path::new("/nonexistent/kvm")));
    }

    #[test]
    fn vendor_placeholders_are_not_serial_numbers() {
        assert_eq!(meaningful(Some("To Be Filled By O.E.M.".into())), None);
        assert_eq!(meaningful(Some(" \n".into())), None);
        assert_eq!(
            meaningful(Some("PF2ABC12\n".into())),
            Some("PF2ABC12".into())
        );
    }
}
