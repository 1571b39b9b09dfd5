//! The configuration file as written: plain TOML values, every key optional.
//!
//! Each file (main and drop-ins) is deserialized into [`RawConfig`] on its own
//! so type errors and unknown keys point into the file that has them. Values
//! are checked and converted into [`super::Settings`] after merging.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawConfig {
    pub node: RawNode,
    pub lease: RawLease,
    pub reboot: RawReboot,
    pub maintenance: RawMaintenance,
    pub gates: RawGates,
    pub alerts: RawAlerts,
    pub drain: RawDrain,
    pub verify: RawVerify,
    pub packages: RawPackages,
    pub report: RawReport,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawNode {
    pub name: Option<String>,
    pub kubeconfig: Option<String>,
    pub state_db: Option<String>,
    pub run_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawLease {
    pub namespace: Option<String>,
    pub group: Option<String>,
    pub concurrency: Option<i64>,
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawReboot {
    pub sentinel_file: Option<String>,
    pub sentinel_command: Option<Vec<String>>,
    pub sentinel_command_timeout: Option<String>,
    pub check_kernel: Option<bool>,
    pub boot_dir: Option<String>,
    pub check_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawMaintenance {
    pub windows: Option<Vec<RawWindow>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWindow {
    pub days: Vec<String>,
    pub start: String,
    pub length: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawGates {
    pub soak: Option<String>,
    pub node_selector: Option<String>,
    pub required_daemonsets: Option<Vec<String>>,
    pub blocking_pod_selectors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawAlerts {
    pub prometheus_url: Option<String>,
    pub alertmanager_url: Option<String>,
    pub ignore: Option<String>,
    pub match_only: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawDrain {
    pub timeout: Option<String>,
    pub delete_emptydir_data: Option<bool>,
    pub evict_unmanaged: Option<bool>,
    pub delete_pdb_blocked_after: Option<String>,
    pub pre_drain_wait: Option<String>,
    pub pod_selector: Option<String>,
    pub retry_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawVerify {
    pub timeout: Option<String>,
    pub checks_dir: Option<String>,
    pub check_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawPackages {
    pub protect: Option<Vec<String>>,
    pub authorization_ttl: Option<String>,
    pub dpkg_root: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawReport {
    pub textfile_dir: Option<String>,
    pub metrics_listen: Option<String>,
    pub slack_webhook_url: Option<String>,
    pub webhook_url: Option<String>,
    pub kubernetes_events: Option<bool>,
    pub slack_events: Option<Vec<String>>,
    pub webhook_events: Option<Vec<String>>,
    pub templates: Option<std::collections::BTreeMap<String, String>>,
}
