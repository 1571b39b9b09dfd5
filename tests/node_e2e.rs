//! A real Debian node, first boot to second reboot (issue 11).
//!
//! Two Debian bookworm roots (scripts/build-node-root: debootstrap with
//! systemd, dbus, libpam-systemd, cloud-init) boot under `systemd-nspawn -b`
//! on the host network, as two worker nodes of the repository's Kubernetes
//! API simulator (the server behind `drydock sim serve`, run in this test
//! process on 127.0.0.1). The test plays the parts nothing else here can:
//! the kubelet's Node status after each boot, and the machine that boots
//! again after nspawn exits for a reboot. Everything else is real: the .deb
//! from scripts/build-deb, apt and dpkg, systemd, journald, logind's Reboot,
//! cloud-init with its NoCloud datasource.
//!
//! Test-only changes, all in the test: packages come from a local file
//! repository inside each root (stand-in kubelet, kubeadm, containerd, hello
//! and the drydock .deb) instead of the network; the cloud-init example gets
//! that repository as its APT source and loses prometheus-node-exporter (not
//! in the local repository); a drop-in `99-e2e.toml`, present before drydock
//! is installed, turns off the example's Slack URL and Alertmanager (no
//! traffic leaves the machine), opens the maintenance window and shortens
//! soak, drain and check periods.
//!
//! Needs root, systemd-nspawn, nsenter, dpkg-deb, apt-ftparchive and the
//! root tarball. Under CI=true a missing part fails the test; otherwise it
//! prints SKIPPED and passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drydock::testing::sim::{Scenario, SimHandle};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node as KubeNode;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DRYDOCK: &str = env!("CARGO_BIN_EXE_drydock");
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Inside each root.
const LOCAL_REPO: &str = "srv/drydock-repo";
const STATUS_WAITING: &str = "waiting: node not joined (no /etc/kubernetes/kubelet.conf)";

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn root_tarball() -> PathBuf {
    std::env::var_os("DRYDOCK_NODE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/nspawn/bookworm.tar"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root (systemd-nspawn and nsenter need it)".into());
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("dpkg-deb", "dpkg"),
        ("apt-ftparchive", "apt-utils"),
        ("tar", "tar"),
    ] {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed (apt-get install {package})"
            ));
        }
    }
    let tarball = root_tarball();
    if !tarball.is_file() {
        return Some(format!(
            "no node root at {} (scripts/build-node-root builds it; .ci/run calls it)",
            tarball.display()
        ));
    }
    None
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Waits until `probe` returns Some, or panics naming `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---------------------------------------------------------------------------
// The local APT repository: stand-ins for the runtime packages, and drydock.

struct Stand {
    name: &'static str,
    version: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const CONTAINERD_UNIT: &str = "[Unit]\nDescription=stand-in containerd\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";

const STANDS: &[Stand] = &[
    Stand {
        name: "kubelet",
        version: "1.31.0-1.1",
        files: &[],
    },
    Stand {
        name: "kubelet",
        version: "1.31.1-1.1",
        files: &[],
    },
    Stand {
        name: "kubeadm",
        version: "1.31.0-1.1",
        files: &[],
    },
    Stand {
        name: "containerd",
        version: "1.7.0-1",
        files: &[("lib/systemd/system/containerd.service", CONTAINERD_UNIT)],
    },
    Stand {
        name: "hello",
        version: "1.0-1",
        files: &[],
    },
];

fn build_repo(work: &Path, drydock_deb: &Path) -> PathBuf {
    let repo = work.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for s in STANDS {
        let dir = work.join(format!("build/{}_{}", s.name, s.version));
        write(
            &dir.join("DEBIAN/control"),
            &format!(
                "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: drydock tests <tests@drydock.invalid>\nDescription: stand-in {} for drydock's node test\n",
                s.name, s.version, s.name
            ),
        );
        write(
            &dir.join(format!("usr/share/doc/{}/version", s.name)),
            s.version,
        );
        for (path, content) in s.files {
            write(&dir.join(path), content);
        }
        run(
            Command::new("dpkg-deb")
                .args(["-Zgzip", "--root-owner-group", "-b"])
                .arg(&dir)
                .arg(repo.join(format!("{}_{}_all.deb", s.name, s.version))),
            "dpkg-deb -b",
        );
    }
    std::fs::copy(drydock_deb, repo.join(drydock_deb.file_name().unwrap())).unwrap();
    let packages = run(
        Command::new("apt-ftparchive")
            .args(["packages", "."])
            .current_dir(&repo),
        "apt-ftparchive packages",
    );
    std::fs::write(repo.join("Packages"), packages).unwrap();
    let release = run(
        Command::new("apt-ftparchive")
            .args(["-o", "APT::FTPArchive::Release::Suite=e2e", "release", "."])
            .current_dir(&repo),
        "apt-ftparchive release",
    );
    std::fs::write(repo.join("Release"), release).unwrap();
    repo
}

fn build_deb(work: &Path) -> PathBuf {
    let out = run(
        Command::new(Path::new(REPO).join("scripts/build-deb"))
            .args(["--binary", DRYDOCK, "--out"])
            .arg(work.join("deb")),
        "scripts/build-deb",
    );
    PathBuf::from(out.lines().last().expect("build-deb prints the .deb path"))
}

// ---------------------------------------------------------------------------
// One node: a root directory booted with systemd-nspawn.

struct Node {
    name: String,
    dir: PathBuf,
    log: PathBuf,
    nspawn: Option<Child>,
    leader: i32,
    /// nspawn exits seen with status 133 (the machine asked to reboot).
    reboots: usize,
}

impl Node {
    fn create(work: &Path, name: &str, repo: &Path) -> Node {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        run(
            Command::new("tar")
                .args(["--numeric-owner", "-xf"])
                .arg(root_tarball())
                .arg("-C")
                .arg(&dir),
            "unpacking the node root",
        );
        write(&dir.join("etc/hostname"), &format!("{name}\n"));
        write(
            &dir.join("etc/hosts"),
            &format!("127.0.0.1 localhost\n127.0.1.1 {name}\n"),
        );
        write(
            &dir.join("etc/machine-id"),
            &format!("{}\n", uuid::Uuid::new_v4().simple()),
        );
        // A persistent journal, as on a cloud image, so entries from before
        // the reboot can be read after it.
        std::fs::create_dir_all(dir.join("var/log/journal")).unwrap();
        // The textfile collector's directory, as prometheus-node-exporter
        // (only suggested, not in the local repository) would make it.
        std::fs::create_dir_all(dir.join("var/lib/prometheus/node-exporter")).unwrap();
        run(
            Command::new("cp")
                .arg("-a")
                .arg(repo)
                .arg(dir.join(LOCAL_REPO)),
            "copying the local repository into the root",
        );
        // Test-only settings, there before drydock is installed (see the
        // module comment): nothing leaves the machine, periods are short.
        write(
            &dir.join("etc/drydock/drydock.toml.d/99-e2e.toml"),
            "[node]\nidentity-kubeconfig = \"/etc/kubernetes/kubelet.conf\"\n\
             [maintenance]\nwindows = []\n\
             [alerts]\nalertmanager-url = \"\"\nprometheus-url = \"\"\n\
             [report]\nslack-webhook-url = \"\"\nwebhook-url = \"\"\nmetrics-listen = \"\"\n\
             textfile-dir = \"/var/lib/prometheus/node-exporter\"\n\
             [gates]\nsoak = \"1s\"\nrequired-daemonsets = [\"kube-system/calico-node\"]\n\
             [reboot]\ncheck-interval = \"3s\"\n\
             [lease]\nduration = \"30s\"\n\
             [drain]\ntimeout = \"2m\"\nretry-interval = \"1s\"\n\
             [verify]\ntimeout = \"3m\"\ncheck-timeout = \"20s\"\n",
        );
        Node {
            name: name.into(),
            log: work.join(format!("{name}.console.log")),
            dir,
            nspawn: None,
            leader: 0,
            reboots: 0,
        }
    }

    fn sources_list(&self) {
        write(
            &self.dir.join("etc/apt/sources.list"),
            &format!("deb [trusted=yes] file:/{LOCAL_REPO} ./\n"),
        );
    }

    /// Boots the root and waits until systemd has finished starting up.
    fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("systemd-nspawn")
            .args(["-b", "--register=no", "--keep-unit", "--console=pipe"])
            .arg("-M")
            .arg(&self.name)
            .arg("-D")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting systemd-nspawn");
        let nspawn = child.id();
        self.nspawn = Some(child);
        self.leader = wait_for(
            &format!(
                "{}'s init under nspawn (log: {})",
                self.name,
                self.log.display()
            ),
            Duration::from_secs(60),
            || {
                if let Some(status) = self.nspawn.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "systemd-nspawn exited at boot ({status}):\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                let children =
                    std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                        .ok()?;
                children.split_whitespace().find_map(|pid| {
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                    (comm.trim() == "systemd")
                        .then(|| pid.parse().ok())
                        .flatten()
                })
            },
        );
        // `running`, or `degraded` (then say which units failed).
        let state = wait_for(
            &format!("{} to finish booting", self.name),
            Duration::from_secs(180),
            || {
                let out = self.sh("systemctl is-system-running --wait");
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                matches!(state.as_str(), "running" | "degraded").then_some(state)
            },
        );
        if state == "degraded" {
            eprintln!(
                "{}: degraded boot; failed units:\n{}",
                self.name,
                text(&self.sh("systemctl --failed --no-legend"))
            );
        }
    }

    /// Runs a shell script inside the booted node (all its namespaces).
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "--", "/usr/bin/env", "-i"])
            .arg(format!("PATH={PATH}"))
            .args([
                "LC_ALL=C.UTF-8",
                "DEBIAN_FRONTEND=noninteractive",
                "/bin/sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// As [`Node::sh`]; the script must succeed. Returns stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{}: `{script}` failed ({}):\n{}",
            self.name,
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn boot_id(&self) -> String {
        self.ok("cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_string()
    }

    fn unit(&self, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} drydock.service"))
            .trim()
            .to_string()
    }

    /// The drydock journal as `journalctl -o json` entries (every boot).
    fn journal(&self) -> Vec<serde_json::Value> {
        self.ok("journalctl -u drydock.service -o json --no-pager")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The exit status if nspawn has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.nspawn.as_mut()?.try_wait().unwrap()?;
        self.nspawn = None;
        Some(status)
    }

    fn running(&self) -> bool {
        self.nspawn.is_some()
    }

    fn poweroff(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let _ = self.sh("systemctl poweroff --no-block");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.poweroff();
    }
}

// ---------------------------------------------------------------------------
// Journal entries.

fn field(e: &serde_json::Value, name: &str) -> Option<String> {
    e.get(name).and_then(|v| v.as_str()).map(str::to_string)
}

fn with_id<'a>(entries: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    entries
        .iter()
        .filter(|e| field(e, "MESSAGE_ID").as_deref() == Some(id))
        .collect()
}

// ---------------------------------------------------------------------------
// The cloud-init example, adapted for an offline test (see module comment).

fn cloud_init_user_data() -> String {
    let example = std::fs::read_to_string(Path::new(REPO).join("examples/cloud-init.yaml"))
        .expect("the shipped cloud-init example");
    let mut doc: serde_json::Value = serde_saphyr::from_str(&example).expect("example is YAML");
    let source = serde_saphyr::from_str::<serde_json::Value>(&format!(
        "{{preserve_sources_list: true, sources: {{drydock: {{source: 'deb [trusted=yes] file:/{LOCAL_REPO} ./'}}}}}}"
    ))
    .unwrap();
    doc["apt"] = source;
    let packages = doc["packages"]
        .as_array_mut()
        .expect("example installs packages");
    assert!(
        packages.iter().any(|p| p.as_str() == Some("drydock")),
        "the example installs drydock"
    );
    packages.retain(|p| p.as_str() != Some("prometheus-node-exporter"));
    format!("#cloud-config\n{}", serde_saphyr::to_string(&doc).unwrap())
}

fn seed_cloud_init(node: &Node) {
    let seed = node.dir.join("var/lib/cloud/seed/nocloud");
    write(&seed.join("user-data"), &cloud_init_user_data());
    write(
        &seed.join("meta-data"),
        &format!(
            "instance-id: {}-e2e\nlocal-hostname: {}\n",
            node.name, node.name
        ),
    );
    // Only the seed: no probing of cloud metadata services, no network
    // configuration of the shared host network.
    write(
        &node.dir.join("etc/cloud/cloud.cfg.d/99-drydock-e2e.cfg"),
        "datasource_list: [ NoCloud, None ]\nnetwork: {config: disabled}\n",
    );
}

// ---------------------------------------------------------------------------
// The kubelet's part, played by the test on the simulator.

fn join(node: &Node, sim: &SimHandle) {
    sim.set_boot_id(&node.name, &node.boot_id()).unwrap();
    sim.set_node_ready(&node.name, true).unwrap();
    let kubeconfig = node.dir.join("etc/kubernetes/kubelet.conf");
    let tmp = kubeconfig.with_extension("tmp");
    write(&tmp, &sim.kubeconfig_yaml());
    std::fs::rename(&tmp, &kubeconfig).unwrap();
}

fn unschedulable(sim: &SimHandle, name: &str) -> bool {
    sim.get::<KubeNode>(None, name)
        .and_then(|n| n.spec?.unschedulable)
        .unwrap_or(false)
}

fn lease_holders(sim: &SimHandle) -> Vec<String> {
    sim.list::<Lease>(Some("drydock"))
        .into_iter()
        .filter_map(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
fn a_real_debian_node_from_first_boot_to_second_reboot() {
    if let Some(why) = missing() {
        if ci() {
            panic!("the node end-to-end test cannot run under CI: {why}");
        }
        println!("SKIPPED: {why}");
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("drydock-node-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // DRYDOCK_E2E_KEEP=1 keeps the roots and console logs for a look after.
    let (_guard, work) = if std::env::var_os("DRYDOCK_E2E_KEEP").is_some() {
        let kept = work.keep();
        println!("keeping {}", kept.display());
        (None, kept)
    } else {
        let path = work.path().to_path_buf();
        (Some(work), path)
    };
    let work = work.as_path();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime
        .block_on(Scenario::standard(3, 1).start_on("127.0.0.1:0".parse().unwrap()))
        .expect("starting the simulator");
    for name in ["worker-1", "worker-2"] {
        assert!(sim.get::<KubeNode>(None, name).is_some(), "sim has {name}");
    }

    let deb = build_deb(work);
    let repo = build_repo(work, &deb);
    let mut n1 = Node::create(work, "worker-1", &repo);
    let mut n2 = Node::create(work, "worker-2", &repo);

    // -- worker-1: provisioned by the shipped cloud-init example ----------
    seed_cloud_init(&n1);
    n1.boot();
    let ci_status = n1.sh("cloud-init status --wait --long");
    let ci_text = text(&ci_status);
    assert!(
        ci_text.contains("status: done"),
        "cloud-init did not finish cleanly:\n{ci_text}\n{}",
        n1.ok("tail -n 60 /var/log/cloud-init-output.log")
    );
    assert!(
        n1.ok("cat /var/log/cloud-init-output.log")
            .contains("configuration OK"),
        "the example's `drydock check-config` ran"
    );

    // -- worker-2: `apt install drydock` by hand --------------------------
    n2.sources_list();
    n2.boot();
    n2.ok("apt-get update -q && apt-get install -y -q drydock");

    for n in [&n1, &n2] {
        // Installed before join: active, waiting, not restarting.
        assert_eq!(n.unit("ActiveState"), "active", "{}", n.name);
        let status = wait_for("the waiting status line", Duration::from_secs(30), || {
            let s = n.unit("StatusText");
            (s == STATUS_WAITING).then_some(s)
        });
        assert_eq!(status, STATUS_WAITING);
        assert!(
            n.ok("systemctl status drydock.service --no-pager || true")
                .contains(STATUS_WAITING)
        );
        assert_eq!(n.unit("NRestarts"), "0", "{}", n.name);
    }
    let check = n1.ok("drydock check-config");
    assert!(check.contains("does not exist yet"), "{check}");

    // Provisioning: protected packages not installed yet go in; drydock
    // holds them right after.
    for n in [&n1, &n2] {
        let out = n.sh(
            "apt-get install -y -q kubelet=1.31.0-1.1 kubeadm containerd hello 2>&1 && systemctl enable --now containerd.service",
        );
        let t = text(&out);
        assert!(
            out.status.success(),
            "{}: provisioning refused:\n{t}",
            n.name
        );
        assert!(t.contains("(allowed: "), "{t}");
        let held = wait_for(
            "holds on the runtime packages",
            Duration::from_secs(20),
            || {
                let held = n.ok("apt-mark showhold");
                ["kubelet", "kubeadm", "containerd"]
                    .iter()
                    .all(|p| held.lines().any(|l| l == *p))
                    .then_some(held)
            },
        );
        assert!(!held.contains("hello"), "{held}");
        let history = n.ok("drydock history --json");
        assert!(history.contains("kubelet install 1.31.0-1.1"), "{history}");
    }

    // -- join: the kubeconfig appears; no restart -------------------------
    let pid_before: Vec<String> = [&n1, &n2].iter().map(|n| n.unit("MainPID")).collect();
    for n in [&n1, &n2] {
        join(n, &sim);
    }
    for (n, pid) in [&n1, &n2].iter().zip(&pid_before) {
        wait_for(
            "the daemon to notice the join",
            Duration::from_secs(30),
            || {
                let s = n.unit("StatusText");
                (!s.is_empty() && s != STATUS_WAITING).then_some(())
            },
        );
        assert_eq!(&n.unit("MainPID"), pid, "{}: restarted on join", n.name);
        assert_eq!(n.unit("NRestarts"), "0");
        assert_eq!(
            with_id(&n.journal(), drydock::testing::logging::msgid::JOINED).len(),
            1
        );
    }

    // -- after join an upgrade of an installed one is refused -------------
    let out = n1.sh("apt-get install -y -q --allow-change-held-packages kubelet=1.31.1-1.1 2>&1");
    let t = text(&out);
    assert!(
        !out.status.success(),
        "upgrade after join went through:\n{t}"
    );
    assert!(
        t.contains("kubelet: upgrade 1.31.0-1.1 -> 1.31.1-1.1"),
        "{t}"
    );
    assert!(
        n1.ok("dpkg-query -W -f='${Version}' kubelet")
            .contains("1.31.0-1.1")
    );
    let history = n1.ok("drydock history");
    assert!(
        history.contains("apt-refused") && history.contains("kubelet: upgrade"),
        "{history}"
    );
    wait_for("the refusal metric", Duration::from_secs(20), || {
        let prom = n1
            .sh("cat /var/lib/prometheus/node-exporter/drydock.prom")
            .stdout;
        String::from_utf8_lossy(&prom)
            .lines()
            .any(|l| {
                l == "drydock_apt_refused_packages_total 1" || l == "drydock_apt_refused_packages 1"
            })
            .then_some(())
    });
    let journal = n1.journal();
    let refusals = with_id(&journal, drydock::testing::logging::msgid::APT_REFUSED);
    assert_eq!(refusals.len(), 1, "one refusal, one journal entry");
    let message = field(refusals[0], "MESSAGE").unwrap();
    assert!(message.contains("kubelet: upgrade"), "{message}");
    wait_for("the refusal Event", Duration::from_secs(20), || {
        sim.list::<k8s_openapi::api::core::v1::Event>(None)
            .iter()
            .any(|e| e.reason.as_deref() == Some("ProtectedPackageRefused"))
            .then_some(())
    });

    // -- a bad drop-in: reload fails with the reason, old settings stay ----
    let pid = n1.unit("MainPID");
    // Named to sort last: a later drop-in would override the bad value.
    write(
        &n1.dir.join("etc/drydock/drydock.toml.d/zz-bad.toml"),
        "[drain]\ntimeout = \"forever\"\n",
    );
    let out = n1.sh("systemctl reload drydock.service");
    assert!(!out.status.success(), "a refused reload must fail");
    let journal = n1.journal();
    let refused = with_id(&journal, drydock::testing::logging::msgid::RELOAD_REFUSED);
    assert_eq!(refused.len(), 1);
    assert!(
        field(refused[0], "MESSAGE").unwrap().contains("forever"),
        "{:?}",
        refused[0]
    );
    assert_eq!(n1.unit("MainPID"), pid);
    assert_eq!(n1.unit("ActiveState"), "active");
    std::fs::remove_file(n1.dir.join("etc/drydock/drydock.toml.d/zz-bad.toml")).unwrap();
    n1.ok("systemctl reload drydock.service");

    // -- both need a reboot; never both out of service ---------------------
    let max_out = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (max_out, stop) = (max_out.clone(), stop.clone());
        let sim = sim.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = ["worker-1", "worker-2"]
                    .iter()
                    .filter(|n| unschedulable(&sim, n))
                    .count();
                max_out.fetch_max(out, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for n in [&n1, &n2] {
        n.ok("touch /var/run/reboot-required");
    }
    let mut boot_ids: BTreeMap<String, String> = [&n1, &n2]
        .iter()
        .map(|n| (n.name.clone(), n.boot_id()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        for n in [&mut n1, &mut n2] {
            if let Some(status) = n.exited() {
                assert_eq!(
                    status.code(),
                    Some(133),
                    "{}: nspawn exited without a reboot request:\n{}",
                    n.name,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
                n.reboots += 1;
                assert!(
                    unschedulable(&sim, &n.name),
                    "{} rebooted uncordoned",
                    n.name
                );
                assert_eq!(lease_holders(&sim), std::slice::from_ref(&n.name));
                // The kubelet is gone with the machine, and back with it.
                sim.set_node_ready(&n.name, false).unwrap();
                n.boot();
                let id = n.boot_id();
                assert_ne!(boot_ids[&n.name], id, "a new boot has a new boot_id");
                boot_ids.insert(n.name.clone(), id.clone());
                sim.set_boot_id(&n.name, &id).unwrap();
                sim.set_node_ready(&n.name, true).unwrap();
            }
        }
        let done = [&n1, &n2].iter().all(|n| {
            n.reboots == 1
                && n.running()
                && !unschedulable(&sim, &n.name)
                && n.sh("test -e /var/run/reboot-required").status.code() == Some(1)
        }) && lease_holders(&sim).is_empty();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rolling reboot did not finish: reboots {}/{}; status {:?} / {:?}; leases {:?}",
            n1.reboots,
            n2.reboots,
            n1.running().then(|| n1.unit("StatusText")),
            n2.running().then(|| n2.unit("StatusText")),
            lease_holders(&sim)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Exactly one reboot each: nothing more happens for a while.
    std::thread::sleep(Duration::from_secs(15));
    for n in [&mut n1, &mut n2] {
        assert!(n.exited().is_none(), "{} rebooted again", n.name);
        assert_eq!(n.reboots, 1);
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert_eq!(
        max_out.load(Ordering::SeqCst),
        1,
        "exactly one node out of service at a time"
    );

    // -- the journal tells the story in words and MESSAGE_IDs -------------
    for n in [&n1, &n2] {
        let journal = n.journal();
        for e in &journal {
            assert!(
                e.get("MESSAGE").is_some_and(|m| m.is_string()),
                "{}: one readable MESSAGE per entry: {e}",
                n.name
            );
        }
        use drydock::testing::logging::msgid;
        let lease = with_id(&journal, msgid::LEASE_ACQUIRED);
        assert_eq!(lease.len(), 1, "{}: lease acquired once per cycle", n.name);
        assert_eq!(with_id(&journal, msgid::REBOOT_REQUESTED).len(), 1);
        let states: Vec<String> = with_id(&journal, msgid::STATE_CHANGED)
            .iter()
            .filter_map(|e| field(e, "MESSAGE"))
            .collect();
        for want in ["-> draining", "-> rebooting", "-> verifying"] {
            assert!(
                states.iter().any(|m| m.contains(want)),
                "{}: no state change {want:?} in {states:?}",
                n.name
            );
        }
        for e in with_id(&journal, msgid::STATE_CHANGED) {
            assert_eq!(field(e, "NODE").as_deref(), Some(n.name.as_str()));
        }
        let readable = n.ok("journalctl -u drydock.service --no-pager -o cat");
        assert!(
            readable.contains("reboot requested from logind:"),
            "{readable}"
        );
    }

    // -- remove, then purge: apt stays quiet; what stays is the admin's ----
    n2.ok("apt-get remove -y -q drydock");
    let out = n2.sh("apt-get install -y -q --reinstall hello 2>&1");
    let t = text(&out);
    assert!(out.status.success(), "apt after remove:\n{t}");
    assert!(
        !t.contains("not found") && !t.lines().any(|l| l.starts_with("drydock:")),
        "apt is not quiet after `apt remove drydock`:\n{t}"
    );
    n2.ok("apt-get purge -y -q drydock");
    for gone in [
        "etc/apt/apt.conf.d/50drydock",
        "etc/drydock/drydock.toml",
        "var/lib/drydock",
        "usr/bin/drydock",
    ] {
        assert!(!n2.dir.join(gone).exists(), "{gone} left after purge");
    }
    // The administrator's own drop-in stays, and so do the holds.
    assert!(
        n2.dir
            .join("etc/drydock/drydock.toml.d/99-e2e.toml")
            .is_file()
    );
    assert!(n2.ok("apt-mark showhold").contains("kubelet"));
    // Reinstalled: status shows those holds, though they are not drydock's.
    n2.ok("apt-get install -y -q drydock");
    let status = n2.ok("drydock status");
    assert!(
        status.contains("kubelet") && status.contains("not held by drydock"),
        "{status}"
    );

    n1.poweroff();
    n2.poweroff();
    runtime.block_on(sim.stop());
}
