//! The fuzz targets' checks, one function per target: what must hold for
//! any input. The targets in fuzz_targets/ call them under libFuzzer; the
//! main crate's tests/bad_input_fuzz_corpus.rs replays the seed corpus and
//! every kept crash (fuzz/regressions/) through them on stable Rust.
#![allow(dead_code)]

use drydock::testing::agent::AgentState;
use drydock::testing::agent::driver::{GatesRecord, RebootNeedRecord, StatusRecord};
use drydock::testing::aptgate::policy::{self, Change, Grants};
use drydock::testing::aptgate::protocol;
use drydock::testing::aptgate::record::PendingRun;
use drydock::testing::cluster::annotations::{self, ClusterControl, FinishedReboot, SharedBlock};
use drydock::testing::config;
use drydock::testing::config::Settings;
use drydock::testing::gates::paused::LocalPause;
use drydock::testing::host::sentinel::RebootRequest;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The APT pre-install hook's input and its policy: parsing never panics,
/// and the verdict fails closed (an unreadable line, or a protected package
/// changed without a grant, refuses the run).
pub(crate) fn apt_hook(data: &[u8]) {
    let settings = Settings::default();
    let is_protected = |n: &str| settings.is_protected(n);
    let Ok(request) = protocol::parse(data, false) else {
        return;
    };
    for (allow, label) in [(vec![], "none"), (vec!["*".to_string()], "all")] {
        let grants = Grants {
            allow,
            ..Grants::default()
        };
        let verdict = policy::decide(&request, is_protected, &grants);
        if label == "all" {
            assert!(verdict.allows(), "'*' lets every run through");
            continue;
        }
        if !request.malformed.is_empty() {
            assert!(!verdict.allows(), "an unreadable line must refuse the run");
        }
        for action in &request.actions {
            let bare = action.package.split(':').next().unwrap();
            // A first install is provisioning (allowed, then held); with
            // the node joined, every other change needs a grant.
            let change = policy::change_of(action);
            if is_protected(bare) && change.is_some_and(|c| !matches!(c, Change::Install { .. })) {
                assert!(
                    verdict.refused.iter().any(|c| c.package == action.package
                        || matches!(c.change, Change::Unreadable { .. })),
                    "protected change let through: {action:?}"
                );
            }
        }
        assert!(
            verdict.authorized.is_empty(),
            "no grants, no authorizations"
        );
        assert!(
            verdict
                .provisioning
                .iter()
                .all(|c| matches!(c.change, Change::Install { .. })),
            "after join only a first install is provisioning"
        );
        let message = policy::refusal_message(&verdict.refused);
        assert!(
            !message.chars().any(|c| c.is_control() && c != '\n'),
            "raw control character in the refusal message"
        );
    }
}

/// The configuration loader: any text gives settings within their ranges or
/// an error that names the file, bounded in length; it never panics.
pub(crate) fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::load_text(Path::new("/fuzz/drydock.toml"), text) {
        Ok(s) => {
            assert!(s.reboot.check_interval > Duration::ZERO);
            assert!(s.lease.duration >= Duration::from_secs(5));
            assert!(s.drain.retry_interval > Duration::ZERO);
            assert!(s.node.state_db.is_absolute());
            assert!(s.node.run_dir.is_absolute());
            assert!(s.packages.dpkg_root.is_absolute());
            assert!((1..=100).contains(&s.lease.concurrency));
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("/fuzz/drydock.toml:"), "{shown}");
            assert!(shown.len() < 4000, "unbounded error: {} bytes", shown.len());
            assert!(
                !shown.chars().any(|c| c.is_control()),
                "raw control character in {shown:?}"
            );
        }
    }
}

fn safe(s: &str, max_chars: usize) {
    assert!(
        !s.chars().any(drydock::testing::text::is_unsafe),
        "unescaped: {s:?}"
    );
    assert!(
        s.chars().count() <= max_chars + 64,
        "unbounded: {} chars",
        s.len()
    );
}

/// The drydock Namespace annotations every node reads (pause, halt, last
/// reboot, shared gate verdict): anything anyone with Namespace rights can
/// write parses without panicking, and what is shown is escaped and bounded.
pub(crate) fn annotations(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // One value for every annotation, so each parser sees every input.
    let mut map = BTreeMap::new();
    for key in [
        annotations::PAUSED,
        annotations::HALTED,
        annotations::LAST_REBOOT_FINISHED,
        annotations::CLUSTER_BLOCKED,
    ] {
        map.insert(key.to_string(), text.to_string());
    }
    let control = ClusterControl::from_annotations(&map);
    for reason in [&control.paused, &control.halted].into_iter().flatten() {
        safe(reason, drydock::testing::text::MAX_REASON);
    }
    if let Err(raw) = &control.last_reboot_finished {
        safe(raw, 200);
    }
    if let Some(block) = SharedBlock::parse(&text) {
        safe(&block.gate, 64);
        safe(&block.reason, 1000);
        safe(&block.by, 253);
    }
    if let Some(finished) = FinishedReboot::parse(&text) {
        safe(&finished.node, 253);
        let again = FinishedReboot::parse(&finished.to_annotation());
        assert_eq!(again.as_ref(), Some(&finished), "round trip");
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let json = serde_json::to_vec(&value).expect("a decoded value encodes");
        let again: T = serde_json::from_slice(&json).expect("what drydock wrote, it reads");
        assert_eq!(again, value);
    }
}

/// The JSON drydock keeps in its state DB (agent state, local settings, the
/// apt run plan): decoding any bytes never panics, and what decodes
/// re-encodes to the same value.
pub(crate) fn state_json(data: &[u8]) {
    round_trip::<AgentState>(data);
    round_trip::<LocalPause>(data);
    round_trip::<RebootRequest>(data);
    round_trip::<GatesRecord>(data);
    round_trip::<RebootNeedRecord>(data);
    round_trip::<PendingRun>(data);
    let _ = serde_json::from_slice::<StatusRecord>(data);
}
