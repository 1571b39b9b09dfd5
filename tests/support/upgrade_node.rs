//! One simulated node whose packages are real: its own apt sandbox with the
//! Kubernetes repositories, recording stand-ins, and a [`Host`] whose
//! kubelet restart makes the simulated Node report the installed version.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::apt_sandbox::Sandbox;
use super::{k8s_repo, standins};
use drydock::testing::agent::ports::{AgentEvent, Host, PortError, Reporter};
use drydock::testing::config::Settings;
use drydock::testing::host::command::{CommandRunner, HostRunner};
use drydock::testing::host::dpkg::Dpkg;
use drydock::testing::sim::SimHandle;
use drydock::testing::sim::kubeadm::KubeadmEffects;

/// Where a restarted kubelet reports its new version: the simulator, or
/// a kubelet stand-in against a real API server.
pub(crate) trait KubeletVersionSink: Send + Sync {
    fn kubelet_restarted(&self, node: &str, version: &str) -> Result<(), String>;
}

impl KubeletVersionSink for SimHandle {
    fn kubelet_restarted(&self, node: &str, version: &str) -> Result<(), String> {
        SimHandle::kubelet_restarted(self, node, version).map_err(|e| e.to_string())
    }
}

/// One machine whose packages are real (its sandbox).
pub(crate) struct UpgradeHost<R = KubeadmEffects<HostRunner>, K = SimHandle> {
    pub node: String,
    /// Told the kubelet's new version when it restarts.
    pub sim: K,
    pub runner: R,
    pub dpkg_root: PathBuf,
    pub boot_id: String,
    pub booted_at: jiff::Timestamp,
    /// Restarting the kubelet fails (permanently) while set.
    pub fail_restart: Arc<std::sync::atomic::AtomicBool>,
}

impl<R: CommandRunner, K: KubeletVersionSink> Host for UpgradeHost<R, K> {
    fn boot_id(&self) -> Result<String, PortError> {
        Ok(self.boot_id.clone())
    }
    fn booted_at(&self) -> Result<jiff::Timestamp, PortError> {
        Ok(self.booted_at)
    }
    async fn reboot_need(
        &self,
        _requested: Option<drydock::testing::host::sentinel::RebootRequest>,
    ) -> Result<Vec<String>, PortError> {
        Ok(Vec::new())
    }
    async fn reboot(&self, _reason: &str) -> Result<(), PortError> {
        Err(PortError::permanent("rebooting", "no reboot in this test"))
    }
    async fn run_checks(&self) -> Result<(), String> {
        Ok(())
    }
    fn commands(&self) -> Option<&dyn CommandRunner> {
        Some(&self.runner)
    }
    /// The kubelet comes back running the version its package now has.
    async fn restart_kubelet(&self) -> Result<(), PortError> {
        if self.fail_restart.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PortError::permanent(
                "restarting the kubelet",
                "injected: kubelet.service failed to start",
            ));
        }
        let installed = Dpkg::new(&self.dpkg_root)
            .packages()
            .map_err(|e| PortError::failed("reading dpkg", e))?
            .into_iter()
            .find(|p| p.package == "kubelet" && p.is_installed())
            .ok_or_else(|| {
                PortError::permanent("restarting the kubelet", "kubelet is not installed")
            })?;
        let upstream = drydock::testing::upgrade::apt::upstream_version(&installed.version);
        KubeletVersionSink::kubelet_restarted(&self.sim, &self.node, &format!("v{upstream}"))
            .map_err(|e| PortError::failed("restarting the kubelet", e))
    }
}

impl UpgradeHost {
    /// A machine of the simulated cluster: its Node's boot, up for an hour,
    /// the stand-in kubeadm's `upgrade apply` changing the simulator.
    pub(crate) fn on_sim(
        sim: &SimHandle,
        node: &str,
        settings: &Settings,
        fail_restart: Arc<std::sync::atomic::AtomicBool>,
    ) -> UpgradeHost {
        let n: k8s_openapi::api::core::v1::Node = sim.get(None, node).unwrap();
        UpgradeHost {
            node: node.to_string(),
            sim: sim.clone(),
            runner: KubeadmEffects {
                inner: HostRunner,
                sim: sim.clone(),
                kubeadm: settings.upgrade.kubeadm.clone(),
            },
            dpkg_root: settings.packages.dpkg_root.clone(),
            boot_id: n.status.unwrap().node_info.unwrap().boot_id,
            booted_at: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
            fail_restart,
        }
    }
}

/// An agent running in the background until `stop` is sent (or dropped).
pub(crate) struct RunningAgent {
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), drydock::testing::agent::AgentError>>,
}

impl RunningAgent {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Starts the real agent for `node` with its own store.
pub(crate) fn spawn_agent<H, C>(
    node: &str,
    settings: Settings,
    host: H,
    cluster: C,
    rec: Rec,
) -> RunningAgent
where
    H: Host + 'static,
    C: drydock::testing::agent::ports::Cluster + 'static,
{
    let store = drydock::testing::store::Store::open(&settings.node.state_db).unwrap();
    let mut agent =
        drydock::testing::agent::Agent::new(node.to_string(), settings, store, host, cluster, rec)
            .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    RunningAgent { stop, task }
}

/// Stops the probe loop however the test ends (a panic included).
pub(crate) struct StopOnDrop(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
pub(crate) struct Rec(pub Arc<Mutex<Vec<(Instant, String, AgentEvent)>>>);

impl Rec {
    /// Every event so far, one line each (for failure messages).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n, e)| format!("{n}: {e:?}"))
            .collect()
    }
}

impl Reporter for Rec {
    fn status(&self, _line: &str) {}
    fn event(&self, node: &str, event: &AgentEvent) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), node.to_string(), event.clone()));
    }
}

pub(crate) struct Machine {
    pub sandbox: Sandbox,
    pub settings: Settings,
    pub stand_ins: standins::StandIns,
    _dir: tempfile::TempDir,
}

/// A node running 1.34.2 with the repositories of [`k8s_repo::MINORS`].
pub(crate) fn machine(node: &str, global_log: &Path) -> Machine {
    machine_at(node, Some(global_log), None, "1.34.2-1.1")
}

/// As [`machine`], its commands logged only in its own stand-ins' log.
pub(crate) fn lone_machine(node: &str) -> Machine {
    machine_at(node, None, None, "1.34.2-1.1")
}

/// A node whose kubeadm/kubelet/kubectl are at `installed` (held), its
/// apt source at that minor; `minors`: the repositories (default
/// [`k8s_repo::MINORS`]).
pub(crate) fn machine_at(
    node: &str,
    global_log: Option<&Path>,
    minors: Option<&[(String, Vec<String>)]>,
    installed: &str,
) -> Machine {
    let sandbox = Sandbox::new();
    let repo = match minors {
        Some(m) => k8s_repo::build_minors(&sandbox, m),
        None => k8s_repo::build(&sandbox),
    };
    let from = drydock::testing::upgrade::KubeVersion::parse_observed(&format!(
        "v{}",
        drydock::testing::upgrade::apt::upstream_version(installed)
    ))
    .expect("an installed package version like 1.34.2-1.1");
    let dir = tempfile::tempdir().unwrap();
    let stand_ins = standins::StandIns::for_node(dir.path(), node, global_log);
    let mut s = sandbox.settings();
    repo.configure(&mut s);
    stand_ins.configure(&mut s);
    s.node.name = Some(node.to_string());
    s.lease.duration = Duration::from_secs(5);
    s.reboot.check_interval = Duration::from_millis(500);
    s.gates.soak = Duration::ZERO;
    s.drain.timeout = Duration::from_secs(20);
    s.drain.retry_interval = Duration::from_millis(200);
    s.verify.timeout = Duration::from_secs(20);
    s.report.textfile_dir = None;
    s.report.kubernetes_events = false;
    // The source for today's minor and the packages as the node runs them.
    std::fs::write(
        &repo.source_file,
        drydock::testing::upgrade::apt::render_source(&repo.template, from),
    )
    .unwrap();
    assert!(sandbox.apt_get(&["update"]).status.success());
    sandbox.preinstall(&[
        format!("kubeadm={installed}").as_str(),
        format!("kubelet={installed}").as_str(),
        format!("kubectl={installed}").as_str(),
    ]);
    for p in ["kubeadm", "kubelet", "kubectl"] {
        sandbox.set_selection(p, "hold");
    }
    sandbox.install_hook(false);
    Machine {
        sandbox,
        settings: s,
        stand_ins,
        _dir: dir,
    }
}
