//! The APT gate: protected packages stay on dpkg hold, and an APT hook
//! refuses any dpkg run that would change one, unless the daemon authorized
//! that exact version for its own upgrade step.
//!
//! - [`protocol`]: the `Pre-Install-Pkgs` version-3 input (pure parser)
//! - [`policy`]: whether a run may go ahead (pure)
//! - [`holds`]: dpkg holds, planned purely, applied through `host::dpkg`
//! - [`step`]: the daemon's upgrade step lock and authorizations
//! - [`record`]: what an apt run changed, for the history
//! - [`wake`]: the datagram the post-invoke hook sends the daemon
//! - [`aptconf`]: apt / unattended-upgrades configuration checks

pub(crate) mod aptconf;
pub(crate) mod holds;
pub(crate) mod policy;
pub(crate) mod protocol;
pub(crate) mod record;
pub(crate) mod step;
pub(crate) mod wake;

pub(crate) use aptconf::check_apt_config;
pub(crate) use holds::HoldPlan;
pub use holds::reconcile as reconcile_holds;
pub use step::UpgradeStep;
pub(crate) use wake::WakeListener;
pub(crate) use wake::wake_daemon;
pub use wake::wake_path;
