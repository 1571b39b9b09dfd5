//! This machine: reboot sentinels, installed kernels, boot_id, apt/dpkg,
//! systemd and logind.

pub mod kernel;
pub mod sentinel;
