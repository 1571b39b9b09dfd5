//! The drydock Namespace annotations every node reads (pause, halt, last
//! reboot, shared gate verdict): anything anyone with Namespace rights can
//! write parses without panicking, and what is shown is escaped and bounded.
#![no_main]

use std::collections::BTreeMap;

use drydock::cluster::annotations::{self, ClusterControl, FinishedReboot, SharedBlock};
use libfuzzer_sys::fuzz_target;

fn safe(s: &str, max_chars: usize) {
    assert!(!s.chars().any(drydock::text::is_unsafe), "unescaped: {s:?}");
    assert!(s.chars().count() <= max_chars + 64, "unbounded: {} chars", s.len());
}

fuzz_target!(|data: &[u8]| {
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
        safe(reason, drydock::text::MAX_REASON);
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
});
