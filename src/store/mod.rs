//! The state store: one SQLite file holding the agent's current state, an
//! append-only history, small local settings (pause, requests) and the
//! package authorizations the APT hook honours.
//!
//! The store knows nothing of the agent's types: states are serialized by
//! the caller. A file that is not ours, or is damaged, is never replaced or
//! repaired: opening fails and says how to recover.

pub(crate) mod keys;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// "DRYD": marks the file as drydock's in the SQLite header.
const APPLICATION_ID: i64 = 0x4452_5944;

/// Schema migrations, applied in order; `user_version` counts those done.
const MIGRATIONS: &[&str] = &[
    // 1: state, history, local settings, package authorizations.
    "CREATE TABLE state (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         json TEXT NOT NULL,
         updated_at TEXT NOT NULL
     );
     CREATE TABLE history (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         at TEXT NOT NULL,
         kind TEXT NOT NULL,
         detail TEXT NOT NULL
     );
     CREATE INDEX history_kind ON history (kind, id);
     CREATE TRIGGER history_no_update BEFORE UPDATE ON history
         BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
     CREATE TRIGGER history_no_delete BEFORE DELETE ON history
         BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
     CREATE TABLE kv (
         key TEXT PRIMARY KEY,
         json TEXT NOT NULL,
         updated_at TEXT NOT NULL
     );
     CREATE TABLE authorizations (
         package TEXT NOT NULL,
         version TEXT NOT NULL,
         expires_at TEXT NOT NULL,
         PRIMARY KEY (package, version)
     );",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating state directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not an SQLite database; drydock will not touch it. Move it aside (e.g. `mv {} {}.bad`) and restart drydock to start with a fresh state",
        path.display(), path.display(), path.display()
    )]
    NotSqlite { path: PathBuf },
    #[error(
        "{} is an SQLite database that does not belong to drydock (application_id {found:#x}); drydock will not touch it. Point node.state-db elsewhere or move the file aside",
        path.display()
    )]
    Foreign { path: PathBuf, found: i64 },
    #[error(
        "{} is damaged ({detail}); drydock refuses to act on it. Keep it for inspection (`mv {} {}.corrupt`) and restart drydock to start with a fresh state; check the node's cordon and Lease by hand",
        path.display(), path.display(), path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{} has schema version {found}, newer than this drydock understands ({known}); install a newer drydock",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database {}: {action}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("state database {}: {action}: {source}", path.display())]
    Json {
        path: PathBuf,
        action: &'static str,
        source: serde_json::Error,
    },
    /// The stored current state is not one this build knows (an older or
    /// newer drydock wrote it, or it was edited). Nothing is acted on.
    #[error(
        "{} holds an agent state this drydock cannot read (state \"{found}\", written at {written}, perhaps by another drydock version): {source}. \
drydock takes no action on this node: its cordon and Lease slot are left exactly as they are. \
To recover: see what the interrupted cycle left (`drydock history`, `kubectl get node`, the Lease slots in the drydock namespace), undo it by hand \
(uncordon only what drydock cordoned, free the slot this node holds), then forget the unreadable state with \
`sqlite3 {} 'DELETE FROM state'` (the history is kept) and restart drydock; or install the drydock version that wrote it",
        path.display(), path.display()
    )]
    UnreadableState {
        path: PathBuf,
        /// The state's name as stored (its `state` tag), or "?".
        found: String,
        written: String,
        source: serde_json::Error,
    },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is {kind}, not a regular file; drydock will not touch it. Point node.state-db at a file, or remove it to start with a fresh state",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{} is empty (0 bytes), not a drydock state database; drydock will not touch it. Remove it (`rm {}`) to start with a fresh state",
        path.display(), path.display()
    )]
    Empty { path: PathBuf },
}

/// One line of history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryRecord {
    pub id: i64,
    pub at: Timestamp,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// A package version the daemon allows the APT hook to let through.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Authorization {
    pub package: String,
    pub version: String,
    pub expires_at: Timestamp,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// This store's entry in [`OPEN_HERE`] (none for a short-lived probe).
    registered: Option<FileId>,
}

/// A file by device and inode: the same database under any path.
type FileId = (u64, u64);

/// Databases this process has open through a [`Store`], with how many.
///
/// POSIX record locks belong to the process, not the descriptor: closing
/// *any* descriptor of the file drops every lock SQLite holds on it through
/// other connections, and another process may then delete the WAL under
/// them (seen as "database disk image is malformed", error 522). So the
/// header check, which reads the file outside SQLite, runs only while no
/// Store of this process has the file open; a database already open here
/// passed it when it was first opened. The lock is held across the check.
static OPEN_HERE: std::sync::Mutex<std::collections::BTreeMap<FileId, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    // stat, not open: no descriptor to close.
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn open_here() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<FileId, usize>> {
    OPEN_HERE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a Store of this process has `path` open.
fn is_open_here(registry: &std::collections::BTreeMap<FileId, usize>, path: &Path) -> bool {
    file_id(path).is_some_and(|id| registry.contains_key(&id))
}

/// Counts a new Store on `path` (after it is open, so the file exists).
fn register(
    registry: &mut std::collections::BTreeMap<FileId, usize>,
    path: &Path,
) -> Option<FileId> {
    let id = file_id(path)?;
    *registry.entry(id).or_default() += 1;
    Some(id)
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(id) = self.registered {
            let mut registry = open_here();
            if let Some(n) = registry.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    registry.remove(&id);
                }
            }
        }
    }
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Checks the file at `path` without SQLite (which would create `-wal` and
/// `-shm` files, or rewrite the header, before it can tell us anything):
/// a regular file, not empty, SQLite's magic, and not another program's
/// database or a newer schema by the header's own account. `Ok(false)`:
/// nothing there yet.
fn check_header(path: &Path) -> Result<bool, StoreError> {
    use crate::fileread::{ReadError, read_prefix};
    let header = match read_prefix(path, 100) {
        Ok(h) => h,
        // A dangling symlink would have SQLite create its target, wherever.
        Err(e) if e.is_not_found() && std::fs::symlink_metadata(path).is_ok() => {
            return Err(StoreError::NotRegular {
                path: path.into(),
                kind: "a dangling symbolic link",
            });
        }
        Err(e) if e.is_not_found() => return Ok(false),
        Err(ReadError::NotRegular(kind)) => {
            return Err(StoreError::NotRegular {
                path: path.into(),
                kind,
            });
        }
        Err(ReadError::Io(source)) => {
            return Err(StoreError::Io {
                path: path.into(),
                source,
            });
        }
        Err(e @ ReadError::TooLarge { .. }) => {
            return Err(StoreError::Io {
                path: path.into(),
                source: std::io::Error::other(e.to_string()),
            });
        }
    };
    if header.is_empty() {
        return Err(StoreError::Empty { path: path.into() });
    }
    if header.len() < 100 || &header[..16] != SQLITE_MAGIC {
        return Err(StoreError::NotSqlite { path: path.into() });
    }
    let be32 = |at: usize| i64::from(u32::from_be_bytes(header[at..at + 4].try_into().unwrap()));
    let (user_version, app_id) = (be32(60), be32(68));
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Foreign {
            path: path.into(),
            found: app_id,
        });
    }
    let known = MIGRATIONS.len() as i64;
    if app_id == APPLICATION_ID && user_version > known {
        return Err(StoreError::TooNew {
            path: path.into(),
            found: user_version,
            known,
        });
    }
    Ok(true)
}

/// The `-wal` file SQLite keeps beside a database in WAL mode.
fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// A read-only connection that writes nothing beside the file. With no
/// `-wal` file, no process has the database open and the main file is
/// complete: `immutable=1` then reads it without creating `-wal`/`-shm`.
/// With a `-wal` file (the daemon runs), a plain read-only connection
/// shares it.
fn connect_read_only(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if wal_path(path).exists() {
        return Connection::open_with_flags(path, flags)
            .map_err(|source| sqlite(path, "opening read-only", source));
    }
    let text = path.to_str().ok_or_else(|| StoreError::Io {
        path: path.into(),
        source: std::io::Error::other("the path is not UTF-8"),
    })?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(&uri, flags | OpenFlags::SQLITE_OPEN_URI)
        .map_err(|source| sqlite(path, "opening read-only", source))
}

impl Store {
    /// Opens (creating if needed) the store for writing, and migrates it.
    /// An existing file is checked read-only first: a refused file keeps
    /// its bytes and mode, and gets no side files.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let mut registry = open_here();
        if !is_open_here(&registry, path) && check_header(path)? {
            let probe = Store {
                conn: connect_read_only(path)?,
                path: path.into(),
                registered: None,
            };
            probe.verify(true)?;
            probe.check_schema_version()?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| sqlite(path, "opening", source))?;
        let mut store = Store {
            conn,
            path: path.into(),
            registered: None,
        };
        // Checked above (read-only); for a new file: still nobody else's.
        store.verify(false)?;
        restrict_permissions(path)?;
        store.configure()?;
        store.migrate()?;
        store.registered = register(&mut registry, path);
        Ok(store)
    }

    /// Opens an existing store read-only (for `drydock status`, the APT hook).
    /// `Ok(None)` when there is no store yet. Writes nothing, anywhere.
    pub fn open_read_only(path: &Path) -> Result<Option<Store>, StoreError> {
        let mut registry = open_here();
        if !is_open_here(&registry, path) && !check_header(path)? {
            return Ok(None);
        }
        let mut store = Store {
            conn: connect_read_only(path)?,
            path: path.into(),
            registered: None,
        };
        store.verify(true)?;
        store.check_schema_version()?;
        store
            .conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| sqlite(path, "setting busy timeout", source))?;
        store.registered = register(&mut registry, path);
        Ok(Some(store))
    }

    fn check_schema_version(&self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// Checks identity and integrity without writing anything.
    fn verify(&self, existed: bool) -> Result<(), StoreError> {
        let corrupt = |e: rusqlite::Error| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                StoreError::NotSqlite {
                    path: self.path.clone(),
                }
            }
            other => StoreError::Corrupt {
                path: self.path.clone(),
                detail: other.to_string(),
            },
        };
        let app_id: i64 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(corrupt)?;
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(corrupt)?;
        if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
            return Err(StoreError::Foreign {
                path: self.path.clone(),
                found: app_id,
            });
        }
        if existed {
            let check: String = self
                .conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(corrupt)?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: check,
                });
            }
        }
        Ok(())
    }

    fn configure(&self) -> Result<(), StoreError> {
        let p = &self.path;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| sqlite(p, "setting busy timeout", e))?;
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| sqlite(p, "enabling WAL", e))?;
        self.conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|e| sqlite(p, "setting synchronous=FULL", e))
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sqlite(&self.path, "reading schema version", e))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let current = self.schema_version()?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i64 + 1;
            let batch = format!(
                "BEGIN IMMEDIATE; {sql}; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {version}; COMMIT;"
            );
            if let Err(e) = self.conn.execute_batch(&batch) {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(sqlite(&self.path, "applying schema migration", e));
            }
        }
        Ok(())
    }

    /// The persisted agent state and when it was written.
    pub fn current_state<T: DeserializeOwned>(&self) -> Result<Option<(T, Timestamp)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row("SELECT json, updated_at FROM state WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| sqlite(&self.path, "reading current state", e))?;
        let Some((json, at)) = row else {
            return Ok(None);
        };
        let state = serde_json::from_str(&json).map_err(|source| StoreError::UnreadableState {
            path: self.path.clone(),
            found: serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v.get("state")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into()),
            written: at.clone(),
            source,
        })?;
        Ok(Some((state, parse_time(&self.path, &at)?)))
    }

    /// Writes the new state and its history line in one durable transaction.
    pub fn transition<T: Serialize>(
        &mut self,
        state: &T,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let json = to_json(&self.path, state)?;
        let now = Timestamp::now().to_string();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite(&path, "starting state transition", e))?;
        tx.execute(
            "INSERT INTO state (id, json, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
            params![json, now],
        )
        .map_err(|e| sqlite(&path, "writing current state", e))?;
        tx.execute(
            "INSERT INTO history (at, kind, detail) VALUES (?1, ?2, ?3)",
            params![now, kind, detail.to_string()],
        )
        .map_err(|e| sqlite(&path, "appending history", e))?;
        let id = tx.last_insert_rowid();
        tx.commit()
            .map_err(|e| sqlite(&path, "committing state transition", e))?;
        Ok(id)
    }

    pub fn append_history(
        &self,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO history (at, kind, detail) VALUES (?1, ?2, ?3)",
                params![Timestamp::now().to_string(), kind, detail.to_string()],
            )
            .map_err(|e| sqlite(&self.path, "appending history", e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// History, newest last; `kinds` empty means every kind.
    pub fn history(&self, kinds: &[&str], limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at, kind, detail FROM (
                     SELECT id, at, kind, detail FROM history
                     WHERE (?1 = '' OR instr(?1, ',' || kind || ',') > 0)
                     ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id ASC",
            )
            .map_err(|e| sqlite(&self.path, "reading history", e))?;
        let filter = if kinds.is_empty() {
            String::new()
        } else {
            format!(",{},", kinds.join(","))
        };
        let rows = stmt
            .query_map(params![filter, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| sqlite(&self.path, "reading history", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, kind, detail) =
                row.map_err(|e| sqlite(&self.path, "reading history", e))?;
            out.push(HistoryRecord {
                id,
                at: parse_time(&self.path, &at)?,
                kind,
                detail: serde_json::from_str(&detail).map_err(|source| StoreError::Json {
                    path: self.path.clone(),
                    action: "decoding history",
                    source,
                })?,
            });
        }
        Ok(out)
    }

    /// The value under `key`, of the key's own type.
    pub fn read<T: DeserializeOwned>(&self, key: keys::Key<T>) -> Result<Option<T>, StoreError> {
        self.get(key)
    }

    /// Sets the value under `key`, of the key's own type.
    pub(crate) fn write<T: Serialize>(
        &self,
        key: keys::Key<T>,
        value: &T,
    ) -> Result<(), StoreError> {
        self.set(key, value)
    }

    /// The value under `key` (a name, or a [`keys::Key`]) as any type.
    pub fn get<T: DeserializeOwned>(&self, key: impl AsRef<str>) -> Result<Option<T>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT json FROM kv WHERE key = ?1", [key.as_ref()], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sqlite(&self.path, "reading local setting", e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|source| StoreError::Json {
                path: self.path.clone(),
                action: "decoding local setting",
                source,
            })
        })
        .transpose()
    }

    pub fn set<T: Serialize>(&self, key: impl AsRef<str>, value: &T) -> Result<(), StoreError> {
        let key = key.as_ref();
        let json = to_json(&self.path, value)?;
        self.conn
            .execute(
                "INSERT INTO kv (key, json, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                params![key, json, Timestamp::now().to_string()],
            )
            .map_err(|e| sqlite(&self.path, "writing local setting", e))?;
        Ok(())
    }

    pub fn remove(&self, key: impl AsRef<str>) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM kv WHERE key = ?1", [key.as_ref()])
            .map_err(|e| sqlite(&self.path, "removing local setting", e))?;
        Ok(n > 0)
    }

    pub fn authorize(&self, auth: &Authorization) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO authorizations (package, version, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (package, version) DO UPDATE SET expires_at = excluded.expires_at",
                params![auth.package, auth.version, auth.expires_at.to_string()],
            )
            .map_err(|e| sqlite(&self.path, "writing package authorization", e))?;
        Ok(())
    }

    pub fn revoke_authorizations(&self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM authorizations", [])
            .map_err(|e| sqlite(&self.path, "revoking package authorizations", e))?;
        Ok(())
    }

    /// Authorizations that have not expired at `now`.
    pub fn authorizations(&self, now: Timestamp) -> Result<Vec<Authorization>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT package, version, expires_at FROM authorizations")
            .map_err(|e| sqlite(&self.path, "reading package authorizations", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| sqlite(&self.path, "reading package authorizations", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (package, version, expires) =
                row.map_err(|e| sqlite(&self.path, "reading package authorizations", e))?;
            let expires_at = parse_time(&self.path, &expires)?;
            if expires_at > now {
                out.push(Authorization {
                    package,
                    version,
                    expires_at,
                });
            }
        }
        Ok(out)
    }
}

fn sqlite(path: &Path, action: &'static str, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.into(),
        action,
        source,
    }
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json {
        path: path.into(),
        action: "encoding",
        source,
    })
}

fn parse_time(path: &Path, text: &str) -> Result<Timestamp, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        path: path.into(),
        detail: format!("unreadable timestamp {text:?}"),
    })
}

/// State is root's alone: the directory is 0700 and the database 0600.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            dir: dir.into(),
            source,
        })
}

fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Io {
            path: path.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second Store on an open database must not read the file outside
    /// SQLite (closing that descriptor would drop the first one's locks):
    /// the registry tells it the file is open here, under any path to it.
    #[test]
    fn a_database_open_here_is_known_under_any_path_until_the_last_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let alias = dir.path().join("alias.db");
        let first = Store::open(&path).unwrap();
        std::os::unix::fs::symlink(&path, &alias).unwrap();
        assert!(is_open_here(&open_here(), &alias));
        let second = Store::open(&alias).unwrap();
        let reader = Store::open_read_only(&path).unwrap().unwrap();
        drop(first);
        assert!(is_open_here(&open_here(), &path));
        drop(second);
        drop(reader);
        assert!(!is_open_here(&open_here(), &path));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(tag = "state", rename_all = "kebab-case")]
    enum Known {
        Idle,
    }

    /// A state this build does not know is a specific error naming it, and
    /// reading it changes nothing.
    #[test]
    fn an_unknown_stored_state_is_refused_by_name_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut store = Store::open(&path).unwrap();
        let old = serde_json::json!({"state": "failed", "step": "release"});
        store
            .transition(&old, "state", &serde_json::json!({}))
            .unwrap();
        let e = store.current_state::<Known>().unwrap_err();
        let StoreError::UnreadableState { found, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(found, "failed");
        assert!(e.to_string().contains("takes no action"), "{e}");
        // Not even a tag: still specific.
        store
            .transition(&serde_json::json!([1, 2]), "state", &serde_json::json!({}))
            .unwrap();
        let e = store.current_state::<Known>().unwrap_err();
        assert!(
            matches!(&e, StoreError::UnreadableState { found, .. } if found == "?"),
            "{e:?}"
        );
        let raw = store
            .current_state::<serde_json::Value>()
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(raw, serde_json::json!([1, 2]));
        assert!(store.current_state::<Known>().is_err());
    }
}
