//! `drydock simulate`: a whole fleet in one process. The Kubernetes API
//! simulator plays the cluster; each node runs the real agent (real driver,
//! real Lease, drain and gate code over HTTP) with a simulated machine whose
//! reboot takes the node NotReady, changes its boot_id and restarts its agent
//! from the persisted state.

pub(crate) mod host;
pub(crate) mod upgrade;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent::kube_cluster::KubeCluster;
use crate::agent::ports::{AgentEvent, Reporter};
use crate::agent::{Agent, AgentError};
use crate::config::Settings;
use crate::sim::{Scenario, SimHandle};
use crate::store::Store;
use host::{Machine, SimHost};

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub concurrency: u32,
    /// This node comes back broken: its post-boot checks fail.
    pub fail_verify: Option<String>,
    /// Soak after each reboot (scaled down from hours).
    pub soak: Duration,
    /// How long a simulated machine is down.
    pub downtime: Duration,
    pub verify_timeout: Duration,
    /// Give up after this long; `None`: long enough for the fleet's size
    /// (see [`SimulateOptions::deadline`]).
    pub deadline: Option<Duration>,
    pub state_dir: PathBuf,
    /// Only the first this many nodes need a reboot and run an agent (an
    /// idle agent makes no API request); `None`: every node.
    pub needing_reboot: Option<usize>,
    pub check_interval: Duration,
    /// Something that blocks the whole fleet from the start.
    pub block: Option<FleetBlock>,
    /// Count API requests only from this long after the start (a steady
    /// state, without the agents' first look); zero: all of them.
    pub stats_after: Duration,
    /// Upgrade Kubernetes to this version instead of rebooting (the target
    /// is set on the simulated cluster, validated as `drydock cluster
    /// set-version` does).
    pub upgrade_to: Option<String>,
    /// How long a Lease claim lasts without renewal (production: 120 s).
    /// Short for quick runs; a large fleet in one process wants longer, or
    /// starved keepers miss renewals and slots expire under their holders.
    pub lease_duration: Duration,
}

/// A cluster-wide gate that blocks from the start (API cost measurements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetBlock {
    /// `drydock cluster pause`: decided by the drydock Namespace alone.
    Paused(String),
    /// This node NotReady: only the Node list shows it.
    NodeNotReady(String),
}

impl SimulateOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        SimulateOptions {
            nodes: 5,
            pods_per_node: 2,
            concurrency: 1,
            fail_verify: None,
            soak: Duration::from_millis(500),
            downtime: Duration::from_millis(400),
            verify_timeout: Duration::from_secs(3),
            deadline: None,
            state_dir,
            needing_reboot: None,
            check_interval: Duration::from_millis(500),
            block: None,
            stats_after: Duration::ZERO,
            upgrade_to: None,
            lease_duration: Duration::from_secs(5),
        }
    }
}

impl SimulateOptions {
    /// The time the rollout gets: as given, or a generous estimate from the
    /// fleet's size (a cycle takes about 1.7 s plus downtime and soak on a
    /// 2-core machine; four times that per node in turn, plus a minute).
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline.unwrap_or_else(|| {
            let per_cycle =
                Duration::from_secs(2) + self.downtime + self.soak + self.check_interval;
            let nodes = self.needing_reboot.unwrap_or(self.nodes) as u32;
            let rounds = nodes.div_ceil(self.concurrency.max(1));
            per_cycle * 4 * rounds + Duration::from_secs(60)
        })
    }
}

/// One line of the live view and the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Moment {
    pub at: Duration,
    pub node: String,
    pub what: String,
}

#[derive(Debug, Clone, Default)]
pub struct NodeTimeline {
    pub reboots: u32,
    pub final_state: String,
    pub locked_at: Option<Duration>,
    pub released_at: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct FleetReport {
    pub moments: Vec<Moment>,
    pub nodes: BTreeMap<String, NodeTimeline>,
    /// Most nodes out of service (cordoning .. releasing) at one instant.
    pub max_out_of_service: usize,
    pub halted: Option<String>,
    pub total: Duration,
    pub finished: bool,
    /// Every API request of the run (from `stats_after` on), agents and
    /// fleet harness alike.
    pub api: crate::sim::ApiStats,
    /// How long `api` was counted.
    pub api_window: Duration,
    /// At the end: what `/version` serves, kubeadm-config's
    /// kubernetesVersion, each Node's kubeletVersion.
    pub api_server: String,
    pub kubeadm_config: Option<String>,
    pub kubelet_versions: BTreeMap<String, String>,
}

const OUT_OF_SERVICE: &[&str] = &[
    "cordoning",
    "draining",
    "rebooting",
    "verifying",
    "releasing",
];

#[derive(Clone)]
struct Live {
    start: Instant,
    states: Arc<Mutex<BTreeMap<String, String>>>,
    moments: Arc<Mutex<Vec<Moment>>>,
    max_out: Arc<Mutex<usize>>,
    print: Arc<dyn Fn(&Moment) + Send + Sync>,
}

impl Live {
    fn note(&self, node: &str, what: String) {
        let m = Moment {
            at: self.start.elapsed(),
            node: node.to_string(),
            what,
        };
        (self.print)(&m);
        self.moments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m);
    }
}

struct FleetReporter {
    node: String,
    live: Live,
}

impl Reporter for FleetReporter {
    fn status(&self, line: &str) {
        if line.starts_with("waiting")
            || line.starts_with("draining:")
            || line.starts_with("upgrading")
            || line.starts_with("failed")
        {
            self.live.note(&self.node, line.to_string());
        }
    }

    fn event(&self, node: &str, event: &AgentEvent) {
        if let AgentEvent::StateChanged { to, .. } = event {
            let to = to.to_string();
            let mut states = self.live.states.lock().unwrap_or_else(|p| p.into_inner());
            states.insert(node.to_string(), to.clone());
            let out = states
                .values()
                .filter(|s| OUT_OF_SERVICE.contains(&s.as_str()))
                .count();
            let mut max = self.live.max_out.lock().unwrap_or_else(|p| p.into_inner());
            *max = (*max).max(out);
            drop(states);
            drop(max);
            self.live.note(node, format!("-> {to}"));
        }
    }
}

fn node_settings(opts: &SimulateOptions, node: &str) -> Settings {
    let mut s = Settings::default();
    s.node.name = Some(node.to_string());
    s.node.state_db = opts.state_dir.join(format!("{node}.db"));
    s.lease.concurrency = opts.concurrency;
    s.lease.duration = opts.lease_duration;
    s.reboot.check_interval = opts.check_interval;
    s.gates.soak = opts.soak;
    s.drain.timeout = Duration::from_secs(20);
    s.drain.retry_interval = Duration::from_millis(200);
    s.verify.timeout = opts.verify_timeout;
    s.report.textfile_dir = None;
    s.report.kubernetes_events = false;
    if opts.upgrade_to.is_some() {
        upgrade::configure(&mut s, &opts.state_dir.join(node));
    }
    s
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), AgentError>>,
}

fn start_agent(
    sim: &SimHandle,
    opts: &SimulateOptions,
    node: &str,
    host: SimHost,
    live: &Live,
) -> Result<Running, SimulateError> {
    let settings = node_settings(opts, node);
    let store = Store::open(&settings.node.state_db)?;
    let client = sim.client()?;
    let cluster = KubeCluster::new(client, settings.clone(), node.to_string());
    let reporter = FleetReporter {
        node: node.to_string(),
        live: live.clone(),
    };
    let mut agent = Agent::new(node.to_string(), settings, store, host, cluster, reporter)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running { stop, task })
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("simulated cluster: {0}")]
    Sim(#[from] crate::sim::SimError),
    #[error("node state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error("setting up the simulated cluster: {0}")]
    Setup(String),
}

/// Runs the rollout until every node rebooted once, the fleet halted, or the
/// deadline passed. `print` sees every moment as it happens.
pub async fn run(
    opts: SimulateOptions,
    print: Arc<dyn Fn(&Moment) + Send + Sync>,
) -> Result<FleetReport, SimulateError> {
    let sim = Scenario::standard(opts.nodes, opts.pods_per_node)
        .namespace("drydock")
        .pod_start_delay(Duration::from_millis(150))
        .default_grace_period(0)
        .start()
        .await?;
    // The simulated nodes just became Ready, which the soak gate counts as
    // a transition: start the agents once that is older than the soak, as
    // in a cluster that has been up for a while. Otherwise the first gate
    // look of a short run lands inside the soak and costs a second one
    // (the api_cost bench's noisy "one node alone" cells).
    tokio::time::sleep(opts.soak).await;
    let node_names: Vec<String> = sim
        .list::<k8s_openapi::api::core::v1::Node>(None)
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let live = Live {
        start: Instant::now(),
        states: Arc::default(),
        moments: Arc::default(),
        max_out: Arc::default(),
        print,
    };
    match &opts.block {
        Some(FleetBlock::Paused(reason)) => {
            crate::cluster::annotations::pause_cluster(&sim.client()?, "drydock", reason)
                .await
                .map_err(|e| SimulateError::Setup(e.to_string()))?;
        }
        Some(FleetBlock::NodeNotReady(node)) => sim.set_node_ready(node, false)?,
        None => {}
    }
    let upgrade_to = match &opts.upgrade_to {
        None => None,
        Some(t) => Some(
            crate::upgrade::KubeVersion::parse_target(t)
                .map_err(|e| SimulateError::Setup(format!("refusing the target {t:?}: {e}")))?,
        ),
    };
    let needing = match upgrade_to {
        Some(_) => node_names.len(),
        None => opts.needing_reboot.unwrap_or(node_names.len()),
    };
    let (reboot_tx, mut reboot_rx) = mpsc::unbounded_channel::<String>();
    let mut machines = BTreeMap::new();
    let mut tools = BTreeMap::new();
    let mut running = BTreeMap::new();
    for (i, node) in node_names.iter().enumerate() {
        if i >= needing {
            break;
        }
        // An upgrade's verification (no reboot) sees the boot the Node
        // reports: the simulator's own, a UUID as on a real node.
        let boot_id = match upgrade_to {
            Some(_) => sim
                .get::<k8s_openapi::api::core::v1::Node>(None, node)
                .and_then(|n| n.status?.node_info)
                .map(|i| i.boot_id)
                .unwrap_or_default(),
            None => format!("boot-{i}-0"),
        };
        // Up for a while already (the simulator's heartbeats and pods
        // are from after this boot).
        let booted_at = match upgrade_to {
            Some(_) => jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
            None => jiff::Timestamp::now(),
        };
        let machine = Arc::new(Mutex::new(Machine {
            boot_id: boot_id.clone(),
            booted_at,
            need: match upgrade_to {
                Some(_) => Vec::new(),
                None => vec!["simulated kernel update (reboot-required)".into()],
            },
            reboots: 0,
            checks_fail: false,
        }));
        sim.set_boot_id(node, &boot_id)?;
        let mut host = SimHost::new(node, machine.clone(), reboot_tx.clone());
        if let Some(to) = upgrade_to {
            let t = Arc::new(machine_tools(&sim, &opts, node, to)?);
            host = host.with_tools(t.clone());
            tools.insert(node.clone(), t);
        }
        running.insert(node.clone(), start_agent(&sim, &opts, node, host, &live)?);
        machines.insert(node.clone(), machine);
    }
    if let Some(to) = upgrade_to {
        crate::cluster::versions::set_target(&sim.client()?, "drydock", &to.to_string())
            .await
            .map_err(|e| SimulateError::Setup(error_chain(&e)))?;
        live.note("cluster", format!("target set: Kubernetes {to}"));
    }
    // The versions are followed only in an upgrade (a reboot rollout of
    // hundreds of nodes need not list them every poll).
    let mut seen = upgrade_to.map(|_| ClusterVersions::read(&sim));
    if let Some(seen) = &seen {
        live.note("cluster", seen.describe());
    }

    let deadline = tokio::time::sleep(opts.deadline());
    tokio::pin!(deadline);
    let stats_from = tokio::time::sleep(opts.stats_after);
    tokio::pin!(stats_from);
    let mut counting_since = (opts.stats_after.is_zero()).then(Instant::now);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut finished = false;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut stats_from, if counting_since.is_none() => {
                sim.reset_stats();
                counting_since = Some(Instant::now());
            }
            Some(node) = reboot_rx.recv() => {
                // The machine goes down: its agent dies with it.
                if let Some(r) = running.remove(&node) {
                    r.task.abort();
                    let _ = r.task.await;
                }
                live.note(&node, "machine rebooting".into());
                // Whole seconds, like the kernel's btime and Kubernetes times.
                let boot_started = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
                    .unwrap_or_else(|_| jiff::Timestamp::now());
                let new_boot = sim.simulate_reboot(&node, opts.downtime).await?;
                let machine = &machines[&node];
                {
                    let mut m = machine.lock().unwrap_or_else(|p| p.into_inner());
                    m.boot_id = new_boot;
                    m.booted_at = boot_started;
                    m.need.clear();
                    m.checks_fail = opts.fail_verify.as_deref() == Some(node.as_str());
                }
                live.note(&node, "machine up, agent restarting".into());
                let mut host = SimHost::new(&node, machine.clone(), reboot_tx.clone());
                if let Some(t) = tools.get(&node) {
                    host = host.with_tools(t.clone());
                }
                running.insert(node.clone(), start_agent(&sim, &opts, &node, host, &live)?);
            }
            _ = poll.tick() => {
                if let Some(before) = &seen {
                    let now = ClusterVersions::read(&sim);
                    for change in now.changes_since(before) {
                        live.note("cluster", change);
                    }
                    seen = Some(now);
                }
                let states = live.states.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let all_rebooted = match (upgrade_to, &seen) {
                    (Some(to), Some(v)) => v.at(&to.to_string()),
                    _ => machines.values().all(|m| m.lock().unwrap_or_else(|p| p.into_inner()).reboots > 0),
                };
                let all_idle = machines.keys().all(|n| states.get(n).is_some_and(|s| s == "idle"));
                let failed = states.values().any(|s| s == "failed");
                if (all_rebooted && all_idle) || failed {
                    finished = !failed;
                    if failed {
                        // Let the others show they are held back by the halt.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    break;
                }
            }
        }
    }
    for (_, r) in std::mem::take(&mut running) {
        let _ = r.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), r.task).await;
    }
    let states = live
        .states
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let moments = live
        .moments
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let halted = sim
        .get::<k8s_openapi::api::core::v1::Namespace>(None, "drydock")
        .and_then(|ns| ns.metadata.annotations)
        .and_then(|a| a.get(crate::cluster::annotations::HALTED).cloned());
    let mut nodes = BTreeMap::new();
    for node in machines.keys() {
        let at = |what: &str| {
            moments
                .iter()
                .find(|m| &m.node == node && m.what == what)
                .map(|m| m.at)
        };
        let released = moments
            .iter()
            .rfind(|m| &m.node == node && m.what == "-> idle")
            .map(|m| m.at);
        nodes.insert(
            node.clone(),
            NodeTimeline {
                reboots: machines[node]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reboots,
                final_state: states.get(node).cloned().unwrap_or_else(|| "idle".into()),
                locked_at: at("-> locked"),
                released_at: released,
            },
        );
    }
    let api = sim.stats();
    let api_window = counting_since.map_or(Duration::ZERO, |t| t.elapsed());
    let versions = ClusterVersions::read(&sim);
    let report = FleetReport {
        moments,
        nodes,
        max_out_of_service: *live.max_out.lock().unwrap_or_else(|p| p.into_inner()),
        halted,
        total: live.start.elapsed(),
        finished,
        api,
        api_window,
        api_server: versions.api_server,
        kubeadm_config: versions.kubeadm_config,
        kubelet_versions: versions.kubelets,
    };
    sim.stop().await;
    Ok(report)
}

/// One machine's simulated packages and tools: its dpkg database at the
/// version its Node's kubelet runs, the repositories offering that and
/// the target.
fn machine_tools(
    sim: &SimHandle,
    opts: &SimulateOptions,
    node: &str,
    to: crate::upgrade::KubeVersion,
) -> Result<upgrade::SimTools, SimulateError> {
    let settings = node_settings(opts, node);
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        SimulateError::Setup(format!("{what} for simulated node {node}: {e}"))
    };
    let n: k8s_openapi::api::core::v1::Node = sim
        .get(None, node)
        .ok_or_else(|| setup("reading the Node", &"not found"))?;
    let kubelet = n
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.kubelet_version)
        .unwrap_or_default();
    let from = crate::upgrade::KubeVersion::parse_observed(&kubelet)
        .ok_or_else(|| setup("reading the kubelet version", &kubelet))?;
    upgrade::seed(&settings.packages.dpkg_root, &upgrade::debian_version(from))
        .map_err(|e| setup("writing the dpkg database", &e))?;
    for dir in [
        settings.upgrade.apt_source_file.parent(),
        Some(settings.node.run_dir.as_path()),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|e| setup("creating a directory", &e))?;
    }
    Ok(upgrade::SimTools {
        sim: sim.clone(),
        settings: settings.upgrade.clone(),
        dpkg_root: settings.packages.dpkg_root.clone(),
        available: vec![upgrade::debian_version(from), upgrade::debian_version(to)],
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What the simulated cluster reports about its versions.
#[derive(Debug, Clone, PartialEq)]
struct ClusterVersions {
    api_server: String,
    kubeadm_config: Option<String>,
    kubelets: BTreeMap<String, String>,
}

impl ClusterVersions {
    fn read(sim: &SimHandle) -> Self {
        let kubelets = sim
            .list::<k8s_openapi::api::core::v1::Node>(None)
            .into_iter()
            .filter_map(|n| {
                let version = n.status?.node_info?.kubelet_version;
                Some((n.metadata.name?, version))
            })
            .collect();
        ClusterVersions {
            api_server: sim.server_version(),
            kubeadm_config: sim.kubeadm_config_version(),
            kubelets,
        }
    }

    fn describe(&self) -> String {
        format!(
            "/version {}, kubeadm-config {}, kubelets {}",
            self.api_server,
            self.kubeadm_config.as_deref().unwrap_or("(none)"),
            self.kubelets
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    fn changes_since(&self, before: &ClusterVersions) -> Vec<String> {
        let mut out = Vec::new();
        if self.api_server != before.api_server {
            out.push(format!("/version now {}", self.api_server));
        }
        if self.kubeadm_config != before.kubeadm_config {
            out.push(format!(
                "kubeadm-config kubernetesVersion now {}",
                self.kubeadm_config.as_deref().unwrap_or("(none)")
            ));
        }
        for (node, v) in &self.kubelets {
            if before.kubelets.get(node) != Some(v) {
                out.push(format!("{node} kubelet now {v}"));
            }
        }
        out
    }

    /// Everything at `to`: `/version`, kubeadm-config and every kubelet.
    fn at(&self, to: &str) -> bool {
        self.api_server == to
            && self.kubeadm_config.as_deref() == Some(to)
            && self.kubelets.values().all(|v| v == to)
    }
}
