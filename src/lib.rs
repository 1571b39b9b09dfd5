//! drydock: keeps a kubeadm cluster patched, one node at a time.
//!
//! Modules follow the data: config -> host/cluster observations -> gates ->
//! lease -> drain -> reboot/upgrade -> verify -> report. `agent` drives them;
//! nothing below `agent` imports it. `sim` is the Kubernetes API simulator
//! used by tests and `drydock simulate`; `cli` is the command line.

pub mod aptgate;
pub mod cli;
pub mod config;
pub mod host;
pub mod logging;
pub mod sim;
pub mod store;
