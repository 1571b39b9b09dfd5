//! A private dbus-daemon with a stand-in login1/systemd1 service (Python,
//! dbus-python and GLib) that records every call as a JSON line.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drydock::testing::host::logind::Bus;
use serde_json::Value;

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_systemd_bus.py"
);

/// A private bus, optionally with the stand-in services; both die on drop.
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    daemon: Child,
    service: Option<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in self
            .service
            .iter_mut()
            .chain(std::iter::once(&mut self.daemon))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Fixture {
    pub(crate) fn bus_only() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("bus config");
        let daemon = Command::new("dbus-daemon")
            .arg("--nofork")
            .arg(format!("--config-file={}", config.display()))
            .stdin(Stdio::null())
            // It complains that it cannot raise its fd limit; harmless.
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus) runs");
        wait_for("the bus socket", || socket.exists());
        Fixture {
            dir,
            daemon,
            service: None,
        }
    }

    pub(crate) fn with_service(args: &[&str]) -> Fixture {
        let mut f = Fixture::bus_only();
        let ready = f.dir.path().join("ready");
        let service = Command::new("/usr/bin/python3")
            .arg(FAKE)
            .arg("--bus")
            .arg(f.address())
            .arg("--log")
            .arg(f.log_path())
            .arg("--ready")
            .arg(&ready)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs");
        f.service = Some(service);
        wait_for("the stand-in services", || ready.exists());
        f
    }

    pub(crate) fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus").display())
    }

    pub(crate) fn bus(&self) -> Bus {
        Bus::Address(self.address())
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.jsonl")
    }

    pub(crate) fn calls(&self) -> Vec<Value> {
        read_calls(&self.log_path())
    }
}

pub(crate) fn read_calls(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

pub(crate) fn members(calls: &[Value]) -> Vec<&str> {
    calls
        .iter()
        .map(|c| c["member"].as_str().unwrap_or("?"))
        .collect()
}
