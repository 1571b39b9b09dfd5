//! What an apt run changed, for the history.
//!
//! The pre-install hook saves the run's planned actions (apt tells it the old
//! and new version of every package) in `<run-dir>/apt-pending.json`; the
//! post-invoke hook compares them with dpkg's state afterwards, so the record
//! says what really happened, not what was planned. Whether the run came from
//! unattended-upgrades is read from the process ancestry: u-u drives apt
//! in-process (python-apt), so apt's hooks are descendants of the
//! `unattended-upgrade` script; apt-get/apt runs are not.

use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::protocol::{Action, Op};
use crate::config::Settings;
use crate::host::dpkg::PackageState;

/// History kind of an apt run.
pub const APT_RUN_KIND: &str = "apt-run";

pub fn pending_path(settings: &Settings) -> PathBuf {
    settings.node.run_dir.join("apt-pending.json")
}

/// What the pre-install hook let through, for post-invoke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRun {
    pub started_at: Timestamp,
    pub actions: Vec<Action>,
    /// `package version` let through by a daemon authorization.
    #[serde(default)]
    pub authorized: Vec<String>,
    /// Protected packages let through by `DRYDOCK_APT_ALLOW`.
    #[serde(default)]
    pub overridden: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub package: String,
    pub arch: String,
    /// install, upgrade, downgrade, reinstall, remove.
    pub action: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A planned change that dpkg did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incomplete {
    pub package: String,
    pub planned: Option<String>,
    pub now: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    UnattendedUpgrades,
    Apt,
}

fn bare(name: &str) -> &str {
    name.split_once(':').map_or(name, |(n, _)| n)
}

/// Compares the plan with dpkg's state after the run.
pub fn outcome(
    pending: &PendingRun,
    after: &[PackageState],
) -> (Vec<PackageChange>, Vec<Incomplete>) {
    let mut changes = Vec::new();
    let mut incomplete = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for a in &pending.actions {
        if matches!(a.op, Op::Configure) || seen.contains(&a.package.as_str()) {
            continue;
        }
        seen.push(&a.package);
        let arch = a.new.as_ref().or(a.old.as_ref()).map(|v| v.arch.clone());
        let now = after.iter().find(|p| {
            p.package == bare(&a.package)
                && p.is_installed()
                && (arch.as_deref().is_none_or(|ar| ar == p.arch) || p.name == a.package)
        });
        let old = a.old.as_ref().map(|v| v.version.clone());
        let planned = a.new.as_ref().map(|v| v.version.clone());
        let done = match (&a.op, now) {
            (Op::Remove, None) => true,
            (Op::Unpack(_), Some(p)) => Some(&p.version) == planned.as_ref(),
            _ => false,
        };
        if !done {
            incomplete.push(Incomplete {
                package: a.package.clone(),
                planned,
                now: now.map(|p| p.version.clone()),
            });
            continue;
        }
        let action = match super::policy::change_of(a) {
            Some(super::policy::Change::Install { .. }) => "install",
            Some(super::policy::Change::Upgrade { .. }) => "upgrade",
            Some(super::policy::Change::Downgrade { .. }) => "downgrade",
            Some(super::policy::Change::Reinstall { .. }) => "reinstall",
            _ => "remove",
        };
        changes.push(PackageChange {
            package: a.package.clone(),
            arch: arch.unwrap_or_default(),
            action: action.into(),
            old,
            new: planned.filter(|_| !matches!(a.op, Op::Remove)),
        });
    }
    (changes, incomplete)
}

/// Who ran apt, from the argv of our ancestors (nearest first): the origin,
/// and the command line of the nearest ancestor that is not a shell.
pub fn origin(ancestors: &[Vec<String>]) -> (Origin, Option<String>) {
    let base = |s: &String| s.rsplit('/').next().unwrap_or(s).to_string();
    let is_uu = |argv: &Vec<String>| {
        argv.iter()
            .take(2)
            .map(base)
            .any(|b| b == "unattended-upgrade" || b == "unattended-upgrades")
    };
    let origin = if ancestors.iter().any(is_uu) {
        Origin::UnattendedUpgrades
    } else {
        Origin::Apt
    };
    let command = ancestors
        .iter()
        .find(|argv| {
            argv.first()
                .map(base)
                .is_some_and(|b| !matches!(b.as_str(), "sh" | "dash" | "bash" | "drydock"))
        })
        .map(|argv| {
            let mut c = argv.join(" ");
            if c.len() > 300 {
                let mut end = 300;
                while !c.is_char_boundary(end) {
                    end -= 1;
                }
                c.truncate(end);
                c.push('…');
            }
            c
        });
    (origin, command)
}

/// argv of our ancestors, nearest first (at most 16; unreadable ones stop the walk).
pub fn read_ancestors() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..16 {
        if pid <= 1 {
            break;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            break;
        };
        out.push(
            cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        );
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        // "pid (comm) state ppid ...": comm may contain spaces and ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        match ppid {
            Some(p) => pid = p,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aptgate::protocol::parse;
    use crate::host::dpkg::Selection;

    fn state(name: &str, version: &str) -> PackageState {
        PackageState {
            name: name.into(),
            package: name.into(),
            version: version.into(),
            arch: "all".into(),
            want: Selection::Install,
            status: "installed".into(),
        }
    }

    #[test]
    fn outcome_reports_done_and_incomplete_changes() {
        let req = parse(
            b"VERSION 3\n\n\
              hello 1.0-1 all none < 2.0-1 all none /r/h.deb\n\
              new - - none < 1 all none /r/n.deb\n\
              gone 3 all none > - - none **REMOVE**\n\
              failed 1 all none < 2 all none /r/f.deb\n\
              hello 1.0-1 all none < 2.0-1 all none **CONFIGURE**\n",
            false,
        )
        .unwrap();
        let pending = PendingRun {
            started_at: Timestamp::UNIX_EPOCH,
            actions: req.actions,
            authorized: vec![],
            overridden: vec![],
        };
        let after = [
            state("hello", "2.0-1"),
            state("new", "1"),
            state("failed", "1"),
        ];
        let (changes, incomplete) = outcome(&pending, &after);
        let summary: Vec<String> = changes
            .iter()
            .map(|c| format!("{} {} {:?} {:?}", c.action, c.package, c.old, c.new))
            .collect();
        assert_eq!(
            summary,
            [
                "upgrade hello Some(\"1.0-1\") Some(\"2.0-1\")",
                "install new None Some(\"1\")",
                "remove gone Some(\"3\") None",
            ]
        );
        assert_eq!(
            incomplete,
            [Incomplete {
                package: "failed".into(),
                planned: Some("2".into()),
                now: Some("1".into())
            }]
        );
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn origin_from_ancestry() {
        let uu = [
            argv("/bin/sh -c /usr/bin/drydock apt-hook post-invoke"),
            argv("/usr/bin/python3 /usr/bin/unattended-upgrade"),
            argv("/usr/bin/python3 /usr/bin/unattended-upgrade"),
            argv("/bin/sh /usr/lib/apt/apt.systemd.daily install"),
        ];
        let (o, cmd) = origin(&uu);
        assert_eq!(o, Origin::UnattendedUpgrades);
        assert_eq!(
            cmd.as_deref(),
            Some("/usr/bin/python3 /usr/bin/unattended-upgrade")
        );
        let manual = [
            argv("sh -c x"),
            argv("apt-get install -y hello"),
            argv("-bash"),
        ];
        assert_eq!(
            origin(&manual),
            (Origin::Apt, Some("apt-get install -y hello".into()))
        );
        assert_eq!(origin(&[]), (Origin::Apt, None));
    }
}
