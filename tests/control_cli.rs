//! `drydock resume` and `drydock release --force` through the real binary:
//! refused (and said why) unless the node is failed; a request carries its
//! time, so the agent honours it only for a failure before it.

use std::process::{Command, Output};

use drydock::testing::agent::driver::keys;
use drydock::testing::agent::state::{AgentState, Event};
use drydock::testing::store::Store;
use jiff::{SignedDuration, Timestamp};

fn run(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drydock"))
        .arg("--config")
        .arg(dir.join("drydock.toml"))
        .args(args)
        .env_remove("DRYDOCK_CONFIG")
        .current_dir(dir)
        .output()
        .expect("drydock runs")
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("drydock.toml"),
        format!(
            "[node]\nstate-db = \"{0}/state.db\"\nrun-dir = \"{0}/run\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    dir
}

/// A node that failed verification while holding its slot.
fn failed(now: Timestamp) -> AgentState {
    let t = |s: i64| now + SignedDuration::from_secs(s);
    let mut s = AgentState::Idle;
    for e in [
        Event::RebootNeeded {
            reasons: vec!["kernel".into()],
            now: t(-100),
        },
        Event::LeaseAcquired {
            slot: "drydock-default-0".into(),
            now: t(-90),
        },
        Event::PriorSchedulability {
            unschedulable: false,
        },
        Event::Cordoned { now: t(-80) },
        Event::Drained {
            boot_id: "b".into(),
            booted_at: None,
            now: t(-70),
        },
        Event::BootObserved {
            booted_at: t(-50),
            now: t(-50),
            verify_timeout: SignedDuration::from_secs(10),
        },
        Event::Failed {
            error: "kubelet not Ready".into(),
            now: t(-1),
        },
    ] {
        s = s.apply(e).unwrap();
    }
    s
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn resume_and_force_release_are_refused_unless_the_node_failed() {
    let dir = setup();
    let out = run(dir.path(), &["resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("this node is not failed (it is idle); there is nothing to resume"),
        "{}",
        text(&out.stderr)
    );
    let out = run(dir.path(), &["release", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("this node is not failed (it is idle)"));
    // Nothing was left behind for a later failure to consume.
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    assert!(
        store
            .get::<serde_json::Value>(keys::RESUME_REQUESTED)
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get::<serde_json::Value>(keys::FORCE_RELEASE)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_failed_node_takes_requests_stamped_after_the_failure() {
    let dir = setup();
    let state = failed(Timestamp::now());
    let AgentState::Failed { at, .. } = &state else {
        unreachable!()
    };
    let at = *at;
    {
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .transition(&state, "state", &serde_json::json!({}))
            .unwrap();
    }
    let out = run(dir.path(), &["resume"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("failed at verify (kubelet not Ready) and goes back to that step"),
        "{}",
        text(&out.stdout)
    );
    let out = run(dir.path(), &["release", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("release of lease drydock-default-0 requested"));
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    for key in [keys::RESUME_REQUESTED, keys::FORCE_RELEASE] {
        let when: Timestamp = store.read(key).unwrap().unwrap_or_else(|| panic!("{key}"));
        assert!(when > at, "{key}: {when} is after the failure at {at}");
    }
}
