//! The agent: one node's state machine ([`state`]), the loop that drives it
//! ([`driver`]), and the traits through which it sees the world ([`ports`]).

pub mod driver;
pub mod kube_cluster;
pub mod node_host;
mod pace;
pub mod ports;
pub mod state;
mod turn;

pub use driver::{Agent, AgentError, Wait};
pub use state::AgentState;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upgrade_props;
