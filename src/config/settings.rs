//! Validated settings: what the rest of drydock reads. Built from the merged
//! [`RawConfig`]; every value has been checked and converted.

use std::path::PathBuf;
use std::time::Duration;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use regex::Regex;

use super::raw::{RawConfig, RawWindow};
use super::values::{self, ValueError};

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: NodeSettings,
    pub lease: LeaseSettings,
    pub reboot: RebootSettings,
    pub maintenance: MaintenanceSettings,
    pub gates: GateSettings,
    pub alerts: AlertSettings,
    pub drain: DrainSettings,
    pub verify: VerifySettings,
    pub packages: PackageSettings,
    pub report: ReportSettings,
    pub upgrade: super::upgrade::UpgradeSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// `None`: the host name, as the kubelet registers it.
    pub name: Option<String>,
    /// The kubelet's credential: everything about this node.
    pub kubeconfig: PathBuf,
    /// An administrator's own kubeconfig for the drydock identity; `None`:
    /// enrol through a CertificateSigningRequest (see `cluster::identity`).
    pub identity_kubeconfig: Option<PathBuf>,
    /// Where the enrolled identity's key, certificate and kubeconfig live.
    pub identity_dir: PathBuf,
    /// kubeadm's admin kubeconfig; where it exists (control-plane nodes) the
    /// daemon approves the nodes' drydock identity requests. `None`: never.
    pub admin_kubeconfig: Option<PathBuf>,
    pub state_db: PathBuf,
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub group: String,
    pub concurrency: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RebootSettings {
    pub sentinel_file: PathBuf,
    /// argv; empty means no sentinel command.
    pub sentinel_command: Vec<String>,
    pub sentinel_command_timeout: Duration,
    pub check_kernel: bool,
    pub boot_dir: PathBuf,
    pub check_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaintenanceSettings {
    /// Empty: reboots are allowed at any time.
    pub windows: Vec<Window>,
}

/// A weekly maintenance window in a named time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub start: Time,
    pub length: Duration,
    pub time_zone: TimeZone,
    pub time_zone_name: String,
}

#[derive(Debug, Clone)]
pub struct GateSettings {
    pub soak: Duration,
    pub node_selector: String,
    pub required_daemonsets: Vec<NamespacedName>,
    /// The list came from the configuration: a missing DaemonSet blocks.
    /// The built-in default applies only when the DaemonSet exists.
    pub required_daemonsets_configured: bool,
    pub blocking_pod_selectors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub prometheus_url: Option<String>,
    pub alertmanager_url: Option<String>,
    pub ignore: AlertPattern,
    pub match_only: Option<Regex>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrainSettings {
    pub timeout: Duration,
    pub delete_emptydir_data: bool,
    pub evict_unmanaged: bool,
    pub delete_pdb_blocked_after: Option<Duration>,
    pub pre_drain_wait: Duration,
    pub pod_selector: String,
    pub retry_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifySettings {
    pub timeout: Duration,
    pub checks_dir: PathBuf,
    pub check_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PackageSettings {
    pub protect: Vec<glob::Pattern>,
    pub authorization_ttl: Duration,
    /// Root of the dpkg database drydock reads and holds (`dpkg --root`);
    /// "/" on a node, a sandbox in tests.
    pub dpkg_root: PathBuf,
}

#[derive(Clone, PartialEq)]
pub struct ReportSettings {
    pub textfile_dir: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub slack_webhook_url: Option<Secret>,
    pub webhook_url: Option<Secret>,
    pub kubernetes_events: bool,
    /// Event kinds (`Notice::kind`) posted to Slack and to the webhook.
    pub slack_events: Vec<String>,
    pub webhook_events: Vec<String>,
    /// Message templates by event kind (Slack text, webhook `message`).
    pub templates: std::collections::BTreeMap<String, Vec<values::TemplatePart>>,
}

impl std::fmt::Debug for ReportSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportSettings")
            .field("textfile_dir", &self.textfile_dir)
            .field("metrics_listen", &self.metrics_listen)
            .field("slack_webhook_url", &self.slack_webhook_url)
            .field("webhook_url", &self.webhook_url)
            .field("kubernetes_events", &self.kubernetes_events)
            .field("slack_events", &self.slack_events)
            .field("webhook_events", &self.webhook_events)
            .field("templates", &self.templates)
            .finish()
    }
}

/// A regex that is compiled when first matched. The built-in default then
/// costs nothing to processes that never look at alerts (the APT hook runs
/// on every dpkg call); a configured one is compiled, and so validated, at
/// load time.
#[derive(Debug, Clone)]
pub struct AlertPattern {
    source: &'static str,
    compiled: std::sync::Arc<std::sync::OnceLock<Regex>>,
}

impl AlertPattern {
    /// A pattern known to be valid (a constant of ours).
    fn built_in(source: &'static str) -> Self {
        AlertPattern {
            source,
            compiled: Default::default(),
        }
    }

    pub fn regex(&self) -> &Regex {
        self.compiled
            .get_or_init(|| Regex::new(self.source).expect("built-in regex is valid"))
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex().is_match(text)
    }

    pub fn as_str(&self) -> &str {
        match self.compiled.get() {
            Some(re) => re.as_str(),
            None => self.source,
        }
    }
}

impl From<Regex> for AlertPattern {
    fn from(re: Regex) -> Self {
        AlertPattern {
            source: "",
            compiled: std::sync::Arc::new(std::sync::OnceLock::from(re)),
        }
    }
}

/// A value that must never reach a log line (webhook URLs carry tokens).
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

pub(crate) const DEFAULT_PROTECTED: &[&str] = &[
    "kubelet",
    "kubeadm",
    "kubectl",
    "containerd",
    "containerd.io",
    "runc",
    "cri-tools",
    "kubernetes-cni",
    "calico-*",
    "cni-plugins-*",
    "docker-ce",
];

const DEFAULT_IGNORE_ALERTS: &str = "^(Watchdog|InfoInhibitor)$";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node: NodeSettings {
                name: None,
                kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
                identity_kubeconfig: None,
                identity_dir: "/var/lib/drydock/identity".into(),
                admin_kubeconfig: Some("/etc/kubernetes/admin.conf".into()),
                state_db: "/var/lib/drydock/state.db".into(),
                run_dir: "/run/drydock".into(),
            },
            lease: LeaseSettings {
                namespace: "drydock".into(),
                group: "default".into(),
                concurrency: 1,
                duration: Duration::from_secs(120),
            },
            reboot: RebootSettings {
                sentinel_file: "/var/run/reboot-required".into(),
                sentinel_command: Vec::new(),
                sentinel_command_timeout: Duration::from_secs(30),
                check_kernel: true,
                boot_dir: "/boot".into(),
                check_interval: Duration::from_secs(300),
            },
            maintenance: MaintenanceSettings::default(),
            gates: GateSettings {
                soak: Duration::from_secs(24 * 3600),
                node_selector: String::new(),
                required_daemonsets: vec![NamespacedName {
                    namespace: "kube-system".into(),
                    name: "calico-node".into(),
                }],
                required_daemonsets_configured: false,
                blocking_pod_selectors: Vec::new(),
            },
            alerts: AlertSettings {
                prometheus_url: None,
                alertmanager_url: None,
                ignore: AlertPattern::built_in(DEFAULT_IGNORE_ALERTS),
                match_only: None,
                timeout: Duration::from_secs(10),
            },
            drain: DrainSettings {
                timeout: Duration::from_secs(30 * 60),
                delete_emptydir_data: true,
                evict_unmanaged: true,
                delete_pdb_blocked_after: None,
                pre_drain_wait: Duration::ZERO,
                pod_selector: String::new(),
                retry_interval: Duration::from_secs(5),
            },
            verify: VerifySettings {
                timeout: Duration::from_secs(15 * 60),
                checks_dir: "/etc/drydock/checks.d".into(),
                check_timeout: Duration::from_secs(60),
            },
            packages: PackageSettings {
                protect: DEFAULT_PROTECTED
                    .iter()
                    .map(|p| glob::Pattern::new(p).expect("default pattern is valid"))
                    .collect(),
                authorization_ttl: Duration::from_secs(15 * 60),
                dpkg_root: "/".into(),
            },
            report: ReportSettings {
                textfile_dir: Some("/var/lib/prometheus/node-exporter".into()),
                metrics_listen: None,
                slack_webhook_url: None,
                webhook_url: None,
                kubernetes_events: true,
                slack_events: default_events(),
                webhook_events: default_events(),
                templates: Default::default(),
            },
            upgrade: Default::default(),
        }
    }
}

/// Equality for tests: regexes compare by their source text.
impl PartialEq for Settings {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
            && self.lease == other.lease
            && self.reboot == other.reboot
            && self.maintenance == other.maintenance
            && self.gates.soak == other.gates.soak
            && self.gates.node_selector == other.gates.node_selector
            && self.gates.required_daemonsets == other.gates.required_daemonsets
            && self.gates.required_daemonsets_configured
                == other.gates.required_daemonsets_configured
            && self.gates.blocking_pod_selectors == other.gates.blocking_pod_selectors
            && self.alerts.prometheus_url == other.alerts.prometheus_url
            && self.alerts.alertmanager_url == other.alerts.alertmanager_url
            && self.alerts.ignore.as_str() == other.alerts.ignore.as_str()
            && self.alerts.match_only.as_ref().map(Regex::as_str)
                == other.alerts.match_only.as_ref().map(Regex::as_str)
            && self.alerts.timeout == other.alerts.timeout
            && self.drain == other.drain
            && self.verify == other.verify
            && self.packages == other.packages
            && self.report == other.report
            && self.upgrade == other.upgrade
    }
}

/// A validation failure, with the dotted key it concerns.
#[derive(Debug)]
pub(crate) struct KeyError {
    pub key: String,
    pub error: ValueError,
}

fn at<T>(key: &str, result: Result<T, ValueError>) -> Result<T, KeyError> {
    result.map_err(|error| KeyError {
        key: key.to_string(),
        error,
    })
}

fn path(key: &str, value: Option<String>, default: PathBuf) -> Result<PathBuf, KeyError> {
    match value {
        Some(v) => at(key, values::abs_path(&v)),
        None => Ok(default),
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The range every duration key accepts: what the daemon can run with.
fn duration_range(key: &str) -> (Duration, Duration) {
    match key {
        "lease.duration" => (5 * SECOND, HOUR),
        "reboot.sentinel-command-timeout" => (SECOND, HOUR),
        "reboot.check-interval" => (SECOND, DAY),
        "gates.soak" => (Duration::ZERO, 30 * DAY),
        "alerts.timeout" => (SECOND, 5 * MINUTE),
        "drain.timeout" => (SECOND, 7 * DAY),
        "drain.delete-pdb-blocked-after" => (SECOND, 7 * DAY),
        "drain.pre-drain-wait" => (Duration::ZERO, DAY),
        "drain.retry-interval" => (Duration::from_millis(100), HOUR),
        "verify.timeout" => (SECOND, DAY),
        "verify.check-timeout" => (SECOND, HOUR),
        "packages.authorization-ttl" => (SECOND, DAY),
        _ => (SECOND, DAY),
    }
}

fn list<T>(
    key: &str,
    items: Vec<String>,
    convert: impl Fn(&str) -> Result<T, ValueError>,
) -> Result<Vec<T>, KeyError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| at(&format!("{key}[{i}]"), convert(s)))
        .collect()
}

impl Settings {
    /// Checks and converts the merged raw configuration.
    pub(crate) fn from_raw(raw: RawConfig) -> Result<Settings, KeyError> {
        let d = Settings::default();
        let dur = |key: &str, v: Option<String>, default: Duration| match v {
            Some(text) => {
                let (min, max) = duration_range(key);
                at(key, values::duration_in(&text, min, max))
            }
            None => Ok(default),
        };
        let n = raw.node;
        let node = NodeSettings {
            name: match n.name {
                Some(name) if name.is_empty() => None,
                Some(name) => Some(at("node.name", values::dns_subdomain(&name))?),
                None => d.node.name,
            },
            kubeconfig: path("node.kubeconfig", n.kubeconfig, d.node.kubeconfig)?,
            // Empty: not set (the shipped file lists every key).
            identity_kubeconfig: match n.identity_kubeconfig {
                Some(p) if p.is_empty() => None,
                Some(p) => Some(at("node.identity-kubeconfig", values::file_path(&p))?),
                None => d.node.identity_kubeconfig,
            },
            identity_dir: path("node.identity-dir", n.identity_dir, d.node.identity_dir)?,
            admin_kubeconfig: match n.admin_kubeconfig {
                Some(p) if p.is_empty() => None,
                Some(p) => Some(at("node.admin-kubeconfig", values::file_path(&p))?),
                None => d.node.admin_kubeconfig,
            },
            state_db: match n.state_db {
                Some(p) => at("node.state-db", values::file_path(&p))?,
                None => d.node.state_db,
            },
            run_dir: path("node.run-dir", n.run_dir, d.node.run_dir)?,
        };
        let l = raw.lease;
        let lease = LeaseSettings {
            namespace: match l.namespace {
                Some(ns) => at("lease.namespace", values::dns_label(&ns))?,
                None => d.lease.namespace,
            },
            group: match l.group {
                Some(g) => at("lease.group", values::dns_label(&g))?,
                None => d.lease.group,
            },
            concurrency: match l.concurrency {
                Some(c) => at("lease.concurrency", values::bounded_count(c, 1, 100))?,
                None => d.lease.concurrency,
            },
            duration: dur("lease.duration", l.duration, d.lease.duration)?,
        };
        let r = raw.reboot;
        let reboot = RebootSettings {
            sentinel_file: match r.sentinel_file {
                Some(p) => at("reboot.sentinel-file", values::file_path(&p))?,
                None => d.reboot.sentinel_file,
            },
            sentinel_command: match r.sentinel_command {
                Some(argv) => values::argv(argv).map_err(|(i, error)| KeyError {
                    key: format!("reboot.sentinel-command[{i}]"),
                    error,
                })?,
                None => d.reboot.sentinel_command,
            },
            sentinel_command_timeout: dur(
                "reboot.sentinel-command-timeout",
                r.sentinel_command_timeout,
                d.reboot.sentinel_command_timeout,
            )?,
            check_kernel: r.check_kernel.unwrap_or(d.reboot.check_kernel),
            boot_dir: path("reboot.boot-dir", r.boot_dir, d.reboot.boot_dir)?,
            check_interval: dur(
                "reboot.check-interval",
                r.check_interval,
                d.reboot.check_interval,
            )?,
        };
        let maintenance = MaintenanceSettings {
            windows: match raw.maintenance.windows {
                Some(windows) => windows
                    .into_iter()
                    .enumerate()
                    .map(|(i, w)| window(i, w))
                    .collect::<Result<_, _>>()?,
                None => d.maintenance.windows,
            },
        };
        let g = raw.gates;
        let gates =
            GateSettings {
                // Listing exactly the default (as the shipped file does) keeps
                // the default's "when present" meaning.
                required_daemonsets_configured: g
                    .required_daemonsets
                    .as_ref()
                    .is_some_and(|list| list != &["kube-system/calico-node"]),
                soak: dur("gates.soak", g.soak, d.gates.soak)?,
                node_selector: match g.node_selector {
                    Some(s) => at("gates.node-selector", values::label_selector(&s))?,
                    None => d.gates.node_selector,
                },
                required_daemonsets: match g.required_daemonsets {
                    Some(items) => {
                        list("gates.required-daemonsets", items, values::namespaced_name)?
                    }
                    None => d.gates.required_daemonsets,
                },
                blocking_pod_selectors: match g.blocking_pod_selectors {
                    Some(items) => list("gates.blocking-pod-selectors", items, |s| {
                        match values::label_selector(s)? {
                            s if s.is_empty() => Err(ValueError::EmptySelector),
                            s => Ok(s),
                        }
                    })?,
                    None => d.gates.blocking_pod_selectors,
                },
            };
        let a = raw.alerts;
        let alerts = AlertSettings {
            prometheus_url: optional(a.prometheus_url, |u| {
                at("alerts.prometheus-url", values::http_url(u))
            })?,
            alertmanager_url: optional(a.alertmanager_url, |u| {
                at("alerts.alertmanager-url", values::http_url(u))
            })?,
            ignore: match a.ignore {
                Some(re) => at("alerts.ignore", values::regex(&re))?.into(),
                None => d.alerts.ignore,
            },
            match_only: optional(a.match_only, |re| {
                at("alerts.match-only", values::regex(&re))
            })?,
            timeout: dur("alerts.timeout", a.timeout, d.alerts.timeout)?,
        };
        let dr = raw.drain;
        let drain = DrainSettings {
            timeout: dur("drain.timeout", dr.timeout, d.drain.timeout)?,
            delete_emptydir_data: dr
                .delete_emptydir_data
                .unwrap_or(d.drain.delete_emptydir_data),
            evict_unmanaged: dr.evict_unmanaged.unwrap_or(d.drain.evict_unmanaged),
            delete_pdb_blocked_after: match dr.delete_pdb_blocked_after {
                None => None,
                Some(text) if text.is_empty() || text == "off" => None,
                Some(text) => Some(dur(
                    "drain.delete-pdb-blocked-after",
                    Some(text),
                    Duration::ZERO,
                )?),
            },
            pre_drain_wait: dur(
                "drain.pre-drain-wait",
                dr.pre_drain_wait,
                d.drain.pre_drain_wait,
            )?,
            pod_selector: match dr.pod_selector {
                Some(s) => at("drain.pod-selector", values::label_selector(&s))?,
                None => d.drain.pod_selector,
            },
            retry_interval: dur(
                "drain.retry-interval",
                dr.retry_interval,
                d.drain.retry_interval,
            )?,
        };
        let v = raw.verify;
        let verify = VerifySettings {
            timeout: dur("verify.timeout", v.timeout, d.verify.timeout)?,
            checks_dir: path("verify.checks-dir", v.checks_dir, d.verify.checks_dir)?,
            check_timeout: dur(
                "verify.check-timeout",
                v.check_timeout,
                d.verify.check_timeout,
            )?,
        };
        let p = raw.packages;
        let packages = PackageSettings {
            protect: match p.protect {
                Some(items) => list("packages.protect", items, values::package_pattern)?,
                None => d.packages.protect,
            },
            authorization_ttl: dur(
                "packages.authorization-ttl",
                p.authorization_ttl,
                d.packages.authorization_ttl,
            )?,
            dpkg_root: path("packages.dpkg-root", p.dpkg_root, d.packages.dpkg_root)?,
        };
        let rp = raw.report;
        let report = ReportSettings {
            textfile_dir: match rp.textfile_dir {
                Some(dir) if dir.is_empty() => None,
                Some(dir) => Some(at("report.textfile-dir", values::abs_path(&dir))?),
                None => d.report.textfile_dir,
            },
            metrics_listen: optional(rp.metrics_listen, |s| {
                at("report.metrics-listen", values::socket_addr(&s))
            })?,
            slack_webhook_url: optional(rp.slack_webhook_url, |u| {
                at("report.slack-webhook-url", values::http_url(u)).map(Secret)
            })?,
            webhook_url: optional(rp.webhook_url, |u| {
                at("report.webhook-url", values::http_url(u)).map(Secret)
            })?,
            kubernetes_events: rp.kubernetes_events.unwrap_or(d.report.kubernetes_events),
            slack_events: event_kinds("report.slack-events", rp.slack_events)?,
            webhook_events: event_kinds("report.webhook-events", rp.webhook_events)?,
            templates: rp
                .templates
                .unwrap_or_default()
                .into_iter()
                .map(|(kind, template)| {
                    let key = format!(
                        "report.templates.{}",
                        kind.chars().take(64).collect::<String>()
                    );
                    let kind = at(&key, values::event_kind(&kind))?;
                    Ok((kind, at(&key, values::message_template(&template))?))
                })
                .collect::<Result<_, KeyError>>()?,
        };
        let upgrade = super::upgrade::UpgradeSettings::from_raw(raw.upgrade)?;
        Ok(Settings {
            node,
            lease,
            reboot,
            maintenance,
            gates,
            alerts,
            drain,
            verify,
            packages,
            report,
            upgrade,
        })
    }

    /// Names of the Lease slots this node competes for.
    pub fn lease_slot_names(&self) -> Vec<String> {
        (0..self.lease.concurrency)
            .map(|i| format!("drydock-{}-{}", self.lease.group, i))
            .collect()
    }

    /// Whether a Debian package name is one drydock protects.
    pub fn is_protected(&self, package: &str) -> bool {
        self.packages.protect.iter().any(|p| p.matches(package))
    }
}

/// An empty string means "not set" for optional keys.
fn default_events() -> Vec<String> {
    values::DEFAULT_NOTIFY_EVENTS
        .iter()
        .map(|k| k.to_string())
        .collect()
}

/// A list of event kinds; `None`: the defaults.
fn event_kinds(key: &str, kinds: Option<Vec<String>>) -> Result<Vec<String>, KeyError> {
    match kinds {
        None => Ok(default_events()),
        Some(kinds) => kinds
            .iter()
            .enumerate()
            .map(|(i, k)| at(&format!("{key}[{i}]"), values::event_kind(k)))
            .collect(),
    }
}

fn optional<T>(
    value: Option<String>,
    convert: impl FnOnce(String) -> Result<T, KeyError>,
) -> Result<Option<T>, KeyError> {
    match value {
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => convert(v).map(Some),
        None => Ok(None),
    }
}

fn window(index: usize, raw: RawWindow) -> Result<Window, KeyError> {
    let key = |field: &str| format!("maintenance.windows[{index}].{field}");
    let err = |field: &str, error| KeyError {
        key: key(field),
        error,
    };
    let days = raw
        .days
        .iter()
        .enumerate()
        .map(|(i, d)| values::weekday(d).map_err(|e| err(&format!("days[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    if days.is_empty() {
        return Err(err("days", ValueError::NoDays));
    }
    let length = values::duration(&raw.length).map_err(|e| err("length", e))?;
    if length.is_zero() || length > Duration::from_secs(7 * 24 * 3600) {
        return Err(err(
            "length",
            ValueError::WindowLength(crate::text::quote(&raw.length)),
        ));
    }
    Ok(Window {
        days,
        start: values::time_of_day(&raw.start).map_err(|e| err("start", e))?,
        length,
        time_zone: values::time_zone(&raw.time_zone).map_err(|e| err("time-zone", e))?,
        time_zone_name: raw.time_zone,
    })
}
