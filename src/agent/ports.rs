//! The agent's edges: everything it reads from or does to the world goes
//! through these small traits, so the driver runs the same against a real
//! node, the simulator, or a test double.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::state::PhaseDurations;
use crate::store::Store;

/// One gate's answer, as shown in `drydock status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    pub gate: String,
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
    /// A slot is free, or expired and possibly reclaimable.
    Available,
    /// Every slot is held by a live holder.
    Busy { holders: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainResult {
    Drained,
    /// Gave up after the drain timeout; these pods were still there.
    TimedOut {
        blocking: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{action}: {reason}")]
    Failed { action: String, reason: String },
    /// Another node holds the slot we thought was ours.
    #[error("lease {slot} is now held by {holder}")]
    LostLease { slot: String, holder: String },
}

impl PortError {
    pub fn failed(action: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PortError::Failed {
            action: action.into(),
            reason: reason.to_string(),
        }
    }
}

/// This machine.
pub trait Host: Send + Sync {
    fn boot_id(&self) -> Result<String, PortError>;
    /// When the current boot started (this machine's init; see
    /// [`crate::host::boot::BootSignals::started`]).
    fn booted_at(&self) -> Result<Timestamp, PortError>;
    /// Both boot signals, to tell a reboot from a boot_id that is not this
    /// machine's own ([`crate::host::boot::compare`]).
    fn boot(&self) -> Result<crate::host::boot::BootSignals, PortError> {
        let id = self.boot_id()?;
        let boot_id = crate::host::boot::BootId::parse(&id)
            .ok_or_else(|| PortError::failed("reading boot_id", format!("{id:?} is not a UUID")))?;
        let started = self.booted_at()?;
        Ok(crate::host::boot::BootSignals {
            boot_id,
            btime: started,
            started,
        })
    }
    /// Why a reboot is needed; empty when it is not. `requested` is an
    /// operator's `drydock reboot` reason, read from the store by the driver.
    fn reboot_need(
        &self,
        requested: Option<String>,
    ) -> impl Future<Output = Result<Vec<String>, PortError>> + Send;
    /// Ask logind to reboot. Returns once the request was accepted.
    fn reboot(&self, reason: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Run the post-boot checks; `Err` names the first failing one.
    fn run_checks(&self) -> impl Future<Output = Result<(), String>> + Send;
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
    fn lease_outlook(&self) -> impl Future<Output = Result<LeaseOutlook, PortError>> + Send;
    /// Take a slot; `Ok(None)` when another node won.
    fn acquire(&self) -> impl Future<Output = Result<Option<String>, PortError>> + Send;
    fn renew(&self, slot: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    fn release(&self, slot: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Returns when a Lease changes or after `timeout`.
    fn wait_for_lease_change(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
    fn node_unschedulable(&self) -> impl Future<Output = Result<bool, PortError>> + Send;
    fn set_unschedulable(&self, value: bool) -> impl Future<Output = Result<(), PortError>> + Send;
    fn drain(
        &self,
        progress: tokio::sync::watch::Sender<usize>,
    ) -> impl Future<Output = Result<DrainResult, PortError>> + Send;
    /// Node Ready since the boot, reporting this boot (`boot_id`, the one the
    /// driver saw change), required DaemonSet pods Ready; `Err` says what is not.
    fn verify_node(
        &self,
        booted_at: Timestamp,
        boot_id: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Stop the whole fleet: other nodes' gates block on it.
    fn halt_fleet(&self, reason: &str) -> impl Future<Output = Result<(), PortError>> + Send;
    /// Lift a halt this node set, after it recovered; `Ok(true)` when there
    /// was one to lift.
    fn clear_halt(&self) -> impl Future<Output = Result<bool, PortError>> + Send;
    /// Start the cluster-wide soak.
    fn record_reboot_finished(
        &self,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Something worth telling people.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    StateChanged {
        from: String,
        to: String,
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
    DrainTimedOut {
        blocking: Vec<String>,
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
}

pub trait Reporter: Send + Sync {
    /// The one-line summary (systemd STATUS=, `drydock status`).
    fn status(&self, line: &str);
    fn event(&self, node: &str, event: &AgentEvent);
    /// Every gate's answer, each time they are evaluated.
    fn gates(&self, _gates: &[GateStatus]) {}
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
    fn flush(&self) -> impl Future<Output = ()> + Send {
        (**self).flush()
    }
}
