//! Proof that the daemon's upgrade step is running, for the hook.
//!
//! The daemon takes an exclusive `flock` on `<run-dir>/upgrade-step.lock`
//! for the whole step, writes the authorizations, and revokes them when the
//! step ends. The hook honours an authorization only while that lock is held
//! by someone else: the kernel drops the lock when the daemon exits or
//! crashes, so stale rows (also bounded by `expires_at`) are never honoured.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use crate::config::Settings;
use crate::store::{Authorization, Store, StoreError};

fn step_lock_path(settings: &Settings) -> PathBuf {
    settings.node.run_dir.join("upgrade-step.lock")
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("opening upgrade step lock {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upgrade step lock {} is held by another process: another upgrade step is running", path.display())]
    Busy { path: PathBuf },
    #[error("locking upgrade step lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("authorization lifetime {0:?} is out of range")]
    Ttl(Duration),
    #[error("writing package authorizations: {0}")]
    Store(#[from] StoreError),
}

/// A running upgrade step: while it lives, its authorizations are honoured.
#[derive(Debug)]
pub struct UpgradeStep {
    lock: File,
}

impl UpgradeStep {
    /// Takes the step lock, drops any stale authorizations, and authorizes
    /// each `(package, version)` for `settings.packages.authorization-ttl`.
    pub fn begin(
        settings: &Settings,
        store: &Store,
        packages: &[(String, String)],
    ) -> Result<UpgradeStep, StepError> {
        let path = step_lock_path(settings);
        let lock = open_lock(&path, true)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StepError::Busy { path }),
            Err(TryLockError::Error(source)) => return Err(StepError::Lock { path, source }),
        }
        store.revoke_authorizations()?;
        let ttl = settings.packages.authorization_ttl;
        let expires_at = jiff::SignedDuration::try_from(ttl)
            .ok()
            .and_then(|d| Timestamp::now().checked_add(d).ok())
            .ok_or(StepError::Ttl(ttl))?;
        for (package, version) in packages {
            store.authorize(&Authorization {
                package: package.clone(),
                version: version.clone(),
                expires_at,
            })?;
        }
        Ok(UpgradeStep { lock })
    }

    /// Revokes the authorizations, then releases the lock.
    pub fn finish(self, store: &Store) -> Result<(), StepError> {
        let revoked = store.revoke_authorizations();
        drop(self.lock);
        revoked.map_err(StepError::from)
    }
}

fn open_lock(path: &Path, create: bool) -> Result<File, StepError> {
    if create && let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| StepError::Open {
                path: path.into(),
                source,
            })?;
    }
    let mut opts = OpenOptions::new();
    opts.read(true);
    // A FIFO planted at the path must not block the hook's open.
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, nix::libc::O_NONBLOCK);
    if create {
        use std::os::unix::fs::OpenOptionsExt;
        opts.write(true).create(true).truncate(false).mode(0o600);
    }
    opts.open(path).map_err(|source| StepError::Open {
        path: path.into(),
        source,
    })
}

/// Whether another process holds the step lock. Any doubt answers `false`
/// (authorizations are then ignored: the hook fails closed).
pub fn step_running(settings: &Settings) -> bool {
    let Ok(file) = open_lock(&step_lock_path(settings), false) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_proves_the_step_and_revokes_on_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.node.run_dir = dir.path().join("run");
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert!(!step_running(&settings));
        let step = UpgradeStep::begin(
            &settings,
            &store,
            &[("kubeadm".into(), "1.34.2-1.1".into())],
        )
        .unwrap();
        assert!(step_running(&settings));
        assert!(matches!(
            UpgradeStep::begin(&settings, &store, &[]),
            Err(StepError::Busy { .. })
        ));
        assert_eq!(store.authorizations(Timestamp::now()).unwrap().len(), 1);
        step.finish(&store).unwrap();
        assert!(!step_running(&settings));
        assert!(store.authorizations(Timestamp::now()).unwrap().is_empty());
    }

    #[test]
    fn dropped_step_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.node.run_dir = dir.path().to_path_buf();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let step = UpgradeStep::begin(&settings, &store, &[("a".into(), "1".into())]).unwrap();
        drop(step);
        assert!(!step_running(&settings));
    }
}
