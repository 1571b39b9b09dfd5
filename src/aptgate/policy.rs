//! Whether a dpkg run may go ahead (pure: request + grants -> verdict).
//!
//! A run is refused when it would unpack (install, upgrade, downgrade,
//! reinstall) or remove a protected package, unless
//! - the daemon authorized exactly that package and new version, the
//!   authorization has not expired, and the daemon's upgrade step is running
//!   (it holds the step lock, see [`super::step`]); or
//! - the administrator named the package in `DRYDOCK_APT_ALLOW`; or
//! - it is provisioning (see [`provisioning`]): the package's first install,
//!   or any change before the node joined the cluster.
//!
//! `**CONFIGURE**` changes no version and is always allowed: the unpack that
//! precedes it is what gets decided. A line the hook cannot read refuses the
//! run (it may concern a protected package under a mangled name), as does a
//! .deb whose file name names a protected package the line does not;
//! neither is ever authorized by the daemon. `DRYDOCK_APT_ALLOW='*'` lets
//! the administrator through anyway.

use jiff::Timestamp;

use super::protocol::{Action, Direction, Op, Request, deb_file_package};
use crate::store::Authorization;

/// Environment variable naming packages the administrator lets through.
pub(crate) const ALLOW_ENV: &str = "DRYDOCK_APT_ALLOW";
/// In `DRYDOCK_APT_ALLOW`: let this run through whatever it changes.
const ALLOW_ALL: &str = "*";
/// The package of an unreadable line that names no protected package.
const UNKNOWN_PACKAGE: &str = "(unknown package)";

/// What the daemon has granted, as read by the hook.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub now: Option<Timestamp>,
    /// The daemon's upgrade step holds its lock right now.
    pub step_running: bool,
    pub authorizations: Vec<Authorization>,
    /// Package names from `DRYDOCK_APT_ALLOW`.
    pub allow: Vec<String>,
    /// The node has not joined a cluster yet (no kubelet kubeconfig): it is
    /// still being provisioned. `false` (joined) is the protective default.
    pub before_join: bool,
}

/// How a protected package would change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    Install {
        new: String,
    },
    Upgrade {
        old: String,
        new: String,
    },
    Downgrade {
        old: String,
        new: String,
    },
    Reinstall {
        version: String,
    },
    Remove {
        old: String,
    },
    /// A line drydock could not read that may concern this package.
    Unreadable {
        line: usize,
        reason: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Install { new } => write!(f, "install {new}"),
            Change::Upgrade { old, new } => write!(f, "upgrade {old} -> {new}"),
            Change::Downgrade { old, new } => write!(f, "downgrade {old} -> {new}"),
            Change::Reinstall { version } => write!(f, "reinstall {version}"),
            Change::Remove { old } => write!(f, "remove {old}"),
            Change::Unreadable { line: 0, reason } => write!(f, "suspicious: {reason}"),
            Change::Unreadable { line, reason } => {
                write!(f, "unreadable hook input line {line} ({reason})")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProtectedChange {
    pub package: String,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Protected changes nobody allowed: any makes the run fail.
    pub refused: Vec<ProtectedChange>,
    /// Let through by a daemon authorization.
    pub authorized: Vec<ProtectedChange>,
    /// Let through by `DRYDOCK_APT_ALLOW`.
    pub overridden: Vec<ProtectedChange>,
    /// Let through as provisioning: a first install, or before join.
    pub provisioning: Vec<ProtectedChange>,
}

impl Verdict {
    pub fn allows(&self) -> bool {
        self.refused.is_empty()
    }
}

fn bare(name: &str) -> &str {
    name.split_once(':').map_or(name, |(n, _)| n)
}

/// How an action changes its package; `None` for configure-only.
pub fn change_of(action: &Action) -> Option<Change> {
    let old = action.old.as_ref().map(|v| v.version.clone());
    let new = action.new.as_ref().map(|v| v.version.clone());
    match (&action.op, old, new) {
        (Op::Configure, _, _) => None,
        (Op::Remove, Some(old), _) => Some(Change::Remove { old }),
        (Op::Remove, None, _) => Some(Change::Remove { old: "-".into() }),
        (Op::Unpack(_), None, Some(new)) => Some(Change::Install { new }),
        (Op::Unpack(_), Some(old), Some(new)) => Some(match action.direction {
            Direction::Same => Change::Reinstall { version: new },
            Direction::Down => Change::Downgrade { old, new },
            Direction::Up | Direction::Unknown => Change::Upgrade { old, new },
        }),
        // The parser refuses an unpack without a new version.
        (Op::Unpack(_), _, None) => Some(Change::Install { new: "-".into() }),
    }
}

/// The changes this request makes to protected packages, before any grant.
pub(crate) fn protected_changes(
    request: &Request,
    is_protected: impl Fn(&str) -> bool,
) -> Vec<ProtectedChange> {
    let mut out = Vec::new();
    for action in &request.actions {
        // dpkg installs what is in the .deb: a file named for a protected
        // package under another name on the line is not let through.
        if let Op::Unpack(path) = &action.op
            && let Some(file_pkg) = deb_file_package(path)
            && file_pkg != bare(&action.package)
            && is_protected(&file_pkg)
        {
            out.push(ProtectedChange {
                package: file_pkg.clone(),
                change: Change::Unreadable {
                    line: 0,
                    reason: format!(
                        "the line is for package {} but unpacks {}, a file named for {file_pkg}",
                        action.package,
                        crate::text::display(path, 200)
                    ),
                },
            });
            continue;
        }
        if !is_protected(bare(&action.package)) {
            continue;
        }
        if let Some(change) = change_of(action) {
            out.push(ProtectedChange {
                package: action.package.clone(),
                change,
            });
        }
    }
    for m in &request.malformed {
        let unreadable = || Change::Unreadable {
            line: m.line,
            reason: m.reason.clone(),
        };
        let named: Vec<&String> = m.candidates.iter().filter(|n| is_protected(n)).collect();
        if named.is_empty() {
            out.push(ProtectedChange {
                package: UNKNOWN_PACKAGE.into(),
                change: unreadable(),
            });
        }
        for name in named {
            out.push(ProtectedChange {
                package: name.clone(),
                change: unreadable(),
            });
        }
    }
    out
}

/// Whether `DRYDOCK_APT_ALLOW` lets this change through.
pub(crate) fn allowed_by_admin(change: &ProtectedChange, allow: &[String]) -> bool {
    allow.iter().any(|a| {
        a == ALLOW_ALL || (a == bare(&change.package) && change.package != UNKNOWN_PACKAGE)
    })
}

fn authorized(change: &ProtectedChange, grants: &Grants) -> bool {
    let Some(now) = grants.now else {
        return false;
    };
    if !grants.step_running {
        return false;
    }
    let version = match &change.change {
        Change::Install { new } | Change::Upgrade { new, .. } | Change::Downgrade { new, .. } => {
            new
        }
        Change::Reinstall { version } => version,
        // Removals and unreadable lines are never authorized by the daemon.
        Change::Remove { .. } | Change::Unreadable { .. } => return false,
    };
    grants
        .authorizations
        .iter()
        .any(|a| a.package == bare(&change.package) && &a.version == version && a.expires_at > now)
}

/// Provisioning is not drydock's to refuse: the usual order (cloud-init,
/// kubeadm's install steps) installs drydock first and the runtime packages
/// after it, then joins. A protected package that is not installed yet may
/// be installed at any time (drydock holds it right after); before the node
/// joined, anything goes. Changing an installed one after join stays
/// drydock's. An unreadable line is never provisioning.
pub(crate) fn provisioning(change: &ProtectedChange, grants: &Grants) -> bool {
    match change.change {
        Change::Unreadable { .. } => false,
        Change::Install { .. } => true,
        _ => grants.before_join,
    }
}

/// The verdict for a request.
pub fn decide(request: &Request, is_protected: impl Fn(&str) -> bool, grants: &Grants) -> Verdict {
    let mut verdict = Verdict::default();
    for change in protected_changes(request, &is_protected) {
        if allowed_by_admin(&change, &grants.allow) {
            verdict.overridden.push(change);
        } else if authorized(&change, grants) {
            verdict.authorized.push(change);
        } else if provisioning(&change, grants) {
            verdict.provisioning.push(change);
        } else {
            verdict.refused.push(change);
        }
    }
    verdict
}

/// Parses `DRYDOCK_APT_ALLOW`: package names separated by commas or spaces.
pub(crate) fn parse_allow(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// What apt prints when the run is refused.
pub fn refusal_message(refused: &[ProtectedChange]) -> String {
    let mut msg = String::from(
        "drydock: refusing this dpkg run: it would change packages that drydock protects:\n",
    );
    for c in refused {
        msg.push_str(&format!(
            "  {}: {}\n",
            c.package,
            crate::text::display(&c.change.to_string(), 400)
        ));
    }
    let mut names: Vec<&str> = refused
        .iter()
        .map(|c| bare(&c.package))
        .filter(|n| *n != UNKNOWN_PACKAGE)
        .collect();
    names.sort_unstable();
    names.dedup();
    let unreadable = refused
        .iter()
        .any(|c| matches!(c.change, Change::Unreadable { .. }));
    msg.push_str(
        "Nothing was installed or removed.\n\
         drydock changes these packages itself, one node at a time under the cluster lease\n\
         (see `drydock status` and `drydock history`). To change them by hand anyway, name\n\
         them for this one command (they stay on hold afterwards):\n",
    );
    if !names.is_empty() {
        msg.push_str(&format!(
            "  {ALLOW_ENV}={} apt-get --allow-change-held-packages install ...\n",
            names.join(",")
        ));
    }
    if unreadable {
        msg.push_str(&format!(
            "Some of apt's hook input could not be read, so what it changes is unknown. If you\n\
             are sure, let this one command through whatever it changes:\n  \
             {ALLOW_ENV}='{ALLOW_ALL}' apt-get ...\n"
        ));
    }
    msg.push_str("or remove them from [packages] protect in /etc/drydock/drydock.toml.\n");
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aptgate::protocol::parse;

    fn protected(name: &str) -> bool {
        ["kubelet", "kubeadm", "containerd"].contains(&name) || name.starts_with("calico-")
    }

    fn req(actions: &str) -> Request {
        parse(format!("VERSION 3\nA=b\n\n{actions}").as_bytes(), false).unwrap()
    }

    fn now() -> Timestamp {
        "2025-01-01T00:00:00Z".parse().unwrap()
    }

    fn auth(pkg: &str, ver: &str, expires: &str) -> Authorization {
        Authorization {
            package: pkg.into(),
            version: ver.into(),
            expires_at: expires.parse().unwrap(),
        }
    }

    fn running(auths: Vec<Authorization>) -> Grants {
        Grants {
            now: Some(now()),
            step_running: true,
            authorizations: auths,
            allow: vec![],
            before_join: false,
        }
    }

    const UPGRADE_KUBEADM: &str = "kubeadm 1.34.1-1.1 all none < 1.34.2-1.1 all none /r/kubeadm_1.34.2-1.1_all.deb\n\
         kubeadm 1.34.1-1.1 all none < 1.34.2-1.1 all none **CONFIGURE**\n";

    #[test]
    fn unprotected_runs_pass() {
        let r = req(
            "hello 1.0-1 all none < 2.0-1 all none /r/hello_2.0-1_all.deb\n\
                     hello 1.0-1 all none < 2.0-1 all none **CONFIGURE**\n\
                     oldpkg 1 all none > - - none **REMOVE**\n",
        );
        let v = decide(&r, protected, &Grants::default());
        assert!(v.allows());
        assert!(v.refused.is_empty() && v.authorized.is_empty());
    }

    #[test]
    fn every_kind_of_protected_change_is_refused() {
        let r = req("containerd 1.0-1 all none < 2.0-1 all none /r/c.deb\n\
                     kubelet 1.0 all none < 2.0 all none /r/k.deb\n\
                     kubeadm 2.0 all none > 1.0 all none /r/a.deb\n\
                     calico-node 1 all none = 1 all none /r/n.deb\n\
                     containerd:amd64 1 all none > - - none **REMOVE**\n\
                     kubelet 1.0 all none < 2.0 all none **CONFIGURE**\n");
        let v = decide(&r, protected, &Grants::default());
        let changes: Vec<String> = v
            .refused
            .iter()
            .map(|c| format!("{}: {}", c.package, c.change))
            .collect();
        assert_eq!(
            changes,
            [
                "containerd: upgrade 1.0-1 -> 2.0-1",
                "kubelet: upgrade 1.0 -> 2.0",
                "kubeadm: downgrade 2.0 -> 1.0",
                "calico-node: reinstall 1",
                "containerd:amd64: remove 1",
            ]
        );
        assert!(!v.allows());
    }

    #[test]
    fn first_installs_and_anything_before_join_are_provisioning() {
        let r = req("kubelet - - none < 1.31.0-1.1 amd64 none /r/kubelet.deb\n\
                     kubeadm 1.31.0-1.1 amd64 none < 1.31.1-1.1 amd64 none /r/kubeadm.deb\n\
                     containerd 1.7 amd64 none > - - none **REMOVE**\n\
                     garbage /r/pool/calico-node_1_amd64.deb\n");
        // Joined: only the first install goes through.
        let v = decide(&r, protected, &Grants::default());
        let names = |cs: &[ProtectedChange]| -> Vec<String> {
            cs.iter()
                .map(|c| format!("{}: {}", c.package, c.change))
                .collect()
        };
        assert_eq!(names(&v.provisioning), ["kubelet: install 1.31.0-1.1"]);
        assert_eq!(v.refused.len(), 3);
        assert!(!v.allows());

        // Before join: every readable change is provisioning; an unreadable
        // line still fails closed.
        let g = Grants {
            before_join: true,
            ..Grants::default()
        };
        let v = decide(&r, protected, &g);
        assert_eq!(v.provisioning.len(), 3, "{v:?}");
        assert_eq!(names(&v.refused).len(), 1);
        assert!(matches!(v.refused[0].change, Change::Unreadable { .. }));

        let readable =
            req("kubeadm 1.31.0-1.1 amd64 none < 1.31.1-1.1 amd64 none /r/kubeadm.deb\n");
        assert!(decide(&readable, protected, &g).allows());
        assert!(!decide(&readable, protected, &Grants::default()).allows());
    }

    #[test]
    fn exact_authorization_lets_exactly_that_through() {
        let r = req(UPGRADE_KUBEADM);
        let g = running(vec![auth("kubeadm", "1.34.2-1.1", "2025-01-01T00:10:00Z")]);
        let v = decide(&r, protected, &g);
        assert!(v.allows(), "{v:?}");
        assert_eq!(v.authorized.len(), 1);
    }

    #[test]
    fn authorization_does_not_cover_other_packages_versions_or_times() {
        let g = running(vec![auth("kubeadm", "1.34.2-1.1", "2025-01-01T00:10:00Z")]);
        let other_pkg = req("kubelet 1.34.1-1.1 all none < 1.34.2-1.1 all none /r/k.deb\n");
        assert!(!decide(&other_pkg, protected, &g).allows());
        let other_ver = req("kubeadm 1.34.1-1.1 all none < 1.34.3-1.1 all none /r/k.deb\n");
        assert!(!decide(&other_ver, protected, &g).allows());
        let removal = req("kubeadm 1.34.2-1.1 all none > - - none **REMOVE**\n");
        assert!(!decide(&removal, protected, &g).allows());

        let r = req(UPGRADE_KUBEADM);
        let expired = running(vec![auth("kubeadm", "1.34.2-1.1", "2024-12-31T23:59:59Z")]);
        assert!(!decide(&r, protected, &expired).allows());
        let at_expiry = running(vec![auth("kubeadm", "1.34.2-1.1", "2025-01-01T00:00:00Z")]);
        assert!(!decide(&r, protected, &at_expiry).allows());
        let mut not_running = g.clone();
        not_running.step_running = false;
        assert!(!decide(&r, protected, &not_running).allows());
        let mut no_clock = g.clone();
        no_clock.now = None;
        assert!(!decide(&r, protected, &no_clock).allows());
    }

    #[test]
    fn admin_allow_overrides_named_packages_only() {
        let r = req("containerd 1.0-1 all none < 2.0-1 all none /r/c.deb\n\
                     kubelet 1.0 all none < 2.0 all none /r/k.deb\n");
        let g = Grants {
            allow: parse_allow("containerd, runc"),
            ..Grants::default()
        };
        let v = decide(&r, protected, &g);
        assert_eq!(v.overridden.len(), 1);
        assert_eq!(v.refused.len(), 1);
        assert_eq!(v.refused[0].package, "kubelet");
    }

    #[test]
    fn malformed_lines_always_fail_closed() {
        let r = req("hello 1.0 all none ?? 2.0 all none /r/h.deb\n");
        let v = decide(&r, protected, &Grants::default());
        assert!(!v.allows());
        assert_eq!(v.refused[0].package, UNKNOWN_PACKAGE);
        // Naming the unknown package does not help; '*' does.
        let named = Grants {
            allow: parse_allow("hello"),
            ..Grants::default()
        };
        assert!(!decide(&r, protected, &named).allows());
        let all = Grants {
            allow: parse_allow("*"),
            ..Grants::default()
        };
        let v = decide(&r, protected, &all);
        assert!(v.allows() && v.overridden.len() == 1);
        let msg = refusal_message(&decide(&r, protected, &Grants::default()).refused);
        assert!(msg.contains("DRYDOCK_APT_ALLOW='*'"), "{msg}");
        assert!(!msg.contains("DRYDOCK_APT_ALLOW=(unknown"), "{msg}");

        let r = req("garbage /r/pool/containerd_2.0-1_amd64.deb\n");
        let v = decide(&r, protected, &Grants::default());
        assert!(!v.allows());
        assert!(matches!(
            v.refused[0].change,
            Change::Unreadable { line: 4, .. }
        ));
        // An authorization never covers an unreadable line.
        let g = running(vec![auth("containerd", "2.0-1", "2025-01-01T00:10:00Z")]);
        assert!(!decide(&r, protected, &g).allows());
    }

    #[test]
    fn a_deb_named_for_a_protected_package_is_refused_under_any_line_name() {
        let r =
            req("hello - - none < 1.0 amd64 none /var/cache/apt/archives/kubelet_1.0_amd64.deb\n");
        let v = decide(&r, protected, &Grants::default());
        assert!(!v.allows());
        assert_eq!(v.refused[0].package, "kubelet");
        assert!(v.refused[0].change.to_string().contains("unpacks"), "{v:?}");
        // Never authorized by the daemon; an admin naming kubelet lets it through.
        let g = running(vec![auth("kubelet", "1.0", "2025-01-01T00:10:00Z")]);
        assert!(!decide(&r, protected, &g).allows());
        let admin = Grants {
            allow: parse_allow("kubelet"),
            ..Grants::default()
        };
        assert!(decide(&r, protected, &admin).allows());
        // Upper case in the file name changes nothing.
        let r = req("hello - - none < 1.0 amd64 none /x/KUBELET_1.0_amd64.deb\n");
        assert!(!decide(&r, protected, &Grants::default()).allows());
        // The usual case: the file is named for the line's package.
        let r = req("hello - - none < 1.0 amd64 none /x/hello_1.0_amd64.deb\n");
        assert!(decide(&r, protected, &Grants::default()).allows());
    }

    #[test]
    fn message_names_packages_versions_and_the_way_out() {
        let r = req("containerd 1.0-1 all none < 2.0-1 all none /r/c.deb\n");
        let v = decide(&r, protected, &Grants::default());
        let msg = refusal_message(&v.refused);
        assert!(msg.contains("containerd: upgrade 1.0-1 -> 2.0-1"), "{msg}");
        assert!(msg.contains("DRYDOCK_APT_ALLOW=containerd"), "{msg}");
        assert!(msg.contains("drydock status"), "{msg}");
    }
}
