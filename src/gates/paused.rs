//! Paused and halted. A local pause (`drydock pause --reason`) lives in the
//! store; a cluster-wide pause and the halt live as annotations on the
//! drydock Namespace (see `cluster::annotations`).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::cluster::annotations::{self, ClusterControl};
use crate::store::{Store, StoreError};

/// The local pause gate (a local gate, checked before anything else).
pub(crate) const LOCAL: &str = super::GateName::Paused.as_str();
/// The cluster-wide pause gate.
pub(crate) const CLUSTER: &str = super::GateName::ClusterPaused.as_str();
/// The halted gate.
pub(crate) const HALTED: &str = super::GateName::Halted.as_str();

/// Store key of the local pause.
const PAUSE_KEY: &str = crate::store::keys::PAUSE;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPause {
    pub reason: String,
    pub since: Timestamp,
}

/// `drydock pause --reason`. Pausing again replaces the reason.
pub(crate) fn pause(store: &Store, reason: &str) -> Result<LocalPause, StoreError> {
    let pause = LocalPause {
        reason: if reason.trim().is_empty() {
            "no reason given".into()
        } else {
            crate::text::display(reason.trim(), crate::text::MAX_REASON)
        },
        since: Timestamp::now(),
    };
    store.set(PAUSE_KEY, &pause)?;
    Ok(pause)
}

/// `drydock resume`; true if it was paused.
pub(crate) fn resume(store: &Store) -> Result<bool, StoreError> {
    store.remove(PAUSE_KEY)
}

pub(crate) fn local_pause(store: &Store) -> Result<Option<LocalPause>, StoreError> {
    store.get(PAUSE_KEY)
}

pub(crate) fn evaluate_local(pause: Option<&LocalPause>) -> Verdict {
    match pause {
        None => Verdict::Pass,
        Some(p) => Verdict::Block(format!(
            "paused on this node since {}: {} (drydock resume)",
            p.since.strftime("%Y-%m-%d %H:%M UTC"),
            crate::text::display(&p.reason, crate::text::MAX_REASON)
        )),
    }
}

pub(crate) fn evaluate_cluster(control: &ClusterControl, namespace: &str) -> Verdict {
    match &control.paused {
        None => Verdict::Pass,
        Some(reason) => Verdict::Block(format!(
            "paused cluster-wide: {reason} (annotation {} on Namespace {namespace})",
            annotations::PAUSED
        )),
    }
}

pub(crate) fn evaluate_halted(control: &ClusterControl, namespace: &str) -> Verdict {
    match &control.halted {
        None => Verdict::Pass,
        Some(reason) => Verdict::Block(format!(
            "fleet halted: {reason} (remove annotation {} on Namespace {namespace} once fixed)",
            annotations::HALTED
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_pause_round_trips_and_blocks_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(local_pause(&store).unwrap(), None);
        assert_eq!(evaluate_local(None), Verdict::Pass);
        let p = pause(&store, "kernel regression on 6.1.0-21").unwrap();
        assert_eq!(local_pause(&store).unwrap().as_ref(), Some(&p));
        match evaluate_local(Some(&p)) {
            Verdict::Block(r) => {
                assert!(r.starts_with("paused on this node since "), "{r}");
                assert!(r.contains("kernel regression on 6.1.0-21"), "{r}");
            }
            v => panic!("{v:?}"),
        }
        assert!(resume(&store).unwrap());
        assert!(!resume(&store).unwrap());
        assert_eq!(local_pause(&store).unwrap(), None);
        assert_eq!(pause(&store, " ").unwrap().reason, "no reason given");
    }

    #[test]
    fn cluster_pause_and_halt_block_with_their_reasons() {
        let mut c = ClusterControl::default();
        assert_eq!(evaluate_cluster(&c, "drydock"), Verdict::Pass);
        assert_eq!(evaluate_halted(&c, "drydock"), Verdict::Pass);
        c.paused = Some("change freeze".into());
        assert_eq!(
            evaluate_cluster(&c, "drydock"),
            Verdict::Block(
                "paused cluster-wide: change freeze (annotation drydock.dev/paused on Namespace drydock)"
                    .into()
            )
        );
        c.halted = Some("node-3 failed verification: kubelet not Ready".into());
        match evaluate_halted(&c, "drydock") {
            Verdict::Block(r) => assert!(
                r.starts_with("fleet halted: node-3 failed verification: kubelet not Ready"),
                "{r}"
            ),
            v => panic!("{v:?}"),
        }
    }
}
