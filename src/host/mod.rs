//! This machine: reboot sentinels, installed kernels, boot_id, apt/dpkg,
//! systemd and logind, post-boot checks.

pub mod boot;
pub mod checks;
pub mod command;
pub mod dbus;
pub mod dpkg;
pub mod instance;
pub mod kernel;
pub mod logind;
pub mod sentinel;
pub mod systemd;
