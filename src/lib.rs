//! drydock: keeps a kubeadm cluster patched, one node at a time.
//!
//! Modules follow the data: config -> host/cluster observations -> gates ->
//! lease -> drain -> reboot/upgrade -> verify -> report. `agent` drives them;
//! nothing below `agent` imports it. `sim` is the Kubernetes API simulator
//! used by tests and `drydock simulate`, built only with the `sim` feature
//! (on by default, off for the .deb); `cli` is the command line.

pub mod agent;
pub mod aptgate;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fileread;
pub mod gates;
pub mod host;
pub mod logging;
pub mod phase;
pub mod report;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "sim")]
pub mod simulate;
pub mod store;
pub mod text;
pub mod upgrade;
pub mod verify;
