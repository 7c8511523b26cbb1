//! Resident memory and CPU time of process groups, read from /proc (SPEC
//! §12 `max_memory`, §14 `/metrics`): sums over every process whose process
//! group is the instance's, so a `sh -c` wrapper's children count too.
//!
//! One scan of /proc, one `stat` file per process, serves every group asked
//! about: the caller checks all its instances at once. The parsing is pure and table-tested; a process
//! that exits mid-scan is simply skipped.

use std::collections::{BTreeMap, BTreeSet};

/// RSS in bytes per group of `pgids` (groups with no readable process are absent).
pub fn group_rss(pgids: &BTreeSet<u32>) -> BTreeMap<u32, u64> {
    group_usage(pgids)
        .into_iter()
        .map(|(pgid, u)| (pgid, u.rss_bytes))
        .collect()
}

/// What a process group uses, summed over its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User + system time in clock ticks, the members' reaped children
    /// included.
    pub cpu_ticks: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// The process group, CPU ticks (utime + stime + cutime + cstime, fields
/// 14 to 17) and resident pages (field 24) of a `/proc/PID/stat` line.
pub fn stat_usage(stat: &str) -> Option<(u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(22).collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let pgrp = u32::try_from(field(5)?).ok()?;
    let ticks = (14..=17).map(field).sum::<Option<u64>>()?;
    Some((pgrp, ticks, field(24)?))
}

/// The kernel's clock ticks per second, the unit of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf with a constant.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// CPU and RSS per group of `pgids`, from one scan of /proc reading one
/// file per process (groups with no readable process are absent).
pub fn group_usage(pgids: &BTreeSet<u32>) -> BTreeMap<u32, Usage> {
    let mut out = BTreeMap::new();
    if pgids.is_empty() {
        return out;
    }
    // SAFETY: sysconf with a constant.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    // One buffer and one path for every process: open, one read, close
    // (`read_to_string` would also stat the file and grow a new String).
    let mut buf = [0u8; 2048];
    let mut path = String::with_capacity(32);
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        path.clear();
        path.push_str("/proc/");
        path.push_str(pid);
        path.push_str("/stat");
        let Some(stat) = read_small(&path, &mut buf) else {
            continue;
        };
        let Some((pgrp, ticks, pages)) = stat_usage(stat).filter(|u| pgids.contains(&u.0)) else {
            continue;
        };
        let u: &mut Usage = out.entry(pgrp).or_default();
        u.cpu_ticks += ticks;
        u.rss_bytes += pages * page;
    }
    out
}

/// Reads a /proc file of at most `buf`'s size in one read (the kernel
/// renders a `stat` file whole on the first read).
fn read_small<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a str> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}

/// `300.2 MiB`, `256 MiB`, `512 B`: binary units, one decimal unless exact.
pub fn human(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut div = 1u64;
    while unit + 1 < UNITS.len() && bytes >= div * 1024 {
        div *= 1024;
        unit += 1;
    }
    if bytes.is_multiple_of(div) {
        format!("{} {}", bytes / div, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / div as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_usage_lines() {
        // The command name may hold spaces and parentheses: fields are
        // counted from the last `)`.
        for (line, pgrp) in [
            (
                "77 (a b) R 5 70 70 0 0 0 0 0 0 0 1 1 1 1 0 0 0 0 0 0 9",
                Some(70),
            ),
            (
                "77 (x) (y)) S 5 71 70 0 0 0 0 0 0 0 1 1 1 1 0 0 0 0 0 0 9",
                Some(71),
            ),
            ("77 (sh", None),
            ("77 (sh) S 5 notanumber", None),
        ] {
            assert_eq!(stat_usage(line).map(|u| u.0), pgrp, "{line}");
        }
        // A real line of `sleep` (fields 14-17: 3 1 7 2; field 24: 130).
        let sleep = "4321 (sle ep)) S 1 4321 4321 0 -1 4194560 100 0 0 0 3 1 7 2 20 0 1 0 \
                     12345 2461696 130 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(stat_usage(sleep), Some((4321, 13, 130)));
        assert_eq!(stat_usage("1 (x) S 1 2 2 0 -1 0 0 0 0 0 1 2"), None);
        assert_eq!(stat_usage("garbage"), None);
    }

    #[test]
    fn own_group_usage_is_read() {
        let me = nix::unistd::getpgrp().as_raw() as u32;
        let usage = group_usage(&BTreeSet::from([me]));
        let u = usage.get(&me).expect("our own group is in /proc");
        assert!(u.rss_bytes > 0);
    }

    #[test]
    fn human_sizes() {
        let table: &[(u64, &str)] = &[
            (0, "0 B"),
            (512, "512 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (256 * 1024 * 1024, "256 MiB"),
            (314_782_515, "300.2 MiB"),
            (3 << 30, "3 GiB"),
        ];
        for (n, want) in table {
            assert_eq!(human(*n), *want, "{n}");
        }
    }

    #[test]
    fn own_group_has_memory() {
        let me = nix::unistd::getpgrp().as_raw() as u32;
        let rss = group_rss(&BTreeSet::from([me]));
        assert!(rss.get(&me).is_some_and(|&b| b > 0), "{rss:?}");
    }
}
