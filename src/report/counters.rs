//! Totals and times that must survive the reboots they count: kept in the
//! state store under one kv key, so `drydock_reboots_total` does not restart
//! from zero every time the node comes back, and "draining since" or "reboot
//! needed since" do not restart with the daemon.

use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::notice::{Notice, Phase};
use crate::store::{Store, StoreError};

/// The store key holding [`Counters`].
pub(crate) const COUNTERS_KEY: &str = "report.counters";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub reboots_total: u64,
    pub drain_failures_total: u64,
    pub apt_refusals_total: u64,
    /// Unix seconds of the last reboot drydock started.
    pub last_reboot_timestamp: Option<i64>,
    /// The boot counted last, so a resumed `Rebooting` is not counted twice.
    pub last_counted_boot_id: Option<String>,
    /// The phase last reported, and since when (Unix seconds).
    pub phase: Option<Phase>,
    pub phase_since: Option<i64>,
    /// When the pending reboot was first noticed (Unix seconds).
    pub reboot_needed_since: Option<i64>,
    /// When the Kubernetes upgrade in flight started (Unix seconds).
    pub upgrade_started: Option<i64>,
}

impl Counters {
    /// Folds a notice in; returns whether anything changed (and needs saving).
    pub fn apply(&mut self, notice: &Notice, now: Timestamp) -> bool {
        let times = self.apply_times(notice, now);
        self.apply_totals(notice, now) || times
    }

    /// The "since" times: a phase's start, the reboot need, the upgrade.
    fn apply_times(&mut self, notice: &Notice, now: Timestamp) -> bool {
        let before = (
            self.phase,
            self.phase_since,
            self.reboot_needed_since,
            self.upgrade_started,
        );
        if let Some(phase) = notice.phase()
            && self.phase != Some(phase)
        {
            self.phase = Some(phase);
            self.phase_since = Some(now.as_second());
        }
        match notice {
            Notice::RebootNeeded { .. } => {
                self.reboot_needed_since.get_or_insert(now.as_second());
            }
            Notice::Upgrading { .. } => {
                self.upgrade_started.get_or_insert(now.as_second());
            }
            Notice::Idle => {
                self.reboot_needed_since = None;
                self.upgrade_started = None;
            }
            Notice::Verified { .. } => self.reboot_needed_since = None,
            Notice::Released => self.upgrade_started = None,
            _ => {}
        }
        before
            != (
                self.phase,
                self.phase_since,
                self.reboot_needed_since,
                self.upgrade_started,
            )
    }

    fn apply_totals(&mut self, notice: &Notice, now: Timestamp) -> bool {
        match notice {
            Notice::Rebooting { boot_id } => {
                if self.last_counted_boot_id.as_deref() == Some(boot_id.as_str()) {
                    return false;
                }
                self.reboots_total += 1;
                self.last_reboot_timestamp = Some(now.as_second());
                self.last_counted_boot_id = Some(boot_id.clone());
                true
            }
            Notice::DrainFailed { .. } => {
                self.drain_failures_total += 1;
                true
            }
            Notice::AptRun { refused, .. } if !refused.is_empty() => {
                self.apt_refusals_total += refused.len() as u64;
                true
            }
            _ => false,
        }
    }

    /// Reads the saved totals; zero when the store or key does not exist yet.
    pub fn load(state_db: &Path) -> Result<Counters, StoreError> {
        match Store::open_read_only(state_db)? {
            Some(store) => Ok(store.get(COUNTERS_KEY)?.unwrap_or_default()),
            None => Ok(Counters::default()),
        }
    }

    pub fn save(&self, state_db: &Path) -> Result<(), StoreError> {
        self.save_to(&Store::open(state_db)?)
    }

    /// Saves through a store the caller keeps open.
    pub fn save_to(&self, store: &Store) -> Result<(), StoreError> {
        store.set(COUNTERS_KEY, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_reboot_is_counted_once() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut c = Counters::default();
        let boot = Notice::Rebooting {
            boot_id: "b1".into(),
        };
        assert!(c.apply(&boot, now));
        assert!(!c.apply(&boot, now));
        assert_eq!(c.reboots_total, 1);
        assert_eq!(c.last_reboot_timestamp, Some(1_700_000_000));
        assert!(c.apply(
            &Notice::Rebooting {
                boot_id: "b2".into()
            },
            now
        ));
        assert_eq!(c.reboots_total, 2);
        assert!(c.apply(&Notice::Idle, now));
        assert!(!c.apply(&Notice::Idle, now));
    }

    #[test]
    fn since_times_start_once_and_end_with_the_cycle() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let mut c = Counters::default();
        let need = Notice::RebootNeeded {
            reasons: vec!["kernel".into()],
        };
        assert!(c.apply(&need, t(100)));
        // Noticed again later: still needed since the first time.
        assert!(!c.apply(&need, t(200)));
        assert_eq!(
            (c.phase, c.phase_since, c.reboot_needed_since),
            (Some(Phase::Pending), Some(100), Some(100))
        );
        c.apply(&Notice::Draining { pods_left: 3 }, t(300));
        c.apply(&Notice::Draining { pods_left: 2 }, t(310));
        assert_eq!((c.phase, c.phase_since), (Some(Phase::Draining), Some(300)));
        c.apply(
            &Notice::Upgrading {
                from: "v1.34.1".into(),
                to: "v1.35.0".into(),
                step: "kubeadm".into(),
            },
            t(400),
        );
        c.apply(
            &Notice::Upgrading {
                from: "v1.34.1".into(),
                to: "v1.35.0".into(),
                step: "kubelet".into(),
            },
            t(500),
        );
        assert_eq!(c.upgrade_started, Some(400));
        c.apply(
            &Notice::Verified {
                durations: Default::default(),
            },
            t(600),
        );
        assert_eq!(c.reboot_needed_since, None);
        assert_eq!(c.upgrade_started, Some(400));
        c.apply(&Notice::Released, t(700));
        assert_eq!(c.upgrade_started, None);
        assert_eq!((c.phase, c.phase_since), (Some(Phase::Soaking), Some(700)));
    }

    #[test]
    fn saved_and_loaded_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        assert_eq!(Counters::load(&db).unwrap(), Counters::default());
        let c = Counters {
            reboots_total: 3,
            drain_failures_total: 1,
            ..Default::default()
        };
        c.save(&db).unwrap();
        assert_eq!(Counters::load(&db).unwrap(), c);
    }
}
