//! The fuzz targets' checks (fuzz/checks.rs) over the seed corpus in
//! fuzz/corpus/<target> and every crash kept in fuzz/regressions/<target>,
//! on stable Rust with the rest of the tests: a crash found by fuzzing stays
//! a test after it is fixed.

use std::path::Path;

#[path = "../fuzz/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(
        replayed >= 3,
        "{target}: only {replayed} inputs in the corpus"
    );
}

#[test]
fn apt_hook_corpus() {
    replay("apt_hook", checks::apt_hook);
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn annotations_corpus() {
    replay("annotations", checks::annotations);
}

#[test]
fn state_json_corpus() {
    replay("state_json", checks::state_json);
}
