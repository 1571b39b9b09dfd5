//! The journal as an operator reads it: the real `drydock daemon` logging to
//! a private systemd-journald (its own mount namespace, tmpfs over
//! /run/systemd and /var/log/journal, the test's directory over /run/log),
//! read back with `journalctl -o json`. Every state change and decision
//! carries its stable MESSAGE_ID and fields, and one MESSAGE that reads on
//! its own.
//!
//! The daemon starts before the node joined (no kubeconfig), refuses a bad
//! reload, notices the kubeconfig, and runs one cycle against the
//! simulator up to a reboot that a stand-in logind on a private D-Bus
//! accepts (nothing reboots).

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/bus.rs"]
mod bus;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apt_sandbox::{DRYDOCK, Sandbox};
use bus::Fixture;
use drydock::testing::logging::msgid;
use drydock::testing::sim::Scenario;
use serde_json::Value;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

const JOURNALD: &str = "/lib/systemd/systemd-journald";

fn missing() -> Option<String> {
    if let Some(why) = apt_sandbox::missing_tools(false) {
        return Some(why);
    }
    for (path, package) in [
        (JOURNALD, "systemd"),
        ("/usr/bin/journalctl", "systemd"),
        ("/usr/bin/unshare", "util-linux"),
        ("/usr/bin/dbus-daemon", "dbus"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!("{path} is missing (apt-get install {package})"));
        }
    }
    None
}

/// Kills the private journald and the daemon's namespace shell when done.
struct Private {
    child: std::process::Child,
    journald_pid: std::path::PathBuf,
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = std::fs::read_to_string(&self.journald_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn entries(journal_dir: &Path) -> Vec<Value> {
    let out = Command::new("journalctl")
        .arg("--directory")
        // journald writes /run/log/journal/<machine-id>/system.journal.
        .arg(journal_dir.join("journal"))
        .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=drydock"])
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn with_id<'a>(entries: &'a [Value], id: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["MESSAGE_ID"].as_str() == Some(id))
        .collect()
}

fn message(e: &Value) -> &str {
    e["MESSAGE"].as_str().unwrap_or("")
}

fn wait_for_entry(journal_dir: &Path, id: &str, what: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = entries(journal_dir);
        if !with_id(&all, id).is_empty() {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "no journal entry for {what} (MESSAGE_ID {id}); have:\n{}",
            all.iter().map(message).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_entries_read_on_their_own_and_carry_message_ids() {
    if let Some(why) = missing() {
        if ci() {
            panic!("the journal test cannot run under CI: {why}");
        }
        println!("SKIPPED: {why}");
        return;
    }
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = Scenario::standard(2, 1).start().await.expect("simulator");
    let logind = Fixture::with_service(&[]);

    let config = d.join("drydock.toml");
    let good = format!(
        "[node]\nname = \"worker-1\"\nkubeconfig = \"{d}/kubeconfig\"\nidentity-kubeconfig = \"{d}/kubeconfig\"\nidentity-dir = \"{d}/identity\"\nstate-db = \"{d}/state.db\"\nrun-dir = \"{d}/run\"\n\
         [lease]\nduration = \"15s\"\n\
         [reboot]\nsentinel-file = \"{d}/reboot-required\"\ncheck-kernel = false\ncheck-interval = \"2s\"\n\
         [gates]\nsoak = \"0s\"\n[drain]\ntimeout = \"60s\"\n\
         [packages]\ndpkg-root = \"{root}\"\n[report]\ntextfile-dir = \"{d}/metrics\"\n",
        d = d.display(),
        root = sb.root.display()
    );
    std::fs::write(&config, &good).unwrap();
    std::fs::create_dir(d.join("metrics")).unwrap();
    let journal_dir = d.join("log");
    std::fs::create_dir(&journal_dir).unwrap();
    let journald_pid = d.join("journald.pid");

    // A mount namespace of its own: journald's sockets and files are the
    // test's, the machine's journal is never touched.
    let script = format!(
        "set -e\n\
         mkdir -p /run/systemd /run/log /var/log/journal\n\
         mount -t tmpfs tmpfs /run/systemd\n\
         mount -t tmpfs tmpfs /var/log/journal\n\
         mount --bind {log} /run/log\n\
         mkdir -p /run/systemd/journal\n\
         {journald} & echo $! > {pid}\n\
         for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done\n\
         exec {drydock} --config {config} --log-format journal daemon\n",
        log = journal_dir.display(),
        journald = JOURNALD,
        pid = journald_pid.display(),
        drydock = DRYDOCK,
        config = config.display(),
    );
    let _private = Private {
        child: Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(&script)
            .env("DBUS_SYSTEM_BUS_ADDRESS", logind.address())
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(d.join("daemon.err")).unwrap())
            .spawn()
            .expect("unshare"),
        journald_pid,
    };

    // Not joined: it waits, and says so.
    let all = wait_for_entry(&journal_dir, msgid::WAITING_FOR_JOIN, "waiting for join");
    let waiting = with_id(&all, msgid::WAITING_FOR_JOIN);
    assert_eq!(
        message(waiting[0]),
        format!("waiting: node not joined (no {}/kubeconfig)", d.display())
    );
    assert_eq!(waiting[0]["NODE"], "worker-1");

    // A bad file: `drydock reload` fails with the reason; it is in the journal.
    std::fs::write(
        &config,
        format!("{good}\n[verify]\ntimeout = \"forever\"\n"),
    )
    .unwrap();
    let out = Command::new(DRYDOCK)
        .arg("--config")
        .arg(&config)
        .arg("reload")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused reload exits non-zero");
    assert!(stderr.contains("forever"), "{stderr}");
    let all = wait_for_entry(&journal_dir, msgid::RELOAD_REFUSED, "the refused reload");
    assert!(message(with_id(&all, msgid::RELOAD_REFUSED)[0]).contains("forever"));
    std::fs::write(&config, &good).unwrap();
    let out = Command::new(DRYDOCK)
        .arg("--config")
        .arg(&config)
        .arg("reload")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Joined, then one cycle up to the reboot.
    std::fs::write(
        d.join("reboot-required"),
        "*** System restart required ***\n",
    )
    .unwrap();
    sim.write_kubeconfig(d.join("kubeconfig")).unwrap();
    wait_for_entry(&journal_dir, msgid::JOINED, "the join");
    let all = wait_for_entry(&journal_dir, msgid::REBOOT_REQUESTED, "the reboot request");

    // One MESSAGE per entry, each a sentence of its own.
    for e in &all {
        assert!(e["MESSAGE"].is_string(), "one MESSAGE per entry: {e}");
        let m = message(e);
        assert!(
            !["status", "state transition", "lease acquired", "report"].contains(&m),
            "a MESSAGE that says nothing by itself: {e}"
        );
    }
    assert_eq!(with_id(&all, msgid::JOINED).len(), 1);
    assert_eq!(with_id(&all, msgid::DAEMON_RUNNING).len(), 1);
    let lease = with_id(&all, msgid::LEASE_ACQUIRED);
    assert_eq!(lease.len(), 1, "lease acquired is logged once");
    assert!(lease[0]["SLOT"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(message(lease[0]).contains(lease[0]["SLOT"].as_str().unwrap()));

    let changes = with_id(&all, msgid::STATE_CHANGED);
    let transitions: Vec<(String, String)> = changes
        .iter()
        .map(|e| {
            assert_eq!(e["NODE"], "worker-1", "{e}");
            let (from, to) = (
                e["FROM"].as_str().unwrap().to_string(),
                e["TO"].as_str().unwrap().to_string(),
            );
            assert_eq!(message(e), format!("state {from} -> {to}"));
            (from, to)
        })
        .collect();
    for to in ["pending", "draining", "rebooting"] {
        assert!(
            transitions.iter().any(|(_, t)| t == to),
            "no change to {to}: {transitions:?}"
        );
    }
    let reboot = with_id(&all, msgid::REBOOT_REQUESTED);
    assert_eq!(reboot.len(), 1);
    assert!(
        message(reboot[0]).starts_with("reboot requested from logind: "),
        "{}",
        message(reboot[0])
    );
    // STATUS= lines are there in words, each with its id.
    let statuses = with_id(&all, msgid::STATUS);
    assert!(
        statuses.iter().any(|e| message(e).starts_with("rebooting")),
        "{:?}",
        statuses.iter().map(|e| message(e)).collect::<Vec<_>>()
    );
    // The stand-in logind got exactly one Reboot.
    let calls = logind.calls();
    assert_eq!(
        bus::members(&calls)
            .iter()
            .filter(|m| **m == "Reboot")
            .count(),
        1
    );
}
