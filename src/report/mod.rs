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

pub mod counters;
pub mod events;
pub mod metrics;
pub mod metrics_http;
pub mod notice;
pub mod notify;
pub mod sd_notify;
pub mod textfile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

pub use counters::{COUNTERS_KEY, Counters};
pub use events::{REASON_ANNOTATION, STATE_ANNOTATION};
pub use metrics::Metrics;
pub use notice::{BlockedGate, EventSpec, Notice, Phase, PhaseDurations, Severity, View};
pub use notify::RetryPolicy;

use crate::config::Settings;
use events::NodeEvents;
use notify::Webhooks;
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
}

struct Queues {
    disk: mpsc::Sender<Job<()>>,
    notify: Option<mpsc::Sender<Job<(Notice, Timestamp)>>>,
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
        let shared = Arc::new(Shared {
            node: node.to_string(),
            view: Mutex::new(View::default()),
            metrics: Arc::new(Mutex::new(Metrics::new(&counters))),
            counters: Mutex::new(counters),
            systemd: SystemdNotifier::new(),
            last_event: Mutex::new(None),
            last_notified: Mutex::new(None),
            agent_line: Mutex::new(None),
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

        let notify = match Webhooks::new(
            node,
            report.slack_webhook_url.clone(),
            report.webhook_url.clone(),
            retry,
        )? {
            Some(hooks) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                tasks.push(tokio::spawn(notify_worker(hooks, rx)));
                Some(tx)
            }
            None => None,
        };

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
    pub fn attach_kube(&self, client: kube::Client, events_enabled: bool) {
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
    pub fn observed(&self, notice: Notice) {
        self.report(notice, false);
    }

    fn report(&self, notice: Notice, announce: bool) {
        let now = Timestamp::now();
        let (changed, view) = {
            let mut view = lock(&self.shared.view);
            let changed = view.apply(&notice);
            (changed, view.clone())
        };
        let counters_changed = lock(&self.shared.counters).apply(&notice, now);
        {
            let mut m = lock(&self.shared.metrics);
            m.apply(&notice, now);
            if counters_changed {
                m.sync_counters(&lock(&self.shared.counters));
            }
        }
        debug!(notice = notice.kind(), phase = %view.phase, summary = %notice.summary(), "report");
        if changed && lock(&self.shared.agent_line).is_none() {
            self.shared.systemd.status(&view.status_line());
        }
        self.kick_disk();

        let event = notice.event().filter(|_| announce).filter(|spec| {
            let mut last = lock(&self.shared.last_event);
            let fresh = last.as_ref() != Some(spec);
            *last = Some(spec.clone());
            fresh
        });
        if changed || event.is_some() {
            self.kick_kube(event.map(|e| (e, now)));
        }

        if announce && notice.is_notable() {
            let fresh = {
                let mut last = lock(&self.shared.last_notified);
                let fresh = last.as_ref() != Some(&notice);
                *last = Some(notice.clone());
                fresh
            };
            if fresh && let Some(q) = self.queue(|q| q.notify.clone()) {
                let kind = notice.kind();
                if q.try_send(Job::Do((notice, now))).is_err() {
                    warn!(
                        event = kind,
                        "notification queue full; dropping notification"
                    );
                }
            }
        }
    }

    /// Publishes the agent's one-line summary as systemd's STATUS= (sent
    /// only when it changes). From then on it replaces the line derived
    /// from notices.
    pub fn status(&self, line: &str) {
        let line = notice::status_text(line);
        *lock(&self.shared.agent_line) = Some(line.clone());
        self.shared.systemd.status(&line);
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
    pub fn view(&self) -> View {
        lock(&self.shared.view).clone()
    }

    /// The totals as they stand (also persisted by the reporter itself).
    pub fn counters(&self) -> Counters {
        lock(&self.shared.counters).clone()
    }

    /// Classic Prometheus text of the current metrics.
    pub fn metrics_text(&self) -> String {
        lock(&self.shared.metrics).prometheus_text()
    }

    /// Waits until everything reported so far was written/posted, at most
    /// `timeout`. Returns false if it gave up. Call right before rebooting.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some((disk, notify, kube)) =
            self.queue(|q| Some((q.disk.clone(), q.notify.clone(), q.kube.clone())))
        else {
            return true;
        };
        let wait = async {
            let mut acks = Vec::new();
            let (tx, rx) = oneshot::channel();
            if disk.send(Job::Flush(tx)).await.is_ok() {
                acks.push(rx);
            }
            if let Some(q) = notify {
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
            if q.try_send(Job::Do(KubeJob { event })).is_err() {
                warn!(event = ?reason, "Kubernetes event queue full; dropping event");
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

async fn notify_worker(hooks: Webhooks, mut rx: mpsc::Receiver<Job<(Notice, Timestamp)>>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Do((notice, at)) => {
                hooks.send(&notice, at).await;
            }
            Job::Flush(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// Creates events in order; sets the annotations once per batch, from the
/// view as it is then (the latest state wins).
async fn kube_worker(
    shared: Arc<Shared>,
    mut sink: NodeEvents,
    mut rx: mpsc::Receiver<Job<KubeJob>>,
    events_enabled: bool,
) {
    let mut annotated: Option<(String, String)> = None;
    while let Some((work, flushes)) = batch(&mut rx).await {
        if events_enabled {
            for (spec, at) in work.iter().filter_map(|j| j.event.as_ref()) {
                if let Err(e) = sink.record(spec, at.to_owned()).await {
                    warn!(error = %e, "Kubernetes event not recorded");
                }
            }
        }
        if !work.is_empty() {
            let want = {
                let view = lock(&shared.view);
                (view.phase.as_str().to_string(), view.reason())
            };
            if annotated.as_ref() != Some(&want) {
                match sink.annotate(&want.0, &want.1).await {
                    Ok(()) => annotated = Some(want),
                    Err(e) => warn!(node = %shared.node, error = %e, "node annotation not set"),
                }
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
