//! The simulator through the real kubectl: if kubectl can get, cordon,
//! annotate and drain against it, it speaks enough of the real API.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drydock::testing::sim::{DaemonSetSpec, PdbSpec, ReplicaSetSpec, Scenario, SimHandle};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn kubectl_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    // The one scripts/build-control-plane built (1.34) first, if any.
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/controlplane/bin/kubectl");
    std::iter::once(built)
        .chain(std::iter::once(PathBuf::from("/usr/bin/kubectl")))
        .chain(candidates)
        .find(|p| p.is_file())
}

/// kubectl pointed at one simulator, with its own HOME and cache.
struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(sim: &SimHandle) -> Option<Self> {
        let Some(bin) = kubectl_binary() else {
            eprintln!("SKIPPED: kubectl is not installed; the kubectl tests did not run");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        sim.write_kubeconfig(dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        Some(Self { bin, dir })
    }

    fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(d.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(d.join("cache"))
            .args(args)
            .env("HOME", d)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("running kubectl"))
            .await
            .expect("join")
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "kubectl {args:?} failed\nstdout:\n{so}\nstderr:\n{se}"
        );
        so.into_owned()
    }
}

fn unschedulable(sim: &SimHandle, node: &str) -> Option<bool> {
    sim.get::<Node>(None, node)
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
}

fn node_row<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_cordon_annotate_and_lease_yaml() -> TestResult {
    let sim = Scenario::cluster(1, 2).start().await?;
    let Some(k) = Kubectl::new(&sim) else {
        return Ok(());
    };

    let nodes = k.ok(&["get", "nodes"]).await;
    assert!(
        node_row(&nodes, "cp-1").contains("control-plane"),
        "{nodes}"
    );
    assert!(node_row(&nodes, "worker-1").contains("Ready"), "{nodes}");
    assert!(node_row(&nodes, "worker-1").contains("v1.34.1"), "{nodes}");

    let out = k.ok(&["cordon", "worker-1"]).await;
    assert!(out.contains("node/worker-1 cordoned"), "{out}");
    assert_eq!(unschedulable(&sim, "worker-1"), Some(true));
    let nodes = k.ok(&["get", "nodes"]).await;
    assert!(
        node_row(&nodes, "worker-1").contains("Ready,SchedulingDisabled"),
        "{nodes}"
    );
    let out = k.ok(&["uncordon", "worker-1"]).await;
    assert!(out.contains("node/worker-1 uncordoned"), "{out}");
    assert_eq!(unschedulable(&sim, "worker-1"), None);

    sim.set_node_ready("worker-2", false)?;
    let nodes = k.ok(&["get", "nodes"]).await;
    assert!(node_row(&nodes, "worker-2").contains("NotReady"), "{nodes}");

    let out = k.ok(&["annotate", "namespace", "drydock", "k=v"]).await;
    assert!(out.contains("namespace/drydock annotated"), "{out}");
    let ns = sim.get::<Namespace>(None, "drydock").expect("namespace");
    assert_eq!(
        ns.metadata
            .annotations
            .and_then(|a| a.get("k").cloned())
            .as_deref(),
        Some("v")
    );

    sim.put(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "drydock-slot-0", "namespace": "drydock"},
        "spec": {"holderIdentity": "worker-1", "leaseDurationSeconds": 60},
    }))?;
    let yaml = k
        .ok(&[
            "get",
            "lease",
            "-n",
            "drydock",
            "drydock-slot-0",
            "-o",
            "yaml",
        ])
        .await;
    let lease: serde_json::Value = serde_saphyr::from_str(&yaml)?;
    assert_eq!(lease["kind"].as_str(), Some("Lease"));
    assert_eq!(lease["apiVersion"].as_str(), Some("coordination.k8s.io/v1"));
    assert_eq!(lease["spec"]["holderIdentity"].as_str(), Some("worker-1"));
    assert!(lease["metadata"]["resourceVersion"].as_str().is_some());

    let out = k.run(&["get", "lease", "-n", "drydock", "missing"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"leases.coordination.k8s.io "missing" not found"#),
        "{err}"
    );
    Ok(())
}

/// `kubectl create -f` validates (no `--validate=false`): the simulator's
/// `/openapi/v3` says it checks fields itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_f_works_without_validate_false() -> TestResult {
    let sim = Scenario::cluster(1, 1).start().await?;
    let Some(k) = Kubectl::new(&sim) else {
        return Ok(());
    };
    let file = k.dir.path().join("objects.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: patching\n---\n\
         apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: drydock-default-0\n  namespace: patching\n\
         spec:\n  leaseDurationSeconds: 60\n",
    )?;
    let out = k.ok(&["create", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("namespace/patching created"), "{out}");
    assert!(
        out.contains("lease.coordination.k8s.io/drydock-default-0 created"),
        "{out}"
    );
    assert!(sim.get::<Namespace>(None, "patching").is_some());
    Ok(())
}

fn drain_cluster() -> Scenario {
    Scenario::cluster(1, 3)
        .daemon_set(DaemonSetSpec::new("kube-system", "calico-node"))
        .replica_set(
            ReplicaSetSpec::new("default", "web", 2)
                .on_nodes(["worker-2", "worker-2"])
                .empty_dir(),
        )
        .pdb(
            PdbSpec::new("default", "web")
                .selector("app", "web")
                .max_unavailable(2),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_evicts_pods_and_leaves_daemonset_pods() -> TestResult {
    let sim = drain_cluster().start().await?;
    let Some(k) = Kubectl::new(&sim) else {
        return Ok(());
    };

    // emptyDir pods need the flag, exactly as on a real cluster.
    let out = k
        .run(&["drain", "worker-2", "--ignore-daemonsets", "--timeout=10s"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local storage"), "{err}");
    assert_eq!(sim.pods_on_node("worker-2").len(), 3);

    let t0 = Instant::now();
    let out = k
        .ok(&[
            "drain",
            "worker-2",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=30s",
        ])
        .await;
    assert!(out.contains("node/worker-2 drained"), "{out}");
    assert!(out.contains("evicted"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(unschedulable(&sim, "worker-2"), Some(true));
    let left: Vec<String> = sim
        .pods_on_node("worker-2")
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("calico-node-"), "{left:?}");
    let web: Vec<Pod> = sim
        .list::<Pod>(Some("default"))
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(web.len(), 2);
    for p in &web {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert!(node.is_some() && node != Some("worker-2"), "{node:?}");
    }

    // The control plane's static (mirror) pods are skipped, not evicted.
    k.ok(&["drain", "cp-1", "--ignore-daemonsets", "--timeout=30s"])
        .await;
    assert_eq!(
        sim.pods_on_node("cp-1").len(),
        5,
        "4 static pods + calico-node"
    );
    Ok(())
}

fn reader(r: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_retries_pdb_blocked_pod_until_budget_allows() -> TestResult {
    let sim = Scenario::cluster(1, 2)
        .replica_set(ReplicaSetSpec::new("default", "db", 1).on_nodes(["worker-1"]))
        .pdb(
            PdbSpec::new("default", "db")
                .selector("app", "db")
                .min_available(1),
        )
        .start()
        .await?;
    let Some(k) = Kubectl::new(&sim) else {
        return Ok(());
    };
    let db = sim.pods_on_node("worker-1")[0]
        .metadata
        .name
        .clone()
        .expect("name");

    let t0 = Instant::now();
    let mut child = k
        .command(&["drain", "worker-1", "--ignore-daemonsets", "--timeout=40s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = mpsc::channel();
    let out_thread = reader(child.stdout.take().expect("stdout"), tx.clone());
    let err_thread = reader(child.stderr.take().expect("stderr"), tx);

    // Wait for kubectl to hit the budget, then give the app a second healthy replica.
    let mut lines: Vec<String> = vec![];
    let retry_line = format!(
        r#"error when evicting pods/"{db}" -n "default" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."#
    );
    while !lines.iter().any(|l| l == &retry_line) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no PDB retry message; got:\n{}",
            lines.join("\n")
        );
        match rx.try_recv() {
            Ok(l) => lines.push(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        sim.get::<Pod>(Some("default"), &db).is_some(),
        "blocked pod must stay"
    );
    sim.modify::<ReplicaSet>(Some("default"), "db", |rs| {
        rs.spec.get_or_insert_with(Default::default).replicas = Some(2);
    })?;

    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let _ = (out_thread.join(), err_thread.join());
    lines.extend(rx.try_iter());
    let all = lines.join("\n");
    assert!(status.success(), "drain failed:\n{all}");
    assert!(all.contains("node/worker-1 drained"), "{all}");
    assert!(all.contains(&format!("pod/{db} evicted")), "{all}");
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "kubectl waits 5s between retries"
    );
    assert!(sim.get::<Pod>(Some("default"), &db).is_none());
    let healthy_elsewhere = sim
        .list::<Pod>(Some("default"))
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("worker-2"))
        .count();
    assert_eq!(healthy_elsewhere, 2);
    Ok(())
}

#[test]
fn kubeconfig_is_plain_http_without_credentials() -> TestResult {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let sim = Scenario::new().start().await?;
        let yaml = sim.kubeconfig_yaml();
        let v: serde_json::Value = serde_saphyr::from_str(&yaml)?;
        assert_eq!(
            v["clusters"][0]["cluster"]["server"].as_str(),
            Some(sim.url().as_str())
        );
        assert_eq!(v["current-context"].as_str(), Some("drydock-sim"));
        // kube's own kubeconfig loader accepts it too.
        let kc = kube::config::Kubeconfig::from_yaml(&yaml)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        assert_eq!(cfg.cluster_url.to_string().trim_end_matches('/'), sim.url());
        Ok(())
    })
}
