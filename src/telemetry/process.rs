//! Process metrics in the Prometheus client convention (`process_*`), read
//! from `/proc/self` on each scrape, plus the memory limit of the cgroup the
//! process runs in (what a pod's `resources.limits.memory` becomes).

use super::{counter_f64, gauge};
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// When the process started, for `process_start_time_seconds`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessInfo {
    started_unix: f64,
}

impl Default for ProcessInfo {
    fn default() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self { started_unix: now.as_secs_f64() }
    }
}

impl ProcessInfo {
    pub fn render(&self, o: &mut String) {
        if let Some((user, system)) = cpu_ticks() {
            counter_f64(
                o,
                "process_cpu_seconds_total",
                "User and system CPU time, seconds.",
                (user + system) / USER_HZ,
            );
        }
        if let Some((rss, hwm)) = memory_kib() {
            gauge(o, "process_resident_memory_bytes", "Resident memory size, bytes.", rss * 1024);
            gauge(
                o,
                "iotpipe_process_peak_resident_memory_bytes",
                "Peak resident memory size (VmHWM), bytes.",
                hwm * 1024,
            );
        }
        if let Some(limit) = cgroup_memory_limit() {
            gauge(o, "iotpipe_memory_limit_bytes", "Memory limit of the process's cgroup, bytes.", limit);
        }
        let _ = std::fmt::Write::write_fmt(
            o,
            format_args!(
                "# HELP process_start_time_seconds Start time of the process since the Unix epoch, seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.3}\n",
                self.started_unix
            ),
        );
    }
}

/// (utime, stime) in ticks, fields 14 and 15 of `/proc/self/stat`.
fn cpu_ticks() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; the fields after it do not.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// (VmRSS, VmHWM) in KiB from `/proc/self/status`.
fn memory_kib() -> Option<(i64, i64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<i64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The memory limit of the cgroup the process is in: `memory.max` (cgroup
/// v2) or `memory.limit_in_bytes` (v1), when there is one.
fn cgroup_memory_limit() -> Option<i64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |path: String| std::fs::read_to_string(path).ok()?.trim().parse::<i64>().ok();
    let v1 = cgroup.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers.split(',').any(|c| c == "memory").then(|| path.trim_end_matches('/').to_string())
    });
    let limit = match v1 {
        Some(path) => read(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
            .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes".into())),
        None => {
            let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim_end_matches('/').to_string();
            read(format!("/sys/fs/cgroup{path}/memory.max")).or_else(|| read("/sys/fs/cgroup/memory.max".into()))
        }
    }?;
    // v1 says "no limit" with a number near 2^63; v2 with "max" (not a number).
    (limit < (1 << 62)).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut o = String::new();
        ProcessInfo::default().render(&mut o);
        assert!(o.contains("\nprocess_resident_memory_bytes "), "{o}");
        assert!(o.contains("\nprocess_cpu_seconds_total "), "{o}");
        assert!(o.contains("\nprocess_start_time_seconds "), "{o}");
        let (rss, hwm) = memory_kib().expect("/proc/self/status");
        assert!(rss > 0 && hwm >= rss);
    }
}
