//! This machine's side: reboot through logind and systemd unit restarts
//! over a real private dbus-daemon with a stand-in login1/systemd1 service
//! (Python, dbus-python and GLib) that records every call; post-reboot
//! health checks run as real processes.

#[path = "support/bus.rs"]
mod bus;

use std::path::Path;
use std::time::{Duration, Instant};

use bus::{Fixture, members, wait_for};

use drydock::testing::host::checks::{self, CheckOutcome};
use drydock::testing::host::logind::{Bus, LogindRebooter, RebootError, Rebooter};
use drydock::testing::host::systemd::{Systemd, SystemdError};

#[tokio::test]
async fn reboot_is_requested_once_non_interactively() {
    let f = Fixture::with_service(&[]);
    LogindRebooter::new(f.bus())
        .reboot("kernel 6.1.0-30 installed")
        .await
        .expect("reboot accepted");
    let calls = f.calls();
    assert_eq!(members(&calls), ["CanReboot", "Reboot"]);
    let reboot = &calls[1];
    assert_eq!(reboot["interface"], "org.freedesktop.login1.Manager");
    assert_eq!(reboot["signature"], "b");
    assert_eq!(reboot["args"], serde_json::json!([false]));
}

#[tokio::test]
async fn refusal_is_reported_with_the_dbus_error_and_not_retried() {
    let f = Fixture::with_service(&["--refuse", "org.freedesktop.DBus.Error.AccessDenied"]);
    let err = LogindRebooter::new(f.bus())
        .reboot("test")
        .await
        .expect_err("refused");
    match &err {
        RebootError::Refused {
            method,
            name,
            message,
        } => {
            assert_eq!(*method, "Reboot");
            assert_eq!(name, "org.freedesktop.DBus.Error.AccessDenied");
            assert_eq!(message, "refused by the test");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert_eq!(members(&f.calls()), ["CanReboot", "Reboot"]);
}

#[tokio::test]
async fn can_reboot_other_than_yes_stops_before_rebooting() {
    let f = Fixture::with_service(&["--can-reboot", "challenge"]);
    let err = LogindRebooter::new(f.bus())
        .reboot("test")
        .await
        .expect_err("not permitted");
    assert!(
        matches!(&err, RebootError::NotPermitted { answer } if answer == "challenge"),
        "{err:?}"
    );
    assert_eq!(members(&f.calls()), ["CanReboot"]);
}

#[tokio::test]
async fn absent_logind_and_absent_bus_are_told_apart() {
    // A bus where nobody owns org.freedesktop.login1.
    let f = Fixture::with_service(&["--no-logind"]);
    let err = LogindRebooter::new(f.bus())
        .reboot("test")
        .await
        .expect_err("no logind");
    match &err {
        RebootError::LogindAbsent { name, .. } => {
            assert_eq!(name, "org.freedesktop.DBus.Error.ServiceUnknown");
        }
        other => panic!("expected LogindAbsent, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("systemd-logind is not on bus unix:path="),
        "{err}"
    );
    assert!(f.calls().is_empty());

    // No bus at all.
    let missing = f.dir.path().join("no-such-socket");
    let err = LogindRebooter::new(Bus::Address(format!("unix:path={}", missing.display())))
        .reboot("test")
        .await
        .expect_err("no bus");
    assert!(matches!(err, RebootError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn systemd_reload_and_restart_wait_for_the_job() {
    let f = Fixture::with_service(&[]);
    let systemd = Systemd::new(f.bus());
    systemd
        .daemon_reload(Duration::from_secs(5))
        .await
        .expect("reload");
    systemd
        .restart_unit("kubelet.service", Duration::from_secs(5))
        .await
        .expect("restart");
    let calls = f.calls();
    assert_eq!(members(&calls), ["Reload", "Subscribe", "RestartUnit"]);
    assert_eq!(
        calls[2]["args"],
        serde_json::json!(["kubelet.service", "replace"])
    );
}

#[tokio::test]
async fn failed_restart_job_is_an_error() {
    let f = Fixture::with_service(&["--job-result", "failed"]);
    let err = Systemd::new(f.bus())
        .restart_unit("kubelet.service", Duration::from_secs(5))
        .await
        .expect_err("job failed");
    match &err {
        SystemdError::JobFailed { job, result, .. } => {
            assert_eq!(job, "/org/freedesktop/systemd1/job/1");
            assert_eq!(result, "failed");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
}

fn script(dir: &Path, name: &str, body: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn checks_run_in_order_with_exit_codes_output_and_timeouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let marker = d.join("grandchild.pid");
    script(d, "10-ok", "echo all good", 0o755);
    script(
        d,
        "20-fail",
        "echo checking dns\necho NXDOMAIN >&2\nexit 3",
        0o755,
    );
    // Hangs, with a grandchild in its process group that must die too.
    script(
        d,
        "30-hang",
        &format!(
            "sleep 30 &\necho $! > {}\necho waiting\nwait",
            marker.display()
        ),
        0o755,
    );
    script(d, "40-chatty", "seq 1 5000", 0o755);
    script(d, "05-not-executable", "exit 1", 0o644);
    script(d, "25-old~", "exit 1", 0o755);
    script(d, "26-new.dpkg-dist", "exit 1", 0o755);
    script(d, ".hidden", "exit 1", 0o755);
    std::fs::create_dir(d.join("50-dir")).expect("mkdir");

    let listed: Vec<String> = checks::list_checks(d)
        .expect("list")
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["10-ok", "20-fail", "30-hang", "40-chatty"]);

    let started = Instant::now();
    let results = checks::run_checks(d, Duration::from_millis(700))
        .await
        .expect("run");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let by_name: Vec<(&str, &CheckOutcome)> = results
        .iter()
        .map(|r| (r.name.as_str(), &r.outcome))
        .collect();
    assert_eq!(
        by_name,
        [
            ("10-ok", &CheckOutcome::Passed),
            (
                "20-fail",
                &CheckOutcome::Failed {
                    code: Some(3),
                    signal: None
                }
            ),
            ("30-hang", &CheckOutcome::TimedOut),
            ("40-chatty", &CheckOutcome::Passed),
        ]
    );
    assert_eq!(results[0].output, "all good");
    assert_eq!(results[1].output, "checking dns\nNXDOMAIN");
    assert_eq!(results[2].output, "waiting");
    assert!(results[2].duration >= Duration::from_millis(700));
    assert!(results[3].output.len() <= 2048 && results[3].output.ends_with("\n4999\n5000"));

    // The hung check's background child was killed with it.
    let pid: i32 = std::fs::read_to_string(&marker)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    wait_for("the grandchild to die", || !alive());
}

#[tokio::test]
async fn missing_checks_dir_means_no_checks_and_bad_interpreter_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        checks::run_checks(&dir.path().join("absent"), Duration::from_secs(1))
            .await
            .expect("no dir is fine")
            .is_empty()
    );
    let path = dir.path().join("10-broken");
    std::fs::write(&path, "#!/nonexistent/interpreter\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let r = checks::run_check(&path, Duration::from_secs(1)).await;
    assert!(
        matches!(r.outcome, CheckOutcome::NotStarted { .. }),
        "{r:?}"
    );
    assert!(!r.passed());
}
