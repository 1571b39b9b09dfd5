//! A real Kubernetes control plane on loopback for the end-to-end tests:
//! etcd, kube-apiserver (Node,RBAC authorization, NodeRestriction, an audit
//! log), kube-controller-manager (the CSR signer with our CA, disruption,
//! ReplicaSet, DaemonSet, node lifecycle...) and kube-scheduler, built by
//! `scripts/build-control-plane` into target/controlplane/bin. Everything
//! lives in a temp dir; processes die with the test binary (PDEATHSIG).
//!
//! Nodes are played by [`Kubelet`]s: clients with the node's own client
//! certificate (`CN=system:node:X, O=system:nodes`), so the Node authorizer
//! and NodeRestriction judge them as they judge a real kubelet. They
//! register, heartbeat, run the pods bound to them, finish deletions, and
//! reboot (NotReady, a new boot_id).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

/// The binaries, or why the tests cannot run. Under CI=true a missing
/// binary fails the test; otherwise it is skipped with a message.
pub fn binaries() -> Option<PathBuf> {
    let dir = std::env::var_os("DRYDOCK_CONTROLPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/controlplane/bin"));
    let missing: Vec<&str> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ]
    .into_iter()
    .filter(|b| !dir.join(b).is_file())
    .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!(
        "control-plane binaries missing in {} ({}); run scripts/build-control-plane",
        dir.display(),
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    println!("SKIPPED: {why}");
    None
}

/// drydock's logs in the test's output (RUST_LOG, default drydock=info).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "drydock=info".into()),
        ))
        .with_test_writer()
        .try_init();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A certificate authority of our own (the cluster CA).
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kubernetes");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        }
    }

    /// (cert, key) PEM of a client certificate for `cn` in `groups`.
    pub fn client(&self, cn: &str, groups: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for `cn` with an existing key and a validity
    /// of our choosing (PEM).
    pub fn client_for_key(
        &self,
        key_pem: &str,
        cn: &str,
        group: &str,
        valid: (i32, i32),
    ) -> String {
        let key = KeyPair::from_pem(key_pem).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, group);
        params.distinguished_name = dn;
        params.not_before = rcgen::date_time_ymd(valid.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(valid.1, 1, 1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &self.issuer).unwrap().pem()
    }

    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.96.0.1".parse().unwrap()));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub struct ControlPlane {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub bin: PathBuf,
    pub url: String,
    pub ca: Ca,
    pub ca_file: PathBuf,
    /// kubeadm's admin.conf (group kubeadm:cluster-admins).
    pub admin: PathBuf,
    /// kubeadm's super-admin.conf (system:masters).
    pub super_admin: PathBuf,
    pub audit_log: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in self.children.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a control plane runs beyond etcd and kube-apiserver, and whom the
/// audit log records.
#[derive(Debug, Clone)]
pub struct Options {
    /// kube-controller-manager's `--controllers`.
    pub controllers: String,
    /// Whether kube-scheduler runs.
    pub scheduler: bool,
    /// Users recorded in the audit log besides the groups drydock:nodes and
    /// system:nodes (always recorded).
    pub audited_users: Vec<String>,
}

impl Default for Options {
    /// Everything kubeadm runs; the audit log records drydock and kubelets.
    fn default() -> Self {
        Options {
            controllers: "*,bootstrapsigner,tokencleaner".into(),
            scheduler: true,
            audited_users: vec![],
        }
    }
}

impl Options {
    fn audit_policy(&self) -> String {
        let mut rules =
            vec![json!({"level": "Metadata", "userGroups": ["drydock:nodes", "system:nodes"]})];
        if !self.audited_users.is_empty() {
            rules.push(json!({"level": "Metadata", "users": self.audited_users}));
        }
        rules.push(json!({"level": "None"}));
        json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
               "omitStages": ["RequestReceived"], "rules": rules})
        .to_string()
    }
}

impl ControlPlane {
    /// Starts everything and waits until the API answers and the
    /// controllers run. Blocking (spawns processes, polls).
    pub fn start(bin: &Path) -> ControlPlane {
        Self::start_with(bin, &Options::default())
    }

    /// As [`ControlPlane::start`], running what `opts` says.
    pub fn start_with(bin: &Path, opts: &Options) -> ControlPlane {
        let tmp = tempfile::Builder::new()
            .prefix("drydock-controlplane.")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let ca = Ca::new();
        let w = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = w("ca.crt", &ca.cert_pem);
        let ca_key = w("ca.key", &ca.key_pem);
        let (sc, sk) = ca.server();
        let server_crt = w("apiserver.crt", &sc);
        let server_key = w("apiserver.key", &sk);
        let sa = KeyPair::generate().unwrap();
        let sa_key = w("sa.key", &sa.serialize_pem());
        let sa_pub = w("sa.pub", &sa.public_key_pem());
        let audit_policy = w("audit-policy.json", &opts.audit_policy());
        let audit_log = dir.join("audit.log");

        let etcd_port = free_port();
        let peer_port = free_port();
        let api_port = free_port();
        let url = format!("https://127.0.0.1:{api_port}");
        let mut cp = ControlPlane {
            dir: dir.clone(),
            _tmp: tmp,
            bin: bin.to_path_buf(),
            url,
            ca,
            ca_file: ca_file.clone(),
            admin: PathBuf::new(),
            super_admin: PathBuf::new(),
            audit_log: audit_log.clone(),
            children: Mutex::new(vec![]),
        };
        cp.super_admin =
            cp.kubeconfig("super-admin", "kubernetes-super-admin", &["system:masters"]);
        cp.admin = cp.kubeconfig("admin", "kubernetes-admin", &["kubeadm:cluster-admins"]);
        let cm = cp.kubeconfig("controller-manager", "system:kube-controller-manager", &[]);
        let sched = cp.kubeconfig("scheduler", "system:kube-scheduler", &[]);

        let s = |p: &Path| p.to_string_lossy().into_owned();
        cp.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", s(&dir.join("etcd"))),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        );
        // kubeadm's flags, as far as they apply on loopback without kubelets.
        cp.spawn(
            "kube-apiserver",
            &[
                "--advertise-address=127.0.0.1".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--allow-privileged=true".into(),
                "--authorization-mode=Node,RBAC".into(),
                format!("--client-ca-file={}", s(&ca_file)),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--enable-bootstrap-token-auth=true".into(),
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", s(&sa_pub)),
                format!("--service-account-signing-key-file={}", s(&sa_key)),
                "--service-cluster-ip-range=10.96.0.0/12".into(),
                format!("--tls-cert-file={}", s(&server_crt)),
                format!("--tls-private-key-file={}", s(&server_key)),
                format!("--audit-policy-file={}", s(&audit_policy)),
                format!("--audit-log-path={}", s(&audit_log)),
                "--audit-log-mode=blocking".into(),
                "--endpoint-reconciler-type=none".into(),
            ],
        );
        cp.wait_ready();
        cp.kubeadm_rbac();
        cp.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", s(&cm)),
                format!("--authentication-kubeconfig={}", s(&cm)),
                format!("--authorization-kubeconfig={}", s(&cm)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                format!("--client-ca-file={}", s(&ca_file)),
                "--cluster-name=kubernetes".into(),
                format!("--cluster-signing-cert-file={}", s(&ca_file)),
                format!("--cluster-signing-key-file={}", s(&ca_key)),
                format!("--controllers={}", opts.controllers),
                "--leader-elect=false".into(),
                format!("--root-ca-file={}", s(&ca_file)),
                format!("--service-account-private-key-file={}", s(&sa_key)),
                "--use-service-account-credentials=true".into(),
                "--node-monitor-grace-period=20s".into(),
            ],
        );
        if !opts.scheduler {
            return cp;
        }
        cp.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={}", s(&sched)),
                format!("--authentication-kubeconfig={}", s(&sched)),
                format!("--authorization-kubeconfig={}", s(&sched)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                "--leader-elect=false".into(),
            ],
        );
        cp
    }

    fn spawn(&self, name: &str, args: &[String]) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(self.bin.join(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs here.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.lock().unwrap().push(child);
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Writes a kubeconfig with a client certificate for `cn` in `groups`.
    pub fn kubeconfig(&self, name: &str, cn: &str, groups: &[&str]) -> PathBuf {
        let (cert, key) = self.ca.client(cn, groups);
        let crt = self.dir.join(format!("{name}.crt"));
        let keyf = self.dir.join(format!("{name}.key"));
        std::fs::write(&crt, cert).unwrap();
        std::fs::write(&keyf, key).unwrap();
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kubernetes", "cluster": {
                "server": self.url, "certificate-authority": self.ca_file}}],
            "users": [{"name": cn, "user": {
                "client-certificate": crt, "client-key": keyf}}],
            "contexts": [{"name": "default", "context": {"cluster": "kubernetes", "user": cn}}],
            "current-context": "default",
        });
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&kc).unwrap()).unwrap();
        path
    }

    /// A kubelet's kubeconfig (kubeadm's kubelet.conf).
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.kubeconfig(
            &format!("kubelet-{node}"),
            &format!("system:node:{node}"),
            &["system:nodes"],
        )
    }

    pub fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
        self.kubectl_stdin(kubeconfig, args, None)
    }

    pub fn kubectl_stdin(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            pipe.write_all(data).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// kubectl as the super admin; panics with its output on failure.
    pub fn admin_kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.kubectl_stdin(&self.super_admin, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let out = self.kubectl(&self.super_admin, &["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            let exited = self
                .children
                .lock()
                .unwrap()
                .iter_mut()
                .any(|c| c.try_wait().ok().flatten().is_some());
            if exited || start.elapsed() > Duration::from_secs(90) {
                panic!(
                    "kube-apiserver not ready (exited, or 90s passed): {}\n--- kube-apiserver.log ---\n{}\n--- etcd.log ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail(&self.log("kube-apiserver"), 40),
                    tail(&self.log("etcd"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What kubeadm creates that matters here: admin.conf's group as
    /// cluster-admin, and kubelet client certificate rotation.
    fn kubeadm_rbac(&self) {
        let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "kubeadm:cluster-admins"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "kubeadm:cluster-admins"}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "kubeadm:node-autoapprove-certificate-rotation"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]},
        ]});
        let text = serde_json::to_vec(&rbac).unwrap();
        // The bootstrap ClusterRoles appear shortly after /readyz.
        let start = Instant::now();
        loop {
            let out = self.kubectl_stdin(&self.super_admin, &["apply", "-f", "-"], Some(&text));
            if out.status.success() {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("kubeadm RBAC: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Audit entries (JSON lines) written so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn client(kubeconfig: &Path) -> kube::Client {
    drydock::cli::daemon::kube_client(kubeconfig).await.unwrap()
}

// --- kubelets ---------------------------------------------------------------

/// One simulated kubelet, talking to the API server as `system:node:<name>`.
#[derive(Clone)]
pub struct Kubelet {
    pub name: String,
    pub kubeconfig: PathBuf,
    state: Arc<Mutex<KubeletState>>,
}

struct KubeletState {
    up: bool,
    boot_id: String,
    index: usize,
    /// What the Node reports as its kubeletVersion.
    version: String,
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

impl Kubelet {
    pub fn new(cp: &ControlPlane, name: &str, index: usize) -> Kubelet {
        Kubelet {
            name: name.to_string(),
            kubeconfig: cp.node_kubeconfig(name),
            state: Arc::new(Mutex::new(KubeletState {
                up: true,
                boot_id: uuid::Uuid::new_v4().to_string(),
                index,
                version: "v1.34.4".to_string(),
            })),
        }
    }

    pub fn boot_id(&self) -> String {
        self.state.lock().unwrap().boot_id.clone()
    }

    pub fn is_up(&self) -> bool {
        self.state.lock().unwrap().up
    }

    /// The kubelet now runs `version` (set before `register` for the
    /// version it registers with; afterwards the next heartbeat reports it).
    pub fn set_version(&self, version: &str) {
        self.state.lock().unwrap().version = version.to_string();
    }

    /// Registers the Node as the kubelet does (kubeadm labels the control
    /// plane afterwards, with the admin credential: a kubelet may not).
    pub async fn register(&self, control_plane: bool) {
        let client = client(&self.kubeconfig).await;
        let (index, version) = {
            let s = self.state.lock().unwrap();
            (s.index, s.version.clone())
        };
        let spec = drydock::sim::NodeSpec::worker(self.name.clone());
        let mut node = drydock::sim::node_object(&spec, index, &version);
        node["status"]["nodeInfo"]["bootID"] = json!(self.boot_id());
        if control_plane {
            node["spec"]["taints"] =
                json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
        }
        let api: Api<Node> = Api::all(client);
        let node: Node = serde_json::from_value(node).unwrap();
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("registering node {}: {e}", self.name),
        }
    }

    /// Heartbeats and pods, forever (spawn it).
    pub async fn run(self) {
        let client = client(&self.kubeconfig).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let mut last_beat = Instant::now() - Duration::from_secs(60);
        let mut was_up = true;
        let mut reported = String::new();
        loop {
            let (up, boot_id, version) = {
                let s = self.state.lock().unwrap();
                (s.up, s.boot_id.clone(), s.version.clone())
            };
            if up != was_up || version != reported || last_beat.elapsed() > Duration::from_secs(2) {
                let (status, reason) = if up {
                    ("True", "KubeletReady")
                } else {
                    ("False", "KubeletNotReady")
                };
                let t = now();
                let mut cond = json!({"type": "Ready", "status": status, "reason": reason,
                    "message": format!("simulated kubelet: {reason}"), "lastHeartbeatTime": t});
                if up != was_up {
                    cond["lastTransitionTime"] = json!(t);
                }
                let patch = json!({"status": {"conditions": [cond],
                    "nodeInfo": {"bootID": boot_id, "kubeletVersion": version}}});
                let beat = nodes
                    .patch_status(
                        &self.name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await;
                last_beat = Instant::now();
                was_up = up;
                if beat.is_ok() {
                    reported = version;
                }
            }
            self.pods(&client, up).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn pods(&self, client: &kube::Client, up: bool) {
        let all: Api<Pod> = Api::all(client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.name));
        let Ok(list) = all.list(&lp).await else {
            return;
        };
        let index = self.state.lock().unwrap().index;
        for (i, pod) in list.items.into_iter().enumerate() {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                // Containers stopped: the kubelet confirms the deletion.
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(kube::api::Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = api.delete(&name, &dp).await;
                continue;
            }
            let status = pod.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let running = status.phase.as_deref() == Some("Running");
            if (ready && running) == up {
                continue;
            }
            let t = now();
            let flag = if up { "True" } else { "False" };
            let containers: Vec<Value> = pod
                .spec
                .as_ref()
                .map(|s| s.containers.clone())
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    json!({"name": c.name, "image": c.image, "imageID": "", "ready": up,
                       "started": up, "restartCount": 0,
                       "containerID": format!("containerd://{}", uuid::Uuid::new_v4().simple()),
                       "state": {"running": {"startedAt": t}}})
                })
                .collect();
            let cond =
                |ty: &str, s: &str| json!({"type": ty, "status": s, "lastTransitionTime": t});
            let patch = json!({"status": {
                "phase": "Running",
                "hostIP": format!("192.168.56.{}", 10 + index),
                "podIP": format!("10.244.{index}.{}", 10 + i),
                "startTime": status.start_time.map(|s| json!(s)).unwrap_or(json!(t)),
                "conditions": [cond("Initialized", "True"), cond("PodScheduled", "True"),
                               cond("ContainersReady", flag), cond("Ready", flag)],
                "containerStatuses": containers,
            }});
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await;
        }
    }

    /// The machine goes down (NotReady), then up with a new boot_id.
    pub async fn reboot(&self, downtime: Duration) -> String {
        self.state.lock().unwrap().up = false;
        tokio::time::sleep(downtime).await;
        let boot = uuid::Uuid::new_v4().to_string();
        {
            let mut s = self.state.lock().unwrap();
            s.boot_id = boot.clone();
            s.up = true;
        }
        boot
    }
}
