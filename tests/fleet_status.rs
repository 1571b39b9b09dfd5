//! `drydock cluster status` against a 20-node simulated fleet in mixed
//! states, each node's state published by the real reporter (the daemon's
//! own publishing path) and the Leases taken by the real Lease client; then
//! the same fleet through the real kubectl: `get nodes -L`, `describe node`,
//! `get events`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use drydock::testing::cluster::annotations;
use drydock::testing::cluster::lease::LeaseClient;
use drydock::testing::cluster::node::NodeReport;
use drydock::testing::report::{BlockedGate, Notice, Reporter};
use drydock::testing::sim::{Scenario, SimHandle};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FLUSH: Duration = Duration::from_secs(10);

/// A config for node `node` pointing at the simulator, with its own state.
fn write_config(dir: &Path, node: &str, kubeconfig: &Path, extra: &str) -> PathBuf {
    let d = dir.join(node);
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("drydock.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
name = "{node}"
kubeconfig = "{kubeconfig}"
# The simulator's admin stands in for this node's drydock identity.
identity-kubeconfig = "{kubeconfig}"
identity-dir = "{d}/identity"
state-db = "{d}/state.db"
run-dir = "{d}/run"
[lease]
concurrency = 3
[report]
textfile-dir = ""
{extra}
"#,
            kubeconfig = kubeconfig.display(),
            d = d.display(),
        ),
    )
    .unwrap();
    path
}

fn gate(gate: &str, reason: &str) -> Notice {
    Notice::Waiting {
        blocked: vec![BlockedGate {
            gate: gate.parse().expect("a gate name"),
            reason: reason.into(),
        }],
    }
}

fn need() -> Notice {
    Notice::RebootNeeded {
        reasons: vec!["/var/run/reboot-required (linux-image-6.1.0-28-amd64)".into()],
    }
}

/// A maintenance window that is closed now: three days from today.
fn closed_window() -> String {
    let day = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .weekday()
        .to_monday_zero_offset();
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    format!(
        "[maintenance]\nwindows = [{{ days = [\"{}\"], start = \"02:00\", length = \"1h\", time-zone = \"UTC\" }}]\n",
        names[(day as usize + 3) % 7]
    )
}

struct Fleet {
    sim: SimHandle,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    reporters: Vec<Reporter>,
}

impl Fleet {
    async fn node(&mut self, node: &str, extra: &str, notices: Vec<Notice>, line: Option<&str>) {
        let config = write_config(self.dir.path(), node, &self.kubeconfig, extra);
        let settings = drydock::testing::config::load(&config, true).expect("valid config");
        let r = Reporter::start(&settings, node, Some(self.sim.client().unwrap()))
            .await
            .unwrap();
        for n in notices {
            r.notice(n);
        }
        if let Some(line) = line {
            r.status(line);
        }
        assert!(r.flush(FLUSH).await);
        self.reporters.push(r);
    }

    async fn take_slot(&self, node: &str) -> String {
        let config = write_config(self.dir.path(), node, &self.kubeconfig, "");
        let settings = drydock::testing::config::load(&config, true).unwrap();
        let lease = LeaseClient::new(self.sim.client().unwrap(), &settings, node);
        lease
            .acquire(true)
            .await
            .unwrap()
            .expect("a free slot")
            .slot
    }
}

fn drydock_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drydock")
}

fn cluster_status(config: &Path, json: bool) -> String {
    let mut cmd = Command::new(drydock_bin());
    cmd.arg("--config")
        .arg(config)
        .args(["cluster", "status"])
        .stdin(Stdio::null());
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "drydock cluster status failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
}

fn first_gate(status: &Value, name: &str) -> String {
    node(status, name)["blocked-by"][0]["gate"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_of_a_mixed_20_node_fleet() -> TestResult {
    let sim = Scenario::cluster(3, 17).start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let client = sim.client()?;
    let mut f = Fleet {
        sim,
        dir,
        kubeconfig,
        reporters: Vec::new(),
    };

    // Three slots: an upgrade, a drain and a failed node hold them.
    let cp1_slot = f.take_slot("cp-1").await;
    let w1_slot = f.take_slot("worker-1").await;
    let w2_slot = f.take_slot("worker-2").await;
    let leased = |slot: &str| Notice::LeaseAcquired { slot: slot.into() };

    f.sim.set_kubelet_version("cp-2", "v1.35.2")?;
    f.node(
        "cp-1",
        "",
        vec![
            leased(&cp1_slot),
            Notice::Upgrading {
                from: "v1.34.1".into(),
                to: "v1.35.2".into(),
                step: "kubeadm upgrade apply".into(),
            },
        ],
        None,
    )
    .await;
    f.node("cp-2", "", vec![Notice::Idle], None).await;
    f.node(
        "cp-3",
        "",
        vec![need(), leased("drydock-default-9"), Notice::Verifying],
        None,
    )
    .await;
    f.node(
        "worker-1",
        "",
        vec![need(), leased(&w1_slot), Notice::Draining { pods_left: 3 }],
        None,
    )
    .await;
    f.node(
        "worker-2",
        "",
        vec![
            need(),
            leased(&w2_slot),
            Notice::Rebooting {
                boot_id: "b1".into(),
            },
            Notice::Verifying,
            Notice::VerifyFailed {
                reason: "kubelet not Ready after 15m".into(),
            },
        ],
        None,
    )
    .await;
    // Waiting, each on another gate.
    let waiting = [
        ("worker-3", "window", "window opens Thu 02:00 UTC"),
        (
            "worker-4",
            "paused",
            "paused on this node: disk replacement",
        ),
        (
            "worker-5",
            "cluster-paused",
            "cluster paused: change freeze",
        ),
        (
            "worker-6",
            "halted",
            "cluster halted: worker-2 failed verification",
        ),
        ("worker-7", "nodes-ready", "node worker-13 is NotReady"),
        (
            "worker-8",
            "daemonsets",
            "kube-system/calico-node: 1 pod not Ready",
        ),
        (
            "worker-9",
            "soak",
            "soaking until 14:00 UTC after worker-14's reboot",
        ),
        ("worker-10", "alerts", "alert KubeDiskPressure firing"),
        (
            "worker-11",
            "blocking-pods",
            "pod db/pg-0 matches app=postgres",
        ),
        (
            "worker-12",
            "cluster",
            "cannot read the cluster: connection refused",
        ),
    ];
    for (n, g, why) in waiting {
        let extra = if g == "window" {
            closed_window()
        } else {
            String::new()
        };
        f.node(n, &extra, vec![need(), gate(g, why)], None).await;
    }
    f.sim.set_node_ready("worker-13", false)?;
    f.node(
        "worker-13",
        "",
        vec![
            need(),
            leased("drydock-default-8"),
            Notice::Rebooting {
                boot_id: "b2".into(),
            },
        ],
        None,
    )
    .await;
    f.node(
        "worker-14",
        "",
        vec![
            need(),
            leased("drydock-default-7"),
            Notice::Verified {
                durations: Default::default(),
            },
            Notice::Released,
        ],
        None,
    )
    .await;
    // worker-15: drydock never ran there. worker-16: it stopped two hours ago.
    let mut old: NodeReport = f.reporters[0].node_report();
    old.state = "pending".into();
    old.detail = "waiting: window opens Tue 02:00 UTC".into();
    old.upgrade = None;
    old.slot = None;
    old.reported_at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    Api::<Node>::all(client.clone())
        .patch(
            "worker-16",
            &PatchParams::default(),
            &Patch::Merge(old.patch()),
        )
        .await?;
    f.node(
        "worker-17",
        "",
        vec![need(), Notice::Waiting { blocked: vec![] }],
        Some("waiting: lease held by cp-1, worker-1, worker-2"),
    )
    .await;

    // The cluster-wide controls.
    annotations::halt_by(
        &client,
        "drydock",
        &annotations::HaltedBy {
            node: "worker-2".into(),
            reason: "failed verification: kubelet not Ready after 15m".into(),
            at: jiff::Timestamp::now(),
        },
    )
    .await?;
    annotations::pause_cluster_by(&client, "drydock", "change freeze", Some("alice on cp-1"))
        .await?;
    annotations::set(
        &client,
        "drydock",
        annotations::KUBERNETES_VERSION,
        Some("v1.35.2"),
    )
    .await?;

    // From any node, three requests.
    let config = write_config(f.dir.path(), "worker-7", &f.kubeconfig, "");
    f.sim.reset_stats();
    let json = cluster_status(&config, true);
    let stats = f.sim.stats();
    assert_eq!(stats.get("list", "nodes").requests, 1);
    assert_eq!(stats.get("list", "leases").requests, 1);
    assert_eq!(stats.get("get", "namespaces").requests, 1);
    assert_eq!(
        stats.total.requests, 3,
        "one request per kind: {:?}",
        stats.by_endpoint
    );
    let s: Value = serde_json::from_str(&json)?;

    assert_eq!(s["nodes"].as_array().unwrap().len(), 20);
    assert_eq!(s["halted"]["by"], "worker-2");
    assert_eq!(
        s["halted"]["reason"],
        "failed verification: kubelet not Ready after 15m"
    );
    assert_eq!(s["paused"]["reason"], "change freeze");
    assert_eq!(s["paused"]["by"], "alice on cp-1");
    assert_eq!(s["target-version"], "v1.35.2");
    let slots = s["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 3);
    let holders: Vec<&str> = slots.iter().filter_map(|s| s["holder"].as_str()).collect();
    assert_eq!(holders, ["cp-1", "worker-1", "worker-2"]);
    assert!(slots.iter().all(|s| s["since"].is_string()));

    let cp1 = node(&s, "cp-1");
    assert_eq!(cp1["state"], "upgrading");
    assert_eq!(cp1["upgrade"]["to"], "v1.35.2");
    assert_eq!(cp1["upgrade"]["step"], "kubeadm upgrade apply");
    assert_eq!(cp1["slot"], cp1_slot.as_str());
    assert_eq!(cp1["kubelet-version"], "v1.34.1");
    assert_eq!(node(&s, "cp-2")["kubelet-version"], "v1.35.2");
    assert_eq!(node(&s, "cp-2")["state"], "idle");
    assert_eq!(node(&s, "cp-3")["state"], "verifying");
    let w1 = node(&s, "worker-1");
    assert_eq!(w1["state"], "draining");
    assert_eq!(w1["slot"], w1_slot.as_str());
    assert!(w1["slot-since"].is_string());
    assert!(w1["reboot-needed-since"].is_string());
    let w2 = node(&s, "worker-2");
    assert_eq!(w2["state"], "failed");
    assert_eq!(w2["step"], "verify");
    assert_eq!(w2["slot"], w2_slot.as_str());
    for (n, g, _) in waiting {
        assert_eq!(node(&s, n)["state"], "pending", "{n}");
        assert_eq!(first_gate(&s, n), g, "{n}");
        assert_eq!(node(&s, n)["drydock"], "running", "{n}");
    }
    let w3 = node(&s, "worker-3");
    assert_eq!(w3["window-open"], false);
    assert!(w3["next-window"].is_string());
    assert_eq!(node(&s, "worker-4")["window-open"], true);
    let w13 = node(&s, "worker-13");
    assert_eq!(
        (w13["state"].as_str(), w13["ready"].as_bool()),
        (Some("rebooting"), Some(false))
    );
    assert!(w13["last-reboot"].is_string());
    assert_eq!(node(&s, "worker-14")["state"], "soaking");
    assert_eq!(node(&s, "worker-15")["drydock"], "none");
    assert_eq!(node(&s, "worker-16")["drydock"], "stale");
    let w17 = node(&s, "worker-17");
    assert_eq!(
        w17["detail"],
        "waiting: lease held by cp-1, worker-1, worker-2"
    );
    assert_eq!(s["counts"]["pending"], 11);
    assert_eq!(s["counts"]["no-drydock"], 1);
    assert_eq!(s["counts"]["not-reporting"], 1);

    // The same as text: one line per node, the story in a few columns.
    let text = cluster_status(&config, false);
    let halted = text.lines().find(|l| l.starts_with("halted:")).unwrap();
    assert!(
        halted.starts_with("halted:   YES, by worker-2 ")
            && halted.ends_with(" ago: failed verification: kubelet not Ready after 15m"),
        "{text}"
    );
    assert!(
        text.contains("paused:   YES, by alice on cp-1: change freeze"),
        "{text}"
    );
    assert!(text.contains("target:   v1.35.2"), "{text}");
    assert!(text.contains(&format!("  {cp1_slot}: cp-1 for ")), "{text}");
    let row = |n: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("no row for {n}:\n{text}"))
            .to_string()
    };
    assert!(
        row("worker-10").contains("alerts: alert KubeDiskPressure firing"),
        "{text}"
    );
    assert!(row("worker-16").contains("SILENT 2h"), "{text}");
    assert!(row("worker-15").contains(" none "), "{text}");
    assert!(
        row("worker-2").contains("[verify] verification FAILED"),
        "{text}"
    );
    assert!(
        row("cp-1").contains("upgrading Kubernetes v1.34.1 -> v1.35.2: kubeadm upgrade apply"),
        "{text}"
    );
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("worker-"))
        .collect();
    assert_eq!(order[..3], ["worker-1", "worker-2", "worker-3"], "{text}");
    assert!(row("worker-13").contains(" NO "), "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("fleet:    20 nodes"),
        "{text}"
    );
    println!("{text}");

    kubectl_views(&f).await;

    for r in &f.reporters {
        r.shutdown(FLUSH).await;
    }
    Ok(())
}

fn kubectl(f: &Fleet, args: &[&str]) -> Option<String> {
    let bin = Path::new("/usr/bin/kubectl");
    if !bin.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubectl is missing: CI must provide it"
        );
        eprintln!("SKIPPED: kubectl is not installed; the kubectl views were not checked");
        return None;
    }
    let home = f.dir.path().join("kubectl-home");
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&f.kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// What an operator types: the fleet in `kubectl get nodes`, the story of
/// one node in `kubectl describe node`, and `kubectl get events`.
async fn kubectl_views(f: &Fleet) {
    let Some(table) = kubectl(
        f,
        &[
            "get",
            "nodes",
            "-L",
            "drydock.dev/state,drydock.dev/reboot-needed",
        ],
    ) else {
        return;
    };
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("STATE") && header.contains("REBOOT-NEEDED"),
        "{table}"
    );
    let row = |n: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("{n} missing:\n{table}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let tail = |n: &str| row(n)[row(n).len() - 2..].to_vec();
    assert_eq!(tail("worker-1"), ["draining", "true"], "{table}");
    assert_eq!(tail("cp-2"), ["idle", "false"], "{table}");
    assert_eq!(tail("worker-2"), ["failed", "true"], "{table}");
    assert_eq!(row("worker-15").len(), row("cp-2").len() - 2, "{table}");

    let described = kubectl(f, &["describe", "node", "worker-2"]).unwrap();
    let events = &described[described.find("Events:").expect("an Events section")..];
    for reason in [
        "RebootRequired",
        "LeaseAcquired",
        "Rebooting",
        "Verifying",
        "VerifyFailed",
    ] {
        assert!(events.contains(reason), "{reason} missing:\n{events}");
    }
    assert!(events.contains("drydock"), "From column:\n{events}");
    assert!(
        events.contains("verification FAILED: kubelet not Ready after 15m"),
        "{events}"
    );

    let all = kubectl(
        f,
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.name=worker-1",
        ],
    )
    .unwrap();
    for reason in ["RebootRequired", "LeaseAcquired", "Draining"] {
        assert!(all.contains(reason), "{reason} missing:\n{all}");
    }
    assert!(all.contains("node/worker-1"), "{all}");
}
