//! Configuration: the shipped file, merging drop-ins, and located errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drydock::testing::config::{self, ConfigError, RawConfig, Settings};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/drydock.toml")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn load_err(main: &Path) -> (PathBuf, usize, usize, String, String) {
    match config::load(main, true) {
        Err(ConfigError::Invalid {
            path,
            line,
            column,
            key,
            message,
        }) => (path, line, column, key, message),
        Err(ConfigError::Syntax {
            path,
            line,
            column,
            message,
        }) => (path, line, column, String::new(), message),
        other => panic!("expected a located error, got {other:?}"),
    }
}

#[test]
fn shipped_file_is_the_defaults() {
    let settings = config::load(&shipped(), true).expect("shipped config parses");
    assert_eq!(settings, Settings::default());
}

fn assert_no_nulls(value: &serde_json::Value, at: &str) {
    match value {
        serde_json::Value::Null => panic!("key {at} is missing from etc/drydock.toml"),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                assert_no_nulls(v, &format!("{at}.{k}"));
            }
        }
        _ => {}
    }
}

#[test]
fn shipped_file_has_every_key() {
    let text = std::fs::read_to_string(shipped()).unwrap();
    let raw: RawConfig = toml::from_str(&text).unwrap();
    assert_no_nulls(&serde_json::to_value(&raw).unwrap(), "");
}

#[test]
fn every_key_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "drydock.toml",
        r#"
[node]
name = "worker-1"
kubeconfig = "/k/kubeconfig"
state-db = "/s/state.db"
run-dir = "/r"
[lease]
namespace = "ops"
group = "gpu"
concurrency = 3
duration = "90s"
[reboot]
sentinel-file = "/x/reboot-required"
sentinel-command = ["/bin/false", "-x"]
sentinel-command-timeout = "5s"
check-kernel = false
boot-dir = "/b"
check-interval = "1m"
[maintenance]
windows = [
  { days = ["mon", "sat"], start = "23:30", length = "2h", time-zone = "Europe/London" },
  { days = ["sun"], start = "01:00", length = "30m", time-zone = "America/New_York" },
]
[gates]
soak = "1h"
node-selector = "pool=blue"
required-daemonsets = ["kube-system/cilium"]
blocking-pod-selectors = ["app=critical"]
[alerts]
prometheus-url = "http://127.0.0.1:9090"
alertmanager-url = "http://127.0.0.1:9093"
ignore = "^Watchdog$"
match-only = "^Node"
timeout = "3s"
[drain]
timeout = "10m"
delete-emptydir-data = false
evict-unmanaged = false
delete-pdb-blocked-after = "20m"
pre-drain-wait = "30s"
pod-selector = "drain=yes"
retry-interval = "2s"
[verify]
timeout = "5m"
checks-dir = "/c"
check-timeout = "10s"
[packages]
protect = ["kube*"]
authorization-ttl = "5m"
[report]
textfile-dir = ""
metrics-listen = "127.0.0.1:9742"
slack-webhook-url = "https://hooks.example/services/T/B/secret"
webhook-url = "http://127.0.0.1:8080/hook"
kubernetes-events = false
"#,
    );
    let s = config::load(&main, true).unwrap();
    let d = Settings::default();
    assert_eq!(s.node.name.as_deref(), Some("worker-1"));
    assert_eq!(s.node.kubeconfig, PathBuf::from("/k/kubeconfig"));
    assert_eq!(s.node.state_db, PathBuf::from("/s/state.db"));
    assert_eq!(s.node.run_dir, PathBuf::from("/r"));
    assert_eq!(s.lease.namespace, "ops");
    assert_eq!(
        s.lease_slot_names(),
        ["drydock-gpu-0", "drydock-gpu-1", "drydock-gpu-2"]
    );
    assert_eq!(s.lease.duration, Duration::from_secs(90));
    assert_eq!(s.reboot.sentinel_file, PathBuf::from("/x/reboot-required"));
    assert_eq!(s.reboot.sentinel_command, ["/bin/false", "-x"]);
    assert_eq!(s.reboot.sentinel_command_timeout, Duration::from_secs(5));
    assert!(!s.reboot.check_kernel);
    assert_eq!(s.reboot.boot_dir, PathBuf::from("/b"));
    assert_eq!(s.reboot.check_interval, Duration::from_secs(60));
    assert_eq!(s.maintenance.windows.len(), 2);
    let w = &s.maintenance.windows[0];
    assert_eq!(
        w.days,
        [jiff::civil::Weekday::Monday, jiff::civil::Weekday::Saturday]
    );
    assert_eq!(w.start, jiff::civil::time(23, 30, 0, 0));
    assert_eq!(w.length, Duration::from_secs(7200));
    assert_eq!(w.time_zone_name, "Europe/London");
    assert_eq!(s.maintenance.windows[1].time_zone_name, "America/New_York");
    assert_eq!(s.gates.soak, Duration::from_secs(3600));
    assert_eq!(s.gates.node_selector, "pool=blue");
    assert_eq!(
        s.gates.required_daemonsets[0].to_string(),
        "kube-system/cilium"
    );
    assert_eq!(s.gates.blocking_pod_selectors, ["app=critical"]);
    assert_eq!(
        s.alerts.prometheus_url.as_deref(),
        Some("http://127.0.0.1:9090")
    );
    assert_eq!(
        s.alerts.alertmanager_url.as_deref(),
        Some("http://127.0.0.1:9093")
    );
    assert!(s.alerts.ignore.is_match("Watchdog") && !s.alerts.ignore.is_match("InfoInhibitor"));
    assert!(s.alerts.match_only.as_ref().unwrap().is_match("NodeDown"));
    assert_eq!(s.alerts.timeout, Duration::from_secs(3));
    assert_eq!(s.drain.timeout, Duration::from_secs(600));
    assert!(!s.drain.delete_emptydir_data && !s.drain.evict_unmanaged);
    assert_eq!(
        s.drain.delete_pdb_blocked_after,
        Some(Duration::from_secs(1200))
    );
    assert_eq!(s.drain.pre_drain_wait, Duration::from_secs(30));
    assert_eq!(s.drain.pod_selector, "drain=yes");
    assert_eq!(s.drain.retry_interval, Duration::from_secs(2));
    assert_eq!(s.verify.timeout, Duration::from_secs(300));
    assert_eq!(s.verify.checks_dir, PathBuf::from("/c"));
    assert_eq!(s.verify.check_timeout, Duration::from_secs(10));
    assert!(s.is_protected("kubelet") && s.is_protected("kubeadm") && !s.is_protected("runc"));
    assert_eq!(s.packages.authorization_ttl, Duration::from_secs(300));
    assert_eq!(s.report.textfile_dir, None);
    assert_eq!(
        s.report.metrics_listen,
        Some("127.0.0.1:9742".parse().unwrap())
    );
    assert_eq!(
        s.report.slack_webhook_url.as_ref().unwrap().expose(),
        "https://hooks.example/services/T/B/secret"
    );
    assert!(s.report.webhook_url.is_some());
    assert!(!s.report.kubernetes_events);
    // Secrets stay out of debug output.
    assert!(!format!("{s:?}").contains("secret"));
    assert_ne!(s, d);
}

#[test]
fn drop_ins_merge_in_lexical_order() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "drydock.toml",
        "[lease]\nconcurrency = 2\ngroup = \"a\"\n",
    );
    write(
        dir.path(),
        "drydock.toml.d/20-later.toml",
        "[lease]\ngroup = \"c\"\n",
    );
    write(
        dir.path(),
        "drydock.toml.d/10-first.toml",
        "[lease]\ngroup = \"b\"\n[drain]\ntimeout = \"1m\"\n",
    );
    write(dir.path(), "drydock.toml.d/ignored.conf", "garbage = ");
    let s = config::load(&main, true).unwrap();
    assert_eq!(s.lease.group, "c");
    assert_eq!(
        s.lease.concurrency, 2,
        "keys a drop-in does not set are kept"
    );
    assert_eq!(s.drain.timeout, Duration::from_secs(60));
}

#[test]
fn missing_default_file_means_defaults_but_explicit_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("drydock.toml");
    assert_eq!(config::load(&main, false).unwrap(), Settings::default());
    assert!(matches!(
        config::load(&main, true),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn errors_name_file_line_column_and_key() {
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        // (file text, line, column, key, message fragment)
        (
            "[lease]\nconcurrency = \"two\"\n",
            2,
            15,
            "lease.concurrency",
            "invalid type",
        ),
        (
            "[lease]\ncolour = 1\n",
            2,
            1,
            "lease.colour",
            "unknown field",
        ),
        (
            "[gates]\nsoak = \"a day\"\n",
            2,
            8,
            "gates.soak",
            "invalid duration",
        ),
        (
            "[maintenance]\nwindows = [\n  { days = [\"mon\"], start = \"02:00\", length = \"1h\", time-zone = \"Mars/Olympus\" },\n]\n",
            3,
            65,
            "maintenance.windows[0].time-zone",
            "unknown time zone",
        ),
        (
            "[alerts]\nignore = \"([a-z\"\n",
            2,
            10,
            "alerts.ignore",
            "invalid regular expression",
        ),
        (
            "[lease]\nconcurrency = 0\n",
            2,
            15,
            "lease.concurrency",
            "out of range",
        ),
        (
            "[gates]\nnode-selector = \"a b\"\n",
            2,
            17,
            "gates.node-selector",
            "label selector",
        ),
        ("[nodes]\nname = \"x\"\n", 1, 2, "nodes", "unknown field"),
    ];
    for (text, line, column, key, fragment) in cases {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "drydock.toml", text);
        let (path, l, c, k, message) = load_err(&main);
        assert_eq!(path, main, "{text}");
        assert_eq!((l, c), (*line, *column), "{text}: {message}");
        assert_eq!(k, *key, "{text}");
        assert!(message.contains(fragment), "{text}: {message}");
    }
}

#[test]
fn broken_drop_in_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "drydock.toml", "[lease]\ngroup = \"a\"\n");
    let bad = write(
        dir.path(),
        "drydock.toml.d/50-bad.toml",
        "[drain]\n\ntimeout = \n",
    );
    match config::load(&main, true) {
        Err(ConfigError::Syntax { path, line, .. }) => {
            assert_eq!(path, bad);
            assert_eq!(line, 3);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    // A type error in a drop-in points into the drop-in, not the main file.
    std::fs::write(&bad, "[drain]\ntimeout = \"1m\"\nretry-interval = 5\n").unwrap();
    let (path, line, _, key, _) = load_err(&main);
    assert_eq!(
        (path, line, key.as_str()),
        (bad.clone(), 3, "drain.retry-interval")
    );
    // A bad value set by a later drop-in is reported there.
    std::fs::write(&bad, "[lease]\n\ngroup = \"Not_A_Label\"\n").unwrap();
    let (path, line, _, key, _) = load_err(&main);
    assert_eq!((path, line, key.as_str()), (bad, 3, "lease.group"));
}

#[test]
fn check_config_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_drydock");
    let ok = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(shipped())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));

    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "drydock.toml",
        "[drain]\ntimeout = \"forever\"\n",
    );
    let bad = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!("{}:2:11", main.display())),
        "{stderr}"
    );
    assert!(stderr.contains("drain.timeout"), "{stderr}");

    let missing = Command::new(bin)
        .args(["check-config", "--config", "/nonexistent/drydock.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/drydock.toml"));
}
