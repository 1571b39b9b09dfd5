//! The real `drydock daemon` binary, end to end: the Kubernetes API
//! simulator over HTTP, a private D-Bus with a stand-in logind, a real dpkg
//! database in a sandbox root, and the systemd notify protocol on a socket
//! of the test's own. It must hold the protected packages, publish its
//! status, take the lease, cordon, drain, ask logind to reboot, survive a
//! bad configuration reload, apply a good one, and stop cleanly.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/bus.rs"]
mod bus;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apt_sandbox::{DRYDOCK, Sandbox, missing_tools};
use bus::{Fixture, members};
use drydock::testing::sim::Scenario;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

/// Everything systemd would have been told, datagram by datagram.
#[derive(Clone, Default)]
struct Notifications(Arc<Mutex<Vec<String>>>);

impl Notifications {
    fn listen(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("notify socket");
        let seen = Notifications::default();
        let sink = seen.0.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push(text);
            }
        });
        seen
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The STATUS= lines, in order.
    fn statuses(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
            .collect()
    }

    fn saw(&self, field: &str) -> bool {
        self.all().iter().any(|m| m.lines().any(|l| l == field))
    }
}

fn wait_until(what: &str, within: Duration, log: &Path, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > within {
            panic!(
                "timed out waiting for {what}; daemon log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the daemon if the test fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("signal");
}

/// Runs a CLI command against the test's config; its stdout.
fn drydock(config: &Path, args: &[&str]) -> String {
    let out = Command::new(DRYDOCK)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "drydock {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn config_text(dir: &Path, sb: &Sandbox, protect_extra: &[&str]) -> String {
    let mut protect: Vec<String> = drydock::testing::config::Settings::default()
        .packages
        .protect
        .iter()
        .map(|p| format!("{:?}", p.as_str()))
        .collect();
    protect.extend(protect_extra.iter().map(|p| format!("{p:?}")));
    format!(
        r#"[node]
name = "worker-1"
kubeconfig = "{dir}/kubeconfig"
# The simulator has no CSR signer: the admin-provided identity.
identity-kubeconfig = "{dir}/kubeconfig"
admin-kubeconfig = ""
state-db = "{dir}/state.db"
run-dir = "{dir}/run"

[lease]
duration = "15s"

[reboot]
sentinel-file = "{dir}/reboot-required"
check-kernel = false
check-interval = "2s"

[gates]
soak = "0s"

[drain]
timeout = "60s"

[packages]
dpkg-root = "{root}"
protect = [{protect}]

[report]
textfile-dir = "{dir}/metrics"
"#,
        dir = dir.display(),
        root = sb.root.display(),
        protect = protect.join(", "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_holds_reports_reboots_through_logind_and_reloads() {
    if let Some(why) = missing_tools(false) {
        eprintln!("skipping: {why}");
        return;
    }
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1", "hello=1.0-1"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let sim = Scenario::standard(3, 2).start().await.expect("simulator");
    sim.write_kubeconfig(d.join("kubeconfig")).unwrap();
    // Let the ReplicaSet and DaemonSet pods come up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logind = Fixture::with_service(&[]);
    let notify = Notifications::listen(&d.join("notify.sock"));

    std::fs::create_dir(d.join("metrics")).unwrap();
    let metric = |series: &str| -> Option<f64> {
        std::fs::read_to_string(d.join("metrics/drydock.prom"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let config = d.join("drydock.toml");
    std::fs::write(&config, config_text(d, &sb, &[])).unwrap();
    std::fs::write(
        d.join("reboot-required"),
        "*** System restart required ***\n",
    )
    .unwrap();
    std::fs::write(
        d.join("reboot-required.pkgs"),
        "linux-image-6.1.0-99-amd64\n",
    )
    .unwrap();
    let log = d.join("daemon.log");
    let mut running = Running(
        Command::new(DRYDOCK)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .env("NOTIFY_SOCKET", d.join("notify.sock"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", logind.address())
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("drydock daemon starts"),
    );
    let daemon = &mut running.0;

    // Holds come first, before anything is asked of the API.
    wait_until("READY=1", Duration::from_secs(20), &log, || {
        notify.saw("READY=1")
    });
    assert_eq!(sb.selection("containerd").as_deref(), Some("hold"));
    assert_eq!(sb.selection("hello").as_deref(), Some("install"));
    wait_until("the holds metrics", Duration::from_secs(10), &log, || {
        metric(r#"drydock_held_packages{holder="drydock"}"#) == Some(1.0)
    });
    assert_eq!(metric("drydock_holds_reconciled"), Some(1.0));
    let status = drydock(&config, &["status"]);
    assert!(
        status.contains(&format!("daemon:       running (pid {})", daemon.id())),
        "{status}"
    );
    assert!(status.contains("held:         containerd"), "{status}");
    // One daemon per node.
    let second = Command::new(DRYDOCK)
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains(&format!(
            "another drydock daemon is running (pid {},",
            daemon.id()
        )),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // The reboot: lease, cordon, drain, logind.
    wait_until(
        "logind's Reboot call",
        Duration::from_secs(60),
        &log,
        || members(&logind.calls()).contains(&"Reboot"),
    );
    let calls = logind.calls();
    assert_eq!(members(&calls), ["CanReboot", "Reboot"]);
    assert_eq!(
        calls[1]["args"],
        serde_json::json!([false]),
        "non-interactive"
    );
    let node: Node = sim.get(None, "worker-1").expect("node");
    assert_eq!(
        node.spec.and_then(|s| s.unschedulable),
        Some(true),
        "cordoned before the reboot"
    );
    let app_pods_left = sim
        .pods_on_node("worker-1")
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some("default"))
        .count();
    assert_eq!(app_pods_left, 0, "drained before the reboot");
    let lease: Lease = sim
        .get(Some("drydock"), "drydock-default-0")
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("worker-1"),
        "the lease is kept across the reboot"
    );
    let statuses = notify.statuses();
    let position = |prefix: &str| {
        statuses
            .iter()
            .position(|s| s.starts_with(prefix))
            .unwrap_or_else(|| panic!("no STATUS={prefix}... in {statuses:#?}"))
    };
    assert!(position("locked: holding drydock-default-0") < position("draining"));
    assert!(position("draining") < position("rebooting: "));
    assert!(
        statuses
            .last()
            .is_some_and(|s| s.starts_with("rebooting") && s.contains("linux-image-6.1.0-99")),
        "{statuses:#?}"
    );

    // A broken reload changes nothing.
    std::fs::write(&config, "[reboot]\ncheck-interval = \"often\"\n").unwrap();
    signal(daemon, nix::sys::signal::Signal::SIGHUP);
    wait_until("the refused reload", Duration::from_secs(10), &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("configuration reload refused")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("check-interval"), "the error names the key");
    assert!(daemon.try_wait().unwrap().is_none(), "still running");

    // A good one is applied: a new pattern is held at once.
    std::fs::write(&config, config_text(d, &sb, &["hell*"])).unwrap();
    signal(daemon, nix::sys::signal::Signal::SIGHUP);
    wait_until("hello on hold", Duration::from_secs(10), &log, || {
        sb.selection("hello").as_deref() == Some("hold")
    });
    wait_until(
        "two held packages in the metrics",
        Duration::from_secs(10),
        &log,
        || metric(r#"drydock_held_packages{holder="drydock"}"#) == Some(2.0),
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("configuration reloaded")
    );
    // The reload did not repeat the reboot request.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(members(&logind.calls()), ["CanReboot", "Reboot"]);

    signal(daemon, nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "clean stop: {status:?}");
    assert!(notify.saw("STOPPING=1"));

    // What it did is readable with the daemon stopped.
    let status = drydock(&config, &["status"]);
    assert!(
        status.contains("daemon:       not running (showing its last persisted state)"),
        "{status}"
    );
    assert!(status.contains("state:        rebooting"), "{status}");
    let text = drydock(&config, &["history", "--json"]);
    assert!(
        text.contains("\"holds\"") && text.contains("containerd"),
        "{text}"
    );
}

/// Starts `drydock daemon` on `config`; its stderr goes to `log`.
fn start_daemon(config: &Path, d: &Path, bus: &str, log: &Path) -> Running {
    Running(
        Command::new(DRYDOCK)
            .arg("--config")
            .arg(config)
            .arg("daemon")
            .env("NOTIFY_SOCKET", d.join("notify.sock"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("drydock daemon starts"),
    )
}

/// The persisted agent state, read as `drydock status` would.
fn persisted(d: &Path) -> drydock::testing::agent::state::AgentState {
    drydock::testing::store::Store::open(&d.join("state.db"))
        .unwrap()
        .current_state()
        .unwrap()
        .expect("a state")
        .0
}

/// SIGTERM while the drain waits on a disruption budget: the real daemon
/// stops within 5 s, cleanly, with the draining state persisted and the
/// node left cordoned with its slot; started again (the budget lifted),
/// it goes on with the drain where it was (no new cordon, no second
/// reading of the prior schedulability) and asks logind once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_drain_stops_within_5s_and_the_restart_resumes_it() {
    use drydock::testing::agent::state::{AgentState, Cordon};
    use drydock::testing::sim::{PdbSpec, ReplicaSetSpec};
    if let Some(why) = missing_tools(false) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI must provide: {why}");
        }
        eprintln!("SKIPPED: {why}");
        return;
    }
    let sb = Sandbox::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = Scenario::standard(4, 1)
        .replica_set(
            ReplicaSetSpec::new("default", "db", 1)
                .label("app", "db")
                .on_nodes(["worker-1"]),
        )
        .pdb(
            PdbSpec::new("default", "db")
                .selector("app", "db")
                .min_available(1),
        )
        .start()
        .await
        .expect("simulator");
    sim.write_kubeconfig(d.join("kubeconfig")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logind = Fixture::with_service(&[]);
    let notify = Notifications::listen(&d.join("notify.sock"));
    std::fs::create_dir(d.join("metrics")).unwrap();
    let config = d.join("drydock.toml");
    std::fs::write(&config, config_text(d, &sb, &[])).unwrap();
    std::fs::write(
        d.join("reboot-required"),
        "*** System restart required ***\n",
    )
    .unwrap();
    let log = d.join("daemon.log");
    let mut running = start_daemon(&config, d, &logind.address(), &log);
    wait_until("the drain", Duration::from_secs(60), &log, || {
        notify.statuses().iter().any(|s| s.starts_with("draining"))
    });
    // Stuck on the budget for a while.
    std::thread::sleep(Duration::from_secs(2));
    assert!(matches!(persisted(d), AgentState::Draining { .. }));
    signal(&running.0, nix::sys::signal::Signal::SIGTERM);
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean stop: {status:?}");
    assert!(notify.saw("STOPPING=1"));
    let AgentState::Draining { cordon, .. } = persisted(d) else {
        panic!("{:?}", persisted(d))
    };
    assert_eq!(cordon, Cordon::Ours, "the cordon is remembered as ours");
    let node: Node = sim.get(None, "worker-1").expect("node");
    assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));
    let lease: Lease = sim
        .get(Some("drydock"), "drydock-default-0")
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("worker-1"),
        "the slot is kept across the restart"
    );
    assert!(!members(&logind.calls()).contains(&"Reboot"));
    let status = drydock(&config, &["status"]);
    assert!(status.contains("state:        draining"), "{status}");

    // The budget is lifted; the daemon starts again and goes on.
    let pdbs: kube::Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        kube::Api::namespaced(kube::Client::try_from(sim.config()).unwrap(), "default");
    pdbs.delete("db", &Default::default()).await.unwrap();
    let log2 = d.join("daemon2.log");
    let mut running = start_daemon(&config, d, &logind.address(), &log2);
    wait_until(
        "logind's Reboot call",
        Duration::from_secs(60),
        &log2,
        || members(&logind.calls()).contains(&"Reboot"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        members(&logind.calls()),
        ["CanReboot", "Reboot"],
        "asked once"
    );
    signal(&running.0, nix::sys::signal::Signal::SIGTERM);
    assert!(running.0.wait().unwrap().success());
    assert!(matches!(
        persisted(d),
        AgentState::Rebooting {
            requested_at: Some(_),
            ..
        }
    ));
    let app_pods_left = sim
        .pods_on_node("worker-1")
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some("default"))
        .count();
    assert_eq!(app_pods_left, 0, "drained before the reboot");
    // One cycle in the record: cordoned once, drained once.
    let history = drydock::testing::store::Store::open(&d.join("state.db"))
        .unwrap()
        .history(&["state", "drain"], 1000)
        .unwrap();
    let entered = |to: &str| {
        history
            .iter()
            .filter(|h| h.kind == "state" && h.detail["to"] == to)
            .count()
    };
    assert_eq!(entered("cordoning"), 1, "{history:#?}");
    assert_eq!(entered("draining"), 1, "{history:#?}");
    assert_eq!(history.iter().filter(|h| h.kind == "drain").count(), 1);
}
