//! The `[upgrade]` section: how Kubernetes upgrades run on this node
//! (commands, apt source, etcd snapshot). Kept apart from the other
//! sections so it reads as one piece.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::settings::KeyError;
use super::values::{self, ValueError};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawUpgrade {
    pub kubeadm: Option<String>,
    pub apt_get: Option<String>,
    pub apt_cache: Option<String>,
    pub etcdctl: Option<String>,
    pub apt_source_file: Option<String>,
    pub apt_source_template: Option<String>,
    pub kubeadm_apply_args: Option<Vec<String>>,
    pub kubeadm_timeout: Option<String>,
    pub apt_timeout: Option<String>,
    pub etcd_endpoints: Option<String>,
    pub etcd_cacert: Option<String>,
    pub etcd_cert: Option<String>,
    pub etcd_key: Option<String>,
    pub etcd_snapshot_dir: Option<String>,
    pub etcd_timeout: Option<String>,
    pub kubelet_unit: Option<String>,
}

/// The placeholder in `apt-source-template` replaced by `1.35`.
pub(crate) const MINOR_PLACEHOLDER: &str = "{minor}";

#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeSettings {
    pub kubeadm: PathBuf,
    pub apt_get: PathBuf,
    pub apt_cache: PathBuf,
    pub etcdctl: PathBuf,
    pub apt_source_file: PathBuf,
    /// One `deb` line with [`MINOR_PLACEHOLDER`].
    pub apt_source_template: String,
    /// Appended to `kubeadm upgrade apply -y vX.Y.Z`.
    pub kubeadm_apply_args: Vec<String>,
    pub kubeadm_timeout: Duration,
    pub apt_timeout: Duration,
    pub etcd_endpoints: String,
    /// `None`: not passed (plain http etcd, tests only).
    pub etcd_cacert: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub etcd_snapshot_dir: PathBuf,
    pub etcd_timeout: Duration,
    pub kubelet_unit: String,
}

impl Default for UpgradeSettings {
    fn default() -> Self {
        UpgradeSettings {
            kubeadm: "/usr/bin/kubeadm".into(),
            apt_get: "/usr/bin/apt-get".into(),
            apt_cache: "/usr/bin/apt-cache".into(),
            etcdctl: "/usr/bin/etcdctl".into(),
            apt_source_file: "/etc/apt/sources.list.d/kubernetes.list".into(),
            apt_source_template: "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v{minor}/deb/ /".into(),
            kubeadm_apply_args: Vec::new(),
            kubeadm_timeout: Duration::from_secs(15 * 60),
            apt_timeout: Duration::from_secs(10 * 60),
            etcd_endpoints: "https://127.0.0.1:2379".into(),
            etcd_cacert: Some("/etc/kubernetes/pki/etcd/ca.crt".into()),
            etcd_cert: Some("/etc/kubernetes/pki/etcd/healthcheck-client.crt".into()),
            etcd_key: Some("/etc/kubernetes/pki/etcd/healthcheck-client.key".into()),
            etcd_snapshot_dir: "/var/lib/drydock/etcd-snapshots".into(),
            etcd_timeout: Duration::from_secs(5 * 60),
            kubelet_unit: "kubelet.service".into(),
        }
    }
}

fn at<T>(key: &str, result: Result<T, ValueError>) -> Result<T, KeyError> {
    result.map_err(|error| KeyError {
        key: format!("upgrade.{key}"),
        error,
    })
}

fn program(key: &str, value: Option<String>, default: PathBuf) -> Result<PathBuf, KeyError> {
    match value {
        None => Ok(default),
        Some(p) if p.starts_with('/') && !p.contains('\0') => Ok(p.into()),
        Some(p) => at(
            key,
            Err(ValueError::Upgrade(format!(
                "{p:?} is not an absolute path"
            ))),
        ),
    }
}

/// Empty string: not passed.
fn optional_path(
    key: &str,
    value: Option<String>,
    default: Option<PathBuf>,
) -> Result<Option<PathBuf>, KeyError> {
    match value {
        None => Ok(default),
        Some(p) if p.is_empty() => Ok(None),
        Some(p) => program(key, Some(p), PathBuf::new()).map(Some),
    }
}

fn template(text: &str) -> Result<String, ValueError> {
    let bad = |why: &str| {
        Err(ValueError::Upgrade(format!(
            "apt source template {text:?} {why}"
        )))
    };
    if text.contains(['\n', '\r', '\0']) {
        return bad("must be one line");
    }
    if !text.starts_with("deb ") {
        return bad("must be a one-line \"deb ...\" source");
    }
    if !text.contains(MINOR_PLACEHOLDER) {
        return bad("must contain {minor} (replaced by the target's minor, like 1.35)");
    }
    Ok(text.to_string())
}

fn unit(text: &str) -> Result<String, ValueError> {
    let ok = text.ends_with(".service")
        && text.len() <= 256
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '\\'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(ValueError::Upgrade(format!(
            "{text:?} is not a systemd service name like \"kubelet.service\""
        )))
    }
}

impl UpgradeSettings {
    pub(crate) fn from_raw(raw: RawUpgrade) -> Result<UpgradeSettings, KeyError> {
        let d = UpgradeSettings::default();
        let dur = |key: &str, v: Option<String>, default: Duration| match v {
            Some(text) => at(key, values::duration(&text)),
            None => Ok(default),
        };
        Ok(UpgradeSettings {
            kubeadm: program("kubeadm", raw.kubeadm, d.kubeadm)?,
            apt_get: program("apt-get", raw.apt_get, d.apt_get)?,
            apt_cache: program("apt-cache", raw.apt_cache, d.apt_cache)?,
            etcdctl: program("etcdctl", raw.etcdctl, d.etcdctl)?,
            apt_source_file: program("apt-source-file", raw.apt_source_file, d.apt_source_file)?,
            apt_source_template: match raw.apt_source_template {
                Some(t) => at("apt-source-template", template(&t))?,
                None => d.apt_source_template,
            },
            kubeadm_apply_args: match raw.kubeadm_apply_args {
                Some(args) => {
                    if let Some(bad) = args
                        .iter()
                        .find(|a| !a.starts_with("--") || a.contains('\0'))
                    {
                        return at(
                            "kubeadm-apply-args",
                            Err(ValueError::Upgrade(format!(
                                "{bad:?} is not a flag: each entry must be one \"--flag\" or \"--flag=value\""
                            ))),
                        );
                    }
                    args
                }
                None => d.kubeadm_apply_args,
            },
            kubeadm_timeout: dur("kubeadm-timeout", raw.kubeadm_timeout, d.kubeadm_timeout)?,
            apt_timeout: dur("apt-timeout", raw.apt_timeout, d.apt_timeout)?,
            etcd_endpoints: match raw.etcd_endpoints {
                Some(e) => at("etcd-endpoints", values::http_url(e))?,
                None => d.etcd_endpoints,
            },
            etcd_cacert: optional_path("etcd-cacert", raw.etcd_cacert, d.etcd_cacert)?,
            etcd_cert: optional_path("etcd-cert", raw.etcd_cert, d.etcd_cert)?,
            etcd_key: optional_path("etcd-key", raw.etcd_key, d.etcd_key)?,
            etcd_snapshot_dir: program(
                "etcd-snapshot-dir",
                raw.etcd_snapshot_dir,
                d.etcd_snapshot_dir,
            )?,
            etcd_timeout: dur("etcd-timeout", raw.etcd_timeout, d.etcd_timeout)?,
            kubelet_unit: match raw.kubelet_unit {
                Some(u) => at("kubelet-unit", unit(&u))?,
                None => d.kubelet_unit,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawUpgrade {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            UpgradeSettings::from_raw(RawUpgrade::default()).unwrap(),
            UpgradeSettings::default()
        );
        let s = UpgradeSettings::from_raw(raw(
            "kubeadm = \"/t/kubeadm\"\netcd-cacert = \"\"\nkubeadm-apply-args = [\"--etcd-upgrade=false\"]\netcd-endpoints = \"http://127.0.0.1:2379\"\n",
        ))
        .unwrap();
        assert_eq!(s.kubeadm, PathBuf::from("/t/kubeadm"));
        assert_eq!(s.etcd_cacert, None);
        assert_eq!(s.kubeadm_apply_args, ["--etcd-upgrade=false"]);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("kubeadm = \"kubeadm\"", "upgrade.kubeadm"),
            (
                "apt-source-template = \"deb https://x/ /\"",
                "upgrade.apt-source-template",
            ),
            (
                "apt-source-template = \"deb https://x/{minor}/ /\\ndeb y\"",
                "upgrade.apt-source-template",
            ),
            (
                "kubeadm-apply-args = [\"-y; rm -rf /\"]",
                "upgrade.kubeadm-apply-args",
            ),
            ("kubelet-unit = \"kubelet\"", "upgrade.kubelet-unit"),
            (
                "etcd-endpoints = \"127.0.0.1:2379\"",
                "upgrade.etcd-endpoints",
            ),
            ("kubeadm-timeout = \"forever\"", "upgrade.kubeadm-timeout"),
        ] {
            let err = UpgradeSettings::from_raw(raw(text)).expect_err(text);
            assert_eq!(err.key, key, "{text}");
        }
    }
}
