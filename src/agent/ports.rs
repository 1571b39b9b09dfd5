//! The agent's edges: everything it reads from or does to the world goes
//! through these small traits, so the driver runs the same against a real
//! node, the simulator, or a test double.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::state::PhaseDurations;
pub use crate::cluster::drain::DrainReport;
pub use crate::cluster::drain::DrainTimeout;
pub use crate::cluster::lease::Claim;
use crate::host::sentinel::RebootRequest;
use crate::store::Store;

/// The claim on a Lease slot, as its keeper publishes it.
pub type ClaimWatch = tokio::sync::watch::Receiver<Claim>;

/// Who stopped the fleet and why, as data (not parsed back from text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    pub node: String,
    pub reason: String,
    pub at: Timestamp,
}

/// One gate's answer, as shown in `drydock status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    pub gate: crate::gates::GateName,
    pub passed: bool,
    /// Why it blocks; empty when it passes.
    pub reason: String,
    /// Not evaluated because an earlier, cheaper gate blocks (then
    /// `passed` is false too: fail closed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl GateStatus {
    pub fn first_block(gates: &[GateStatus]) -> Option<&GateStatus> {
        gates.iter().find(|g| !g.passed)
    }
}

/// The cluster-wide gates' answer and, when they block only until a known
/// time (the soak), that time: the driver sleeps until then instead of
/// asking again and again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterGates {
    pub gates: Vec<GateStatus>,
    pub blocked_until: Option<Timestamp>,
}

/// What the Lease slots look like from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutlook {
    /// This node already holds this slot (e.g. after its own reboot).
    Mine(String),
    /// A slot is free: nobody holds it.
    Available,
    /// None is free, but one expired under its holder: the holder may be
    /// down, or only slow. Taken over only after every gate passed, unless
    /// the holder's Node is gone.
    Expired,
    /// Every slot is held by a live holder.
    Busy { holders: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum DrainResult {
    /// Every drainable pod is gone; what was done to which pod.
    Drained(DrainReport),
    /// Gave up after the drain timeout: the pods still there, and what was
    /// done before.
    TimedOut(Box<DrainTimeout>),
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Worth retrying as it is (API unreachable, 5xx, a conflict).
    #[error("{action}: {reason}")]
    Transient { action: String, reason: String },
    /// Retrying will not help; a person must look (a refused eviction,
    /// 403, a pod the rules forbid evicting).
    #[error("{action}: {reason}")]
    Permanent { action: String, reason: String },
    /// Another node holds the slot we thought was ours.
    #[error("lease {slot} is now held by {holder}")]
    LostLease { slot: String, holder: String },
}

impl PortError {
    /// A transient failure.
    pub fn failed(action: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PortError::Transient {
            action: action.into(),
            reason: reason.to_string(),
        }
    }

    pub fn permanent(action: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PortError::Permanent {
            action: action.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, PortError::Permanent { .. })
    }
}

/// The boot a reboot leaves, as recorded before asking for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootMark {
    pub boot_id: String,
    /// The kernel's boot time of that boot, when it could be read.
    pub booted_at: Option<Timestamp>,
}

/// Whether the machine booted since a [`BootMark`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChange {
    /// A new boot, started then.
    New { booted_at: Timestamp },
    /// Still the same boot.
    Same,
    /// The signals disagree; a person must look (never treated as a boot,
    /// never answered with another reboot).
    Unclear { reason: String },
}

impl BootChange {
    /// The default judgement from two marks: a changed boot_id is a new
    /// boot; the same boot_id with a different boot time is unclear (the
    /// boot_id read may not be this machine's).
    pub fn judge(before: &BootMark, now: &BootMark) -> BootChange {
        let now_at = now.booted_at.unwrap_or_else(Timestamp::now);
        if before.boot_id != now.boot_id {
            return BootChange::New { booted_at: now_at };
        }
        match (before.booted_at, now.booted_at) {
            (Some(a), Some(b)) if (a.as_second() - b.as_second()).abs() > 1 => {
                BootChange::Unclear {
                    reason: format!(
                        "boot_id {} is unchanged but the boot time moved from {a} to {b}",
                        now.boot_id
                    ),
                }
            }
            _ => BootChange::Same,
        }
    }
}

/// This machine.
pub trait Host: Send + Sync {
    fn boot_id(&self) -> Result<String, PortError>;
    /// When the current boot started (the kernel's btime).
    fn booted_at(&self) -> Result<Timestamp, PortError>;
    /// The current boot, to be compared after the reboot.
    fn boot_mark(&self) -> Result<BootMark, PortError> {
        Ok(BootMark {
            boot_id: self.boot_id()?,
            booted_at: self.booted_at().ok(),
        })
    }
    /// Whether the machine booted since `before`. Hosts with better
    /// evidence (several signals) override this.
    fn boot_change(&self, before: &BootMark) -> Result<BootChange, PortError> {
        Ok(BootChange::judge(before, &self.boot_mark()?))
    }
    /// Why a reboot is needed; empty when it is not. `requested` is an
    /// operator's `drydock reboot`, read from the store by the driver (its
    /// time is the request's own, so the reason stays the same each check).
    fn reboot_need(
        &self,
        requested: Option<RebootRequest>,
    ) -> impl Future<Output = Result<Vec<String>, PortError>> + Send;
    /// Ask logind to reboot. Returns once the request was accepted.
    fn reboot(&self, reason: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Run the post-boot checks; `Err` names the first failing one.
    fn run_checks(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Runs the upgrade's commands (kubeadm, apt-get, etcdctl); `None`: this
    /// host cannot upgrade Kubernetes (the upgrade step then fails).
    fn commands(&self) -> Option<&dyn crate::host::command::CommandRunner> {
        None
    }
    /// `daemon-reload`, then restart the kubelet (after its upgrade).
    fn restart_kubelet(&self) -> impl Future<Output = Result<(), PortError>> + Send {
        async {
            Err(PortError::permanent(
                "restarting the kubelet",
                "this host cannot restart the kubelet",
            ))
        }
    }
}

/// The cluster, as seen by one node.
pub trait Cluster: Send + Sync {
    /// Gates that need nothing from the API (window, local pause).
    fn local_gates(&self, store: &Store, now: Timestamp) -> Vec<GateStatus>;
    /// When the local gates will next be worth evaluating (window opening).
    fn next_local_change(&self, now: Timestamp) -> Option<Timestamp>;
    /// Cheap first: when the drydock Namespace alone blocks (halted, paused,
    /// soak), no Node list, pod list or alert query is made.
    fn cluster_gates(&self, now: Timestamp) -> impl Future<Output = ClusterGates> + Send;
    /// The cluster-wide gates the drydock Namespace alone decides (halted,
    /// paused, the soak, a verdict another node shared): one small GET.
    /// `Some` when they block (or the Namespace cannot be read), `None`
    /// when the rest of [`Cluster::cluster_gates`] must be asked.
    fn control_gates(&self, now: Timestamp) -> impl Future<Output = Option<ClusterGates>> + Send;
    fn lease_outlook(&self) -> impl Future<Output = Result<LeaseOutlook, PortError>> + Send;
    /// Take a slot; `Ok(None)` when another node won. `gates_passed`:
    /// every gate passed just before; without it an expired slot whose
    /// holder's Node still exists is not taken over (that holder may be
    /// down and broken), only a free one or a gone node's.
    fn acquire(
        &self,
        gates_passed: bool,
    ) -> impl Future<Output = Result<Option<String>, PortError>> + Send;
    /// Keep `slot` (renewed in the background) and watch the claim on it.
    /// `Err(LostLease)` when it is not ours.
    fn hold(&self, slot: &str) -> impl Future<Output = Result<ClaimWatch, PortError>> + Send;
    /// Renew `slot` now, before a step that cannot be taken back (cordon,
    /// drain, reboot, declaring the node verified). `Err(LostLease)` when
    /// it is not ours.
    fn confirm(&self, slot: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    fn release(&self, slot: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Returns when a Lease changes or after `timeout`.
    fn wait_for_lease_change(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
    fn node_unschedulable(&self) -> impl Future<Output = Result<bool, PortError>> + Send;
    fn set_unschedulable(&self, value: bool) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Drains this node; stops with `Err(LostLease)` the moment `claim`
    /// says the slot is gone.
    fn drain(
        &self,
        progress: tokio::sync::watch::Sender<usize>,
        claim: ClaimWatch,
    ) -> impl Future<Output = Result<DrainResult, PortError>> + Send;
    /// Node Ready since the boot, reporting this boot (`boot_id`, the one the
    /// driver saw change), required DaemonSet pods Ready; `Err` says what is not.
    fn verify_node(
        &self,
        booted_at: Timestamp,
        boot_id: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Stop the whole fleet: other nodes' gates block on it.
    fn halt_fleet(&self, halt: &Halt) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Lift a halt this node set, after it recovered; `Ok(true)` when there
    /// was one to lift.
    fn clear_halt(&self) -> impl Future<Output = Result<bool, PortError>> + Send;
    /// Start the cluster-wide soak.
    fn record_reboot_finished(
        &self,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
    /// The Kubernetes upgrade target on the drydock Namespace (as written,
    /// unvalidated); `None` when unset. What a watch of the Namespace last
    /// saw while it is open, else one small GET: for the check of whether
    /// to ask for a turn.
    fn upgrade_target(&self) -> impl Future<Output = Result<Option<String>, PortError>> + Send {
        async { Ok(None) }
    }
    /// The same, read from the API server now: an upgrade is only planned
    /// from this (never from a watch's value).
    fn upgrade_target_now(&self) -> impl Future<Output = Result<Option<String>, PortError>> + Send {
        self.upgrade_target()
    }
    /// What the skew policy and the rollout order look at: `/version`,
    /// kubeadm-config, every Node's kubelet version and role.
    fn cluster_versions(
        &self,
    ) -> impl Future<Output = Result<crate::upgrade::ClusterVersions, PortError>> + Send {
        async {
            Err(PortError::failed(
                "reading cluster versions",
                "not available here",
            ))
        }
    }
}

/// Something worth telling people.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    StateChanged {
        from: crate::phase::Phase,
        to: crate::phase::Phase,
    },
    /// Checked: no reboot is needed.
    UpToDate,
    RebootNeeded {
        reasons: Vec<String>,
    },
    LeaseAcquired {
        slot: String,
    },
    DrainProgress {
        pods_left: usize,
    },
    /// Drained: what happened to which pod.
    Drained {
        report: DrainReport,
    },
    DrainTimedOut {
        blocking: Vec<String>,
        /// What the drain did before it gave up.
        report: DrainReport,
    },
    /// The drain cannot succeed without a person (a refused eviction).
    DrainFailed {
        error: String,
    },
    /// The Lease slot was lost while the node was out of service.
    LeaseLost {
        slot: String,
        holder: String,
    },
    /// About to ask logind; `boot_id` is the boot being left.
    Rebooting {
        reason: String,
        boot_id: String,
    },
    RebootFailed {
        error: String,
    },
    Verified {
        durations: PhaseDurations,
    },
    VerifyFailed {
        reason: String,
    },
    /// This node stopped the fleet.
    Halted {
        reason: String,
    },
    /// This node lifted a halt it had set.
    HaltCleared,
    Released {
        slot: String,
    },
    /// The cluster's Kubernetes target is refused (nothing runs).
    UpgradeRefused {
        reason: String,
    },
    /// An upgrade step of this node finished.
    UpgradeStep {
        from: String,
        to: String,
        step: String,
    },
    /// An upgrade step failed: the rollout halts here.
    UpgradeFailed {
        step: String,
        error: String,
    },
}

pub trait Reporter: Send + Sync {
    /// The one-line summary (systemd STATUS=, `drydock status`).
    fn status(&self, line: &str);
    fn event(&self, node: &str, event: &AgentEvent);
    /// Every gate's answer, each time they are evaluated.
    fn gates(&self, _gates: &[GateStatus]) {}
    /// Once per loop of the agent: it is alive (metrics heartbeat, the node
    /// report's publication time).
    fn heartbeat(&self) {}
    /// Waits until what was reported has left the machine; called right
    /// before the reboot request, so the last words are not lost.
    fn flush(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One reporter shared by successive agents (the daemon builds a new agent
/// on each configuration reload).
impl<R: Reporter> Reporter for std::sync::Arc<R> {
    fn status(&self, line: &str) {
        (**self).status(line)
    }
    fn event(&self, node: &str, event: &AgentEvent) {
        (**self).event(node, event)
    }
    fn gates(&self, gates: &[GateStatus]) {
        (**self).gates(gates)
    }
    fn heartbeat(&self) {
        (**self).heartbeat()
    }
    fn flush(&self) -> impl Future<Output = ()> + Send {
        (**self).flush()
    }
}
