//! The tables: osquery's names and columns where osquery has the table, so
//! a query written for osquery runs here unchanged.

use super::agent::{self, AgentInfo};
use super::{accounts, network, packages, processes, storage, system};

/// A column's declared type. Values are stored with SQLite's affinity for
/// it, so `WHERE pid > 100` compares numbers, and answered as strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
}

/// One row from a table's source: column name → value; a column left out
/// reads as `""`.
pub type Record = Vec<(&'static str, String)>;

/// A host table.
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [ColumnDef],
    /// Where the rows come from (for the docs and `--help`).
    pub source: &'static str,
    /// Reads the host; an unreadable source gives no rows, not an error,
    /// as in osquery.
    pub rows: fn(&AgentInfo) -> Vec<Record>,
}

/// A column and its declared type.
pub struct ColumnDef {
    pub name: &'static str,
    pub kind: Kind,
}

macro_rules! columns {
    ($($kind:ident $name:literal),* $(,)?) => {
        &[$(ColumnDef { name: $name, kind: Kind::$kind }),*]
    };
}

impl Table {
    pub(super) fn create_sql(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("\"{}\" {}", c.name, c.sql_type()))
            .collect();
        format!("CREATE TABLE \"{}\" ({});", self.name, columns.join(", "))
    }
}

/// Every host table, in the order the docs list them.
pub static TABLES: &[Table] = &[
    Table {
        name: "system_info",
        columns: columns![
            Text "hostname", Text "uuid", Text "cpu_type", Text "cpu_subtype", Text "cpu_brand",
            Integer "cpu_physical_cores", Integer "cpu_logical_cores", Integer "cpu_sockets",
            Text "cpu_microcode", Integer "physical_memory", Text "hardware_vendor",
            Text "hardware_model", Text "hardware_version", Text "hardware_serial",
            Text "board_vendor", Text "board_model", Text "board_version", Text "board_serial",
            Text "computer_name", Text "local_hostname",
        ],
        source: "/proc/cpuinfo, /proc/meminfo, /sys/class/dmi/id (serials and uuid need root)",
        rows: system::system_info,
    },
    Table {
        name: "os_version",
        columns: columns![
            Text "name", Text "version", Integer "major", Integer "minor", Integer "patch",
            Text "build", Text "platform", Text "platform_like", Text "codename", Text "arch",
        ],
        source: "/etc/os-release (or /usr/lib/os-release)",
        rows: system::os_version,
    },
    Table {
        name: "os_release",
        columns: columns![Text "key", Text "value"],
        source: "every KEY=value line of /etc/os-release (Mobius only; osquery has os_version)",
        rows: system::os_release,
    },
    Table {
        name: "kernel_info",
        columns: columns![Text "version", Text "arguments", Text "path", Text "device"],
        source: "/proc/sys/kernel/osrelease, /proc/cmdline",
        rows: system::kernel_info,
    },
    Table {
        name: "uptime",
        columns: columns![
            Integer "days", Integer "hours", Integer "minutes", Integer "seconds",
            Integer "total_seconds",
        ],
        source: "/proc/uptime",
        rows: system::uptime,
    },
    Table {
        name: "processes",
        columns: columns![
            Integer "pid", Text "name", Text "path", Text "cmdline", Text "state", Text "cwd",
            Text "root", Integer "uid", Integer "gid", Integer "euid", Integer "egid",
            Integer "suid", Integer "sgid", Integer "on_disk", Integer "wired_size",
            Integer "resident_size", Integer "total_size", Integer "user_time",
            Integer "system_time", Integer "disk_bytes_read", Integer "disk_bytes_written",
            Integer "start_time", Integer "parent", Integer "pgroup", Integer "threads",
            Integer "nice",
        ],
        source: "/proc/<pid>/{stat,status,cmdline,exe,cwd,root,io} (path, cwd and io of other users' processes need root)",
        rows: processes::processes,
    },
    Table {
        name: "users",
        columns: columns![
            Integer "uid", Integer "gid", Integer "uid_signed", Integer "gid_signed",
            Text "username", Text "description", Text "directory", Text "shell", Text "uuid",
        ],
        source: "/etc/passwd",
        rows: accounts::users,
    },
    Table {
        name: "groups",
        columns: columns![Integer "gid", Integer "gid_signed", Text "groupname"],
        source: "/etc/group",
        rows: accounts::groups,
    },
    Table {
        name: "logged_in_users",
        columns: columns![
            Text "type", Text "user", Text "tty", Text "host", Integer "time", Integer "pid",
        ],
        source: "/var/run/utmp (empty where there is none, as in most containers)",
        rows: accounts::logged_in_users,
    },
    Table {
        name: "listening_ports",
        columns: columns![
            Integer "pid", Integer "port", Integer "protocol", Integer "family", Text "address",
            Integer "fd", Integer "socket", Text "path", Text "net_namespace",
        ],
        source: "/proc/net/{tcp,tcp6,udp,udp6} joined with the socket inodes of /proc/<pid>/fd (pid and fd of other users' sockets need root; -1 when unknown)",
        rows: network::listening_ports,
    },
    Table {
        name: "interface_details",
        columns: columns![
            Text "interface", Text "mac", Integer "type", Integer "mtu", Integer "metric",
            Integer "flags", Integer "ipackets", Integer "opackets", Integer "ibytes",
            Integer "obytes", Integer "ierrors", Integer "oerrors", Integer "idrops",
            Integer "odrops", Integer "collisions", Integer "last_change", Integer "link_speed",
        ],
        source: "/sys/class/net/<interface>/{address,type,mtu,flags,speed,statistics/*}",
        rows: network::interface_details,
    },
    Table {
        name: "interface_addresses",
        columns: columns![
            Text "interface", Text "address", Text "mask", Text "broadcast",
            Text "point_to_point", Text "type",
        ],
        source: "the kernel's interface addresses (getifaddrs)",
        rows: network::interface_addresses,
    },
    Table {
        name: "mounts",
        columns: columns![
            Text "device", Text "device_alias", Text "path", Text "type", Integer "blocks_size",
            Integer "blocks", Integer "blocks_free", Integer "blocks_available", Integer "inodes",
            Integer "inodes_free", Text "flags",
        ],
        source: "/proc/self/mounts, statvfs(2) on each mount point",
        rows: storage::mounts,
    },
    Table {
        name: "disk_encryption",
        columns: columns![
            Text "name", Text "uuid", Integer "encrypted", Text "type", Text "encryption_status",
        ],
        source: "/sys/class/block/<device>/dm/uuid (a dm-crypt mapping is encrypted; every other block device is not)",
        rows: storage::disk_encryption,
    },
    Table {
        name: "deb_packages",
        columns: columns![
            Text "name", Text "version", Text "source", Integer "size", Text "arch",
            Text "revision", Text "status", Text "maintainer", Text "section", Text "priority",
            Text "admindir",
        ],
        source: "/var/lib/dpkg/status",
        rows: packages::deb_packages,
    },
    Table {
        name: "rpm_packages",
        columns: columns![
            Text "name", Text "version", Text "release", Text "source", Integer "size",
            Text "sha1", Text "arch", Integer "epoch", Integer "install_time", Text "vendor",
            Text "package_group",
        ],
        source: "`rpm -qa` (empty when /var/lib/rpm or the rpm command is absent)",
        rows: packages::rpm_packages,
    },
    Table {
        name: "systemd_units",
        columns: columns![
            Text "id", Text "description", Text "load_state", Text "active_state",
            Text "sub_state", Text "following", Text "object_path", Integer "job_id",
            Text "job_type", Text "job_path", Text "fragment_path", Text "user",
            Text "source_path",
        ],
        source: "`systemctl list-units --all` (empty where systemd is not running)",
        rows: system::systemd_units,
    },
    Table {
        name: "kernel_modules",
        columns: columns![
            Text "name", Integer "size", Text "used_by", Text "status", Text "address",
        ],
        source: "/proc/modules",
        rows: system::kernel_modules,
    },
    Table {
        name: "mobius_agent",
        columns: columns![
            Text "version", Text "device_id", Text "tenant_id", Text "site_id", Text "server",
            Text "state_dir", Text "enrolled_at", Integer "options_version",
            Text "last_heartbeat_at", Integer "pid",
        ],
        source: "the agent itself: its version, process and state directory (state.json, options.json)",
        rows: agent::mobius_agent,
    },
];

impl ColumnDef {
    pub fn sql_type(&self) -> &'static str {
        match self.kind {
            Kind::Text => "TEXT",
            Kind::Integer => "INTEGER",
        }
    }
}
