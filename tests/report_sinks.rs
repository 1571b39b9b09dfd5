//! The reporting layer against real parts: promtool and an HTTP scrape for
//! metrics, a local HTTP server for webhooks, the Kubernetes API simulator
//! for Events and annotations, a real unix datagram socket for sd_notify.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use drydock::testing::config::{Secret, Settings};
use drydock::testing::report::{
    BlockedGate, Notice, PhaseDurations, REASON_ANNOTATION, Reporter, RetryPolicy, STATE_ANNOTATION,
};
use drydock::testing::sim::Scenario;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

const FLUSH: Duration = Duration::from_secs(10);

fn settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.node.state_db = dir.join("state.db");
    s.report.textfile_dir = None;
    s.report.metrics_listen = None;
    s
}

fn blocked(gate: &str, reason: &str) -> BlockedGate {
    BlockedGate {
        gate: gate.parse().expect("a gate name"),
        reason: reason.into(),
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(2),
        retries: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn report_metrics_textfile_passes_promtool_and_http_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let textfiles = dir.path().join("node-exporter");
    std::fs::create_dir(&textfiles).unwrap();
    let mut s = settings(dir.path());
    s.report.textfile_dir = Some(textfiles.clone());
    s.report.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let r = Reporter::start(&s, "worker-1", None).await.unwrap();
    r.notice(Notice::RebootNeeded {
        reasons: vec!["newer kernel installed".into()],
    });
    r.notice(Notice::Waiting {
        blocked: vec![blocked("window", "closed until Tue 02:00")],
    });
    r.notice(Notice::LeaseAcquired {
        slot: "drydock-default-0".into(),
    });
    r.notice(Notice::Draining { pods_left: 2 });
    r.notice(Notice::Rebooting {
        boot_id: "boot-a".into(),
    });
    // Every kind of series, so promtool sees them all.
    r.kubernetes_versions(Some("v1.34.1"), Some("v1.35.0"));
    r.certificate_expiry(Some(jiff::Timestamp::from_second(1_900_000_000).unwrap()));
    r.heartbeat();
    r.holds(Some((2, 1)));
    assert!(r.flush(FLUSH).await);

    let prom = textfiles.join("drydock.prom");
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool_check_metrics(&text);
    assert_eq!(
        sample(&text, r#"drydock_state{state="rebooting"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"drydock_state{state="draining"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&text, "drydock_lease_held"), Some(1.0));
    assert_eq!(sample(&text, "drydock_reboots_total"), Some(1.0));
    assert_eq!(sample(&text, "drydock_evictions_retried_total"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            r#"drydock_kubernetes_version_info{version="v1.34.1"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"drydock_kubernetes_target_version_info{version="v1.35.0"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "drydock_identity_certificate_expiry_timestamp_seconds"
        ),
        Some(1.9e9)
    );
    assert!(sample(&text, "drydock_reboot_required_since_timestamp_seconds").unwrap() > 1.7e9);
    assert!(sample(&text, "drydock_last_report_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(
        sample(
            &text,
            r#"drydock_phase_duration_seconds_count{phase="drain"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"drydock_gate_blocked{gate="window"}"#),
        Some(0.0),
        "the lease was taken, so no gate blocks any more"
    );
    let version = format!(
        r#"drydock_build_info{{version="{}",node="worker-1"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &version), Some(1.0));
    let last_reboot = sample(&text, "drydock_last_reboot_timestamp_seconds").unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!((now - last_reboot).abs() < 60.0, "{last_reboot} vs {now}");

    node_exporter_reads(&textfiles).await;

    let addr = r.metrics_addr().expect("metrics served");
    // What Prometheus asks for: OpenMetrics.
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let body = resp.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(
        sample(&body, r#"drydock_state{state="rebooting"}"#),
        Some(1.0)
    );
    // Anyone else (curl, promtool): the classic text format, lint-clean.
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let body = resp.text().await.unwrap();
    promtool_check_metrics(&body);
    assert_eq!(sample(&body, "drydock_reboots_total"), Some(1.0));
    r.shutdown(FLUSH).await;

    // After the reboot: the totals continue, and resuming with the same
    // boot_id does not count it again.
    let r = Reporter::start(&s, "worker-1", None).await.unwrap();
    r.notice(Notice::Rebooting {
        boot_id: "boot-a".into(),
    });
    r.notice(Notice::Verified {
        durations: PhaseDurations {
            drain: Some(Duration::from_secs(42)),
            total: Some(Duration::from_secs(300)),
            ..Default::default()
        },
    });
    assert!(r.flush(FLUSH).await);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(sample(&text, "drydock_reboots_total"), Some(1.0));
    assert_eq!(sample(&text, "drydock_reboot_required"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            r#"drydock_last_phase_duration_seconds{phase="drain"}"#
        ),
        Some(42.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"drydock_phase_duration_seconds_bucket{le="60.0",phase="drain"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"drydock_phase_duration_seconds_bucket{le="30.0",phase="drain"}"#
        ),
        Some(0.0)
    );
    // The reboot is done: no longer needed, and the "since" is gone.
    assert_eq!(
        sample(&text, "drydock_reboot_required_since_timestamp_seconds"),
        Some(0.0)
    );
    assert_eq!(r.counters().reboots_total, 1);
    r.shutdown(FLUSH).await;

    // A second daemon on the same port is a clear start error.
    let mut taken = s.clone();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    taken.report.metrics_listen = Some(busy.local_addr().unwrap());
    let err = Reporter::start(&taken, "worker-1", None)
        .await
        .err()
        .expect("bind fails");
    assert!(
        err.to_string()
            .starts_with("listening for metrics on 127.0.0.1:"),
        "{err}"
    );
}

/// `promtool check metrics` (format and lint) accepts `text` without a word.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\non:\n{text}"
    );
}

/// The real node-exporter (Debian package prometheus-node-exporter) parses
/// the textfile without error and re-exports drydock's samples.
async fn node_exporter_reads(dir: &Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus-node-exporter runs");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = None;
    for _ in 0..100 {
        if let Ok(resp) = reqwest::get(&url).await {
            body = Some(resp.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    let body = body.expect("node-exporter answered");
    assert_eq!(
        sample(&body, "node_textfile_scrape_error"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(sample(&body, "drydock_reboots_total"), Some(1.0), "{body}");
    assert!(
        body.contains("# TYPE drydock_reboots_total counter"),
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"drydock_state{state="rebooting"}"#),
        Some(1.0),
        "{body}"
    );
}

#[tokio::test]
async fn report_missing_textfile_dir_never_fails_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.report.textfile_dir = Some(dir.path().join("absent"));
    let r = Reporter::start(&s, "worker-1", None).await.unwrap();
    r.notice(Notice::Idle);
    assert!(r.flush(FLUSH).await);
    assert!(!dir.path().join("absent").exists());
    assert_eq!(r.status_line(), "idle: up to date; nothing to do");
}

#[derive(Clone, Default)]
struct Received {
    posts: Arc<Mutex<Vec<(String, Value)>>>,
    slack_failures_left: Arc<Mutex<u32>>,
}

async fn slack(State(rx): State<Received>, body: axum::Json<Value>) -> StatusCode {
    let mut left = rx.slack_failures_left.lock().unwrap();
    if *left > 0 {
        *left -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    rx.posts.lock().unwrap().push(("slack".into(), body.0));
    StatusCode::OK
}

async fn generic(State(rx): State<Received>, body: axum::Json<Value>) -> StatusCode {
    rx.posts.lock().unwrap().push(("generic".into(), body.0));
    StatusCode::NO_CONTENT
}

async fn webhook_server(rx: Received) -> SocketAddr {
    let app = Router::new()
        .route("/services/T0/B0/SECRETSLACKTOKEN", post(slack))
        .route("/hooks/SECRETHOOKTOKEN", post(generic))
        .with_state(rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Collects every log line (all targets, all levels) into a buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// current_thread: the thread-local log subscriber sees every spawned task.
#[tokio::test(flavor = "current_thread")]
async fn report_webhooks_post_retry_and_never_log_the_secret() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rx = Received::default();
    *rx.slack_failures_left.lock().unwrap() = 1;
    let addr = webhook_server(rx.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.report.slack_webhook_url = Some(Secret::new(format!(
        "http://{addr}/services/T0/B0/SECRETSLACKTOKEN"
    )));
    s.report.webhook_url = Some(Secret::new(format!("http://{addr}/hooks/SECRETHOOKTOKEN")));
    let r = Reporter::start_with(&s, "worker-1", None, fast_retry())
        .await
        .unwrap();
    r.notice(Notice::Draining { pods_left: 4 }); // progress: not posted
    r.notice(Notice::Rebooting {
        boot_id: "b".into(),
    });
    let halted = Notice::Halted {
        node: "worker-2".into(),
        reason: "kubelet not Ready after reboot".into(),
    };
    r.notice(halted.clone());
    r.notice(halted); // repeated verdict: posted once
    assert!(r.flush(FLUSH).await);

    let posts = rx.posts.lock().unwrap().clone();
    let slack: Vec<_> = posts.iter().filter(|(k, _)| k == "slack").collect();
    let generic: Vec<_> = posts.iter().filter(|(k, _)| k == "generic").collect();
    assert_eq!(slack.len(), 2, "{posts:?}");
    assert_eq!(slack[0].1["text"], "drydock on `worker-1`: rebooting");
    assert_eq!(
        slack[1].1["text"],
        ":warning: drydock on `worker-1`: cluster HALTED by worker-2: kubelet not Ready after reboot"
    );
    assert_eq!(generic.len(), 2, "{posts:?}");
    assert_eq!(generic[0].1["event"], "rebooting");
    assert_eq!(generic[0].1["node"], "worker-1");
    assert_eq!(generic[1].1["event"], "halted");
    assert_eq!(generic[1].1["severity"], "Warning");
    assert_eq!(generic[1].1["details"]["node"], "worker-2");
    assert_eq!(
        *rx.slack_failures_left.lock().unwrap(),
        0,
        "the 500 was retried"
    );
    r.shutdown(FLUSH).await;

    // A webhook that cannot be reached: logged with its host, the agent goes on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut s2 = settings(dir.path());
    s2.report.webhook_url = Some(Secret::new(format!(
        "http://{closed_addr}/hooks/SECRETHOOKTOKEN"
    )));
    let r = Reporter::start_with(&s2, "worker-1", None, fast_retry())
        .await
        .unwrap();
    r.notice(Notice::VerifyFailed {
        reason: "check 10-dns exited 1".into(),
    });
    assert!(r.flush(FLUSH).await);
    r.shutdown(FLUSH).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("notification not delivered"), "{text}");
    assert!(
        text.contains(&format!("http://{closed_addr}/...")),
        "{text}"
    );
    assert!(
        !text.contains("SECRET"),
        "a webhook token reached the log:\n{text}"
    );
    assert!(!text.contains("/services/T0"), "{text}");
}

#[tokio::test]
async fn report_events_and_annotations_on_the_simulated_node() {
    let sim = Scenario::cluster(1, 2).start().await.unwrap();
    let client = sim.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let r = Reporter::start(&s, "worker-1", Some(client.clone()))
        .await
        .unwrap();
    r.notice(Notice::RebootNeeded {
        reasons: vec!["/var/run/reboot-required".into()],
    });
    let gates = vec![blocked("nodes-ready", "worker-2 is NotReady")];
    r.notice(Notice::Waiting {
        blocked: gates.clone(),
    });
    r.notice(Notice::Waiting { blocked: gates }); // same verdict: one event
    r.notice(Notice::LeaseAcquired {
        slot: "drydock-default-0".into(),
    });
    r.notice(Notice::Draining { pods_left: 3 });
    r.notice(Notice::Draining { pods_left: 2 }); // progress: no new event
    r.notice(Notice::Rebooting {
        boot_id: "b1".into(),
    });
    assert!(r.flush(FLUSH).await);

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut list = events.list(&ListParams::default()).await.unwrap().items;
    list.retain(|e| e.reporting_component.as_deref() == Some("drydock.dev/drydock"));
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    let reasons: Vec<_> = list.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(
        reasons,
        [
            "RebootRequired",
            "GatesBlocked",
            "LeaseAcquired",
            "Draining",
            "Rebooting"
        ]
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("worker-1").await.unwrap();
    let regarding = &list[0].involved_object;
    assert_eq!(regarding.kind.as_deref(), Some("Node"));
    assert_eq!(regarding.name.as_deref(), Some("worker-1"));
    assert_eq!(regarding.uid, node.metadata.uid);
    assert_eq!(
        list[1].message.as_deref(),
        Some("waiting for nodes-ready: worker-2 is NotReady")
    );
    let ann = node.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get(STATE_ANNOTATION).map(String::as_str),
        Some("rebooting")
    );
    assert_eq!(
        ann.get(REASON_ANNOTATION).map(String::as_str),
        Some("rebooting")
    );
    r.shutdown(FLUSH).await;

    // Events off: annotations still show the state, no event is written.
    let mut quiet = settings(dir.path());
    quiet.report.kubernetes_events = false;
    let r = Reporter::start(&quiet, "worker-2", Some(client.clone()))
        .await
        .unwrap();
    r.notice(Notice::VerifyFailed {
        reason: "kubelet not Ready".into(),
    });
    assert!(r.flush(FLUSH).await);
    let node = nodes.get("worker-2").await.unwrap();
    let ann = node.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get(STATE_ANNOTATION).map(String::as_str),
        Some("failed")
    );
    assert!(ann[REASON_ANNOTATION].contains("kubelet not Ready"));
    let about_w2 = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("worker-2"))
        .count();
    assert_eq!(about_w2, 0);
    r.shutdown(FLUSH).await;
}

/// Runs in a child process (see the parent test below): it owns its
/// environment there, so setting NOTIFY_SOCKET and WATCHDOG_* is safe.
#[test]
#[ignore = "child of report_sd_notify_over_a_real_socket"]
fn report_sd_notify_child() {
    if std::env::var_os("DRYDOCK_SD_CHILD").is_none() {
        return;
    }
    // SAFETY: this process runs only this test, single-threaded so far.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        std::env::set_var("WATCHDOG_USEC", "100000");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = Reporter::start(&s, "worker-1", None).await.unwrap();
        r.notice(Notice::RebootNeeded {
            reasons: vec!["newer kernel installed".into()],
        });
        r.ready();
        r.notice(Notice::RebootNeeded {
            reasons: vec!["newer kernel installed".into()],
        });
        r.notice(Notice::Draining { pods_left: 1 });
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.shutdown(FLUSH).await;
    });
}

#[test]
fn report_sd_notify_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "report_sd_notify_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env("NOTIFY_SOCKET", &path)
        .env("DRYDOCK_SD_CHILD", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(_) => {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "child hung");
            }
        }
    }
    assert!(child.wait().unwrap().success());
    let statuses: Vec<&str> = messages
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| l.strip_prefix("STATUS="))
        .collect();
    assert_eq!(
        statuses,
        [
            "pending: reboot needed: newer kernel installed",
            "pending: reboot needed: newer kernel installed", // with READY=1
            "draining: draining: 1 pod left",
            "stopping",
        ],
        "{messages:?}"
    );
    let ready = messages.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(messages[ready].contains("STATUS=pending"), "{messages:?}");
    let watchdogs = messages.iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    assert!(watchdogs >= 2, "{messages:?}");
    let stopping = messages
        .iter()
        .position(|m| m.contains("STOPPING=1"))
        .unwrap();
    assert!(stopping > ready);
}

/// A receiver that accepts connections and never answers.
async fn dead_receiver() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

// current_thread: the thread-local log subscriber sees every spawned task.
#[tokio::test(flavor = "current_thread")]
async fn report_a_dead_receiver_never_stalls_and_no_url_is_ever_shown() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dead = dead_receiver().await;
    let rx = Received::default();
    let live = webhook_server(rx.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.report.slack_webhook_url = Some(Secret::new(format!(
        "http://{dead}/services/T0/B0/SECRETSLACKTOKEN"
    )));
    s.report.webhook_url = Some(Secret::new(format!("http://{live}/hooks/SECRETHOOKTOKEN")));
    s.report.webhook_events = vec!["rebooting".into(), "verify-failed".into()];
    s.report.templates.insert(
        "verify-failed".into(),
        drydock::testing::config::values::message_template("{node} needs you: {message}").unwrap(),
    );
    let policy = RetryPolicy {
        timeout: Duration::from_millis(500),
        retries: 1,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    };
    let r = Reporter::start_with(&s, "worker-1", None, policy)
        .await
        .unwrap();

    // 200 notices: the dead receiver's queue fills; the agent never waits.
    let started = std::time::Instant::now();
    r.notice(Notice::VerifyFailed {
        reason: "check 10-dns exited 1".into(),
    });
    for i in 0..200 {
        r.notice(Notice::Rebooting {
            boot_id: format!("boot-{i}"),
        });
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "reporting blocked: {:?}",
        started.elapsed()
    );
    // The live receiver is served meanwhile, in order, templated per kind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = rx.posts.lock().unwrap().len();
        if n >= 40 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let posts = rx.posts.lock().unwrap().clone();
    assert!(posts.len() >= 40, "{} posts", posts.len());
    assert!(posts.iter().all(|(k, _)| k == "generic"));
    assert_eq!(posts[0].1["event"], "verify-failed");
    assert_eq!(
        posts[0].1["message"],
        "worker-1 needs you: verification FAILED: check 10-dns exited 1; node stays cordoned and keeps the lease (fleet halted)"
    );
    assert_eq!(posts[1].1["details"]["boot_id"], "boot-0");

    // Flushing before a reboot is bounded, even with a receiver that hangs.
    let flushing = std::time::Instant::now();
    assert!(!r.flush(Duration::from_secs(1)).await);
    assert!(flushing.elapsed() < Duration::from_secs(2));
    r.shutdown(Duration::from_millis(200)).await;

    // What people see: status, the node's report, the settings' Debug text,
    // the logs. None carries a token.
    let shown = [
        r.status_line(),
        serde_json::to_string(&r.node_report()).unwrap(),
        format!("{s:?}"),
    ];
    for text in shown {
        assert!(!text.contains("SECRET"), "{text}");
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("notification queue full"), "{text}");
    assert!(text.contains(&format!("Slack http://{dead}/...")), "{text}");
    assert!(text.contains("notification not delivered"), "{text}");
    assert!(!text.contains("SECRET"), "a webhook token reached the log");
    assert!(!text.contains("/services/T0"), "{text}");
}

#[test]
fn report_a_bad_webhook_url_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drydock.toml");
    for url in [
        "ftp://hooks.example/services/SECRET",
        "https://hooks example/SECRET",
        "hooks.example/SECRET",
    ] {
        std::fs::write(
            &config,
            format!("[report]\nslack-webhook-url = \"{url}\"\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url}: {said}");
        assert!(said.contains("report.slack-webhook-url"), "{said}");
        assert!(!said.contains("SECRET"), "{url}: {said}");
    }
}

#[tokio::test]
async fn report_is_republished_as_a_heartbeat() {
    let sim = Scenario::cluster(0, 1).start().await.unwrap();
    let client = sim.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = Reporter::start(&settings(dir.path()), "worker-1", Some(client.clone()))
        .await
        .unwrap();
    r.set_republish_every(Duration::from_millis(100));
    r.notice(Notice::RebootNeeded {
        reasons: vec!["newer kernel installed".into()],
    });
    assert!(r.flush(FLUSH).await);
    let nodes: Api<Node> = Api::all(client);
    let read = |n: &Node| {
        drydock::testing::cluster::node::NodeReport::from_node(n)
            .expect("a report")
            .expect("readable")
    };
    let node = nodes.get("worker-1").await.unwrap();
    let first = read(&node);
    assert_eq!(first.state, "pending");
    assert!(first.reboot_needed_since.is_some());
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(labels["drydock.dev/state"], "pending");
    assert_eq!(labels["drydock.dev/reboot-needed"], "true");

    // Nothing changed, but the agent is alive: the report's time moves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.heartbeat();
    assert!(r.flush(FLUSH).await);
    let second = read(&nodes.get("worker-1").await.unwrap());
    assert!(second.reported_at > first.reported_at, "{second:?}");
    assert_eq!(second.state, "pending");
    r.shutdown(FLUSH).await;
}

/// Drain progress (one notice per evicted pod) is not one Node write per
/// pod, and the last word still arrives without another notice.
#[tokio::test]
async fn report_drain_progress_is_published_sparingly_but_surely() {
    let sim = Scenario::cluster(0, 1).start().await.unwrap();
    let client = sim.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.report.kubernetes_events = false;
    let r = Reporter::start(&s, "worker-1", Some(client.clone()))
        .await
        .unwrap();
    r.notice(Notice::LeaseAcquired {
        slot: "drydock-default-0".into(),
    });
    assert!(r.flush(FLUSH).await);
    sim.reset_stats();
    for left in (1..=20).rev() {
        r.notice(Notice::Draining { pods_left: left });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.flush(FLUSH).await);
    let patches = sim.stats().get("patch", "nodes").requests;
    assert!(
        (1..=3).contains(&patches),
        "{patches} Node patches for 20 progress notices"
    );
    let nodes: Api<Node> = Api::all(client);
    let reason = |n: Node| n.metadata.annotations.unwrap_or_default()[REASON_ANNOTATION].clone();
    assert_eq!(
        reason(nodes.get("worker-1").await.unwrap()),
        "draining: 20 pods left"
    );
    // The held-back words go out on their own within a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = reason(nodes.get("worker-1").await.unwrap());
        if now == "draining: 1 pod left" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.shutdown(FLUSH).await;
}
