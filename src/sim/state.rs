//! Shared state of one running simulator: the store, timers of the
//! simulated kubelets/controllers, options, request statistics and faults.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::stats::StatsState;
use super::store::Store;

/// Tunables of a simulated cluster.
#[derive(Debug, Clone)]
pub(crate) struct SimOptions {
    /// How long a new pod stays Pending before it is Running and Ready
    /// (also how long a node's pods take to become Ready after the node does).
    pub pod_start_delay: Duration,
    /// Changes kept for watches; a watch from an older resourceVersion gets 410.
    pub history_limit: usize,
    /// `gitVersion` served at `/version`.
    pub server_version: String,
    /// `terminationGracePeriodSeconds` of scenario pods.
    pub default_grace_period: i64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            pod_start_delay: Duration::from_millis(200),
            history_limit: 1000,
            server_version: "v1.34.1".to_string(),
            default_grace_period: 1,
        }
    }
}

/// A failure mode injected into every API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer every request with this HTTP status and a `Status` body
    /// (503 makes the API look unavailable; note kube's client retries 503).
    Status(u16),
    /// Hold every request this long before serving it.
    Delay(Duration),
}

pub(super) struct State {
    pub store: Store,
    pub opts: SimOptions,
    /// Pod uid -> when its graceful deletion completes.
    pub deletions: HashMap<String, Instant>,
    /// Pod uid -> when the (simulated) kubelet reports it Running and Ready.
    pub starts: HashMap<String, Instant>,
    pub ip_seq: u32,
    /// resourceVersion the controllers last ran at (skip when nothing relevant changed).
    pub reconciled_rv: u64,
    /// RBAC for users other than the admin (see `auth`).
    pub rbac: super::auth::Rbac,
    /// Where drydock's Lease holder policy applies, once installed.
    pub policy_namespace: Option<String>,
}

impl State {
    pub(super) fn new(opts: SimOptions) -> Self {
        Self {
            store: Store::new(opts.history_limit),
            opts,
            deletions: HashMap::new(),
            starts: HashMap::new(),
            ip_seq: 0,
            reconciled_rv: 0,
            rbac: Default::default(),
            policy_namespace: None,
        }
    }
}

pub(super) struct Shared {
    pub state: Mutex<State>,
    /// Wakes the controller loop after a write or a new timer.
    pub wake: Notify,
    pub stats: Mutex<StatsState>,
    pub fault: Mutex<Option<Fault>>,
    /// Seeded partial faults and watch closing.
    pub faults: super::faults::Faults,
    /// `true` while the HTTP server is stopped; ends open watches.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// How long the state was locked, in microseconds: every request and
    /// controller step runs one at a time under that lock, so this over
    /// the wall time is how busy the simulator's serial part was.
    pub held_micros: AtomicU64,
}

/// The state, locked; counts how long on drop (see [`Shared::held_micros`]).
pub(super) struct StateGuard<'a> {
    guard: MutexGuard<'a, State>,
    since: std::time::Instant,
    held: &'a AtomicU64,
}

impl Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let micros = self.since.elapsed().as_micros() as u64;
        self.held.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Locks ignoring poison: a panicking test thread must not wedge the server.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn new(opts: SimOptions) -> Self {
        Self {
            state: Mutex::new(State::new(opts)),
            wake: Notify::new(),
            stats: Mutex::new(StatsState::default()),
            fault: Mutex::new(None),
            faults: super::faults::Faults::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            held_micros: AtomicU64::new(0),
        }
    }

    pub(super) fn lock(&self) -> StateGuard<'_> {
        let guard = lock(&self.state);
        StateGuard {
            guard,
            since: std::time::Instant::now(),
            held: &self.held_micros,
        }
    }
}
