//! Draining this node, with kubectl drain's rules.
//!
//! Which pods to evict is a pure decision ([`classify`], [`plan`]); the rest
//! is the eviction loop against the API: policy/v1 Eviction per pod, run
//! concurrently, 429 (disruption budget) retried when the budget allows
//! again (or after a jittered `retry_interval`), each pod waited for until
//! it is gone (one watch on the node's pods), all under one global timeout.
//! Cordoning is not done here (see
//! [`super::node::NodeClient::cordon`]); the caller cordons first and, on
//! failure, uncordons if it was the one that cordoned.
//!
//! Differences from kubectl, on purpose:
//! - DaemonSet pods are always skipped (kubectl `--ignore-daemonsets`, as
//!   kured does), even when their DaemonSet is gone.
//! - Pods already terminating are waited for, never evicted again, whatever
//!   their volumes or owner.
//! - Completed pods (Succeeded/Failed) are deleted rather than evicted: the
//!   effect is the same (evicting a finished pod ignores budgets).
//! - 403 NamespaceTerminating: as kubectl, the eviction is retried until the
//!   namespace controller marks the pod deleted, then the pod is waited for.
//!   drydock never deletes it itself.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Preconditions, WatchEvent, WatchParams};
use kube::core::{Selector, SelectorExt, Status};
use kube::{Client, ResourceExt};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::config::DrainSettings;

/// The annotation the kubelet puts on the API copy of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Eviction and delete requests in flight at once (kubectl has no limit;
/// this keeps a node with hundreds of pods from flooding the API server).
/// A pod holds a slot only for its request, not while it terminates.
const MAX_CONCURRENT: usize = 32;

/// A pod as drain reports it. The UID tells a replacement (same name, new
/// UID, e.g. a StatefulSet pod) from the pod we evicted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    pub(crate) fn of(pod: &Pod) -> Self {
        PodRef {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// Managed by a DaemonSet, which ignores cordons and would recreate it.
    DaemonSet,
    /// The API copy of a static pod; it cannot be deleted through the API.
    Mirror,
}

/// Why a pod stops the drain before anything is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefuseReason {
    /// Has an emptyDir volume and `drain.delete-emptydir-data` is off.
    EmptyDir,
    /// Has no controller and `drain.evict-unmanaged` is off.
    Unmanaged,
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefuseReason::EmptyDir => {
                "uses emptyDir (local data would be lost; drain.delete-emptydir-data is off)"
            }
            RefuseReason::Unmanaged => {
                "has no controller (it would not come back; drain.evict-unmanaged is off)"
            }
        })
    }
}

/// What the drain does with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PodAction {
    Skip(SkipReason),
    /// Already being deleted: wait until it is gone.
    AwaitTermination,
    /// Succeeded or Failed: delete it.
    DeleteCompleted,
    Evict,
    Refuse(Vec<RefuseReason>),
}

/// The configurable part of kubectl's pod filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainRules {
    pub delete_emptydir_data: bool,
    pub evict_unmanaged: bool,
}

/// Decides what to do with one pod (kubectl's filters, in its order).
pub(crate) fn classify(pod: &Pod, rules: &DrainRules) -> PodAction {
    let controller = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|c| c.kind == "DaemonSet") {
        return PodAction::Skip(SkipReason::DaemonSet);
    }
    if pod.annotations().contains_key(MIRROR_ANNOTATION) {
        return PodAction::Skip(SkipReason::Mirror);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodAction::AwaitTermination;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return PodAction::DeleteCompleted;
    }
    let mut refusals = Vec::new();
    if !rules.delete_emptydir_data && has_empty_dir(pod) {
        refusals.push(RefuseReason::EmptyDir);
    }
    if !rules.evict_unmanaged && controller.is_none() {
        refusals.push(RefuseReason::Unmanaged);
    }
    if refusals.is_empty() {
        PodAction::Evict
    } else {
        PodAction::Refuse(refusals)
    }
}

fn has_empty_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vols| vols.iter().any(|v| v.empty_dir.is_some()))
}

/// Every pod on the node, sorted into what the drain will do.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct DrainPlan {
    pub evict: Vec<PodRef>,
    pub delete_completed: Vec<PodRef>,
    pub await_termination: Vec<PodRef>,
    pub skipped: Vec<(PodRef, SkipReason)>,
    pub refused: Vec<(PodRef, Vec<RefuseReason>)>,
}

impl DrainPlan {
    /// Pods the drain has to see gone.
    fn to_remove(&self) -> usize {
        self.evict.len() + self.delete_completed.len() + self.await_termination.len()
    }
}

pub(crate) fn plan(pods: &[Pod], rules: &DrainRules) -> DrainPlan {
    let mut plan = DrainPlan::default();
    for pod in pods {
        let r = PodRef::of(pod);
        match classify(pod, rules) {
            PodAction::Skip(why) => plan.skipped.push((r, why)),
            PodAction::AwaitTermination => plan.await_termination.push(r),
            PodAction::DeleteCompleted => plan.delete_completed.push(r),
            PodAction::Evict => plan.evict.push(r),
            PodAction::Refuse(why) => plan.refused.push((r, why)),
        }
    }
    plan
}

/// Whether a label selector matches a label set, with the API's meaning
/// (kube-core's `Selector`): an empty selector matches everything; one that
/// does not parse (an unknown operator) cannot be shown to match.
fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Whether a PodDisruptionBudget covers a pod (same namespace, selector
/// matches; a budget without a selector covers nothing).
fn pdb_covers(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    pdb.namespace() == pod.namespace()
        && pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|sel| selector_matches(sel, pod.labels()))
}

/// Why a pod is not gone yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BlockReason {
    /// Eviction answered 429 for a disruption budget.
    DisruptionBudget {
        /// The budgets covering the pod that allow no disruption, when known.
        pdbs: Vec<String>,
        message: String,
    },
    /// Eviction answered 429 for another reason (API server throttling).
    Throttled { message: String },
    /// 403: its namespace is being deleted, the pod not yet marked deleted.
    NamespaceTerminating,
    /// Evicted or deleted; waiting for it to go away.
    Terminating,
    /// The API server failed (5xx or unreachable); retrying.
    ApiError { message: String },
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockReason::DisruptionBudget { pdbs, message } if pdbs.is_empty() => {
                write!(f, "disruption budget: {message}")
            }
            BlockReason::DisruptionBudget { pdbs, message } => {
                write!(f, "disruption budget {}: {message}", pdbs.join(", "))
            }
            BlockReason::Throttled { message } => write!(f, "throttled: {message}"),
            BlockReason::NamespaceTerminating => f.write_str("namespace terminating"),
            BlockReason::Terminating => f.write_str("still terminating"),
            BlockReason::ApiError { message } => write!(f, "API error: {message}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockedPod {
    pub pod: PodRef,
    pub reason: BlockReason,
}

/// What the status line shows while draining.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DrainProgress {
    /// Pods the drain has to see gone.
    pub total: usize,
    /// Of those, not gone yet.
    pub left: usize,
    /// Pods whose eviction is currently refused or failing, with why.
    pub blocked: Vec<BlockedPod>,
}

/// A pod deleted because its budget blocked it for too long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForcedDeletion {
    pub pod: PodRef,
    pub pdbs: Vec<String>,
    pub blocked_for: Duration,
}

/// What a drain did (also carried, partial, by a timeout).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DrainReport {
    pub evicted: Vec<PodRef>,
    pub deleted_completed: Vec<PodRef>,
    pub deleted_pdb_blocked: Vec<ForcedDeletion>,
    /// Already terminating when the drain started; waited for.
    pub awaited: Vec<PodRef>,
    /// Gone before we got to them.
    pub vanished: Vec<PodRef>,
    pub skipped: Vec<(PodRef, SkipReason)>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainTimeout {
    pub node: String,
    pub timeout: Duration,
    /// Every pod not gone at the deadline, with its last known reason.
    pub blocked: Vec<BlockedPod>,
    pub partial: DrainReport,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("listing pods on node {node}: {source}")]
    ListPods {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("not draining node {node}: {}", describe_refused(.pods))]
    Refused {
        node: String,
        pods: Vec<(PodRef, Vec<RefuseReason>)>,
    },
    #[error("draining node {}: timed out after {} with {} pod(s) left: {}",
        .0.node, humantime::format_duration(.0.timeout), .0.blocked.len(), describe_blocked(&.0.blocked))]
    TimedOut(Box<DrainTimeout>),
    #[error("evicting pod {pod}: the API server refused with {code}: {message}")]
    Evict {
        pod: PodRef,
        code: u16,
        message: String,
    },
    #[error("deleting pod {pod}: {source}")]
    Delete {
        pod: PodRef,
        #[source]
        source: kube::Error,
    },
    /// The Lease slot this drain ran under is gone: stopped at once.
    #[error("draining node {node}: stopped, lease {slot} lost to {holder}")]
    LeaseLost {
        node: String,
        slot: String,
        holder: String,
    },
}

/// What a drain failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// May succeed if tried again (API unreachable, 5xx, throttling).
    Transient,
    /// Will not succeed without a person (a refused eviction, 403, a pod
    /// the drain rules forbid evicting).
    Permanent,
    /// The Lease is gone; the node must stop.
    LeaseLost,
    /// The drain timeout passed.
    TimedOut,
}

/// Whether an API error is worth retrying as it is.
pub(crate) fn kube_class(e: &kube::Error) -> ErrorClass {
    match e {
        // Timeout, conflict, throttling, server trouble: worth another try.
        kube::Error::Api(s) if matches!(s.code, 408 | 409 | 429) || s.code >= 500 => {
            ErrorClass::Transient
        }
        kube::Error::Api(_) => ErrorClass::Permanent,
        // Transport and decoding trouble: the API server may come back.
        _ => ErrorClass::Transient,
    }
}

impl DrainError {
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            DrainError::ListPods { source, .. } | DrainError::Delete { source, .. } => {
                kube_class(source)
            }
            DrainError::Refused { .. } | DrainError::Evict { .. } => ErrorClass::Permanent,
            DrainError::TimedOut(_) => ErrorClass::TimedOut,
            DrainError::LeaseLost { .. } => ErrorClass::LeaseLost,
        }
    }
}

/// [`drain`] with two credentials, as [`drain_with`], stopped the moment
/// `claim` says the Lease slot is gone.
pub(crate) async fn drain_holding_with(
    client: &Client,
    reader: &Client,
    node: &str,
    opts: &DrainOptions,
    progress: &watch::Sender<DrainProgress>,
    mut claim: watch::Receiver<crate::cluster::lease::Claim>,
) -> Result<DrainReport, DrainError> {
    if claim.borrow().is_lost() {
        let c = claim.borrow().clone();
        return Err(DrainError::LeaseLost {
            node: node.to_string(),
            slot: c.slot().to_string(),
            holder: c.holder(),
        });
    }
    tokio::select! {
        r = drain_with(client, reader, node, opts, progress) => r,
        c = crate::cluster::lease::claim_lost(&mut claim) => {
            warn!(node, slot = %c.slot(), holder = %c.holder(), "lease lost; drain stopped");
            Err(DrainError::LeaseLost {
                node: node.to_string(),
                slot: c.slot().to_string(),
                holder: c.holder(),
            })
        }
    }
}

fn pods(list: &[PodRef]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for ForcedDeletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (budget {} allowed no disruption for {})",
            self.pod,
            self.pdbs.join(", "),
            humantime::format_duration(Duration::from_secs(self.blocked_for.as_secs()))
        )
    }
}

impl fmt::Display for BlockedPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pod, self.reason)
    }
}

/// One line a person reads: what happened to which pod.
impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![format!(
            "{} evicted{}",
            self.evicted.len(),
            if self.evicted.is_empty() {
                String::new()
            } else {
                format!(" ({})", pods(&self.evicted))
            }
        )];
        if !self.deleted_pdb_blocked.is_empty() {
            let forced: Vec<String> = self
                .deleted_pdb_blocked
                .iter()
                .map(ToString::to_string)
                .collect();
            parts.push(format!(
                "{} DELETED despite a disruption budget: {}",
                forced.len(),
                forced.join("; ")
            ));
        }
        if !self.deleted_completed.is_empty() {
            parts.push(format!(
                "{} completed deleted ({})",
                self.deleted_completed.len(),
                pods(&self.deleted_completed)
            ));
        }
        if !self.awaited.is_empty() {
            parts.push(format!(
                "{} already terminating ({})",
                self.awaited.len(),
                pods(&self.awaited)
            ));
        }
        if !self.vanished.is_empty() {
            parts.push(format!("{} gone by themselves", self.vanished.len()));
        }
        if !self.skipped.is_empty() {
            parts.push(format!(
                "{} skipped (DaemonSet or static)",
                self.skipped.len()
            ));
        }
        write!(
            f,
            "{} in {}",
            parts.join(", "),
            humantime::format_duration(Duration::from_secs(self.elapsed.as_secs()))
        )
    }
}

fn describe_refused(pods: &[(PodRef, Vec<RefuseReason>)]) -> String {
    pods.iter()
        .map(|(p, why)| {
            let why: Vec<String> = why.iter().map(ToString::to_string).collect();
            format!("{p} {}", why.join(" and "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_blocked(pods: &[BlockedPod]) -> String {
    pods.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// How to drain; usually [`DrainOptions::from_settings`].
#[derive(Debug, Clone, PartialEq)]
pub struct DrainOptions {
    pub rules: DrainRules,
    pub timeout: Duration,
    pub retry_interval: Duration,
    /// How often a pod is checked for being gone.
    pub poll_interval: Duration,
    pub delete_pdb_blocked_after: Option<Duration>,
    pub pre_drain_wait: Duration,
    /// Label selector; only matching pods are drained. Empty: all.
    pub pod_selector: String,
}

impl DrainOptions {
    pub(crate) fn from_settings(s: &DrainSettings) -> Self {
        DrainOptions {
            rules: DrainRules {
                delete_emptydir_data: s.delete_emptydir_data,
                evict_unmanaged: s.evict_unmanaged,
            },
            timeout: s.timeout,
            retry_interval: s.retry_interval,
            poll_interval: s.retry_interval.min(Duration::from_secs(1)),
            delete_pdb_blocked_after: s.delete_pdb_blocked_after,
            pre_drain_wait: s.pre_drain_wait,
            pod_selector: s.pod_selector.clone(),
        }
    }
}

/// The pods on `node` matching `selector`, and the list's resourceVersion
/// (where the watch for their deletion starts).
async fn list_pods_on_node(
    client: &Client,
    node: &str,
    selector: &str,
) -> Result<(Vec<Pod>, Option<String>), DrainError> {
    let api: Api<Pod> = Api::all(client.clone());
    let mut lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    if !selector.is_empty() {
        lp = lp.labels(selector);
    }
    let list = api.list(&lp).await.map_err(|source| DrainError::ListPods {
        node: node.to_string(),
        source,
    })?;
    // Filter again: the field selector is the server's promise, not ours.
    let pods = list
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect();
    Ok((pods, list.metadata.resource_version))
}

/// Drains `node` (already cordoned by the caller). Progress goes to
/// `progress` (the caller may drop the receiver). On success, every
/// drainable pod is gone; on [`DrainError::TimedOut`] the error lists the
/// pods that blocked.
///
/// How it stays cheap and quick (kubectl drain, by contrast, evicts every
/// pod at once, retries a refused one every 5 s and polls each evicted pod
/// every second):
/// - at most [`MAX_CONCURRENT`] eviction POSTs are in flight; a pod holds
///   no slot while it terminates;
/// - one watch on the node's pods tells when each pod is gone;
/// - a pod refused by its disruption budget waits until that budget
///   allows a disruption again (one list and one watch of the budgets,
///   started at the first refusal), and takes one of the allowed
///   disruptions before asking again, so the waiters do not all retry at
///   once; without budget information it backs off with jitter. The API
///   server stays the judge: drydock never evicts without its consent.
///
/// Give it a client built with `default_retry = false`: kube's default
/// retry layer repeats 429 answers internally for minutes, hiding a
/// disruption-budget block from the progress report (the timeout still
/// holds either way).
pub async fn drain(
    client: &Client,
    node: &str,
    opts: &DrainOptions,
    progress: &watch::Sender<DrainProgress>,
) -> Result<DrainReport, DrainError> {
    drain_with(client, client, node, opts, progress).await
}

/// [`drain`] with two credentials: `client` (the kubelet's) evicts and
/// deletes this node's pods; `reader` (the drydock identity) reads what
/// the Node authorizer hides from a node: PDBs, and a pod already gone
/// (a node gets 403, not 404, for a pod no longer bound to it).
async fn drain_with(
    client: &Client,
    reader: &Client,
    node: &str,
    opts: &DrainOptions,
    progress: &watch::Sender<DrainProgress>,
) -> Result<DrainReport, DrainError> {
    if !opts.pre_drain_wait.is_zero() {
        info!(node, wait = %humantime::format_duration(opts.pre_drain_wait), "waiting before draining");
        tokio::time::sleep(opts.pre_drain_wait).await;
    }
    let started = Instant::now();
    let (pods, rv) = list_pods_on_node(client, node, &opts.pod_selector).await?;
    let plan = plan(&pods, &opts.rules);
    for (pod, why) in &plan.skipped {
        debug!(node, pod = %pod, reason = ?why, "not draining pod");
    }
    if !plan.refused.is_empty() {
        for (pod, why) in &plan.refused {
            warn!(node, pod = %pod, reason = ?why, "pod prevents the drain");
        }
        return Err(DrainError::Refused {
            node: node.to_string(),
            pods: plan.refused,
        });
    }
    info!(
        node,
        evict = plan.evict.len(),
        completed = plan.delete_completed.len(),
        terminating = plan.await_termination.len(),
        skipped = plan.skipped.len(),
        "draining {node}: {} pods to evict, {} to delete, {} terminating, {} skipped",
        plan.evict.len(),
        plan.delete_completed.len(),
        plan.await_termination.len(),
        plan.skipped.len()
    );

    let present: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    let ctx = Ctx {
        client,
        reader,
        node,
        opts,
        progress,
        tracker: Mutex::new(Tracker {
            total: plan.to_remove(),
            left: BTreeSet::new(),
            blocked: BTreeMap::new(),
            report: DrainReport {
                skipped: plan.skipped.clone(),
                ..DrainReport::default()
            },
        }),
        on_node: PodsOnNode {
            present: watch::Sender::new(present),
        },
        budgets: Budgets::new(opts.retry_interval),
        posts: Semaphore::new(MAX_CONCURRENT),
    };
    let mut jobs = Vec::new();
    for pod in pods {
        let job = match classify(&pod, &opts.rules) {
            PodAction::Evict => Job::Evict,
            PodAction::DeleteCompleted => Job::DeleteCompleted,
            PodAction::AwaitTermination => Job::Await,
            PodAction::Skip(_) | PodAction::Refuse(_) => continue,
        };
        ctx.tracker_mut(|t| {
            t.left.insert(PodRef::of(&pod));
        });
        jobs.push((pod, job));
    }
    ctx.publish();

    let work = async {
        if jobs.is_empty() {
            return Ok(());
        }
        let n = jobs.len();
        let mut results = futures::stream::iter(jobs)
            .map(|(pod, job)| ctx.run(pod, job))
            .buffer_unordered(n);
        while let Some(result) = results.next().await {
            result?;
        }
        Ok::<(), DrainError>(())
    };
    let follow = async {
        let (never, _) = tokio::join!(
            ctx.on_node.follow(client, node, rv, opts),
            ctx.budgets.follow(reader, opts)
        );
        never
    };
    let outcome = tokio::time::timeout(opts.timeout, async {
        tokio::select! {
            r = work => r,
            never = follow => match never {},
        }
    })
    .await;
    let Ctx { tracker, .. } = ctx;
    let mut t = tracker.into_inner().unwrap_or_else(|e| e.into_inner());
    t.report.elapsed = started.elapsed();
    match outcome {
        Ok(Ok(())) => {
            info!(node, evicted = t.report.evicted.len(), elapsed = ?t.report.elapsed, "drain of {node} finished: {} pods evicted in {:?}", t.report.evicted.len(), t.report.elapsed);
            Ok(t.report)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let blocked = t.blocked_list();
            warn!(node, left = blocked.len(), pods = %describe_blocked(&blocked), "drain timed out");
            Err(DrainError::TimedOut(Box::new(DrainTimeout {
                node: node.to_string(),
                timeout: opts.timeout,
                blocked,
                partial: t.report,
            })))
        }
    }
}

/// Decorrelated jittered backoff: each wait is random between `base` and
/// three times the last one, capped; waiters that failed together spread out.
struct Backoff {
    base: Duration,
    cap: Duration,
    last: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Self {
        let base = (cap / 20).max(Duration::from_millis(10)).min(cap);
        Backoff {
            base,
            cap,
            last: base,
        }
    }

    fn next(&mut self) -> Duration {
        let hi = (self.last * 3).clamp(self.base, self.cap.max(self.base));
        let d = self.base + (hi - self.base).mul_f64(fastrand::f64());
        self.last = d;
        d
    }

    fn reset(&mut self) {
        self.last = self.base;
    }
}

/// `d` stretched by a random factor in [1, 2).
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64())
}

/// Which of the node's pods still exist, kept by one watch (a re-list
/// after any watch trouble) instead of one GET per pod per second.
struct PodsOnNode {
    /// UIDs of the pods that exist.
    present: watch::Sender<HashSet<String>>,
}

impl PodsOnNode {
    /// Returns once the pod with this UID is gone (deleted, or replaced by
    /// another pod of the same name).
    async fn gone(&self, uid: &str) {
        let mut rx = self.present.subscribe();
        // The sender lives as long as the drain, so this only ends when gone.
        let _ = rx.wait_for(|p| !p.contains(uid)).await;
    }

    fn remove(&self, uid: &str) {
        self.present.send_if_modified(|p| p.remove(uid));
    }

    /// Follows deletions on the node until dropped.
    async fn follow(
        &self,
        client: &Client,
        node: &str,
        mut rv: Option<String>,
        opts: &DrainOptions,
    ) -> Infallible {
        let api: Api<Pod> = Api::all(client.clone());
        let field = format!("spec.nodeName={node}");
        let mut backoff = Backoff::new(opts.poll_interval.max(Duration::from_millis(100)));
        loop {
            let Some(from) = rv.take() else {
                // Whatever is not listed any more is gone.
                match api.list(&ListParams::default().fields(&field)).await {
                    Ok(list) => {
                        let listed: HashSet<String> =
                            list.items.iter().filter_map(|p| p.uid()).collect();
                        self.present.send_if_modified(|p| {
                            let before = p.len();
                            p.retain(|u| listed.contains(u));
                            p.len() != before
                        });
                        rv = list.metadata.resource_version;
                    }
                    Err(e) => {
                        debug!(node, error = %e, "listing pods on the node to see which are gone");
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
                continue;
            };
            let opened = Instant::now();
            let wp = WatchParams::default().fields(&field).timeout(290);
            let stream = match api.watch(&wp, &from).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(node, error = %e, "watching pods on the node");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            let mut last = from;
            let mut clean = true;
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(WatchEvent::Deleted(p)) => {
                        if let Some(uid) = p.uid() {
                            self.remove(&uid);
                        }
                        p
                    }
                    Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => p,
                    Ok(WatchEvent::Bookmark(b)) => {
                        last = b.metadata.resource_version;
                        continue;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        debug!(node, code = status.code, api_message = %status.message, "pod watch error on {node}; re-listing");
                        clean = false;
                        break;
                    }
                    Err(e) => {
                        debug!(node, error = %e, "pod watch broke; re-listing");
                        clean = false;
                        break;
                    }
                };
                if let Some(v) = pod.resource_version() {
                    last = v;
                }
            }
            if clean {
                rv = Some(last);
            }
            // A watch closed at once, again and again, must not spin.
            if !clean || opened.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(backoff.next()).await;
            } else {
                backoff.reset();
            }
        }
    }
}

type BudgetKey = (String, String);

/// One disruption budget as the drain last saw it.
struct BudgetEntry {
    pdb: PodDisruptionBudget,
    /// Changes whenever the budget's status does.
    version: u64,
    /// Disruptions this drain may still try under the last status seen.
    permits: i32,
    /// When one waiter may ask again although the status says no (the
    /// status may not tell: an unready pod may go when it says 0). One
    /// waiter per budget, not every one of them.
    next_probe: Instant,
}

struct BudgetView {
    /// The first list came back (or failed, then `pdbs` stays empty and
    /// refused pods back off blindly).
    ready: bool,
    pdbs: BTreeMap<BudgetKey, BudgetEntry>,
    next_version: u64,
    /// How often a budget is probed without a status change.
    probe_interval: Duration,
}

impl BudgetView {
    fn upsert(&mut self, pdb: PodDisruptionBudget) -> bool {
        let key = (pdb.namespace().unwrap_or_default(), pdb.name_any());
        if let Some(e) = self.pdbs.get(&key)
            && e.pdb.status == pdb.status
            && e.pdb.spec == pdb.spec
        {
            return false;
        }
        self.next_version += 1;
        let permits = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
        let next_probe = self.pdbs.get(&key).map_or_else(
            || Instant::now() + jittered(self.probe_interval),
            |e| e.next_probe,
        );
        self.pdbs.insert(
            key,
            BudgetEntry {
                pdb,
                version: self.next_version,
                permits,
                next_probe,
            },
        );
        true
    }

    fn covering(&self, pod: &Pod) -> Vec<(BudgetKey, u64)> {
        self.pdbs
            .iter()
            .filter(|(_, e)| pdb_covers(&e.pdb, pod))
            .map(|(k, e)| (k.clone(), e.version))
            .collect()
    }
}

/// The cluster's disruption budgets, read only once a budget refused an
/// eviction: one list, then one watch.
struct Budgets {
    needed: watch::Sender<bool>,
    view: watch::Sender<BudgetView>,
}

impl Budgets {
    fn new(probe_interval: Duration) -> Self {
        Budgets {
            needed: watch::Sender::new(false),
            view: watch::Sender::new(BudgetView {
                ready: false,
                pdbs: BTreeMap::new(),
                next_version: 0,
                probe_interval,
            }),
        }
    }

    /// Starts following the budgets (once) and waits for the first list,
    /// at most `bound`.
    async fn ready(&self, bound: Duration) {
        self.needed
            .send_if_modified(|n| !std::mem::replace(n, true));
        let mut rx = self.view.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|v| v.ready)).await;
    }

    fn covering(&self, pod: &Pod) -> Vec<(BudgetKey, u64)> {
        self.view.borrow().covering(pod)
    }

    /// After a refusal: the status seen before asking was stale, so no
    /// permits are left under it (a newer status keeps its own).
    fn refused(&self, seen: &[(BudgetKey, u64)]) {
        self.view.send_if_modified(|v| {
            for (k, version) in seen {
                if let Some(e) = v.pdbs.get_mut(k)
                    && e.version == *version
                {
                    e.permits = 0;
                }
            }
            // Nobody needs waking for fewer permits.
            false
        });
    }

    /// Waits until every budget in `keys` allows a disruption and takes
    /// one of each, or until it is this waiter's turn to probe them, or
    /// until `deadline`. A budget that went away counts as allowing (the
    /// API server decides).
    async fn take(&self, keys: &[BudgetKey], deadline: Option<Instant>) {
        let mut rx = self.view.subscribe();
        loop {
            rx.borrow_and_update();
            let now = Instant::now();
            let mut wake = deadline;
            let mut go = false;
            self.view.send_if_modified(|v| {
                let interval = v.probe_interval;
                let entries: Vec<Option<&BudgetEntry>> =
                    keys.iter().map(|k| v.pdbs.get(k)).collect();
                let allowed = entries.iter().all(|e| e.is_none_or(|e| e.permits > 0));
                let probe = entries
                    .iter()
                    .all(|e| e.is_none_or(|e| e.next_probe <= now));
                let next_probe = entries.iter().flatten().map(|e| e.next_probe).max();
                if allowed || probe {
                    for k in keys {
                        if let Some(e) = v.pdbs.get_mut(k) {
                            if allowed {
                                e.permits -= 1;
                            } else {
                                e.next_probe = now + jittered(interval);
                            }
                        }
                    }
                    go = true;
                } else if let Some(at) = next_probe {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                false
            });
            if go || deadline.is_some_and(|d| d <= now) {
                return;
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(sleep);
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    (&mut sleep).await;
                },
                () = &mut sleep => {}
            }
        }
    }

    /// Lists and watches every budget once [`Budgets::ready`] was asked for.
    async fn follow(&self, client: &Client, opts: &DrainOptions) -> Infallible {
        let mut needed = self.needed.subscribe();
        let _ = needed.wait_for(|n| *n).await;
        let api: Api<PodDisruptionBudget> = Api::all(client.clone());
        let mut backoff = Backoff::new(opts.retry_interval.max(Duration::from_millis(100)));
        let mut rv: Option<String> = None;
        loop {
            let Some(from) = rv.take() else {
                match api.list(&ListParams::default()).await {
                    Ok(list) => {
                        let listed: BTreeSet<BudgetKey> = list
                            .items
                            .iter()
                            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                            .collect();
                        self.view.send_modify(|v| {
                            v.pdbs.retain(|k, _| listed.contains(k));
                            for pdb in list.items {
                                v.upsert(pdb);
                            }
                            v.ready = true;
                        });
                        rv = list.metadata.resource_version;
                    }
                    Err(e) => {
                        debug!(error = %e, "listing disruption budgets; refused pods back off blindly");
                        self.view
                            .send_if_modified(|v| !std::mem::replace(&mut v.ready, true));
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
                continue;
            };
            let opened = Instant::now();
            let wp = WatchParams::default().timeout(290);
            let stream = match api.watch(&wp, &from).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "watching disruption budgets");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            let mut last = from;
            let mut clean = true;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                        if let Some(v) = p.resource_version() {
                            last = v;
                        }
                        self.view.send_if_modified(|v| v.upsert(p));
                    }
                    Ok(WatchEvent::Deleted(p)) => {
                        if let Some(v) = p.resource_version() {
                            last = v;
                        }
                        let key = (p.namespace().unwrap_or_default(), p.name_any());
                        self.view
                            .send_if_modified(|v| v.pdbs.remove(&key).is_some());
                    }
                    Ok(WatchEvent::Bookmark(b)) => last = b.metadata.resource_version,
                    Ok(WatchEvent::Error(status)) => {
                        debug!(code = status.code, api_message = %status.message, "disruption budget watch error; re-listing");
                        clean = false;
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "budget watch broke; re-listing");
                        clean = false;
                        break;
                    }
                }
            }
            if clean {
                rv = Some(last);
            }
            if !clean || opened.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(backoff.next()).await;
            } else {
                backoff.reset();
            }
        }
    }
}

/// Evictions refused or failed and retried, in this process since it
/// started (the `drydock_evictions_retried_total` metric; one daemon drains
/// one node).
static EVICTION_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn eviction_retries() -> u64 {
    EVICTION_RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

enum Job {
    Evict,
    DeleteCompleted,
    Await,
}

struct Tracker {
    total: usize,
    left: BTreeSet<PodRef>,
    blocked: BTreeMap<PodRef, BlockReason>,
    report: DrainReport,
}

impl Tracker {
    /// Every pod not gone, with its reason (terminating when none known).
    fn blocked_list(&self) -> Vec<BlockedPod> {
        self.left
            .iter()
            .map(|p| BlockedPod {
                pod: p.clone(),
                reason: self
                    .blocked
                    .get(p)
                    .cloned()
                    .unwrap_or(BlockReason::Terminating),
            })
            .collect()
    }
}

struct Ctx<'a> {
    client: &'a Client,
    reader: &'a Client,
    node: &'a str,
    opts: &'a DrainOptions,
    progress: &'a watch::Sender<DrainProgress>,
    tracker: Mutex<Tracker>,
    on_node: PodsOnNode,
    budgets: Budgets,
    /// Eviction and delete requests in flight.
    posts: Semaphore,
}

/// How one pod left.
enum Gone {
    Evicted,
    DeletedCompleted,
    DeletedPdbBlocked(ForcedDeletion),
    Awaited,
    Vanished,
}

/// What a pod waits for before asking again.
enum Retry {
    /// A jittered, growing pause.
    Backoff,
    /// A fixed pause.
    After(Duration),
    /// Its budgets to allow a disruption (at most until the instant).
    Budget(Vec<BudgetKey>, Option<Instant>),
}

impl Ctx<'_> {
    fn tracker_mut<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut t)
    }

    fn publish(&self) {
        let snapshot = self.tracker_mut(|t| DrainProgress {
            total: t.total,
            left: t.left.len(),
            blocked: t
                .blocked
                .iter()
                .filter(|(p, _)| t.left.contains(*p))
                .map(|(p, r)| BlockedPod {
                    pod: p.clone(),
                    reason: r.clone(),
                })
                .collect(),
        });
        self.progress.send_if_modified(|p| {
            let changed = *p != snapshot;
            *p = snapshot;
            changed
        });
    }

    /// Records why `pod` is stuck; returns whether the reason changed (to
    /// log once per change, not once per retry).
    fn block(&self, pod: &PodRef, reason: BlockReason) -> bool {
        EVICTION_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let changed =
            self.tracker_mut(|t| t.blocked.insert(pod.clone(), reason.clone()) != Some(reason));
        if changed {
            self.publish();
        }
        changed
    }

    fn done(&self, pod: PodRef, how: Gone) {
        self.tracker_mut(|t| {
            t.left.remove(&pod);
            t.blocked.remove(&pod);
            let r = &mut t.report;
            match how {
                Gone::Evicted => r.evicted.push(pod.clone()),
                Gone::DeletedCompleted => r.deleted_completed.push(pod.clone()),
                Gone::DeletedPdbBlocked(d) => r.deleted_pdb_blocked.push(d),
                Gone::Awaited => r.awaited.push(pod.clone()),
                Gone::Vanished => r.vanished.push(pod.clone()),
            }
        });
        let left = self.tracker_mut(|t| t.left.len());
        info!(node = self.node, pod = %pod, left, "pod {pod} gone, {left} left");
        self.publish();
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn read_pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.reader.clone(), namespace)
    }

    async fn run(&self, pod: Pod, job: Job) -> Result<(), DrainError> {
        let r = PodRef::of(&pod);
        let how = match job {
            Job::Await => Gone::Awaited,
            Job::DeleteCompleted => {
                if !self.delete(&r).await? {
                    self.on_node.remove(&r.uid);
                    self.done(r, Gone::Vanished);
                    return Ok(());
                }
                Gone::DeletedCompleted
            }
            Job::Evict => match self.evict_until_accepted(&pod).await? {
                Some(how) => how,
                None => {
                    self.on_node.remove(&r.uid);
                    self.done(r, Gone::Vanished);
                    return Ok(());
                }
            },
        };
        self.on_node.gone(&r.uid).await;
        self.done(r, how);
        Ok(())
    }

    /// Posts the eviction until the API accepts it. `None`: the pod was
    /// already gone.
    async fn evict_until_accepted(&self, pod: &Pod) -> Result<Option<Gone>, DrainError> {
        let r = PodRef::of(pod);
        let mut blocked_since: Option<Instant> = None;
        let mut backoff = Backoff::new(self.opts.retry_interval);
        loop {
            // The budgets' state this attempt is based on.
            let seen = self.budgets.covering(pod);
            let err = match self.post_eviction(&r).await {
                Ok(()) => {
                    info!(node = self.node, pod = %r, "pod {r} evicted");
                    return Ok(Some(Gone::Evicted));
                }
                Err(e) => e,
            };
            let retry = match classify_eviction_error(&err) {
                EvictionError::NotFound => return Ok(None),
                EvictionError::Budget(message) => {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    self.budgets.refused(&seen);
                    self.budgets.ready(self.opts.retry_interval).await;
                    let covering = self.budgets.covering(pod);
                    let pdbs: Vec<String> = covering.iter().map(|((_, n), _)| n.clone()).collect();
                    if self.block(
                        &r,
                        BlockReason::DisruptionBudget {
                            pdbs: pdbs.clone(),
                            message: message.clone(),
                        },
                    ) {
                        warn!(node = self.node, pod = %r, pdbs = ?pdbs, api_message = %message,
                            "eviction of {r} blocked by a disruption budget, retrying: {message}");
                    }
                    let force_at = self
                        .opts
                        .delete_pdb_blocked_after
                        .map(|after| since + after);
                    if let Some(at) = force_at
                        && Instant::now() >= at
                        && !pdbs.is_empty()
                    {
                        warn!(node = self.node, pod = %r, pdbs = ?pdbs,
                            blocked_for = ?since.elapsed(),
                            "deleting pod whose disruption budget blocked it too long");
                        if !self.delete(&r).await? {
                            return Ok(None);
                        }
                        return Ok(Some(Gone::DeletedPdbBlocked(ForcedDeletion {
                            pod: r,
                            pdbs,
                            blocked_for: since.elapsed(),
                        })));
                    }
                    if covering.is_empty() {
                        Retry::Backoff
                    } else {
                        Retry::Budget(covering.into_iter().map(|(k, _)| k).collect(), force_at)
                    }
                }
                EvictionError::Throttled(message) => {
                    self.block(&r, BlockReason::Throttled { message });
                    Retry::Backoff
                }
                EvictionError::NamespaceTerminating => {
                    if self.block(&r, BlockReason::NamespaceTerminating) {
                        warn!(node = self.node, pod = %r, "namespace terminating; waiting for the pod to be marked deleted");
                    }
                    match self.read_pods(&r.namespace).get_opt(&r.name).await {
                        Ok(None) => return Ok(None),
                        Ok(Some(p)) if p.uid().as_deref() != Some(r.uid.as_str()) => {
                            return Ok(None);
                        }
                        Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => {
                            return Ok(Some(Gone::Awaited));
                        }
                        _ => {}
                    }
                    Retry::After(self.opts.retry_interval)
                }
                EvictionError::Transient(message) => {
                    if self.block(
                        &r,
                        BlockReason::ApiError {
                            message: message.clone(),
                        },
                    ) {
                        warn!(node = self.node, pod = %r, api_message = %message, "eviction of {r} failed, retrying: {message}");
                    }
                    Retry::Backoff
                }
                EvictionError::Fatal { code, message } => {
                    return Err(DrainError::Evict {
                        pod: r,
                        code,
                        message,
                    });
                }
            };
            match retry {
                Retry::Backoff => tokio::time::sleep(backoff.next()).await,
                Retry::After(d) => tokio::time::sleep(d).await,
                Retry::Budget(keys, until) => self.budgets.take(&keys, until).await,
            }
        }
    }

    async fn post_eviction(&self, pod: &PodRef) -> Result<(), kube::Error> {
        let request = eviction_request(pod)
            .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
        let _slot = self.posts.acquire().await;
        self.client.request_text(request).await.map(|_| ())
    }

    /// Deletes a pod, only if it still has its UID. `false`: already gone.
    async fn delete(&self, pod: &PodRef) -> Result<bool, DrainError> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let result = {
            let _slot = self.posts.acquire().await;
            self.pods(&pod.namespace).delete(&pod.name, &dp).await
        };
        match result {
            Ok(_) => {
                info!(node = self.node, pod = %pod, "pod deleted");
                Ok(true)
            }
            // 409: the UID precondition failed, so our pod is gone.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(source) => Err(DrainError::Delete {
                pod: pod.clone(),
                source,
            }),
        }
    }
}

/// The policy/v1 Eviction POST for `pod`, refused (409) if the pod with that
/// name is no longer the one we planned for (a replacement took the name).
///
/// Not kube's `Api::evict`: kube-core 5's `Request::evict` posts the body
/// `{"delete_options": .., "metadata": ..}`, a snake-case key the
/// Eviction type does not have (`deleteOptions`). The API server drops the
/// unknown field, so the UID precondition is silently lost and the eviction
/// goes to whichever pod has the name. tests/controlplane.rs proves both
/// against a real kube-apiserver (`stale_evictions`).
pub fn eviction_request(pod: &PodRef) -> Result<http::Request<Vec<u8>>, http::Error> {
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": { "name": pod.name, "namespace": pod.namespace },
        "deleteOptions": { "preconditions": { "uid": pod.uid } },
    });
    http::Request::post(format!(
        "/api/v1/namespaces/{}/pods/{}/eviction",
        pod.namespace, pod.name
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).unwrap_or_default())
}

/// What an eviction failure means for the loop.
#[derive(Debug, PartialEq, Eq)]
enum EvictionError {
    NotFound,
    Budget(String),
    Throttled(String),
    NamespaceTerminating,
    Transient(String),
    Fatal { code: u16, message: String },
}

fn classify_eviction_error(err: &kube::Error) -> EvictionError {
    match err {
        kube::Error::Api(s) => classify_status(s),
        // Transport and decoding trouble: the API server may come back.
        other => EvictionError::Transient(other.to_string()),
    }
}

fn classify_status(s: &Status) -> EvictionError {
    let causes: Vec<_> = s.details.iter().flat_map(|d| d.causes.iter()).collect();
    match s.code {
        404 => EvictionError::NotFound,
        429 => {
            let budget = causes.iter().any(|c| c.reason == "DisruptionBudget")
                || s.message.to_lowercase().contains("disruption budget");
            let mut message = s.message.clone();
            for c in &causes {
                if !c.message.is_empty() {
                    message = format!("{message} {}", c.message);
                }
            }
            if budget {
                EvictionError::Budget(message)
            } else {
                EvictionError::Throttled(message)
            }
        }
        403 if causes.iter().any(|c| c.reason == "NamespaceTerminating") => {
            EvictionError::NamespaceTerminating
        }
        code if code >= 500 => EvictionError::Transient(format!("{code}: {}", s.message)),
        code => EvictionError::Fatal {
            code,
            message: s.message.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
            "status": {"phase": "Running"}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).expect("valid pod")
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn owned_by(kind: &str) -> serde_json::Value {
        json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": kind, "name": "o", "uid": "o1", "controller": true}
        ]}})
    }

    const STRICT: DrainRules = DrainRules {
        delete_emptydir_data: false,
        evict_unmanaged: false,
    };
    const LENIENT: DrainRules = DrainRules {
        delete_emptydir_data: true,
        evict_unmanaged: true,
    };

    #[test]
    fn daemonset_and_mirror_pods_are_skipped_even_when_strict() {
        let ds = pod(owned_by("DaemonSet"));
        assert_eq!(
            classify(&ds, &STRICT),
            PodAction::Skip(SkipReason::DaemonSet)
        );
        let mirror = pod(json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "abc"}}}));
        assert_eq!(
            classify(&mirror, &STRICT),
            PodAction::Skip(SkipReason::Mirror)
        );
        assert_eq!(
            classify(&mirror, &LENIENT),
            PodAction::Skip(SkipReason::Mirror)
        );
    }

    #[test]
    fn replicaset_pod_is_evicted() {
        assert_eq!(
            classify(&pod(owned_by("ReplicaSet")), &STRICT),
            PodAction::Evict
        );
    }

    #[test]
    fn non_controller_owner_counts_as_unmanaged() {
        let p = pod(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "o1"}
        ]}}));
        assert_eq!(
            classify(&p, &STRICT),
            PodAction::Refuse(vec![RefuseReason::Unmanaged])
        );
    }

    #[test]
    fn emptydir_and_unmanaged_refused_unless_configured() {
        let p = pod(json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}));
        assert_eq!(
            classify(&p, &STRICT),
            PodAction::Refuse(vec![RefuseReason::EmptyDir, RefuseReason::Unmanaged])
        );
        assert_eq!(classify(&p, &LENIENT), PodAction::Evict);
        let only_emptydir = DrainRules {
            delete_emptydir_data: true,
            evict_unmanaged: false,
        };
        assert_eq!(
            classify(&p, &only_emptydir),
            PodAction::Refuse(vec![RefuseReason::Unmanaged])
        );
    }

    #[test]
    fn terminating_and_completed_pods() {
        let t = pod(json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}));
        assert_eq!(classify(&t, &STRICT), PodAction::AwaitTermination);
        for phase in ["Succeeded", "Failed"] {
            let done = pod(
                json!({"status": {"phase": phase}, "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
            );
            assert_eq!(classify(&done, &STRICT), PodAction::DeleteCompleted);
        }
        // A terminating DaemonSet pod is still a DaemonSet pod.
        let mut ds = owned_by("DaemonSet");
        merge(
            &mut ds,
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
        );
        assert_eq!(
            classify(&pod(ds), &STRICT),
            PodAction::Skip(SkipReason::DaemonSet)
        );
    }

    #[test]
    fn plan_sorts_pods() {
        let mut a = owned_by("ReplicaSet");
        merge(&mut a, json!({"metadata": {"name": "a"}}));
        let mut b = owned_by("DaemonSet");
        merge(&mut b, json!({"metadata": {"name": "b"}}));
        let c = json!({"metadata": {"name": "c"}});
        let p = plan(&[pod(a), pod(b), pod(c)], &STRICT);
        assert_eq!(
            p.evict.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0.name, "c");
        assert_eq!(p.to_remove(), 1);
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]
        .into();
        let sel = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).expect("selector")
        };
        assert!(selector_matches(&sel(json!({})), &labels));
        assert!(selector_matches(
            &sel(json!({"matchLabels": {"app": "web"}})),
            &labels
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"app": "db"}})),
            &labels
        ));
        assert!(selector_matches(
            &sel(
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]})
            ),
            &labels
        ));
        assert!(!selector_matches(
            &sel(
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]})
            ),
            &labels
        ));
        assert!(selector_matches(
            &sel(json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]})),
            &labels
        ));
        assert!(!selector_matches(
            &sel(json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]})),
            &labels
        ));
        assert!(!selector_matches(
            &sel(json!({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]})),
            &labels
        ));
    }

    #[test]
    fn exhausted_budgets_are_found() {
        let p = pod(json!({"metadata": {"labels": {"app": "web"}}}));
        let pdb = |name: &str, ns: &str, allowed: i32| -> PodDisruptionBudget {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": "web"}}},
                "status": {"disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
            }))
            .expect("pdb")
        };
        let no_selector: PodDisruptionBudget = serde_json::from_value(
            json!({"metadata": {"name": "none", "namespace": "ns"}, "spec": {}}),
        )
        .expect("pdb");
        let pdbs = [
            pdb("full", "ns", 0),
            pdb("ok", "ns", 1),
            pdb("other", "elsewhere", 0),
            no_selector,
        ];
        let covering: Vec<_> = pdbs
            .iter()
            .filter(|b| pdb_covers(b, &p))
            .map(|b| b.metadata.name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(covering, ["full", "ok"]);
    }

    #[test]
    fn eviction_errors() {
        let status =
            |v: serde_json::Value| -> Status { serde_json::from_value(v).expect("status") };
        assert_eq!(
            classify_status(&status(json!({"code": 404, "message": "not found"}))),
            EvictionError::NotFound
        );
        let pdb = status(json!({
            "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}]}
        }));
        match classify_status(&pdb) {
            EvictionError::Budget(m) => assert!(m.contains("web needs 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_status(&status(json!({"code": 429, "message": "slow down"}))),
            EvictionError::Throttled(_)
        ));
        assert_eq!(
            classify_status(&status(json!({"code": 403, "message": "forbidden",
                "details": {"causes": [{"reason": "NamespaceTerminating"}]}}))),
            EvictionError::NamespaceTerminating
        );
        assert!(matches!(
            classify_status(&status(json!({"code": 403, "message": "RBAC says no"}))),
            EvictionError::Fatal { code: 403, .. }
        ));
        assert!(matches!(
            classify_status(&status(json!({"code": 503, "message": "etcd"}))),
            EvictionError::Transient(_)
        ));
    }

    #[test]
    fn errors_are_classified() {
        let refused = DrainError::Refused {
            node: "n1".into(),
            pods: vec![],
        };
        assert_eq!(refused.class(), ErrorClass::Permanent);
        let evict = DrainError::Evict {
            pod: PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            code: 403,
            message: "forbidden".into(),
        };
        assert_eq!(evict.class(), ErrorClass::Permanent);
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                serde_json::from_value::<Status>(json!({"code": code, "message": "m"})).unwrap(),
            ))
        };
        let list = |code| DrainError::ListPods {
            node: "n1".into(),
            source: api(code),
        };
        assert_eq!(list(503).class(), ErrorClass::Transient);
        assert_eq!(list(429).class(), ErrorClass::Transient);
        assert_eq!(list(403).class(), ErrorClass::Permanent);
        assert_eq!(list(409).class(), ErrorClass::Transient);
        let lost = DrainError::LeaseLost {
            node: "n1".into(),
            slot: "s".into(),
            holder: "n2".into(),
        };
        assert_eq!(lost.class(), ErrorClass::LeaseLost);
        assert!(lost.to_string().contains("lease s lost to n2"));
    }

    #[test]
    fn report_reads_as_a_sentence() {
        let p = |n: &str| PodRef {
            namespace: "default".into(),
            name: n.into(),
            uid: "u".into(),
        };
        let report = DrainReport {
            evicted: vec![p("web-1"), p("web-2")],
            deleted_pdb_blocked: vec![ForcedDeletion {
                pod: p("db-0"),
                pdbs: vec!["db".into()],
                blocked_for: Duration::from_secs(300),
            }],
            elapsed: Duration::from_millis(61_500),
            ..DrainReport::default()
        };
        let text = report.to_string();
        assert_eq!(
            text,
            "2 evicted (default/web-1, default/web-2), 1 DELETED despite a disruption budget: default/db-0 (budget db allowed no disruption for 5m) in 1m 1s"
        );
    }

    #[test]
    fn backoff_stays_within_its_bounds_and_spreads() {
        let cap = Duration::from_secs(5);
        let mut b = Backoff::new(cap);
        let waits: Vec<Duration> = (0..200).map(|_| b.next()).collect();
        assert!(waits.iter().all(|d| *d >= b.base && *d <= cap), "{waits:?}");
        // Not lock-step: the waits differ.
        let distinct: BTreeSet<u128> = waits.iter().map(Duration::as_micros).collect();
        assert!(distinct.len() > 100, "{}", distinct.len());
        b.reset();
        assert!(b.next() <= b.base * 3);
    }

    fn budget(allowed: i32, healthy: i32) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": healthy, "desiredHealthy": 2, "expectedPods": 3}
        }))
        .expect("pdb")
    }

    #[tokio::test]
    async fn budget_waiters_take_the_allowed_disruptions_and_wake_on_a_new_status() {
        let b = Budgets::new(Duration::from_secs(600));
        b.view.send_modify(|v| {
            v.ready = true;
            v.upsert(budget(1, 3));
        });
        let web = pod(json!({"metadata": {"labels": {"app": "web"}}}));
        let seen = b.covering(&web);
        assert_eq!(seen.len(), 1);
        let keys = vec![seen[0].0.clone()];
        let soon = || Some(Instant::now() + Duration::from_millis(50));

        // One disruption allowed: one waiter goes at once...
        let t = Instant::now();
        b.take(&keys, None).await;
        assert!(t.elapsed() < Duration::from_millis(40));
        // ...the next one waits (here until its deadline).
        let t = Instant::now();
        b.take(&keys, soon()).await;
        assert!(t.elapsed() >= Duration::from_millis(50));

        // A new status allowing one wakes a waiter at once.
        let t = Instant::now();
        tokio::join!(
            b.take(&keys, Some(Instant::now() + Duration::from_secs(5))),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.view.send_if_modified(|v| v.upsert(budget(1, 2)));
            }
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        // The same status again changes nothing.
        assert!(!b.view.send_if_modified(|v| v.upsert(budget(1, 2))));

        // A refusal under a status spends what was left of it; a newer
        // status keeps its own permits.
        b.view.send_if_modified(|v| v.upsert(budget(2, 3)));
        let before = b.covering(&web);
        b.refused(&before);
        let t = Instant::now();
        b.take(&keys, soon()).await;
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "refused status kept a permit"
        );
        b.view.send_if_modified(|v| v.upsert(budget(2, 4)));
        b.refused(&before);
        let t = Instant::now();
        b.take(&keys, soon()).await;
        assert!(
            t.elapsed() < Duration::from_millis(40),
            "a stale refusal spent a new permit"
        );
    }

    #[test]
    fn refusal_error_lists_pods() {
        let e = DrainError::Refused {
            node: "n1".into(),
            pods: vec![(
                PodRef {
                    namespace: "ns".into(),
                    name: "p".into(),
                    uid: "u".into(),
                },
                vec![RefuseReason::EmptyDir],
            )],
        };
        let text = e.to_string();
        assert!(text.contains("ns/p uses emptyDir"), "{text}");
    }
}
