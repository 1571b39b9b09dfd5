//! Seeded fault runs (tests/fleet_faults.rs, tests/fleet_model.rs): which
//! seeds to run, several at once, and the command that replays a failing one.

use std::future::Future;
use std::path::Path;
use std::time::Instant;

use drydock::testing::phase::Phase;

/// How a fault test names its knobs: `{prefix}_SEED` replays one seed,
/// `{prefix}_SEEDS` sets how many, `{prefix}_PARALLEL` how many at once.
/// What a lost slot asks of the node (see `agent::state::SlotLoss`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Loss {
    /// Lost before the reboot request: uncordon, wait again (U).
    Undo,
    /// Lost after it: stay cordoned, win a slot back first (R).
    Regain,
    /// In `rebooting`, no reboot asked of the host yet: the request may
    /// already be recorded, so either.
    Either,
}

impl Loss {
    /// The loss of a node in `state` whose host was (`reboot_asked`) or
    /// was not yet asked to reboot.
    pub(crate) fn on_lease_lost(reboot_asked: bool, state: Option<&Phase>) -> Loss {
        match state {
            _ if reboot_asked => Loss::Regain,
            Some(Phase::Rebooting) => Loss::Either,
            Some(Phase::Verifying | Phase::Upgrading) => Loss::Regain,
            _ => Loss::Undo,
        }
    }
}

pub(crate) struct SeedRun {
    pub env_prefix: &'static str,
    pub test_name: &'static str,
    pub default_seeds: u64,
    pub default_parallel: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The first node is the control plane, the rest workers.
pub(crate) fn node_names(nodes: usize) -> Vec<String> {
    let mut v = vec!["cp-1".to_string()];
    v.extend((1..nodes).map(|i| format!("worker-{i}")));
    v
}

impl SeedRun {
    fn seeds(&self) -> Vec<u64> {
        if let Some(one) = env_u64(&format!("{}_SEED", self.env_prefix)) {
            return vec![one];
        }
        let n = env_u64(&format!("{}_SEEDS", self.env_prefix)).unwrap_or(self.default_seeds);
        (1..=n).collect()
    }

    /// Runs every seed (`Ok`: its summary line; `Err`: why it failed) and
    /// fails the test naming the failing seeds, each with its replay command.
    pub(crate) fn run<F, Fut>(&self, run_seed: F)
    where
        F: Fn(u64) -> Fut + Copy + Send + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let parallel = env_u64(&format!("{}_PARALLEL", self.env_prefix))
            .map_or(self.default_parallel, |p| p as usize)
            .max(1);
        let seeds = self.seeds();
        let started = Instant::now();
        let (prefix, test) = (self.env_prefix, self.test_name);
        let failed: Vec<u64> = rt.block_on(async {
            use futures::StreamExt;
            futures::stream::iter(seeds.clone())
                .map(|seed| async move {
                    let r = tokio::spawn(run_seed(seed))
                        .await
                        .unwrap_or_else(|e| Err(format!("the seed's task panicked: {e}")));
                    match r {
                        Ok(line) => {
                            eprintln!("{line}");
                            None
                        }
                        Err(why) => {
                            eprintln!(
                                "FAILED seed {seed}: {why}\nreplay: {prefix}_SEED={seed} cargo test --test {test}"
                            );
                            Some(seed)
                        }
                    }
                })
                .buffer_unordered(parallel)
                .filter_map(|f| async move { f })
                .collect()
                .await
        });
        eprintln!(
            "{} seeds in {:.1} s ({} at once)",
            seeds.len(),
            started.elapsed().as_secs_f64(),
            parallel
        );
        assert!(
            failed.is_empty(),
            "failing seeds: {failed:?} (replay commands above)"
        );
    }
}

/// A rebooted node's history must show every state in `wants`: one problem
/// line for each that its store at `db` lacks.
pub(crate) fn history_gaps(db: &Path, node: &str, wants: &[&str]) -> Result<Vec<String>, String> {
    let store = drydock::testing::store::Store::open(db).map_err(|e| e.to_string())?;
    let history = store.history(&["state"], 1000).map_err(|e| e.to_string())?;
    let tos: Vec<&str> = history
        .iter()
        .filter_map(|h| h.detail.get("to").and_then(|v| v.as_str()))
        .collect();
    Ok(wants
        .iter()
        .filter(|want| !tos.contains(want))
        .map(|want| format!("{node} rebooted but its history lacks -> {want}: {tos:?}"))
        .collect())
}
