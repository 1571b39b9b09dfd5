//! Telling people and machines what drydock is doing. The agent sends
//! [`Notice`]s to one [`Reporter`], which fans them out to: systemd (STATUS=,
//! READY=1, WATCHDOG=1, STOPPING=1), Prometheus metrics (node-exporter
//! textfile and optional HTTP), Slack / generic webhooks, and Kubernetes
//! Events plus node annotations.
//!
//! Reporting never blocks or fails the agent: [`Reporter::notice`] is
//! synchronous and cheap; everything slow runs in background tasks behind
//! bounded queues. Call [`Reporter::flush`] before rebooting so the last
//! words leave the machine.

pub(crate) mod counters;
pub(crate) mod events;
pub(crate) mod metrics;
pub(crate) mod metrics_http;
pub(crate) mod notice;
pub(crate) mod notify;
pub(crate) mod publish;
pub(crate) mod sd_notify;
pub(crate) mod textfile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

pub(crate) use counters::Counters;
pub use events::REASON_ANNOTATION;
pub use events::STATE_ANNOTATION;
pub(crate) use metrics::Metrics;
pub use notice::BlockedGate;
pub(crate) use notice::EventSpec;
pub use notice::Notice;
pub(crate) use notice::Phase;
pub use notice::PhaseDurations;
pub(crate) use notice::View;
pub use notify::RetryPolicy;

use crate::cluster::node::kubelet_version;
use crate::config::{Settings, Window};
use events::NodeEvents;
use notify::Receiver;
use sd_notify::SystemdNotifier;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("listening for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
}

/// Queue depth for webhook posts and Kubernetes writes; beyond it notices are
/// dropped (and logged) rather than slowing the agent.
const QUEUE: usize = 64;

/// How often the node republishes its report although nothing changed, so
/// `drydock cluster status` can tell a running daemon from a dead one.
pub(crate) const REPUBLISH_EVERY: Duration = Duration::from_secs(300);

/// Drain progress alone is republished at most this often.
const WORDS_REPUBLISH_MIN: Duration = Duration::from_secs(5);

/// The heartbeat rewrites the metrics textfile at most this often.
const HEARTBEAT_WRITE_EVERY: Duration = Duration::from_secs(10);

enum Job<T> {
    Do(T),
    Flush(oneshot::Sender<()>),
}

struct KubeJob {
    event: Option<(EventSpec, Timestamp)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the Reporter and its workers.
struct Shared {
    node: String,
    view: Mutex<View>,
    counters: Mutex<Counters>,
    metrics: Arc<Mutex<Metrics>>,
    systemd: SystemdNotifier,
    last_event: Mutex<Option<EventSpec>>,
    last_notified: Mutex<Option<Notice>>,
    /// The agent's own one-line summary; once set, it is systemd's STATUS=
    /// (so STATUS= and `drydock status` say the same words).
    agent_line: Mutex<Option<String>>,
    /// This node's maintenance windows (published: the next one).
    windows: Vec<Window>,
    republish_every: Mutex<Duration>,
    last_beat_write: Mutex<Option<Instant>>,
}

impl Shared {
    fn node_report(&self, now: Timestamp) -> crate::cluster::node::NodeReport {
        let view = lock(&self.view).clone();
        let counters = lock(&self.counters).clone();
        let line = lock(&self.agent_line).clone();
        publish::node_report(&view, line.as_deref(), &counters, &self.windows, now)
    }
}

type NotifyQueue = mpsc::Sender<Job<(Notice, Timestamp)>>;

struct Queues {
    disk: mpsc::Sender<Job<()>>,
    /// One queue per receiver: a dead one fills only its own.
    notify: Vec<(Receiver, NotifyQueue)>,
    kube: Option<mpsc::Sender<Job<KubeJob>>>,
}

/// The reporting fan-out. Cheap to clone; all clones report to the same sinks.
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
    queues: Arc<Mutex<Option<Queues>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    metrics_addr: Option<SocketAddr>,
}

impl Reporter {
    /// Starts the sinks configured in `settings.report` for node `node`.
    /// `client` is needed for Events and annotations (`None`: skipped).
    /// Counters continue from the state store (`settings.node.state_db`).
    /// Fails only when the metrics listen address cannot be bound.
    pub async fn start(
        settings: &Settings,
        node: &str,
        client: Option<kube::Client>,
    ) -> Result<Reporter, ReportError> {
        Reporter::start_with(settings, node, client, RetryPolicy::default()).await
    }

    /// [`Reporter::start`] with an explicit webhook retry policy (tests).
    pub async fn start_with(
        settings: &Settings,
        node: &str,
        client: Option<kube::Client>,
        retry: RetryPolicy,
    ) -> Result<Reporter, ReportError> {
        let report = &settings.report;
        let state_db = settings.node.state_db.clone();
        let counters = Counters::load(&state_db).unwrap_or_else(|e| {
            warn!(error = %e, "reading saved report counters; starting from zero");
            Counters::default()
        });
        let mut metrics = Metrics::new(&counters);
        metrics.set_node(node);
        let shared = Arc::new(Shared {
            node: node.to_string(),
            view: Mutex::new(View::default()),
            metrics: Arc::new(Mutex::new(metrics)),
            counters: Mutex::new(counters),
            systemd: SystemdNotifier::new(),
            last_event: Mutex::new(None),
            last_notified: Mutex::new(None),
            agent_line: Mutex::new(None),
            windows: settings.maintenance.windows.clone(),
            republish_every: Mutex::new(REPUBLISH_EVERY),
            last_beat_write: Mutex::new(None),
        });
        let mut tasks = Vec::new();

        let mut metrics_addr = None;
        if let Some(addr) = report.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ReportError::Bind { addr, source })?;
            metrics_addr = listener.local_addr().ok();
            tasks.push(metrics_http::serve(listener, shared.metrics.clone()));
        }

        let (disk_tx, disk_rx) = mpsc::channel(4);
        tasks.push(tokio::spawn(disk_worker(
            shared.clone(),
            disk_rx,
            report.textfile_dir.clone(),
            state_db,
        )));

        let notify = notify::receivers(node, report, retry)?
            .into_iter()
            .map(|receiver| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tasks.push(tokio::spawn(notify_worker(receiver.clone(), rx)));
                (receiver, tx)
            })
            .collect();

        let kube = client.map(|client| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let sink = NodeEvents::new(client, node);
            tasks.push(tokio::spawn(kube_worker(
                shared.clone(),
                sink,
                rx,
                report.kubernetes_events,
            )));
            tx
        });

        if let Some(every) = SystemdNotifier::watchdog_interval() {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    SystemdNotifier::watchdog();
                }
            }));
        }

        let reporter = Reporter {
            shared,
            queues: Arc::new(Mutex::new(Some(Queues {
                disk: disk_tx,
                notify,
                kube,
            }))),
            tasks: Arc::new(Mutex::new(tasks)),
            metrics_addr,
        };
        reporter.kick_disk();
        Ok(reporter)
    }

    /// Starts Kubernetes Events and node annotations for a reporter started
    /// without a client (the node had not joined yet). No-op if it has one.
    pub(crate) fn attach_kube(&self, client: kube::Client, events_enabled: bool) {
        let mut queues = lock(&self.queues);
        let Some(q) = queues.as_mut() else { return };
        if q.kube.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = NodeEvents::new(client, &self.shared.node);
        lock(&self.tasks).push(tokio::spawn(kube_worker(
            self.shared.clone(),
            sink,
            rx,
            events_enabled,
        )));
        q.kube = Some(tx);
        drop(queues);
        self.kick_kube(None);
    }

    /// The address `/metrics` is served on (resolves port 0), if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Tells systemd the daemon is up (READY=1 with the current status) and
    /// publishes the current state. Call once, after the agent has restored
    /// its state and sent the notice for it.
    pub fn ready(&self) {
        let line = self.status_line();
        self.shared.systemd.ready(&line);
        self.kick_disk();
        self.kick_kube(None);
    }

    /// Reports one notice. Never blocks on I/O, never fails.
    pub fn notice(&self, notice: Notice) {
        self.report(notice, true);
    }

    /// Reports something this node only saw, not did (another node's fleet
    /// halt): state, metrics and STATUS, but no Event and no webhook, so a
    /// 200-node fleet does not post the same news 200 times.
    pub(crate) fn observed(&self, notice: Notice) {
        self.report(notice, false);
    }

    fn report(&self, notice: Notice, announce: bool) {
        let now = Timestamp::now();
        let (changed, view, before) = {
            let mut view = lock(&self.shared.view);
            let before = view.phase;
            let changed = view.apply(&notice);
            (changed, view.clone(), before)
        };
        let counters_changed = lock(&self.shared.counters).apply(&notice, now);
        {
            let mut m = lock(&self.shared.metrics);
            m.apply(&notice, now);
            m.set_evictions_retried(crate::cluster::drain::eviction_retries());
            if counters_changed {
                m.sync_counters(&lock(&self.shared.counters));
            }
        }
        debug!(notice = notice.kind(), phase = %view.phase, summary = %notice.summary(), "report");
        if changed && lock(&self.shared.agent_line).is_none() {
            self.shared.systemd.status(&view.status_line());
        }
        self.kick_disk();

        // "Up to date" is news after a maintenance, not at every start.
        let repeated_idle = matches!(notice, Notice::Idle) && before == Phase::Idle;
        let event = notice
            .event()
            .filter(|_| announce && !repeated_idle)
            .filter(|spec| {
                let mut last = lock(&self.shared.last_event);
                let fresh = last.as_ref() != Some(spec);
                *last = Some(spec.clone());
                fresh
            });
        if changed || event.is_some() {
            self.kick_kube(event.map(|e| (e, now)));
        }

        if announce && !repeated_idle {
            let targets: Vec<_> = self
                .queue(|q| {
                    Some(
                        q.notify
                            .iter()
                            .filter(|(r, _)| r.wants(&notice))
                            .map(|(r, tx)| (r.describe(), tx.clone()))
                            .collect(),
                    )
                })
                .unwrap_or_default();
            let fresh = !targets.is_empty() && {
                let mut last = lock(&self.shared.last_notified);
                let fresh = last.as_ref() != Some(&notice);
                *last = Some(notice.clone());
                fresh
            };
            if fresh {
                for (receiver, q) in targets {
                    if q.try_send(Job::Do((notice.clone(), now))).is_err() {
                        warn!(
                            event = notice.kind(),
                            receiver = %receiver,
                            "notification queue full (the receiver is slow or down); dropping notification"
                        );
                    }
                }
            }
        }
    }

    /// Publishes the agent's one-line summary as systemd's STATUS= (sent
    /// only when it changes). From then on it replaces the line derived
    /// from notices.
    pub fn status(&self, line: &str) {
        let line = notice::status_text(line);
        let changed = lock(&self.shared.agent_line).replace(line.clone()) != Some(line.clone());
        self.shared.systemd.status(&line);
        if changed {
            self.kick_kube(None);
        }
    }

    /// The agent is alive: called once per loop of the agent. Moves the
    /// heartbeat metric (textfile rewritten at most every few seconds) and
    /// republishes the node's report when it is due.
    pub fn heartbeat(&self) {
        {
            let mut m = lock(&self.shared.metrics);
            m.heartbeat(Timestamp::now());
            m.set_evictions_retried(crate::cluster::drain::eviction_retries());
        }
        let write = {
            let mut last = lock(&self.shared.last_beat_write);
            let due = last.is_none_or(|t| t.elapsed() >= HEARTBEAT_WRITE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if write {
            self.kick_disk();
            self.kick_kube(None);
        }
    }

    /// How often the node's report is republished unchanged (tests shorten it).
    pub fn set_republish_every(&self, every: Duration) {
        *lock(&self.shared.republish_every) = every;
    }

    /// The kubelet version on this node and the cluster's target, when known
    /// (the upgrade code sets them; the kubelet version is also read back
    /// from the Node whenever the report is published).
    pub fn kubernetes_versions(&self, current: Option<&str>, target: Option<&str>) {
        lock(&self.shared.metrics).set_kubernetes_versions(current, target);
        self.kick_disk();
    }

    /// When drydock's own client certificate expires (`None`: it has none).
    pub fn certificate_expiry(&self, expiry: Option<Timestamp>) {
        lock(&self.shared.metrics).set_certificate_expiry(expiry);
        self.kick_disk();
    }

    /// The report this node publishes on its Node object, as of now.
    pub fn node_report(&self) -> crate::cluster::node::NodeReport {
        self.shared.node_report(Timestamp::now())
    }

    /// Publishes the outcome of a dpkg hold reconciliation as metrics:
    /// `Some((held by drydock, held by an admin))`, or `None` when it failed.
    pub fn holds(&self, held: Option<(usize, usize)>) {
        lock(&self.shared.metrics).set_holds(held);
        self.kick_disk();
    }

    /// The line systemd shows (also useful for logs and `drydock status`).
    pub fn status_line(&self) -> String {
        match lock(&self.shared.agent_line).as_ref() {
            Some(line) => line.clone(),
            None => lock(&self.shared.view).status_line(),
        }
    }

    /// The current phase and words.
    pub(crate) fn view(&self) -> View {
        lock(&self.shared.view).clone()
    }

    /// The totals as they stand (also persisted by the reporter itself).
    pub fn counters(&self) -> Counters {
        lock(&self.shared.counters).clone()
    }

    /// Classic Prometheus text of the current metrics.
    #[cfg(test)]
    pub(crate) fn metrics_text(&self) -> String {
        lock(&self.shared.metrics).prometheus_text()
    }

    /// Waits until everything reported so far was written/posted, at most
    /// `timeout`. Returns false if it gave up. Call right before rebooting.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some((disk, notify, kube)) = self.queue(|q| {
            let notify: Vec<_> = q.notify.iter().map(|(_, tx)| tx.clone()).collect();
            Some((q.disk.clone(), notify, q.kube.clone()))
        }) else {
            return true;
        };
        let wait = async {
            let mut acks = Vec::new();
            let (tx, rx) = oneshot::channel();
            if disk.send(Job::Flush(tx)).await.is_ok() {
                acks.push(rx);
            }
            for q in notify {
                let (tx, rx) = oneshot::channel();
                if q.send(Job::Flush(tx)).await.is_ok() {
                    acks.push(rx);
                }
            }
            if let Some(q) = kube {
                let (tx, rx) = oneshot::channel();
                if q.send(Job::Flush(tx)).await.is_ok() {
                    acks.push(rx);
                }
            }
            for ack in acks {
                let _ = ack.await;
            }
        };
        let done = tokio::time::timeout(timeout, wait).await.is_ok();
        if !done {
            warn!(timeout = ?timeout, "reporting did not finish in time");
        }
        done
    }

    /// STOPPING=1, then flushes (at most `timeout`) and stops the workers.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.systemd.stopping();
        self.flush(timeout).await;
        // Closing the queues ends the workers; abort what still runs.
        lock(&self.queues).take();
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    fn queue<T>(&self, pick: impl FnOnce(&Queues) -> Option<T>) -> Option<T> {
        lock(&self.queues).as_ref().and_then(pick)
    }

    fn kick_disk(&self) {
        if let Some(q) = self.queue(|q| Some(q.disk.clone())) {
            // Full means a write is already pending; it will see this state too.
            let _ = q.try_send(Job::Do(()));
        }
    }

    fn kick_kube(&self, event: Option<(EventSpec, Timestamp)>) {
        if let Some(q) = self.queue(|q| q.kube.clone()) {
            let reason = event.as_ref().map(|(e, _)| e.reason);
            // A full queue without an event loses nothing: the queued jobs
            // publish the latest report anyway.
            if q.try_send(Job::Do(KubeJob { event })).is_err()
                && let Some(reason) = reason
            {
                warn!(
                    event = reason,
                    "Kubernetes event queue full; dropping event"
                );
            }
        }
    }
}

/// Takes one job and whatever else is already queued.
async fn batch<T>(rx: &mut mpsc::Receiver<Job<T>>) -> Option<(Vec<T>, Vec<oneshot::Sender<()>>)> {
    let first = rx.recv().await?;
    let (mut work, mut flushes) = (Vec::new(), Vec::new());
    let mut take = |job| match job {
        Job::Do(w) => work.push(w),
        Job::Flush(tx) => flushes.push(tx),
    };
    take(first);
    while let Ok(job) = rx.try_recv() {
        take(job);
    }
    Some((work, flushes))
}

/// Writes the textfile and saves changed counters; coalesces bursts.
async fn disk_worker(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job<()>>,
    textfile_dir: Option<PathBuf>,
    state_db: PathBuf,
) {
    let mut saved = lock(&shared.counters).clone();
    let mut warned = false;
    // One store handle for the worker's life, not one open per save: each
    // open reads the file's header through a file descriptor of its own,
    // and closing that descriptor drops every POSIX lock this process holds
    // on the database (SQLite's other connections in the daemon included).
    let store: Arc<Mutex<Option<crate::store::Store>>> = Arc::new(Mutex::new(None));
    while let Some((work, flushes)) = batch(&mut rx).await {
        if !work.is_empty() {
            let text = lock(&shared.metrics).prometheus_text();
            let counters = lock(&shared.counters).clone();
            let save = (counters != saved).then(|| counters.clone());
            let dir = textfile_dir.clone();
            let db = state_db.clone();
            let store = store.clone();
            let result = tokio::task::spawn_blocking(move || {
                let text_result = dir.map(|d| textfile::write(&d, &text));
                let save_result = save.map(|c| {
                    let mut handle = lock(&store);
                    if handle.is_none() {
                        *handle = Some(crate::store::Store::open(&db)?);
                    }
                    let result = c.save_to(handle.as_ref().expect("opened above"));
                    if result.is_err() {
                        // Reopened (and checked) on the next save.
                        *handle = None;
                    }
                    result
                });
                (text_result, save_result)
            })
            .await;
            match result {
                Ok((text_result, save_result)) => {
                    if let Some(Err(e)) = text_result {
                        if warned {
                            debug!(error = %e, "metrics textfile not written");
                        } else {
                            warn!(error = %e, "metrics textfile not written");
                            warned = true;
                        }
                    }
                    match save_result {
                        Some(Ok(())) => saved = counters,
                        Some(Err(e)) => warn!(error = %e, "saving report counters failed: {e}"),
                        None => {}
                    }
                }
                Err(e) => warn!(error = %e, "metrics writer task failed"),
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

async fn notify_worker(receiver: Receiver, mut rx: mpsc::Receiver<Job<(Notice, Timestamp)>>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Do((notice, at)) => {
                // Failures are logged (host only) inside.
                let _ = receiver.send(&notice, at).await;
            }
            Job::Flush(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// Creates events in order; publishes the node's report once per batch,
/// from the view as it is then (the latest state wins), when it changed or
/// when the last publication is older than the republish period.
async fn kube_worker(
    shared: Arc<Shared>,
    mut sink: NodeEvents,
    mut rx: mpsc::Receiver<Job<KubeJob>>,
    events_enabled: bool,
) {
    let mut published: Option<(crate::cluster::node::NodeReport, Instant)> = None;
    // Drain progress held back: published by this time even if nothing
    // else comes.
    let mut deferred: Option<tokio::time::Instant> = None;
    loop {
        let next = match deferred {
            Some(deadline) => tokio::select! {
                b = batch(&mut rx) => b,
                _ = tokio::time::sleep_until(deadline) => {
                    Some((vec![KubeJob { event: None }], Vec::new()))
                }
            },
            None => batch(&mut rx).await,
        };
        let Some((work, flushes)) = next else {
            break;
        };
        if events_enabled {
            for (spec, at) in work.iter().filter_map(|j| j.event.as_ref()) {
                if let Err(e) = sink.record(spec, at.to_owned()).await {
                    warn!(error = %e, "Kubernetes event not recorded");
                }
            }
        }
        if !work.is_empty() {
            let report = shared.node_report(Timestamp::now());
            // Compared without the publication time.
            let key = crate::cluster::node::NodeReport {
                reported_at: Timestamp::UNIX_EPOCH,
                ..report.clone()
            };
            let every = *lock(&shared.republish_every);
            // Any change goes out at once, except drain progress (one per
            // evicted pod): at most every few seconds, so a big drain is
            // not a Node write per pod.
            let due = published.as_ref().is_none_or(|(last, at)| {
                let progress_only = last.state == key.state
                    && key.state == crate::phase::Phase::Draining.as_str()
                    && (&last.slot, &last.step, &last.blocked_by)
                        == (&key.slot, &key.step, &key.blocked_by);
                (*last != key && (!progress_only || at.elapsed() >= WORDS_REPUBLISH_MIN))
                    || at.elapsed() >= every
            });
            deferred = match (&published, due) {
                (Some((last, at)), false) if *last != key => {
                    Some(tokio::time::Instant::from_std(*at + WORDS_REPUBLISH_MIN))
                }
                _ => None,
            };
            if due {
                match sink.publish(&report).await {
                    Ok(node) => {
                        published = Some((key, Instant::now()));
                        if let Some(v) = kubelet_version(&node) {
                            lock(&shared.metrics).set_kubernetes_versions(Some(v), None);
                        }
                    }
                    Err(e) => {
                        warn!(node = %shared.node, error = %e, "node report not published")
                    }
                }
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
