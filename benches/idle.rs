//! The real `drydock daemon` idling on a node that needs nothing: memory
//! (RSS, PSS, anonymous, from /proc/PID/smaps_rollup), CPU time, and the
//! API requests it makes, after an hour-equivalent of idling. Prints
//! numbers; asserts nothing.
//!
//! `cargo bench --bench idle` measures the bench profile's binary (the
//! release build with the simulator); `cargo bench --profile dev --bench
//! idle` the debug one; `DRYDOCK_BIN=target/production/drydock` measures
//! that binary (the .deb's build) whatever the bench's own profile. `DRYDOCK_IDLE_SECS` (default 60) sets
//! the idle window.
//!
//! Hour-equivalent: the daemon's periodic work is one look per check
//! interval (5 min by default, 12 an hour); here the interval is 5 s, so a
//! 60 s window holds the same 12 looks as an hour in production. Needs root
//! (the daemon holds packages in a sandboxed dpkg root) and dbus-daemon.
//! The upgrade target comes from a watch of the drydock Namespace opened
//! at start-up: one long request, not counted in the idle window.

#[path = "../tests/support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "../tests/support/bus.rs"]
mod bus;

#[path = "../tests/support/procstat.rs"]
mod procstat;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procstat::cpu_seconds;

use apt_sandbox::{DRYDOCK, Sandbox, missing_tools};
use drydock::testing::sim::Scenario;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config_text(dir: &Path, sb: &Sandbox) -> String {
    format!(
        r#"[node]
name = "worker-1"
kubeconfig = "{dir}/kubeconfig"
identity-kubeconfig = "{dir}/kubeconfig"
admin-kubeconfig = ""
state-db = "{dir}/state.db"
run-dir = "{dir}/run"

[reboot]
sentinel-file = "{dir}/reboot-required"
check-kernel = false
check-interval = "5s"

[packages]
dpkg-root = "{root}"

[report]
textfile-dir = "{dir}/metrics"
"#,
        dir = dir.display(),
        root = sb.root.display(),
    )
}

/// `field: N kB` lines of smaps_rollup, in kB.
fn smaps(pid: u32) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((k.trim().to_string(), kb))
        })
        .collect()
}

/// Per mapping of /proc/PID/smaps, grouped by (file or kind, permissions):
/// size, RSS, anonymous, in kB. What of the binary is resident, and where.
fn smaps_by_mapping(pid: u32) -> Vec<(String, String, u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut groups: std::collections::BTreeMap<(String, String), (u64, u64, u64)> =
        Default::default();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping header: "start-end perms offset dev inode [path]".
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            let perms = fields.get(1).copied().unwrap_or("").to_string();
            let name = match fields.get(5) {
                Some(p) if p.starts_with('/') => std::path::Path::new(p)
                    .file_name()
                    .map_or(p.to_string(), |f| f.to_string_lossy().into_owned()),
                Some(p) => p.to_string(),
                None => "[anon]".to_string(),
            };
            current = Some((name, perms));
            continue;
        }
        let (Some(key), Some(kb)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let Ok(kb) = kb.parse::<u64>() else { continue };
        let Some(group) = current.clone() else {
            continue;
        };
        let entry = groups.entry(group).or_default();
        match *key {
            "Size:" => entry.0 += kb,
            "Rss:" => entry.1 += kb,
            "Anonymous:" => entry.2 += kb,
            _ => {}
        }
    }
    let mut rows: Vec<_> = groups
        .into_iter()
        .filter(|(_, (_, rss, _))| *rss > 0)
        .map(|((name, perms), (size, rss, anon))| (name, perms, size, rss, anon))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.3));
    rows
}

fn main() {
    // `cargo test --all-targets` runs bench targets too (without `--bench`):
    // this one takes minutes, so it runs only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "{}: run it with cargo bench (a 70 s idle daemon)",
            env!("CARGO_CRATE_NAME")
        );
        return;
    }
    if let Some(why) = missing_tools(false) {
        println!("SKIPPED: {why}");
        return;
    }
    let idle = Duration::from_secs(
        std::env::var("DRYDOCK_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sim = rt
        .block_on(Scenario::standard(3, 2).start())
        .expect("simulator");
    sim.write_kubeconfig(d.join("kubeconfig"))
        .expect("kubeconfig");
    let logind = bus::Fixture::with_service(&[]);
    std::fs::create_dir(d.join("metrics")).expect("metrics dir");
    let config = d.join("drydock.toml");
    std::fs::write(&config, config_text(d, &sb)).expect("config");
    let drydock = std::env::var("DRYDOCK_BIN").unwrap_or_else(|_| DRYDOCK.to_string());
    let binary = std::fs::metadata(&drydock).map(|m| m.len()).unwrap_or(0);
    let mut daemon = Running(
        Command::new(&drydock)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .env("DBUS_SYSTEM_BUS_ADDRESS", logind.address())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("daemon.log")).expect("log"))
            .spawn()
            .expect("drydock daemon starts"),
    );
    let pid = daemon.0.id();
    // Start-up: holds, identity, first look; then count from a quiet start.
    let warm_up = Duration::from_secs(10);
    std::thread::sleep(warm_up);
    if let Ok(Some(status)) = daemon.0.try_wait() {
        println!(
            "the daemon exited during start-up ({status}); log:\n{}",
            std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default()
        );
        return;
    }
    let start_stats = sim.stats();
    let start_requests = start_stats.total.requests;
    let watches = start_stats.get("watch", "namespaces").requests;
    sim.reset_stats();
    let cpu0 = cpu_seconds(&pid.to_string());
    let t0 = Instant::now();
    let before = smaps(pid);
    std::thread::sleep(idle);
    let cpu = cpu_seconds(&pid.to_string()) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let after = smaps(pid);
    let stats = sim.stats();
    let kb = |m: &std::collections::BTreeMap<String, u64>, k: &str| {
        m.get(k)
            .map_or("?".to_string(), |v| format!("{:.1} MB", *v as f64 / 1024.0))
    };
    println!(
        "drydock daemon, idle node (no reboot needed), binary {} ({:.1} MB)",
        drydock,
        binary as f64 / 1e6
    );
    println!(
        "start-up ({} s): {start_requests} API requests",
        warm_up.as_secs()
    );
    println!(
        "{:<12} {:>12} {:>12}",
        "",
        "after start",
        format!("after {} s", idle.as_secs())
    );
    for k in ["Rss", "Pss", "Anonymous", "Pss_Anon", "Pss_File"] {
        println!("{:<12} {:>12} {:>12}", k, kb(&before, k), kb(&after, k));
    }
    println!("resident, per mapping (kB): size, RSS, anonymous");
    for (name, perms, size, rss, anon) in smaps_by_mapping(pid) {
        println!("  {name:<24} {perms} {size:>8} {rss:>8} {anon:>8}");
    }
    println!(
        "CPU over the idle window: {cpu:.3} s in {wall:.0} s ({:.3} % of one core); scaled to an hour at the 5 min interval: {cpu:.3} s",
        100.0 * cpu / wall
    );
    println!(
        "API requests during the idle window: {} ({} response bytes); the Namespace watch opened at start-up: {} (one long request, re-opened every 30-60 min)",
        stats.total.requests, stats.total.response_bytes, watches
    );
    if stats.total.requests > 0 {
        print!("{stats}");
    }
}
