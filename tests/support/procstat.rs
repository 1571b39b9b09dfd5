//! CPU time of a process from `/proc/<pid>/stat`, for the benches.

/// utime + stime of `/proc/<proc_entry>` (a pid, or `self`), in seconds.
pub(crate) fn cpu_seconds(proc_entry: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{proc_entry}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}
