//! `listening_ports`, `interface_details` and `interface_addresses`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sysinfo::Networks;

use super::agent::AgentInfo;
use super::read;
use super::schema::Record;

/// TCP's LISTEN state in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";
/// A UDP socket with no peer (`TCP_CLOSE` reused by the kernel for UDP).
const UDP_UNCONNECTED: &str = "07";

pub fn listening_ports(_: &AgentInfo) -> Vec<Record> {
    let owners = socket_owners();
    let namespace = read::link("/proc/self/ns/net")
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .to_owned();
    let sources = [
        ("/proc/net/tcp", 6, 2, TCP_LISTEN),
        ("/proc/net/tcp6", 6, 10, TCP_LISTEN),
        ("/proc/net/udp", 17, 2, UDP_UNCONNECTED),
        ("/proc/net/udp6", 17, 10, UDP_UNCONNECTED),
    ];
    let mut rows = Vec::new();
    for (path, protocol, family, listening) in sources {
        let Some(text) = read::text(path) else {
            continue;
        };
        for socket in parse_sockets(&text, listening) {
            let (pid, fd) = owners
                .get(&socket.inode)
                .map(|(pid, fd)| (pid.to_string(), fd.to_string()))
                .unwrap_or_else(|| ("-1".into(), "-1".into()));
            rows.push(vec![
                ("pid", pid),
                ("port", socket.port.to_string()),
                ("protocol", protocol.to_string()),
                ("family", family.to_string()),
                ("address", socket.address.to_string()),
                ("fd", fd),
                ("socket", socket.inode.to_string()),
                ("path", String::new()),
                ("net_namespace", namespace.clone()),
            ]);
        }
    }
    rows
}

#[derive(Debug, PartialEq, Eq)]
struct Socket {
    address: IpAddr,
    port: u16,
    inode: u64,
}

/// The sockets of one `/proc/net/{tcp,udp}{,6}` file in the given state.
fn parse_sockets(text: &str, state: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&state) {
                return None;
            }
            let (address, port) = fields.get(1)?.split_once(':')?;
            Some(Socket {
                address: parse_address(address)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The kernel prints addresses as 32-bit words in host byte order.
fn parse_address(hex: &str) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [v4] => Some(IpAddr::V4(Ipv4Addr::from(v4.to_ne_bytes()))),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, word) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Socket inode → (pid, fd), from every readable `/proc/<pid>/fd`.
fn socket_owners() -> HashMap<u64, (u32, u32)> {
    let mut owners = HashMap::new();
    for pid in read::pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(number) = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let target = read::link(fd.path());
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
            {
                owners.entry(inode).or_insert((pid, number));
            }
        }
    }
    owners
}

fn interface_names() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

pub fn interface_details(_: &AgentInfo) -> Vec<Record> {
    interface_names()
        .into_iter()
        .map(|name| {
            let file = |f: &str| read::trimmed(format!("/sys/class/net/{name}/{f}"));
            let stat = |f: &str| file(&format!("statistics/{f}"));
            let flags = file("flags");
            let flags = i64::from_str_radix(flags.trim_start_matches("0x"), 16)
                .map(|f| f.to_string())
                .unwrap_or_default();
            // `speed` is in Mb/s; -1 (or unreadable) when the link is down.
            let speed = file("speed");
            vec![
                ("mac", file("address")),
                ("type", file("type")),
                ("mtu", file("mtu")),
                ("metric", "0".to_owned()),
                ("flags", flags),
                ("ipackets", stat("rx_packets")),
                ("opackets", stat("tx_packets")),
                ("ibytes", stat("rx_bytes")),
                ("obytes", stat("tx_bytes")),
                ("ierrors", stat("rx_errors")),
                ("oerrors", stat("tx_errors")),
                ("idrops", stat("rx_dropped")),
                ("odrops", stat("tx_dropped")),
                ("collisions", stat("collisions")),
                ("last_change", "-1".to_owned()),
                ("link_speed", speed),
                ("interface", name),
            ]
        })
        .collect()
}

pub fn interface_addresses(_: &AgentInfo) -> Vec<Record> {
    let Ok(networks) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (name, data) in networks.iter() {
        let name = name.to_string_lossy().into_owned();
        let point_to_point = read::trimmed(format!("/sys/class/net/{name}/flags"));
        // IFF_POINTOPOINT
        let is_p2p = i64::from_str_radix(point_to_point.trim_start_matches("0x"), 16)
            .is_ok_and(|flags| flags & 0x10 != 0);
        for network in data.ip_networks() {
            let (mask, broadcast) = masks(network.addr, network.prefix);
            rows.push(vec![
                ("interface", name.clone()),
                ("address", network.addr.to_string()),
                ("mask", mask),
                ("broadcast", if is_p2p { String::new() } else { broadcast }),
                ("point_to_point", String::new()),
                ("type", "unknown".to_owned()),
            ]);
        }
    }
    rows.sort_by(|a, b| (&a[0].1, &a[1].1).cmp(&(&b[0].1, &b[1].1)));
    rows
}

/// The netmask for a prefix length, and the IPv4 broadcast address.
fn masks(addr: IpAddr, prefix: u8) -> (String, String) {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            let broadcast = u32::from(v4) | !bits;
            (
                Ipv4Addr::from(bits).to_string(),
                Ipv4Addr::from(broadcast).to_string(),
            )
        }
        IpAddr::V6(_) => {
            let bits = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            (Ipv6Addr::from(bits).to_string(), String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_are_decoded() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0 100 0 0 10 0\n   \
            1: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 654321 1 0 20 4 30 10 -1\n";
        let sockets = parse_sockets(tcp, TCP_LISTEN);
        assert_eq!(
            sockets,
            vec![Socket {
                address: "127.0.0.1".parse().unwrap(),
                port: 8080,
                inode: 123456
            }]
        );
        assert_eq!(
            parse_address("00000000000000000000000001000000"),
            Some("::1".parse().unwrap())
        );
    }

    #[test]
    fn masks_follow_the_prefix() {
        let (mask, broadcast) = masks("10.1.2.3".parse().unwrap(), 24);
        assert_eq!(
            (mask.as_str(), broadcast.as_str()),
            ("255.255.255.0", "10.1.2.255")
        );
        let (mask, _) = masks("fe80::1".parse().unwrap(), 64);
        assert_eq!(mask, "ffff:ffff:ffff:ffff::");
    }
}
