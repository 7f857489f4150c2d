//! `processes`, from `/proc/<pid>`.

use std::path::Path;

use super::agent::AgentInfo;
use super::read;
use super::schema::Record;

/// Linux reports CPU times and start times in clock ticks of `USER_HZ`,
/// which the kernel fixes at 100 for user space on every architecture.
const TICKS_PER_SEC: u64 = 100;

pub fn processes(_: &AgentInfo) -> Vec<Record> {
    let boot_time = read::text("/proc/stat")
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|value| value.trim().parse::<u64>().ok())
        })
        .unwrap_or_default();
    read::pids()
        .into_iter()
        .filter_map(|pid| process(pid, boot_time))
        .collect()
}

/// One process, or `None` when it exited while being read.
fn process(pid: u32, boot_time: u64) -> Option<Record> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = read::text(dir.join("stat"))?;
    // The name is in parentheses and may itself hold spaces and ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // Fields after the name, numbered as in proc(5) from 3 (state).
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or_default();
    let ticks = |n: usize| field(n).parse::<u64>().unwrap_or_default();

    let status = read::text(dir.join("status")).unwrap_or_default();
    let ids = |key: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let kib = |key: &str| -> String {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| (kib * 1024).to_string())
            .unwrap_or_default()
    };
    let uids = ids("Uid:");
    let gids = ids("Gid:");
    let id = |list: &[String], n: usize| list.get(n).cloned().unwrap_or_default();

    let path = read::link(dir.join("exe"));
    let on_disk = if path.is_empty() {
        "-1"
    } else if path.ends_with(" (deleted)") || !Path::new(&path).exists() {
        "0"
    } else {
        "1"
    };
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .split('\0')
                .filter(|arg| !arg.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let io = read::text(dir.join("io")).unwrap_or_default();
    let io_value = |key: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let start_time = if boot_time > 0 {
        (boot_time + ticks(22) / TICKS_PER_SEC).to_string()
    } else {
        String::new()
    };

    Some(vec![
        ("pid", pid.to_string()),
        ("name", name),
        ("path", path),
        ("cmdline", cmdline),
        ("state", field(3).to_owned()),
        ("cwd", read::link(dir.join("cwd"))),
        ("root", read::link(dir.join("root"))),
        ("uid", id(&uids, 0)),
        ("gid", id(&gids, 0)),
        ("euid", id(&uids, 1)),
        ("egid", id(&gids, 1)),
        ("suid", id(&uids, 2)),
        ("sgid", id(&gids, 2)),
        ("on_disk", on_disk.to_owned()),
        ("wired_size", "0".to_owned()),
        ("resident_size", kib("VmRSS:")),
        ("total_size", kib("VmSize:")),
        // osquery's unit: milliseconds.
        ("user_time", (ticks(14) * 1000 / TICKS_PER_SEC).to_string()),
        (
            "system_time",
            (ticks(15) * 1000 / TICKS_PER_SEC).to_string(),
        ),
        ("disk_bytes_read", io_value("read_bytes:")),
        ("disk_bytes_written", io_value("write_bytes:")),
        // Seconds since the epoch, as osquery 5 reports it.
        ("start_time", start_time),
        ("parent", field(4).to_owned()),
        ("pgroup", field(5).to_owned()),
        ("threads", field(20).to_owned()),
        ("nice", field(19).to_owned()),
    ])
}
