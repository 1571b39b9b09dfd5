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

pub mod aptconf;
pub mod holds;
pub mod policy;
pub mod protocol;
pub mod record;
pub mod step;
pub mod wake;

pub use aptconf::check_apt_config;
pub use holds::{HoldPlan, reconcile as reconcile_holds};
pub use step::{UpgradeStep, step_running};
pub use wake::{WakeListener, wake_daemon, wake_path};
