//! The agent: one node's state machine ([`state`]), the loop that drives it
//! ([`driver`]), and the traits through which it sees the world ([`ports`]).

pub(crate) mod driver;
pub(crate) mod kube_cluster;
pub(crate) mod node_host;
mod pace;
pub(crate) mod ports;
pub(crate) mod state;
mod turn;

pub use driver::Agent;
pub use driver::AgentError;
pub use state::AgentState;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upgrade_props;
