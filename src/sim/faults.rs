//! Fault injection beyond one fault for every request (see
//! [`super::Fault`]): a seeded share of requests fails, and open watches can
//! be closed at once while new requests are still served. Seeded, so a
//! failing fault-injection run replays the same way.

use std::sync::Mutex;

use super::state::{Fault, lock};

/// A share of requests (0.0 to 1.0) that get `fault`, drawn from a seeded
/// generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flaky {
    pub seed: u64,
    pub share: f64,
    pub fault: Fault,
}

pub(super) struct Faults {
    flaky: Mutex<Option<(fastrand::Rng, f64, Fault)>>,
    /// Bumped to end every open watch.
    watches: tokio::sync::watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            flaky: Mutex::new(None),
            watches: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Faults {
    pub(super) fn set_flaky(&self, flaky: Option<Flaky>) {
        *lock(&self.flaky) = flaky.map(|f| {
            (
                fastrand::Rng::with_seed(f.seed),
                f.share.clamp(0.0, 1.0),
                f.fault,
            )
        });
    }

    /// The fault for this request, if it is one of the unlucky share.
    pub(super) fn roll(&self) -> Option<Fault> {
        let mut flaky = lock(&self.flaky);
        let (rng, share, fault) = flaky.as_mut()?;
        (rng.f64() < *share).then_some(*fault)
    }

    pub(super) fn close_watches(&self) {
        self.watches.send_modify(|n| *n += 1);
    }

    /// Resolves at the next [`Faults::close_watches`] after the call.
    pub(super) fn watches_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.watches.subscribe();
        async move {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
