pub mod boot;
pub mod checks;
pub mod logind;
pub mod systemd;
