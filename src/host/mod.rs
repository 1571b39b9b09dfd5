//! This machine: reboot sentinels, installed kernels, boot_id, apt/dpkg,
//! systemd and logind, post-boot checks.

pub(crate) mod boot;
pub(crate) mod checks;
pub(crate) mod command;
pub(crate) mod dbus;
pub(crate) mod dpkg;
pub(crate) mod instance;
pub(crate) mod kernel;
pub(crate) mod logind;
pub(crate) mod sentinel;
pub(crate) mod systemd;
