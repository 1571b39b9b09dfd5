//! The [`Cluster`] port over the Kubernetes API: gates, Lease slots, cordon,
//! drain, verification and the drydock Namespace annotations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tracing::{debug, warn};

use super::pace;
use super::ports::{
    ClaimWatch, Cluster, ClusterGates, DrainResult, GateStatus, Halt, LeaseOutlook, PortError,
};
use crate::cluster::lease::{Held, LeaseClient, LeaseError, LeaseKeeper};
use crate::cluster::namespace_watch::NamespaceWatch;
use crate::cluster::{annotations, drain, node::NodeClient, observe};
use crate::config::Settings;
use crate::gates::{self, GateReport, LocalObservation};
use crate::host::boot::BootId;
use crate::store::Store;
use crate::verify;

/// Two credentials: `client` is the kubelet's (this Node, its pods, Events);
/// `shared` is the drydock identity (Leases, the drydock Namespace,
/// cluster-wide reads). See `cluster::identity`.
/// The shortest time between two drain progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

pub struct KubeCluster {
    client: kube::Client,
    shared: kube::Client,
    settings: Settings,
    node: String,
    lease: Arc<LeaseClient>,
    /// One keeper per slot held: renews it in the background.
    keepers: Mutex<BTreeMap<String, LeaseKeeper>>,
    /// The drydock Namespace, watched: the upgrade target without a
    /// request per check.
    namespace: NamespaceWatch,
}

fn status(reports: Vec<GateReport>) -> Vec<GateStatus> {
    reports
        .into_iter()
        .map(|r| match r.gate.parse::<gates::GateName>() {
            Ok(gate) => GateStatus {
                gate,
                passed: r.verdict.passes(),
                skipped: !r.verdict.evaluated(),
                reason: r.verdict.reason().unwrap_or_default().to_string(),
            },
            // A gate without a name in the vocabulary is a bug: blocks.
            Err(e) => GateStatus {
                gate: gates::GateName::Cluster,
                passed: false,
                skipped: false,
                reason: format!("{e} (a drydock bug): blocking"),
            },
        })
        .collect()
}

fn lease_error(action: &str, e: LeaseError) -> PortError {
    match e {
        LeaseError::Lost { slot, holder, .. } => PortError::LostLease {
            slot,
            holder: holder.unwrap_or_else(|| "nobody (released or deleted)".into()),
        },
        other => PortError::failed(action, other),
    }
}

/// A node read or write failure: permanent when the API said no (401,
/// 403, 404, 422: retrying will not change its mind), else transient.
fn node_error(action: &str, e: crate::cluster::node::NodeError) -> PortError {
    use crate::cluster::node::NodeError;
    let permanent = match &e {
        NodeError::NotFound { .. } => true,
        NodeError::Get { source, .. } | NodeError::Patch { source, .. } => {
            drain::kube_class(source) == drain::ErrorClass::Permanent
        }
        NodeError::Conflict { .. } => false,
    };
    if permanent {
        PortError::permanent(action, e)
    } else {
        PortError::failed(action, e)
    }
}

impl KubeCluster {
    /// One client for everything (the simulator, or an admin's credential).
    pub fn new(client: kube::Client, settings: Settings, node: String) -> Self {
        Self::with_identity(client.clone(), client, settings, node)
    }

    pub fn with_identity(
        kubelet: kube::Client,
        shared: kube::Client,
        settings: Settings,
        node: String,
    ) -> Self {
        let lease = Arc::new(LeaseClient::new(shared.clone(), &settings, &node));
        let namespace = NamespaceWatch::new(shared.clone(), &settings.lease.namespace);
        KubeCluster {
            namespace,
            client: kubelet,
            shared,
            settings,
            node,
            lease,
            keepers: Mutex::new(BTreeMap::new()),
        }
    }

    fn keepers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LeaseKeeper>> {
        self.keepers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renewal interval: well inside the lease duration.
    fn renew_every(&self) -> Duration {
        (self.settings.lease.duration / 3).max(Duration::from_millis(100))
    }

    fn keep(&self, held: Held) -> ClaimWatch {
        let slot = held.slot.clone();
        let keeper = LeaseKeeper::spawn(self.lease.clone(), held, self.renew_every());
        let claim = keeper.claim();
        self.keepers().insert(slot, keeper);
        claim
    }

    /// Who holds `slot`, for the message when it is not us.
    async fn holder_of(&self, slot: &str) -> String {
        match self.lease.slots().await {
            Ok(slots) => slots
                .into_iter()
                .find(|s| s.name == slot)
                .and_then(|s| s.holder)
                .unwrap_or_else(|| "nobody (released or deleted)".into()),
            Err(e) => format!("unknown ({e})"),
        }
    }

    fn ns(&self) -> &str {
        &self.settings.lease.namespace
    }

    /// The upgrade target as the Namespace watch last saw it, without a
    /// request; `None` while the watch is not open (for tests and benches:
    /// proof that a change arrived through the watch).
    pub fn upgrade_target_seen(&self) -> Option<Option<String>> {
        self.namespace.seen(annotations::KUBERNETES_VERSION)
    }
}

impl Cluster for KubeCluster {
    fn local_gates(&self, store: &Store, now: Timestamp) -> Vec<GateStatus> {
        let pause = match gates::paused::local_pause(store) {
            Ok(p) => p,
            Err(e) => {
                return vec![GateStatus {
                    gate: gates::GateName::Paused,
                    passed: false,
                    reason: format!("cannot read the local pause: {e}"),
                    skipped: false,
                }];
            }
        };
        status(gates::evaluate_local(
            &self.settings,
            &LocalObservation { pause },
            now,
        ))
    }

    fn next_local_change(&self, now: Timestamp) -> Option<Timestamp> {
        gates::window::next_opening(&self.settings.maintenance.windows, now).map(|z| z.timestamp())
    }

    async fn cluster_gates(&self, now: Timestamp) -> ClusterGates {
        let unavailable = |e: observe::ObserveError| ClusterGates {
            gates: status(gates::cluster_unavailable(&e)),
            blocked_until: None,
        };
        // One small GET first: halted, paused or soaking needs nothing else.
        let control = match observe::observe_control(&self.shared, &self.settings).await {
            Ok(c) => c,
            Err(e) => return unavailable(e),
        };
        let verdict = match gates::evaluate_control(&self.settings, &control, now) {
            Some(early) => early,
            None => {
                let observed = observe::observe_after_control(
                    &self.shared,
                    &self.settings,
                    &self.node,
                    control,
                )
                .await;
                let obs = match observed {
                    Ok(o) => o,
                    Err(e) => return unavailable(e),
                };
                let alerts = gates::alerts::fetch(&self.settings.alerts).await;
                let mut verdict =
                    gates::evaluate_cluster_verdict(&self.settings, &obs, &alerts, now);
                // Spare the other waiting nodes this evaluation until the
                // next re-check; they then wait until its end, and so do we.
                let recheck = pace::BLOCKED_RECHECK.min(self.settings.reboot.check_interval);
                let soak_end =
                    gates::soak::ends_at(&obs.nodes, &obs.control, self.settings.gates.soak, now);
                if let Some(share) = gates::shared::to_share(
                    &self.settings,
                    &verdict.reports,
                    &alerts,
                    soak_end,
                    &self.node,
                    now,
                    recheck,
                ) {
                    match annotations::share_block(&self.shared, self.ns(), &share).await {
                        Ok(()) => {
                            debug!(node = %self.node, gate = %share.gate, until = %share.until, "shared the blocking verdict");
                            verdict.blocked_until = verdict.blocked_until.max(Some(share.until));
                        }
                        // The others evaluate for themselves: costly, not unsafe.
                        Err(e) => {
                            warn!(node = %self.node, error = %e, "could not share the blocking verdict")
                        }
                    }
                }
                verdict
            }
        };
        ClusterGates {
            gates: status(verdict.reports),
            blocked_until: verdict.blocked_until,
        }
    }

    async fn control_gates(&self, now: Timestamp) -> Option<ClusterGates> {
        let verdict = match observe::observe_control(&self.shared, &self.settings).await {
            Ok(control) => gates::evaluate_control(&self.settings, &control, now)?,
            Err(e) => {
                return Some(ClusterGates {
                    gates: status(gates::cluster_unavailable(&e)),
                    blocked_until: None,
                });
            }
        };
        Some(ClusterGates {
            gates: status(verdict.reports),
            blocked_until: verdict.blocked_until,
        })
    }

    async fn lease_outlook(&self) -> Result<LeaseOutlook, PortError> {
        let slots = self
            .lease
            .slots()
            .await
            .map_err(|e| lease_error("reading the Lease slots", e))?;
        if let Some(mine) = slots
            .iter()
            .find(|s| s.holder.as_deref() == Some(&self.node))
        {
            return Ok(LeaseOutlook::Mine(mine.name.clone()));
        }
        if slots.iter().any(|s| s.holder.is_none()) {
            return Ok(LeaseOutlook::Available);
        }
        if slots.iter().any(|s| s.expired) {
            return Ok(LeaseOutlook::Expired);
        }
        Ok(LeaseOutlook::Busy {
            holders: slots.into_iter().filter_map(|s| s.holder).collect(),
        })
    }

    async fn acquire(&self, gates_passed: bool) -> Result<Option<String>, PortError> {
        match self.lease.acquire(gates_passed).await {
            Ok(Some(held)) => {
                let slot = held.slot.clone();
                self.keep(held);
                Ok(Some(slot))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(lease_error("acquiring a Lease slot", e)),
        }
    }

    async fn hold(&self, slot: &str) -> Result<ClaimWatch, PortError> {
        if let Some(k) = self.keepers().get(slot)
            && !k.is_lost()
        {
            return Ok(k.claim());
        }
        self.keepers().remove(slot);
        match self.lease.mine().await {
            Ok(Some(h)) if h.slot == slot => Ok(self.keep(h)),
            Ok(Some(h)) => Err(PortError::LostLease {
                slot: slot.to_string(),
                holder: format!("this node, as {}", h.slot),
            }),
            Ok(None) => Err(PortError::LostLease {
                slot: slot.to_string(),
                holder: self.holder_of(slot).await,
            }),
            Err(e) => Err(lease_error("finding our Lease", e)),
        }
    }

    async fn confirm(&self, slot: &str) -> Result<(), PortError> {
        self.hold(slot).await?;
        // The keeper is taken out for the request (the map's lock is not
        // held across it) and put back while it is still ours.
        let Some(keeper) = self.keepers().remove(slot) else {
            return Err(PortError::LostLease {
                slot: slot.to_string(),
                holder: "unknown (released meanwhile)".into(),
            });
        };
        let result = keeper.renew_now(&self.lease).await;
        if !keeper.is_lost() {
            self.keepers().insert(slot.to_string(), keeper);
        }
        result.map_err(|e| lease_error("renewing the Lease", e))
    }

    async fn release(&self, slot: &str) -> Result<(), PortError> {
        let keeper = self.keepers().remove(slot);
        let result = match keeper {
            Some(k) => k.release(&self.lease).await,
            None => match self.lease.mine().await {
                Ok(Some(h)) if h.slot == slot => self.lease.release(&h).await,
                // Not ours any more: nothing to release.
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
        };
        result.map_err(|e| lease_error("releasing the Lease", e))
    }

    async fn wait_for_lease_change(&self, timeout: Duration) {
        if self.lease.wait_for_change(timeout).await.is_err() {
            // A broken watch must not turn into a busy loop.
            tokio::time::sleep(timeout.min(Duration::from_secs(5))).await;
        }
    }

    async fn node_unschedulable(&self) -> Result<bool, PortError> {
        NodeClient::new(self.client.clone(), &self.node)
            .get()
            .await
            .map(|n| crate::cluster::node::is_unschedulable(&n))
            .map_err(|e| node_error("reading this node", e))
    }

    async fn set_unschedulable(&self, value: bool) -> Result<(), PortError> {
        let node = NodeClient::new(self.client.clone(), &self.node);
        if value {
            node.cordon().await.map(|_| ())
        } else {
            node.uncordon().await
        }
        .map_err(|e| node_error(if value { "cordoning" } else { "uncordoning" }, e))
    }

    async fn drain(
        &self,
        progress: tokio::sync::watch::Sender<usize>,
        claim: ClaimWatch,
    ) -> Result<DrainResult, PortError> {
        let opts = drain::DrainOptions::from_settings(&self.settings.drain);
        let (tx, mut rx) = tokio::sync::watch::channel(drain::DrainProgress::default());
        // At most one "pods left" update per interval: each becomes a
        // status line and a Node annotation PATCH; the watch channel keeps
        // only the latest count in between.
        let forward = async {
            while rx.changed().await.is_ok() {
                let left = rx.borrow_and_update().left;
                let _ = progress.send(left);
                tokio::time::sleep(PROGRESS_INTERVAL).await;
            }
        };
        let run =
            drain::drain_holding_with(&self.client, &self.shared, &self.node, &opts, &tx, claim);
        let result = tokio::select! {
            r = run => r,
            _ = forward => unreachable!("the sender outlives the drain"),
        };
        match result {
            Ok(report) => Ok(DrainResult::Drained(report)),
            Err(drain::DrainError::TimedOut(timeout)) => Ok(DrainResult::TimedOut(timeout)),
            Err(drain::DrainError::LeaseLost { slot, holder, .. }) => {
                Err(PortError::LostLease { slot, holder })
            }
            Err(e) => match e.class() {
                drain::ErrorClass::Permanent => Err(PortError::permanent("draining", e)),
                _ => Err(PortError::failed("draining", e)),
            },
        }
    }

    async fn verify_node(&self, booted_at: Timestamp, boot_id: &str) -> Result<(), String> {
        let now = BootId::parse(boot_id)
            .ok_or_else(|| format!("this machine's boot id {boot_id:?} is not a UUID"))?;
        let inputs = verify::VerifyInputs {
            node: &self.node,
            // The driver entered verification because the boot changed.
            boot_id_before: None,
            boot_id_now: &now,
            boot_started: booted_at,
            required_daemonsets: &self.settings.gates.required_daemonsets,
            // Checks run on the host port.
            checks_dir: None,
            check_timeout: self.settings.verify.check_timeout,
        };
        let obs = verify::gather(&self.shared, &inputs)
            .await
            .map_err(|e| e.to_string())?;
        match verify::evaluate(&obs) {
            verify::VerifyOutcome::Passed => Ok(()),
            verify::VerifyOutcome::NotRebooted => Err("the node still reports its old boot".into()),
            verify::VerifyOutcome::Waiting { problems } => Err(verify::describe(&problems)),
        }
    }

    async fn upgrade_target(&self) -> Result<Option<String>, PortError> {
        self.namespace
            .annotation(annotations::KUBERNETES_VERSION)
            .await
            .map_err(|e| PortError::failed("reading the upgrade target", e))
    }

    async fn upgrade_target_now(&self) -> Result<Option<String>, PortError> {
        self.namespace
            .read(annotations::KUBERNETES_VERSION)
            .await
            .map_err(|e| PortError::failed("reading the upgrade target", e))
    }

    async fn cluster_versions(&self) -> Result<crate::upgrade::ClusterVersions, PortError> {
        crate::cluster::versions::observe_versions_as(&self.client, &self.shared)
            .await
            .map_err(|e| PortError::failed("reading the cluster's versions", e))
    }

    async fn halt_fleet(&self, halt: &Halt) -> Result<(), PortError> {
        let by = annotations::HaltedBy {
            node: halt.node.clone(),
            reason: halt.reason.clone(),
            at: halt.at,
        };
        annotations::halt_by(&self.shared, self.ns(), &by)
            .await
            .map_err(|e| PortError::failed("halting the fleet", e))
    }

    async fn clear_halt(&self) -> Result<bool, PortError> {
        let by = annotations::halted_by(&self.shared, self.ns())
            .await
            .map_err(|e| PortError::failed("reading the fleet halt", e))?;
        let ours = by.is_some_and(|b| b.node == self.node);
        if ours {
            annotations::clear_halt(&self.shared, self.ns())
                .await
                .map_err(|e| PortError::failed("clearing the fleet halt", e))?;
        }
        Ok(ours)
    }

    async fn record_reboot_finished(&self, at: Timestamp) -> Result<(), PortError> {
        annotations::record_reboot_finished(&self.shared, self.ns(), &self.node, at)
            .await
            .map_err(|e| PortError::failed("recording the finished reboot", e))
    }
}
