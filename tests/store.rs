//! The SQLite state store: migrations, durability settings, concurrent
//! readers, and refusal of damaged or foreign files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use drydock::testing::store::{Authorization, Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum TestState {
    Idle,
    Draining { pods_left: u32 },
}

fn checksum(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn creates_directory_and_migrates_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/state/state.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    assert_eq!(
        std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(store);

    // Reopening is idempotent.
    assert_eq!(Store::open(&path).unwrap().schema_version().unwrap(), 1);

    // An existing empty file is not drydock's: refused, left as it was
    // (0 bytes, its mode, no side files), read-only or not.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open(&empty).err().expect("an empty file is refused");
    assert!(err.to_string().contains("is empty (0 bytes)"), "{err}");
    assert!(Store::open_read_only(&empty).is_err());
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    assert_eq!(
        std::fs::metadata(&empty).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!dir.path().join("empty.db-wal").exists());
    assert!(!dir.path().join("empty.db-shm").exists());
}

#[test]
fn wal_and_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let _store = Store::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn state_transitions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.current_state::<TestState>().unwrap(), None);
    store
        .transition(
            &TestState::Idle,
            "state",
            &serde_json::json!({"to": "idle"}),
        )
        .unwrap();
    store
        .transition(
            &TestState::Draining { pods_left: 3 },
            "state",
            &serde_json::json!({"to": "draining"}),
        )
        .unwrap();
    store
        .append_history("apt-run", &serde_json::json!({"packages": ["hello"]}))
        .unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    let (state, _at) = store.current_state::<TestState>().unwrap().unwrap();
    assert_eq!(state, TestState::Draining { pods_left: 3 });
    let all = store.history(&[], 100).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let apt = store.history(&["apt-run"], 100).unwrap();
    assert_eq!(apt.len(), 1);
    assert_eq!(apt[0].detail["packages"][0], "hello");
    assert_eq!(store.history(&[], 1).unwrap()[0].kind, "apt-run");

    // History is append-only, even for someone with a raw connection.
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert!(conn.execute("DELETE FROM history", []).is_err());
    assert!(conn.execute("UPDATE history SET kind = 'x'", []).is_err());
}

#[test]
fn kv_and_authorizations() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    store.set("pause", &"maintenance by alice").unwrap();
    assert_eq!(
        store.get::<String>("pause").unwrap().as_deref(),
        Some("maintenance by alice")
    );
    assert!(store.remove("pause").unwrap());
    assert_eq!(store.get::<String>("pause").unwrap(), None);

    let now = jiff::Timestamp::now();
    let auth = |v: &str, secs: i64| Authorization {
        package: "kubeadm".into(),
        version: v.into(),
        expires_at: now + jiff::SignedDuration::from_secs(secs),
    };
    store.authorize(&auth("1.34.2-1.1", 60)).unwrap();
    store.authorize(&auth("1.34.1-1.1", -1)).unwrap();
    let valid = store.authorizations(now).unwrap();
    assert_eq!(valid, vec![auth("1.34.2-1.1", 60)]);
    store.revoke_authorizations().unwrap();
    assert!(store.authorizations(now).unwrap().is_empty());
}

#[test]
fn reader_sees_committed_state_while_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut writer = Store::open(&path).unwrap();
    writer
        .transition(&TestState::Idle, "state", &serde_json::json!({}))
        .unwrap();
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let reader = Store::open_read_only(&reader_path).unwrap().unwrap();
        let mut seen = 0;
        for _ in 0..200 {
            let rows = reader.history(&[], 10_000).unwrap();
            assert!(rows.len() >= seen, "history never shrinks");
            seen = rows.len();
            assert!(reader.current_state::<TestState>().unwrap().is_some());
        }
        seen
    });
    for i in 0..200 {
        writer
            .transition(
                &TestState::Draining { pods_left: i },
                "state",
                &serde_json::json!({"i": i}),
            )
            .unwrap();
    }
    let seen = reader.join().unwrap();
    assert!(seen >= 1);
    assert_eq!(writer.history(&[], 10_000).unwrap().len(), 201);
}

#[test]
fn read_only_open_of_missing_store_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Store::open_read_only(&dir.path().join("nope.db"))
            .unwrap()
            .is_none()
    );
    assert!(!dir.path().join("nope.db").exists());
}

#[test]
fn non_sqlite_file_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(&path, b"this is a text file, not a database\n").unwrap();
    let before = checksum(&path);
    let err = Store::open(&path).err().expect("must refuse");
    assert!(matches!(err, StoreError::NotSqlite { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("mv "),
        "{message}"
    );
    assert_eq!(checksum(&path), before);
    assert!(matches!(
        Store::open_read_only(&path).err(),
        Some(StoreError::NotSqlite { .. })
    ));
    assert!(!dir.path().join("state.db-wal").exists());
}

#[test]
fn truncated_store_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut store = Store::open(&path).unwrap();
        for i in 0..300 {
            store
                .transition(
                    &TestState::Draining { pods_left: i },
                    "state",
                    &serde_json::json!({"padding": "x".repeat(200)}),
                )
                .unwrap();
        }
    }
    // Checkpointed on close: the main file holds everything. Cut it short.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192);
    std::fs::write(&path, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let before = checksum(&path);
    let err = Store::open(&path)
        .err()
        .expect("must refuse a truncated file");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(checksum(&path), before);
}

#[test]
fn garbage_inside_pages_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut store = Store::open(&path).unwrap();
        for i in 0..100 {
            store
                .transition(
                    &TestState::Draining { pods_left: i },
                    "state",
                    &serde_json::json!({"p": "y".repeat(300)}),
                )
                .unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes[4096..8192].iter_mut() {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = checksum(&path);
    let err = Store::open(&path)
        .err()
        .expect("must refuse a damaged file");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(checksum(&path), before);
}

#[test]
fn foreign_sqlite_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER, name TEXT); INSERT INTO customers VALUES (1, 'x');")
            .unwrap();
    }
    let before = checksum(&path);
    let err = Store::open(&path).err().expect("must refuse");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    assert_eq!(checksum(&path), before);
}
