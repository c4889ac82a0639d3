//! What the local driver reads from /proc. /proc is the source of truth for replicas
//! this server did not spawn itself (adopted after a restart), so everything about a
//! process — alive, which one, its CPU, memory, environment and listening port — comes
//! from here. Reads of /proc never touch a disk, so they are done inline.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

/// The fields of `/proc/<pid>/stat` the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub pgrp: i32,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks after boot when the process started (field 22).
    pub start: u64,
}

impl Stat {
    /// A zombie (`Z`) or dying (`X`) process has ended; only its exit status is left.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

pub(crate) fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(s: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may itself contain spaces and
    // parentheses, so fields are counted from the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so field N is f[N - 3].
    let field = |n: usize| f.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        cpu_ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
        start: field(22)?.parse().ok()?,
    })
}

/// Resident memory in bytes (`VmRSS`); None for a process that has none (zombie, kernel thread).
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    parse_rss(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The environment a process was started with. Only readable for our own user's
/// processes; None for others and for processes that are gone.
pub(crate) fn environ(pid: i32) -> Option<HashMap<String, String>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_environ(&raw))
}

fn parse_environ(raw: &[u8]) -> HashMap<String, String> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// File name of the executable, also when the binary was replaced on disk since it
/// started (a rebuild: the link then ends in " (deleted)").
pub(crate) fn exe_name(pid: i32) -> Option<String> {
    let target = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    Some(name.strip_suffix(" (deleted)").unwrap_or(&name).to_owned())
}

/// Every pid on the host (that this process can see).
pub(crate) fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Members of process group `pgrp` that have not ended.
pub(crate) fn group_members(pgrp: i32) -> Vec<(i32, Stat)> {
    pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, st)| st.pgrp == pgrp && st.is_alive())
        .collect()
}

/// TCP ports the process has a listening socket on: its socket inodes (from its fd
/// links) matched against the LISTEN entries of its network namespace.
pub(crate) fn listening_ports(pid: i32) -> Vec<u16> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .filter_map(|e| {
            let link = fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut ports: Vec<u16> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| parse_listeners(&table))
        .filter(|(_, inode)| inodes.contains(inode))
        .map(|(port, _)| port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// (port, inode) of each LISTEN socket in a `/proc/net/tcp{,6}` table.
fn parse_listeners(table: &str) -> Vec<(u16, u64)> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&LISTEN) {
                return None;
            }
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            Some((port, f.get(9)?.parse().ok()?))
        })
        .collect()
}

/// Clock ticks per second, the unit of `Stat::cpu_ticks` and `Stat::start`.
pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Seconds since boot.
pub(crate) fn uptime_secs() -> Option<f64> {
    fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Memory this host can give its processes, in MiB: `MemTotal`, or the memory limit of
/// our cgroup when one is set (in a container MemTotal is the host's).
pub(crate) fn total_memory_mib() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let total = parse_meminfo_total(&meminfo)? / 1024;
    let limit = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            let path = c.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
            let file = Path::new("/sys/fs/cgroup")
                .join(path.trim_start_matches('/'))
                .join("memory.max");
            fs::read_to_string(file).ok()?.trim().parse::<u64>().ok()
        })
        .map(|bytes| bytes / (1024 * 1024));
    Some(limit.map_or(total, |l| l.min(total)))
}

/// `MemTotal` in KiB.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1200 0 3 0 150 25 0 0 20 0 9 0 987654 \
                    123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(
            st,
            Stat {
                state: 'S',
                pgrp: 4242,
                cpu_ticks: 175,
                start: 987654,
            }
        );
        assert!(st.is_alive());
        let zombie = parse_stat(&line.replace(") S ", ") Z ")).unwrap();
        assert!(!zombie.is_alive());
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        let st = stat(me).unwrap();
        assert!(st.is_alive());
        assert!(st.start > 0);
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(environ(me).unwrap().contains_key("PATH"));
        assert!(exe_name(me).is_some());
        assert!(pids().contains(&me));
        assert!(total_memory_mib().unwrap() > 0);
        assert!(uptime_secs().unwrap() > 0.0);
    }

    #[test]
    fn listening_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id() as i32).contains(&port));
        drop(listener);
        assert!(!listening_ports(std::process::id() as i32).contains(&port));
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_rss("Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_rss("Name:\tkthreadd\n"), None);
        assert_eq!(
            parse_meminfo_total("MemTotal:       24684236 kB\nMemFree: 1 kB\n"),
            Some(24684236)
        );
        let env = parse_environ(b"A=1\0B=x=y\0junk\0");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(env.len(), 2);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:9C47 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0 100 0 0 10 0\n   \
            1: 0100007F:9C48 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listeners(table), vec![(0x9C47, 31337)]);
    }
}
