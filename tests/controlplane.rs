//! drydock against a real Kubernetes control plane (kube-apiserver 1.34 with
//! Node,RBAC and NodeRestriction, etcd, controller-manager, scheduler), with
//! the kubelet and drydock identities exactly as in production. One test
//! (the control plane starts once, ~20 s), in phases:
//!
//! 1. `drydock rbac | kubectl apply -f -` as a cluster admin;
//! 2. enrolment of 1 control plane + 4 workers: each node requests its
//!    drydock identity with its kubelet credential, the approver running
//!    with kubeadm's admin.conf (as on a control-plane node) approves, the
//!    controller-manager signs; no manual step;
//! 3. cross-node writes refused (cordon another node, a Lease in another
//!    node's name, releasing another's hold);
//! 4. pause, halt and resume through the CLI; Events and `drydock status`
//!    through real kubectl;
//! 5. a 5-node rolling reboot with real drains (PDB status from the
//!    disruption controller, replacements from the ReplicaSet controller),
//!    never two nodes out at once;
//! 6. an eviction of a pod whose name a replacement took is refused
//!    (drain.rs's UID precondition), where kube's `Api::evict` loses it;
//! 7. every request drydock's identity made (the audit log) is granted by
//!    the printed RBAC, and every grant is used.
//!
//! Needs target/controlplane/bin (`scripts/build-control-plane`).

#[path = "support/controlplane.rs"]
mod controlplane;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::{ControlPlane, Kubelet, client, tail};
use drydock::testing::agent::Agent;
use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::{AgentEvent, Cluster, Reporter};
use drydock::testing::cluster::identity::{self, Enroller, Progress};
use drydock::testing::config::Settings;
use drydock::testing::simulate::host::{Machine, SimHost};
use drydock::testing::store::Store;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

const NODES: [&str; 5] = ["cp-1", "w-1", "w-2", "w-3", "w-4"];
const NS: &str = "drydock";

struct Bed {
    cp: ControlPlane,
    kubelets: BTreeMap<String, Kubelet>,
    state: PathBuf,
}

impl Bed {
    fn identity_dir(&self, node: &str) -> PathBuf {
        self.state.join(node).join("identity")
    }
    fn identity_kubeconfig(&self, node: &str) -> PathBuf {
        self.identity_dir(node).join("kubeconfig")
    }
    fn kubelet(&self, node: &str) -> &Kubelet {
        &self.kubelets[node]
    }
    fn settings(&self, node: &str) -> Settings {
        let mut s = Settings::default();
        let dir = self.state.join(node);
        s.node.name = Some(node.to_string());
        s.node.kubeconfig = self.kubelet(node).kubeconfig.clone();
        s.node.identity_dir = self.identity_dir(node);
        s.node.admin_kubeconfig = None;
        s.node.state_db = dir.join("state.db");
        s.node.run_dir = dir.join("run");
        s.lease.namespace = NS.into();
        s.lease.duration = Duration::from_secs(20);
        s.reboot.check_interval = Duration::from_secs(1);
        s.reboot.check_kernel = false;
        s.reboot.sentinel_file = dir.join("reboot-required");
        s.gates.soak = Duration::from_secs(1);
        s.drain.timeout = Duration::from_secs(90);
        s.drain.retry_interval = Duration::from_millis(500);
        s.verify.timeout = Duration::from_secs(60);
        s.report.textfile_dir = None;
        s.report.kubernetes_events = false;
        s
    }
    /// A config file for the CLI on `node`.
    fn config_file(&self, node: &str) -> PathBuf {
        let s = self.settings(node);
        let path = self.state.join(node).join("drydock.toml");
        let text = format!(
            "[node]\nname = {node:?}\nkubeconfig = {:?}\nidentity-dir = {:?}\nadmin-kubeconfig = \"\"\n\
             state-db = {:?}\nrun-dir = {:?}\n[lease]\nnamespace = {NS:?}\n",
            s.node.kubeconfig, s.node.identity_dir, s.node.state_db, s.node.run_dir
        );
        std::fs::write(&path, text).unwrap();
        path
    }
    fn drydock(&self, node: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
            .arg("--config")
            .arg(self.config_file(node))
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn api_code<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) if start.elapsed() > timeout => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

#[test]
fn drydock_on_a_real_control_plane() {
    let Some(bin) = controlplane::binaries() else {
        return;
    };
    controlplane::init_tracing();
    let started = Instant::now();
    let cp = ControlPlane::start(&bin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = cp.dir.join("nodes");
    let mut kubelets = BTreeMap::new();
    for (i, n) in NODES.iter().enumerate() {
        std::fs::create_dir_all(state.join(n)).unwrap();
        kubelets.insert(n.to_string(), Kubelet::new(&cp, n, i));
    }
    let bed = Bed {
        cp,
        kubelets,
        state,
    };
    println!("control plane up in {:?}", started.elapsed());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            setup_nodes(&bed).await;
            apply_rbac(&bed);
            enrol(&bed).await;
            // Deliberate probes, refused or not: not what drydock does.
            let probes_from = bed.cp.audit().len();
            cross_node_writes_are_refused(&bed).await;
            differential(&bed).await;
            let probes = probes_from..bed.cp.audit().len();
            stale_evictions(&bed).await;
            pause_halt_resume_and_kubectl(&bed).await;
            target_through_the_watch(&bed).await;
            rolling_reboot(&bed).await;
            audited_requests_match_the_rbac(&bed, probes);
        })
    }));
    if let Err(panic) = result {
        for name in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            eprintln!("--- {name}.log (tail) ---\n{}", tail(&bed.cp.log(name), 30));
        }
        std::panic::resume_unwind(panic);
    }
    println!("whole run: {:?}", started.elapsed());
}

/// drain.rs evicts a pod by name with its UID as a precondition: after the
/// pod was deleted and recreated under the same name, the eviction of the
/// old one is refused (409) and the replacement stays. kube-core 5's
/// `Api::evict` with the same `EvictParams` precondition evicts the
/// replacement: why drain.rs builds the request itself. When that
/// assertion fails, kube has been fixed and drain.rs can use it.
async fn stale_evictions(bed: &Bed) {
    use drydock::testing::cluster::drain::{PodRef, eviction_request};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{DeleteParams, EvictParams, Preconditions};
    let admin = client(&bed.cp.super_admin).await;
    let ns = "evictions";
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(namespace).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    // Never scheduled, so a delete or eviction removes it at once.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns},
        "spec": {"schedulerName": "none",
                 "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
    }))
    .unwrap();
    let gone = async |what: &str| {
        eventually(what, Duration::from_secs(30), || {
            let pods = pods.clone();
            async move {
                match pods.get_opt("p").await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err("still there".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
    };
    // Creates `p` afresh (the previous one gone) and returns its UID.
    let recreate = async || {
        gone("the previous pod p gone").await;
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        created.metadata.uid.unwrap()
    };
    let uid_of = |p: Option<Pod>| p.and_then(|p| p.metadata.uid);
    let stale = recreate().await;
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let current = recreate().await;
    assert_ne!(stale, current);
    let as_planned = |uid: &str| PodRef {
        namespace: ns.into(),
        name: "p".into(),
        uid: uid.into(),
    };

    let refused = admin
        .request_text(eviction_request(&as_planned(&stale)).unwrap())
        .await;
    assert_eq!(
        api_code(refused),
        409,
        "drydock's eviction with a stale UID must be refused"
    );
    assert_eq!(
        uid_of(pods.get_opt("p").await.unwrap()).as_deref(),
        Some(current.as_str()),
        "the replacement must survive drydock's stale eviction"
    );

    let kube_params = EvictParams {
        delete_options: Some(DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(stale.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    let kube_result = pods.evict("p", &kube_params).await;
    assert!(
        kube_result.is_ok(),
        "kube's Api::evict with a stale UID was refused ({kube_result:?}): kube-core now \
         sends the precondition; drain.rs can use Api::evict"
    );
    assert_ne!(
        uid_of(pods.get_opt("p").await.unwrap()).as_deref(),
        Some(current.as_str()),
        "kube's Api::evict answered OK yet the replacement is still there"
    );

    // The same request with the right UID evicts.
    let current = recreate().await;
    admin
        .request_text(eviction_request(&as_planned(&current)).unwrap())
        .await
        .expect("drydock's eviction with the pod's own UID");
    gone("pod p evicted").await;
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// Kubelets register and run; kubeadm labels the control plane; a
/// workload with a PDB and a DaemonSet.
async fn setup_nodes(bed: &Bed) {
    for (name, k) in &bed.kubelets {
        k.register(name == "cp-1").await;
        tokio::spawn(k.clone().run());
    }
    bed.cp.admin_kubectl(
        &[
            "label",
            "node",
            "cp-1",
            "node-role.kubernetes.io/control-plane=",
        ],
        None,
    );
    let workload = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "apps"},
         "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"terminationGracePeriodSeconds": 1,
                                        "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]}}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": "apps"},
         "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "web"}}}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "calico-node", "namespace": "kube-system"},
         "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}},
                  "template": {"metadata": {"labels": {"k8s-app": "calico-node"}},
                               "spec": {"tolerations": [{"operator": "Exists"}],
                                        "containers": [{"name": "calico-node", "image": "docker.io/calico/node:v3.30.0"}]}}}},
    ]});
    bed.cp.admin_kubectl(
        &["apply", "-f", "-"],
        Some(&serde_json::to_vec(&workload).unwrap()),
    );
    let admin = client(&bed.cp.super_admin).await;
    eventually(
        "web pods and DaemonSet pods Running and Ready",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                let pods: Api<Pod> = Api::all(admin);
                let list = pods
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = |p: &Pod| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                };
                let web = list
                    .items
                    .iter()
                    .filter(|p| {
                        p.metadata.name.as_deref().unwrap_or("").starts_with("web-") && ready(p)
                    })
                    .count();
                let ds = list
                    .items
                    .iter()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .unwrap_or("")
                            .starts_with("calico-node-")
                            && ready(p)
                    })
                    .count();
                if web == 4 && ds == NODES.len() {
                    Ok(())
                } else {
                    Err(format!("web {web}/4, calico-node {ds}/5"))
                }
            }
        },
    )
    .await;
}

fn apply_rbac(bed: &Bed) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["rbac", "--namespace", NS])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let applied = bed
        .cp
        .admin_kubectl(&["apply", "-f", "-"], Some(&out.stdout));
    for what in [
        "namespace/drydock",
        "clusterrole.rbac.authorization.k8s.io/drydock:node",
        "validatingadmissionpolicy.admissionregistration.k8s.io/drydock-lease-holder",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/drydock-lease-holder",
    ] {
        assert!(applied.contains(what), "{what} in:\n{applied}");
    }
    // Applying again works (and leaves the RBAC as it was).
    let again = bed
        .cp
        .admin_kubectl(&["apply", "-f", "-"], Some(&out.stdout));
    assert!(
        again.contains("clusterrole.rbac.authorization.k8s.io/drydock:node unchanged"),
        "{again}"
    );
}

async fn enrol(bed: &Bed) {
    // cp-1's daemon approves with kubeadm's admin.conf.
    let approver = tokio::spawn(identity::run_approver(client(&bed.cp.admin).await));
    // A squatter: w-1 asks for w-2's identity; never approved.
    let w1 = client(&bed.kubelet("w-1").kubeconfig).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let squat = identity::csr_object("w-2", &identity::certificate_request(&key, "w-2").unwrap());
    let csrs: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(w1.clone());
    let squat = csrs.create(&PostParams::default(), &squat).await.unwrap();
    let squat_name = squat.metadata.name.unwrap();

    let started = Instant::now();
    let mut waits = vec![];
    for node in NODES {
        let kubelet = client(&bed.kubelet(node).kubeconfig).await;
        let enroller = Enroller::new(
            kubelet,
            &bed.kubelet(node).kubeconfig,
            node,
            &bed.identity_dir(node),
        );
        let lines = Arc::new(Mutex::new(vec![]));
        let seen = lines.clone();
        waits.push(tokio::spawn(async move {
            let p = tokio::time::timeout(
                Duration::from_secs(60),
                identity::wait_ready(
                    &enroller,
                    |l| seen.lock().unwrap().push(l.to_string()),
                    Duration::from_millis(300),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("enrolled within 60s: {:?}", lines.lock().unwrap()));
            (p, lines.lock().unwrap().clone())
        }));
    }
    for (node, wait) in NODES.iter().zip(waits) {
        let (progress, lines) = wait.await.unwrap();
        let Progress::Ready {
            kubeconfig,
            not_after,
            ..
        } = progress
        else {
            panic!("{node}: {progress:?}")
        };
        assert_eq!(kubeconfig, bed.identity_kubeconfig(node));
        assert!(not_after > jiff::Timestamp::now() + Duration::from_secs(6 * 24 * 3600));
        // Said so while it waited (or was approved before the first look).
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("waiting: drydock identity not approved yet (CSR drydock-")),
            "{lines:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bed.identity_dir(node).join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{node}: key mode");
        // The kubeconfig works with kubectl too: who am I?
        let who = bed
            .cp
            .kubectl(&kubeconfig, &["auth", "whoami", "-o", "json"]);
        let who: serde_json::Value = serde_json::from_slice(&who.stdout).unwrap_or_default();
        assert_eq!(
            who["status"]["userInfo"]["username"],
            format!("drydock:node:{node}")
        );
        assert!(
            who["status"]["userInfo"]["groups"]
                .as_array()
                .unwrap()
                .contains(&json!("drydock:nodes"))
        );
    }
    println!("5 nodes enrolled in {:?}", started.elapsed());
    // The squatted request stays pending, left for a person.
    let squat = csrs.get(&squat_name).await.unwrap();
    assert!(
        squat
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .is_empty(),
        "squatter untouched"
    );
    // By hand: w-1's squatting request is w-1's, refused for w-1 and not
    // even listed for w-2; the CLI says so.
    let admin = client(&bed.cp.admin).await;
    let (approved, refused) = identity::approve_pending(&admin, Some("w-2"))
        .await
        .unwrap();
    assert!(approved.is_empty() && refused.is_empty(), "{refused:?}");
    let (approved, refused) = identity::approve_pending(&admin, Some("w-1"))
        .await
        .unwrap();
    assert!(approved.is_empty());
    assert!(
        refused
            .iter()
            .any(|(n, why)| n == &squat_name && why.contains("system:node:w-1")),
        "{refused:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["cluster", "approve", "w-1", "--kubeconfig"])
        .arg(&bed.cp.admin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&squat_name), "{}", text(&out));
    renewal(bed).await;
    approver.abort();
    denied(bed).await;

    // By hand, with no approver running: `drydock cluster approve NODE`.
    let w3 = client(&bed.kubelet("w-3").kubeconfig).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = identity::csr_object("w-3", &identity::certificate_request(&key, "w-3").unwrap());
    let w3_csrs: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> = Api::all(w3);
    let name = w3_csrs
        .create(&PostParams::default(), &csr)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["cluster", "approve", "w-3", "--kubeconfig"])
        .arg(&bed.cp.admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("approved CSR {name}")),
        "{}",
        text(&out)
    );
    eventually(
        "the hand-approved request signed",
        Duration::from_secs(20),
        || {
            let api = w3_csrs.clone();
            let name = name.clone();
            async move {
                let c = api.get(&name).await.map_err(|e| e.to_string())?;
                c.status
                    .and_then(|s| s.certificate)
                    .map(|_| ())
                    .ok_or_else(|| "not signed yet".to_string())
            }
        },
    )
    .await;
}

/// A request a person denied is reported, and not made again at once.
async fn denied(bed: &Bed) {
    let kc = bed.cp.node_kubeconfig("w-9");
    let dir = bed.state.join("w-9").join("identity");
    let enroller = Enroller::new(client(&kc).await, &kc, "w-9", &dir);
    let Progress::Waiting { csr } = enroller.step(jiff::Timestamp::now()).await.unwrap() else {
        panic!("no approver runs: waiting")
    };
    bed.cp.admin_kubectl(&["certificate", "deny", &csr], None);
    for _ in 0..3 {
        let e = enroller.step(jiff::Timestamp::now()).await.unwrap_err();
        assert!(
            matches!(&e, identity::IdentityError::Denied { csr: c, .. } if *c == csr),
            "{e}"
        );
    }
    let admin: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(client(&bed.cp.super_admin).await);
    let mine = admin
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.spec.username.as_deref() == Some("system:node:w-9"))
        .count();
    assert_eq!(mine, 1, "one request, not one per retry");
}

/// A certificate past two thirds of its life is renewed: a new request,
/// approved, signed, swapped in, and the daemon told.
async fn renewal(bed: &Bed) {
    let dir = bed.identity_dir("w-4");
    let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    // Valid 2020..2030 (the same key): well into its renewal window.
    let old = bed
        .cp
        .ca
        .client_for_key(&key, "drydock:node:w-4", identity::GROUP, (2020, 2030));
    std::fs::write(dir.join("cert.pem"), old).unwrap();
    let kubelet = client(&bed.kubelet("w-4").kubeconfig).await;
    let enroller = Enroller::new(kubelet, &bed.kubelet("w-4").kubeconfig, "w-4", &dir);
    let renewed = Arc::new(tokio::sync::Notify::new());
    let told = renewed.clone();
    let task = tokio::spawn(identity::keep_renewed(
        enroller,
        move || told.notify_one(),
        Duration::from_millis(300),
    ));
    tokio::time::timeout(Duration::from_secs(30), renewed.notified())
        .await
        .expect("renewed within 30s");
    task.abort();
    let facts = identity::parse_cert(&std::fs::read(dir.join("cert.pem")).unwrap()).unwrap();
    assert!(
        facts.not_after < jiff::Timestamp::from_second(1_893_456_000).unwrap(),
        "the new certificate, not the forged one"
    );
    assert!(facts.not_after > jiff::Timestamp::now() + Duration::from_secs(6 * 24 * 3600));
    // And it works.
    let who = bed.cp.kubectl(
        &bed.identity_kubeconfig("w-4"),
        &["auth", "whoami", "-o", "json"],
    );
    assert!(
        String::from_utf8_lossy(&who.stdout).contains("drydock:node:w-4"),
        "{}",
        text(&who)
    );
}

async fn cross_node_writes_are_refused(bed: &Bed) {
    let w1_kubelet = client(&bed.kubelet("w-1").kubeconfig).await;
    let w1 = client(&bed.identity_kubeconfig("w-1")).await;
    let w2 = client(&bed.identity_kubeconfig("w-2")).await;

    // Cordon another node: the Node authorizer/NodeRestriction refuse.
    let nodes: Api<Node> = Api::all(w1_kubelet.clone());
    let patch = json!({"spec": {"unschedulable": true}});
    assert_eq!(
        api_code(
            nodes
                .patch("w-2", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        ),
        403
    );
    // kubectl prints Forbidden and exits 0: judge by the object, not the exit code.
    let out = bed
        .cp
        .kubectl(&bed.kubelet("w-1").kubeconfig, &["cordon", "w-2"]);
    assert!(
        text(&out).to_lowercase().contains("forbidden"),
        "{}",
        text(&out)
    );
    let admin: Api<Node> = Api::all(client(&bed.cp.super_admin).await);
    assert_ne!(
        admin.get("w-2").await.unwrap().spec.unwrap().unschedulable,
        Some(true)
    );
    // Its own Node it may cordon (and uncordon).
    assert_eq!(
        api_code(
            nodes
                .patch("w-1", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        ),
        200
    );
    let undo = json!({"spec": {"unschedulable": null}});
    assert_eq!(
        api_code(
            nodes
                .patch("w-1", &PatchParams::default(), &Patch::Merge(&undo))
                .await
        ),
        200
    );

    // The kubelet credential may not touch Leases outside kube-node-lease.
    let lease = |holder: Option<&str>| -> Lease {
        serde_json::from_value(
            json!({"metadata": {"name": "drydock-test-0", "namespace": NS},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 20}}),
        )
        .unwrap()
    };
    let kubelet_leases: Api<Lease> = Api::namespaced(w1_kubelet, NS);
    let e = kubelet_leases
        .create(&PostParams::default(), &lease(Some("w-1")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("kube-node-lease"), "{e}");

    // The drydock identity: a Lease in another node's name is refused...
    let leases1: Api<Lease> = Api::namespaced(w1.clone(), NS);
    let leases2: Api<Lease> = Api::namespaced(w2.clone(), NS);
    let e = leases1
        .create(&PostParams::default(), &lease(Some("w-2")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may not make w-2 the holder"), "{e}");
    // ...its own is fine; w-2 may neither take it over by writing w-1's
    // name nor release it; w-1 releases its own.
    let mine = leases1
        .create(&PostParams::default(), &lease(Some("w-1")))
        .await
        .unwrap();
    let mut theirs = mine.clone();
    theirs.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
    let e = leases2
        .replace("drydock-test-0", &PostParams::default(), &theirs)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may not make w-1 the holder"), "{e}");
    let mut released = mine.clone();
    released.spec.as_mut().unwrap().holder_identity = None;
    let e = leases2
        .replace("drydock-test-0", &PostParams::default(), &released)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("may not release or delete the hold of w-1"),
        "{e}"
    );
    let free = leases1
        .replace("drydock-test-0", &PostParams::default(), &released)
        .await
        .unwrap();
    // A free lease anyone may take (drydock's gates decide when).
    let mut take = free.clone();
    take.spec.as_mut().unwrap().holder_identity = Some("w-2".into());
    leases2
        .replace("drydock-test-0", &PostParams::default(), &take)
        .await
        .unwrap();
    // Not granted: deleting Leases at all.
    assert_eq!(
        api_code(leases2.delete("drydock-test-0", &Default::default()).await),
        403
    );
    let admin_leases: Api<Lease> = Api::namespaced(client(&bed.cp.super_admin).await, NS);
    admin_leases
        .delete("drydock-test-0", &Default::default())
        .await
        .unwrap();
}

async fn pause_halt_resume_and_kubectl(bed: &Bed) {
    let out = bed.drydock("w-3", &["cluster", "pause", "--reason", "etcd maintenance"]);
    assert!(out.status.success(), "{}", text(&out));
    let cluster = KubeCluster::with_identity(
        client(&bed.kubelet("w-3").kubeconfig).await,
        client(&bed.identity_kubeconfig("w-3")).await,
        bed.settings("w-3"),
        "w-3".into(),
    );
    let gates = cluster.cluster_gates(jiff::Timestamp::now()).await.gates;
    assert!(
        gates
            .iter()
            .any(|g| !g.passed && g.reason.contains("etcd maintenance")),
        "{gates:?}"
    );
    // kubectl shows the annotation (get + patch on the Namespace).
    let ns = bed.cp.kubectl(
        &bed.identity_kubeconfig("w-3"),
        &["get", "namespace", NS, "-o", "json"],
    );
    assert!(text(&ns).contains("etcd maintenance"), "{}", text(&ns));
    let out = bed.cp.kubectl(
        &bed.identity_kubeconfig("w-3"),
        &["annotate", "namespace", NS, "example.com/note=x"],
    );
    assert!(
        out.status.success(),
        "kubectl annotate with the drydock identity: {}",
        text(&out)
    );
    let out = bed.drydock("w-3", &["cluster", "resume"]);
    assert!(out.status.success(), "{}", text(&out));

    // A halt by one node stops the others; resume lifts it.
    cluster
        .halt_fleet(&drydock::testing::agent::ports::Halt {
            node: "w-3".into(),
            reason: "w-3 failed verification".into(),
            at: jiff::Timestamp::now(),
        })
        .await
        .unwrap();
    let other = KubeCluster::with_identity(
        client(&bed.kubelet("w-4").kubeconfig).await,
        client(&bed.identity_kubeconfig("w-4")).await,
        bed.settings("w-4"),
        "w-4".into(),
    );
    let gates = other.cluster_gates(jiff::Timestamp::now()).await.gates;
    assert!(
        gates
            .iter()
            .any(|g| !g.passed && g.reason.contains("w-3 failed verification")),
        "{gates:?}"
    );
    let out = bed.drydock("w-4", &["cluster", "resume"]);
    assert!(out.status.success(), "{}", text(&out));
    let gates = other.cluster_gates(jiff::Timestamp::now()).await.gates;
    assert!(gates.iter().all(|g| g.passed), "{gates:?}");

    // Events with the kubelet credential (core/v1), seen by kubectl in
    // both Event APIs.
    let mut events = drydock::testing::report::events::NodeEvents::new(
        client(&bed.kubelet("w-3").kubeconfig).await,
        "w-3",
    );
    let spec = drydock::testing::report::notice::Notice::Rebooting {
        boot_id: "b".into(),
    }
    .event()
    .unwrap();
    events.record(&spec, jiff::Timestamp::now()).await.unwrap();
    let report = drydock::testing::cluster::node::NodeReport {
        state: "pending".into(),
        detail: "waiting for the window".into(),
        step: None,
        since: None,
        reboot_needed_since: None,
        last_reboot: None,
        blocked_by: Vec::new(),
        slot: None,
        window_open: false,
        next_window: None,
        upgrade: None,
        reported_at: jiff::Timestamp::now(),
        version: String::new(),
    };
    events.publish(&report).await.unwrap();
    let core = bed.cp.admin_kubectl(
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.name=w-3",
        ],
        None,
    );
    assert!(core.contains("Rebooting"), "{core}");
    let v1 = bed.cp.admin_kubectl(
        &[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "default",
            "-o",
            "json",
        ],
        None,
    );
    assert!(v1.contains("drydock-w-3"), "{v1}");
    let desc = bed.cp.admin_kubectl(&["describe", "node", "w-3"], None);
    assert!(
        desc.contains("drydock.dev/state: pending") && desc.contains("Rebooting"),
        "{desc}"
    );

    // `drydock status` reads the lease slots with the drydock identity.
    let out = bed.drydock("w-3", &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["lease"]["slots"].is_array() && status["lease"]["error"].is_null(),
        "{status}"
    );
}

/// Waits until `cluster`'s Namespace watch has seen `target` (`None`: no
/// target set).
async fn watch_sees(cluster: &KubeCluster, what: &str, target: Option<&str>) {
    eventually(what, Duration::from_secs(10), || async {
        match cluster.upgrade_target_seen() {
            Some(seen) if seen.as_deref() == target => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// An idle node reads the upgrade target from its watch of the drydock
/// Namespace, with its own drydock identity (RBAC: watch by name): a new
/// target reaches its checks with no GET of the Namespace, proved by the
/// API server's audit log.
async fn target_through_the_watch(bed: &Bed) {
    use k8s_openapi::api::core::v1::Namespace;
    const NODE: &str = "w-2";
    let target = drydock::testing::cluster::annotations::KUBERNETES_VERSION;
    let identity = client(&bed.identity_kubeconfig(NODE)).await;
    let cluster = KubeCluster::with_identity(
        client(&bed.kubelet(NODE).kubeconfig).await,
        identity,
        bed.settings(NODE),
        NODE.into(),
    );
    assert_eq!(
        cluster.upgrade_target_seen(),
        None,
        "no watch before a read"
    );
    assert_eq!(cluster.upgrade_target().await.unwrap(), None);
    watch_sees(&cluster, "the Namespace watch opens", None).await;
    let admin: Api<Namespace> = Api::all(client(&bed.cp.super_admin).await);
    let annotate = |v: Option<&str>| json!({"metadata": {"annotations": {target: v}}});
    admin
        .patch(
            NS,
            &PatchParams::default(),
            &Patch::Merge(&annotate(Some("v1.34.9"))),
        )
        .await
        .unwrap();
    watch_sees(&cluster, "the watch sees the target", Some("v1.34.9")).await;
    admin
        .patch(NS, &PatchParams::default(), &Patch::Merge(&annotate(None)))
        .await
        .unwrap();
    watch_sees(&cluster, "the watch sees it removed", None).await;
    drop(cluster);

    // The agent itself, idle (nothing to do), on its own state: its checks
    // (every second here) see a new target through the watch.
    let mut settings = bed.settings(NODE);
    let dir = bed.state.join("w-2-watch");
    std::fs::create_dir_all(&dir).unwrap();
    settings.node.state_db = dir.join("state.db");
    settings.node.run_dir = dir.join("run");
    let machine = Arc::new(Mutex::new(Machine {
        boot_id: bed.kubelet(NODE).boot_id(),
        booted_at: jiff::Timestamp::now() - Duration::from_secs(3600),
        need: vec![],
        reboots: 0,
        checks_fail: false,
    }));
    let (reboot_tx, _reboot_rx) = mpsc::unbounded_channel::<String>();
    let host = SimHost::new(NODE, machine, reboot_tx);
    let cluster = KubeCluster::with_identity(
        client(&bed.kubelet(NODE).kubeconfig).await,
        client(&bed.identity_kubeconfig(NODE)).await,
        settings.clone(),
        NODE.into(),
    );
    let rec = Recorder {
        node: NODE.into(),
        states: Arc::default(),
        max_out: Arc::default(),
    };
    let store = Store::open(&settings.node.state_db).unwrap();
    let mut agent = Agent::new(NODE.into(), settings, store, host, cluster, rec).unwrap();
    let running = tokio::spawn(async move { agent.run(std::future::pending::<()>()).await });
    let user = format!("drydock:node:{NODE}");
    let kubelet_user = format!("system:node:{NODE}");
    let requests = |from: usize, user: &str, verb: &str, resource: &str| {
        bed.cp.audit()[from..]
            .iter()
            .filter(|e| {
                e["user"]["username"] == user
                    && e["verb"] == verb
                    && e["objectRef"]["resource"] == resource
                    && e["stage"] != "RequestReceived"
            })
            .count()
    };
    let from = bed.cp.audit().len();
    eventually(
        "the agent's watch opens",
        Duration::from_secs(10),
        || async {
            match requests(from, &user, "watch", "namespaces") {
                0 => Err("no watch yet".into()),
                _ => Ok(()),
            }
        },
    )
    .await;
    // Several checks (1 s apart), then a target: no GET of the Namespace.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = bed.cp.audit().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin
        .patch(
            NS,
            &PatchParams::default(),
            &Patch::Merge(&annotate(Some("v1.34.9"))),
        )
        .await
        .unwrap();
    // A check that sees a target reads the cluster's versions (kubeadm's
    // ConfigMap with the kubelet credential): the sign that it saw it.
    eventually(
        "the agent's check sees the target",
        Duration::from_secs(10),
        || async {
            match requests(window, &kubelet_user, "get", "configmaps") {
                0 => Err("no versions read yet".into()),
                _ => Ok(()),
            }
        },
    )
    .await;
    running.abort();
    admin
        .patch(NS, &PatchParams::default(), &Patch::Merge(&annotate(None)))
        .await
        .unwrap();
    assert_eq!(
        requests(window, &user, "get", "namespaces"),
        0,
        "the idle agent read the Namespace instead of using its watch"
    );
}

// --- the simulator against the real thing ---------------------------------

struct Who {
    kubelet: kube::Client,
    me: kube::Client,
    other: kube::Client,
    admin: kube::Client,
}

/// One scenario of requests; each step's status code, and the final
/// objects that matter.
async fn scenario(c: &Who) -> (Vec<(&'static str, u16)>, serde_json::Value) {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Event, Namespace};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let mut steps = vec![];
    let mut step = |label: &'static str, code: u16| steps.push((label, code));
    let nodes = |c: &kube::Client| -> Api<Node> { Api::all(c.clone()) };
    let lp = ListParams::default();
    step(
        "identity lists nodes",
        api_code(nodes(&c.me).list(&lp).await),
    );
    step(
        "kubelet lists all nodes",
        api_code(nodes(&c.kubelet).list(&lp).await),
    );
    step(
        "kubelet lists its node",
        api_code(
            nodes(&c.kubelet)
                .list(&ListParams::default().fields("metadata.name=w-1"))
                .await,
        ),
    );
    step(
        "kubelet gets its node",
        api_code(nodes(&c.kubelet).get("w-1").await),
    );
    step(
        "kubelet gets another node",
        api_code(nodes(&c.kubelet).get("w-2").await),
    );
    let cordon = json!({"spec": {"unschedulable": true}});
    step(
        "kubelet cordons another node",
        api_code(
            nodes(&c.kubelet)
                .patch("w-2", &PatchParams::default(), &Patch::Merge(&cordon))
                .await,
        ),
    );
    let note = json!({"metadata": {"annotations": {"drydock.dev/diff": "yes"}}});
    step(
        "kubelet annotates its node",
        api_code(
            nodes(&c.kubelet)
                .patch("w-1", &PatchParams::default(), &Patch::Merge(&note))
                .await,
        ),
    );
    step(
        "identity annotates a node",
        api_code(
            nodes(&c.me)
                .patch("w-1", &PatchParams::default(), &Patch::Merge(&note))
                .await,
        ),
    );

    let lease = |name: &str, holder: Option<&str>| -> Lease {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": NS},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 20}}))
        .unwrap()
    };
    let leases = |c: &kube::Client, ns: &str| -> Api<Lease> { Api::namespaced(c.clone(), ns) };
    let pp = PostParams::default();
    step(
        "kubelet creates a drydock lease",
        api_code(
            leases(&c.kubelet, NS)
                .create(&pp, &lease("diff-k", Some("w-1")))
                .await,
        ),
    );
    step(
        "kubelet gets a drydock lease",
        api_code(leases(&c.kubelet, NS).get("diff-none").await),
    );
    step(
        "kubelet lists node leases",
        api_code(leases(&c.kubelet, "kube-node-lease").list(&lp).await),
    );
    step(
        "identity creates a lease for another",
        api_code(
            leases(&c.me, NS)
                .create(&pp, &lease("diff-0", Some("w-2")))
                .await,
        ),
    );
    let mine = leases(&c.me, NS)
        .create(&pp, &lease("diff-0", Some("w-1")))
        .await;
    let mine = mine.expect("identity creates its own lease");
    let mut free = mine.clone();
    free.spec.as_mut().unwrap().holder_identity = None;
    step(
        "another identity releases it",
        api_code(leases(&c.other, NS).replace("diff-0", &pp, &free).await),
    );
    step(
        "another identity deletes it",
        api_code(
            leases(&c.other, NS)
                .delete("diff-0", &Default::default())
                .await,
        ),
    );
    step(
        "identity releases its own",
        api_code(leases(&c.me, NS).replace("diff-0", &pp, &free).await),
    );
    step(
        "identity lists leases",
        api_code(leases(&c.me, NS).list(&lp).await),
    );
    step(
        "identity creates a lease elsewhere",
        api_code(
            leases(&c.me, "default")
                .create(&pp, &lease("diff-1", Some("w-1")))
                .await,
        ),
    );

    let namespaces = |c: &kube::Client| -> Api<Namespace> { Api::all(c.clone()) };
    step(
        "identity gets the drydock namespace",
        api_code(namespaces(&c.me).get(NS).await),
    );
    step(
        "identity annotates the drydock namespace",
        api_code(
            namespaces(&c.me)
                .patch(NS, &PatchParams::default(), &Patch::Merge(&note))
                .await,
        ),
    );
    step(
        "identity gets another namespace",
        api_code(namespaces(&c.me).get("default").await),
    );
    step(
        "kubelet gets the drydock namespace",
        api_code(namespaces(&c.kubelet).get(NS).await),
    );
    // The idle node's watch of the upgrade target: by name (the
    // fieldSelector names it for RBAC's resourceNames), never all of them.
    let by_name = kube::api::WatchParams::default()
        .fields(&format!("metadata.name={NS}"))
        .timeout(1);
    step(
        "identity watches the drydock namespace by name",
        api_code(namespaces(&c.me).watch(&by_name, "0").await.map(|_| ())),
    );
    step(
        "identity watches every namespace",
        api_code(
            namespaces(&c.me)
                .watch(&kube::api::WatchParams::default().timeout(1), "0")
                .await
                .map(|_| ()),
        ),
    );
    step(
        "identity watches another namespace by name",
        api_code(
            namespaces(&c.me)
                .watch(
                    &kube::api::WatchParams::default()
                        .fields("metadata.name=default")
                        .timeout(1),
                    "0",
                )
                .await
                .map(|_| ()),
        ),
    );
    step(
        "identity lists the drydock namespace by name",
        api_code(
            namespaces(&c.me)
                .list(&ListParams::default().fields(&format!("metadata.name={NS}")))
                .await,
        ),
    );

    let core_event: Event = serde_json::from_value(json!({
        "metadata": {"name": "w-1.diff", "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": "w-1"},
        "reason": "Diff", "message": "differential test", "type": "Normal",
        "source": {"component": "drydock", "host": "w-1"}, "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"}))
    .unwrap();
    let events: Api<Event> = Api::namespaced(c.kubelet.clone(), "default");
    step(
        "kubelet creates a core Event",
        api_code(events.create(&pp, &core_event).await),
    );
    let v1: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "w-1.diff-v1", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "action": "Diff", "reason": "Diff",
        "reportingController": "drydock.dev/drydock", "reportingInstance": "drydock-w-1",
        "regarding": {"apiVersion": "v1", "kind": "Node", "name": "w-1"}, "type": "Normal"}))
    .unwrap();
    let events_v1: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.kubelet.clone(), "default");
    step(
        "kubelet creates an events.k8s.io Event",
        api_code(events_v1.create(&pp, &v1).await),
    );
    let admin_v1: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.admin.clone(), "default");
    step(
        "the core Event read as events.k8s.io",
        api_code(admin_v1.get("w-1.diff").await),
    );

    let pods = |c: &kube::Client| -> Api<Pod> { Api::all(c.clone()) };
    step(
        "kubelet lists its pods",
        api_code(
            pods(&c.kubelet)
                .list(&ListParams::default().fields("spec.nodeName=w-1"))
                .await,
        ),
    );
    step(
        "kubelet lists all pods",
        api_code(pods(&c.kubelet).list(&lp).await),
    );
    step("identity lists pods", api_code(pods(&c.me).list(&lp).await));
    step(
        "identity lists daemonsets",
        api_code(Api::<DaemonSet>::all(c.me.clone()).list(&lp).await),
    );
    step(
        "identity lists PDBs",
        api_code(
            Api::<PodDisruptionBudget>::all(c.me.clone())
                .list(&lp)
                .await,
        ),
    );
    step(
        "kubelet lists PDBs",
        api_code(
            Api::<PodDisruptionBudget>::all(c.kubelet.clone())
                .list(&lp)
                .await,
        ),
    );

    // The final objects, as the admin sees them.
    let lease = leases(&c.admin, NS).get("diff-0").await.unwrap();
    let node = nodes(&c.admin).get("w-1").await.unwrap();
    let ns = namespaces(&c.admin).get(NS).await.unwrap();
    let w2 = nodes(&c.admin).get("w-2").await.unwrap();
    let v1 = admin_v1.get("w-1.diff").await.unwrap();
    let finals = json!({
        "lease holder": lease.spec.unwrap().holder_identity,
        "w-1 annotation": node.metadata.annotations.unwrap_or_default().get("drydock.dev/diff"),
        "namespace annotation": ns.metadata.annotations.unwrap_or_default().get("drydock.dev/diff"),
        "w-2 unschedulable": w2.spec.unwrap().unschedulable.unwrap_or(false),
        "event note": v1.note,
        "event regarding": v1.regarding.and_then(|r| r.name),
    });
    // Leave both as they were.
    let _ = leases(&c.admin, NS)
        .delete("diff-0", &Default::default())
        .await;
    (steps, finals)
}

async fn differential(bed: &Bed) {
    let real = Who {
        kubelet: client(&bed.kubelet("w-1").kubeconfig).await,
        me: client(&bed.identity_kubeconfig("w-1")).await,
        other: client(&bed.identity_kubeconfig("w-2")).await,
        admin: client(&bed.cp.super_admin).await,
    };
    let (real_steps, real_final) = scenario(&real).await;

    let sim = drydock::testing::sim::Scenario::new()
        .node(drydock::testing::sim::NodeSpec::control_plane("cp-1"))
        .node(drydock::testing::sim::NodeSpec::worker("w-1"))
        .node(drydock::testing::sim::NodeSpec::worker("w-2"))
        .namespace("kube-node-lease")
        .start()
        .await
        .unwrap();
    sim.apply_manifests(&drydock::testing::cli::rbac::manifests(NS, identity::GROUP))
        .unwrap();
    let id = |n: &str| {
        drydock::testing::sim::User::new(
            &format!("drydock:node:{n}"),
            &[identity::GROUP, "system:authenticated"],
        )
    };
    let simulated = Who {
        kubelet: sim
            .client_as(&drydock::testing::sim::User::node("w-1"))
            .await
            .unwrap(),
        me: sim.client_as(&id("w-1")).await.unwrap(),
        other: sim.client_as(&id("w-2")).await.unwrap(),
        admin: sim.client().unwrap(),
    };
    let (sim_steps, sim_final) = scenario(&simulated).await;
    let mut diffs = vec![];
    for ((label, real), (_, simulated)) in real_steps.iter().zip(&sim_steps) {
        println!("{label:45} real {real}  simulator {simulated}");
        if real != simulated {
            diffs.push(format!("{label}: real {real}, simulator {simulated}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "the simulator differs from kube-apiserver:\n{}",
        diffs.join("\n")
    );
    assert_eq!(real_final, sim_final, "final objects");
}

// --- the rolling reboot -----------------------------------------------------

struct Recorder {
    node: String,
    states: Arc<Mutex<BTreeMap<String, String>>>,
    max_out: Arc<Mutex<usize>>,
}

const OUT: &[&str] = &[
    "cordoning",
    "draining",
    "rebooting",
    "verifying",
    "releasing",
];

impl Reporter for Recorder {
    fn status(&self, _line: &str) {}
    fn event(&self, node: &str, event: &AgentEvent) {
        if let AgentEvent::StateChanged { to, .. } = event {
            let to = to.to_string();
            let mut s = self.states.lock().unwrap();
            s.insert(node.to_string(), to.clone());
            let out = s.values().filter(|v| OUT.contains(&v.as_str())).count();
            let mut m = self.max_out.lock().unwrap();
            *m = (*m).max(out);
            println!("{} -> {to}", self.node);
        }
    }
}

async fn rolling_reboot(bed: &Bed) {
    let states: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let max_out: Arc<Mutex<usize>> = Arc::default();
    let (reboot_tx, mut reboot_rx) = mpsc::unbounded_channel::<String>();
    let mut machines = BTreeMap::new();
    let mut running = BTreeMap::new();
    let start_agent = |node: &str, machine: Arc<Mutex<Machine>>| {
        let settings = bed.settings(node);
        let node = node.to_string();
        let host = SimHost::new(&node, machine, reboot_tx.clone());
        let kubelet_kc = bed.kubelet(&node).kubeconfig.clone();
        let ident_kc = bed.identity_kubeconfig(&node);
        let rec = Recorder {
            node: node.clone(),
            states: states.clone(),
            max_out: max_out.clone(),
        };
        tokio::spawn(async move {
            let store = Store::open(&settings.node.state_db).unwrap();
            let cluster = KubeCluster::with_identity(
                client(&kubelet_kc).await,
                client(&ident_kc).await,
                settings.clone(),
                node.clone(),
            );
            let mut agent = Agent::new(node, settings, store, host, cluster, rec).unwrap();
            agent.run(std::future::pending::<()>()).await
        })
    };
    for node in NODES {
        let m = Arc::new(Mutex::new(Machine {
            boot_id: bed.kubelet(node).boot_id(),
            booted_at: jiff::Timestamp::now() - Duration::from_secs(3600),
            need: vec!["packages need a reboot: linux-image-6.1.0-28-amd64".into()],
            reboots: 0,
            checks_fail: false,
        }));
        running.insert(node.to_string(), start_agent(node, m.clone()));
        machines.insert(node.to_string(), m);
    }
    // The API server's own view: never two nodes cordoned at once.
    let admin = client(&bed.cp.super_admin).await;
    let max_cordoned = Arc::new(Mutex::new(0usize));
    let watcher = {
        let admin = admin.clone();
        let max_cordoned = max_cordoned.clone();
        tokio::spawn(async move {
            let nodes: Api<Node> = Api::all(admin);
            loop {
                if let Ok(list) = nodes.list(&ListParams::default()).await {
                    let n = list
                        .items
                        .iter()
                        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
                        .count();
                    let mut m = max_cordoned.lock().unwrap();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let deadline = Duration::from_secs(300);
    loop {
        tokio::select! {
            Some(node) = reboot_rx.recv() => {
                if let Some(task) = running.remove(&node) { task.abort(); let _ = task.await; }
                let booted = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
                let boot = bed.kubelet(&node).reboot(Duration::from_secs(3)).await;
                {
                    let mut m = machines[&node].lock().unwrap();
                    m.boot_id = boot;
                    m.booted_at = booted;
                    m.need.clear();
                }
                println!("{node}: machine back after reboot");
                running.insert(node.clone(), start_agent(&node, machines[&node].clone()));
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let s = states.lock().unwrap().clone();
                let done = machines.iter().all(|(n, m)| m.lock().unwrap().reboots == 1 && s.get(n).is_some_and(|v| v == "idle"));
                assert!(!s.values().any(|v| v == "failed"), "a node failed: {s:?}");
                if done { break; }
                assert!(started.elapsed() < deadline, "rollout not finished in {deadline:?}: {s:?}");
            }
        }
    }
    println!("rolling reboot of 5 nodes in {:?}", started.elapsed());
    watcher.abort();
    for (_, t) in running {
        t.abort();
    }
    assert_eq!(
        *max_out.lock().unwrap(),
        1,
        "never two nodes out of service at once"
    );
    assert_eq!(
        *max_cordoned.lock().unwrap(),
        1,
        "never two nodes cordoned at once"
    );
    for (node, m) in &machines {
        assert_eq!(m.lock().unwrap().reboots, 1, "{node} rebooted once");
    }
    // Every node schedulable again; the ReplicaSet back at 4 ready pods.
    let nodes: Api<Node> = Api::all(admin.clone());
    for n in nodes.list(&ListParams::default()).await.unwrap().items {
        assert_ne!(
            n.spec.unwrap().unschedulable,
            Some(true),
            "{:?} uncordoned",
            n.metadata.name
        );
    }
    let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(admin.clone(), "apps");
    eventually("web back at 4 ready", Duration::from_secs(30), || {
        let rs = rs.clone();
        async move {
            let r = rs.get("web").await.map_err(|e| e.to_string())?;
            let ready = r.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready == 4 {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            }
        }
    })
    .await;
    // The leases are free again.
    let leases: Api<Lease> = Api::namespaced(admin, NS);
    for l in leases.list(&ListParams::default()).await.unwrap().items {
        assert!(
            l.spec
                .and_then(|s| s.holder_identity)
                .is_none_or(|h| h.is_empty()),
            "{:?} released",
            l.metadata.name
        );
    }
}

// --- RBAC against the audit log -----------------------------------------

/// (verb, apiGroup, resource[/subresource]) of a request.
type Use = (String, String, String);

fn granted(rules: &serde_json::Value, u: &Use, name: Option<&str>) -> bool {
    rules.as_array().unwrap().iter().any(|r| {
        let has = |key: &str, v: &str| r[key].as_array().is_some_and(|a| a.iter().any(|x| x == v));
        has("verbs", &u.0)
            && has("apiGroups", &u.1)
            && has("resources", &u.2)
            && (r.get("resourceNames").is_none() || name.is_some_and(|n| has("resourceNames", n)))
    })
}

fn audited_requests_match_the_rbac(bed: &Bed, probes: std::ops::Range<usize>) {
    let cluster_rules = drydock::testing::cli::rbac::cluster_rules(NS);
    let ns_rules = drydock::testing::cli::rbac::namespace_rules();
    let mut used_cluster: BTreeSet<Use> = BTreeSet::new();
    let mut used_ns: BTreeSet<Use> = BTreeSet::new();
    let mut refused = vec![];
    for (i, e) in bed.cp.audit().into_iter().enumerate() {
        if probes.contains(&i) {
            continue;
        }
        let user = e["user"]["username"].as_str().unwrap_or_default();
        if !user.starts_with("drydock:node:") || e["stage"] != "ResponseComplete" {
            continue;
        }
        let o = &e["objectRef"];
        let Some(resource) = o["resource"].as_str() else {
            continue;
        };
        // What every authenticated user may do (kubectl auth whoami).
        if resource.starts_with("self") {
            continue;
        }
        let resource = match o["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let u: Use = (
            e["verb"].as_str().unwrap().to_string(),
            o["apiGroup"].as_str().unwrap_or("").to_string(),
            resource,
        );
        let ns = o["namespace"].as_str();
        let name = o["name"].as_str();
        let code = e["responseStatus"]["code"].as_u64().unwrap_or(0);
        // Admission refusals (the holder rule) are deliberate above; RBAC
        // refusals must not happen.
        let authz_refused =
            code == 403 && e["annotations"]["authorization.k8s.io/decision"] == "forbid";
        if authz_refused {
            refused.push(format!("{user} {u:?} {ns:?} {name:?}"));
        }
        if ns == Some(NS) && granted(&ns_rules, &u, name) {
            used_ns.insert(u);
        } else if granted(&cluster_rules, &u, name) {
            used_cluster.insert(u);
        } else if !authz_refused {
            refused.push(format!(
                "not granted by `drydock rbac` yet allowed: {user} {u:?} {ns:?} {name:?}"
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "requests of the drydock identity outside its RBAC:\n{}",
        refused.join("\n")
    );
    // Nothing broader: every granted (verb, resource) was used, but for
    // what drydock's code does only on a rarer path.
    let rarer: &[(&str, &str, &str)] = &[
        // lease.rs reads a slot back after a 409 Conflict.
        ("get", "coordination.k8s.io", "leases"),
        // drain.rs names the PDB that refused an eviction (429): only when
        // an eviction races a replacement that is not Ready yet.
        ("list", "policy", "poddisruptionbudgets"),
        // ... and then follows those budgets until the drain ends.
        ("watch", "policy", "poddisruptionbudgets"),
        // drain.rs reads a pod back only when its namespace is terminating
        // (the node itself gets 403 for a pod no longer bound to it).
        ("get", "", "pods"),
    ];
    let mut unused = vec![];
    for (rules, used) in [(&cluster_rules, &used_cluster), (&ns_rules, &used_ns)] {
        for r in rules.as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for v in r["verbs"].as_array().unwrap() {
                        let u: Use = (
                            v.as_str().unwrap().into(),
                            g.as_str().unwrap().into(),
                            res.as_str().unwrap().into(),
                        );
                        if !used.contains(&u)
                            && !rarer.contains(&(u.0.as_str(), u.1.as_str(), u.2.as_str()))
                        {
                            unused.push(format!("{u:?}"));
                        }
                    }
                }
            }
        }
    }
    println!("drydock identity used: {used_cluster:?} and in {NS}: {used_ns:?}");
    assert!(
        unused.is_empty(),
        "granted but never used: {}",
        unused.join(", ")
    );
}
