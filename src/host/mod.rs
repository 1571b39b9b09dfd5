//! This machine: observations and actions on the local host.

pub mod dpkg;
