//! What an apt run changed, for the history.
//!
//! The pre-install hook saves the run's planned actions (apt tells it the old
//! and new version of every package) in `<run-dir>/apt-pending.json`; the
//! post-invoke hook compares them with dpkg's state afterwards, so the record
//! says what really happened, not what was planned. Whether the run came from
//! unattended-upgrades is read from the process ancestry: u-u drives apt
//! in-process (python-apt), so apt's hooks are descendants of the
//! `unattended-upgrade` script; apt-get/apt runs are not.
//!
//! A plan is used only for the apt run that wrote it ([`check_pending`]):
//! both hooks descend (through `/bin/sh -c`) from the same apt process, so
//! the plan carries that process's pid and start time, and post-invoke
//! compares them with its own. apt runs `DPkg::Post-Invoke` from a forked
//! child of itself (same argv, never exec'd), so the apt process is the
//! outermost of the identical-argv ancestors above the shell. A plan left behind by a run that never reached
//! post-invoke (another Pre-Install-Pkgs hook failed, apt was killed) names a
//! different process, or is older than [`MAX_PENDING_AGE`], and is ignored.

use std::path::PathBuf;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::protocol::{Action, Op};
use crate::config::Settings;
use crate::host::dpkg::PackageState;

/// History kind of an apt run.
pub(crate) const APT_RUN_KIND: &str = "apt-run";
/// History kind of a dpkg run the pre-install hook refused.
pub(crate) const APT_REFUSED_KIND: &str = "apt-refused";

/// A plan older than this is from another run (a dpkg run of many hours is
/// not one apt run's plan any more; the dpkg lock serializes runs).
const MAX_PENDING_AGE: Duration = Duration::from_secs(6 * 3600);
/// Clock steps tolerated between the two hooks (NTP slews, not jumps).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

pub(crate) fn pending_path(settings: &Settings) -> PathBuf {
    settings.node.run_dir.join("apt-pending.json")
}

/// The apt process running the hooks: pid plus its start time in clock ticks
/// since boot (`/proc/<pid>/stat` field 22), so a reused pid does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptProcess {
    pub pid: u32,
    pub start_ticks: u64,
}

/// One ancestor process of the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ancestor {
    pub pid: u32,
    pub start_ticks: Option<u64>,
    pub argv: Vec<String>,
}

/// What the pre-install hook let through, for post-invoke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRun {
    pub started_at: Timestamp,
    /// The apt process that ran the pre-install hook (absent in plans
    /// written by drydock before 0.2, or when /proc was unreadable).
    #[serde(default)]
    pub apt: Option<AptProcess>,
    pub actions: Vec<Action>,
    /// `package version` let through by a daemon authorization.
    #[serde(default)]
    pub authorized: Vec<String>,
    /// Protected packages let through by `DRYDOCK_APT_ALLOW`.
    #[serde(default)]
    pub overridden: Vec<String>,
    /// Protected packages let through as provisioning (first install, or
    /// before the node joined).
    #[serde(default)]
    pub provisioning: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackageChange {
    pub package: String,
    pub arch: String,
    /// install, upgrade, downgrade, reinstall, remove.
    pub action: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A planned change that dpkg did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Incomplete {
    pub package: String,
    pub planned: Option<String>,
    pub now: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Origin {
    UnattendedUpgrades,
    Apt,
}

fn bare(name: &str) -> &str {
    name.split_once(':').map_or(name, |(n, _)| n)
}

/// Compares the plan with dpkg's state after the run.
pub(crate) fn outcome(
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

/// Why a saved plan is not this run's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StalePlan {
    #[error(
        "plan written by apt process {planned} (start {planned_start}), this run is {now} (start {now_start})"
    )]
    OtherRun {
        planned: u32,
        planned_start: u64,
        now: u32,
        now_start: u64,
    },
    #[error("plan is {age_secs} s old (limit {} s)", MAX_PENDING_AGE.as_secs())]
    TooOld { age_secs: i64 },
    #[error("plan is dated {started_at}, in the future")]
    Future { started_at: Timestamp },
}

/// Whether `plan` belongs to the apt run post-invoke is part of (pure).
/// Same apt process (pid and start time) when both sides know it; and in
/// every case no older than [`MAX_PENDING_AGE`] nor dated in the future.
pub(crate) fn check_pending(
    plan: &PendingRun,
    now: Timestamp,
    apt: Option<&AptProcess>,
) -> Result<(), StalePlan> {
    if let (Some(planned), Some(current)) = (&plan.apt, apt)
        && planned != current
    {
        return Err(StalePlan::OtherRun {
            planned: planned.pid,
            planned_start: planned.start_ticks,
            now: current.pid,
            now_start: current.start_ticks,
        });
    }
    let age = now.duration_since(plan.started_at);
    let skew = SignedDuration::try_from(MAX_CLOCK_SKEW).unwrap_or(SignedDuration::ZERO);
    if age < -skew {
        return Err(StalePlan::Future {
            started_at: plan.started_at,
        });
    }
    if age > SignedDuration::try_from(MAX_PENDING_AGE).unwrap_or(SignedDuration::MAX) {
        return Err(StalePlan::TooOld {
            age_secs: age.as_secs(),
        });
    }
    Ok(())
}

fn is_shell_or_us(argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    matches!(base, "sh" | "dash" | "bash" | "drydock")
}

/// The apt process behind the hooks: the nearest ancestor that is not a
/// shell (apt runs hooks with `/bin/sh -c`) nor drydock itself, or rather
/// the outermost of its direct ancestors with the same argv (apt forks
/// without exec to run Post-Invoke scripts).
pub(crate) fn apt_process(ancestors: &[Ancestor]) -> Option<AptProcess> {
    let first = ancestors
        .iter()
        .position(|a| a.argv.first().is_none_or(|argv0| !is_shell_or_us(argv0)))?;
    let argv = &ancestors[first].argv;
    let a = ancestors[first..]
        .iter()
        .take_while(|a| &a.argv == argv)
        .last()?;
    Some(AptProcess {
        pid: a.pid,
        start_ticks: a.start_ticks?,
    })
}

/// Who ran apt, from the argv of our ancestors (nearest first): the origin,
/// and the command line of the nearest ancestor that is not a shell.
pub(crate) fn origin(ancestors: &[Vec<String>]) -> (Origin, Option<String>) {
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
        .find(|argv| argv.first().is_some_and(|a| !is_shell_or_us(a)))
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

/// Our ancestors, nearest first (at most 16; unreadable ones stop the walk).
/// `until_apt` stops above the apt process (see [`apt_process`]): all the
/// pre-install hook needs.
pub(crate) fn read_ancestors(until_apt: bool) -> Vec<Ancestor> {
    let mut out: Vec<Ancestor> = Vec::new();
    let mut apt_argv: Option<Vec<String>> = None;
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..16 {
        if pid <= 1 {
            break;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            break;
        };
        let argv: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let (ppid, start_ticks) = stat.as_deref().map(parse_stat).unwrap_or((None, None));
        if until_apt {
            match &apt_argv {
                Some(apt) if *apt != argv => break,
                Some(_) => {}
                None if argv.first().is_none_or(|a| !is_shell_or_us(a)) => {
                    apt_argv = Some(argv.clone());
                }
                None => {}
            }
        }
        out.push(Ancestor {
            pid,
            start_ticks,
            argv,
        });
        match ppid {
            Some(p) => pid = p,
            None => break,
        }
    }
    out
}

/// `(ppid, starttime)` from a `/proc/<pid>/stat` line: "pid (comm) state
/// ppid ..." where comm may contain spaces and ')'; starttime is field 22.
fn parse_stat(stat: &str) -> (Option<u32>, Option<u64>) {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (None, None);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (
        fields.get(1).and_then(|p| p.parse().ok()),
        fields.get(19).and_then(|t| t.parse().ok()),
    )
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
            apt: None,
            actions: req.actions,
            authorized: vec![],
            overridden: vec![],
            provisioning: vec![],
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

    fn plan_at(started_at: &str, apt: Option<AptProcess>) -> PendingRun {
        PendingRun {
            started_at: started_at.parse().unwrap(),
            apt,
            actions: vec![],
            authorized: vec![],
            overridden: vec![],
            provisioning: vec![],
        }
    }

    #[test]
    fn a_plan_counts_only_for_the_apt_run_that_wrote_it() {
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let apt = AptProcess {
            pid: 4242,
            start_ticks: 987_654,
        };
        let fresh = plan_at("2025-01-01T11:59:30Z", Some(apt));
        assert_eq!(check_pending(&fresh, now, Some(&apt)), Ok(()));
        // Another apt process, or the same pid reused by a later one.
        let other = AptProcess { pid: 4243, ..apt };
        assert!(matches!(
            check_pending(&fresh, now, Some(&other)),
            Err(StalePlan::OtherRun {
                planned: 4242,
                now: 4243,
                ..
            })
        ));
        let reused = AptProcess {
            start_ticks: 999_999,
            ..apt
        };
        assert!(matches!(
            check_pending(&fresh, now, Some(&reused)),
            Err(StalePlan::OtherRun { .. })
        ));
        // Same process but far too old (a long-lived frontend), or dated ahead.
        let old = plan_at("2025-01-01T05:59:59Z", Some(apt));
        assert_eq!(
            check_pending(&old, now, Some(&apt)),
            Err(StalePlan::TooOld {
                age_secs: 6 * 3600 + 1
            })
        );
        let ahead = plan_at("2025-01-01T12:05:00Z", Some(apt));
        assert!(matches!(
            check_pending(&ahead, now, Some(&apt)),
            Err(StalePlan::Future { .. })
        ));
        // Either side without an identity (a plan from an older drydock,
        // /proc unreadable): only the age decides.
        let anonymous = plan_at("2025-01-01T11:00:00Z", None);
        assert_eq!(check_pending(&anonymous, now, Some(&apt)), Ok(()));
        assert_eq!(check_pending(&fresh, now, None), Ok(()));
        let anonymous_old = plan_at("2024-12-31T12:00:00Z", None);
        assert!(matches!(
            check_pending(&anonymous_old, now, None),
            Err(StalePlan::TooOld { .. })
        ));
        // An old plan file without the field still reads.
        let legacy: PendingRun =
            serde_json::from_str(r#"{"started_at":"2025-01-01T11:59:00Z","actions":[]}"#).unwrap();
        assert_eq!(legacy.apt, None);
    }

    #[test]
    fn the_apt_process_is_the_nearest_non_shell_ancestor() {
        let anc = |pid: u32, start: Option<u64>, a: &str| Ancestor {
            pid,
            start_ticks: start,
            argv: argv(a),
        };
        let chain = [
            anc(
                30,
                Some(3),
                "/bin/sh -c /usr/bin/drydock apt-hook pre-install || ...",
            ),
            anc(20, Some(2), "apt-get install -y hello"),
            anc(10, Some(1), "-bash"),
        ];
        assert_eq!(
            apt_process(&chain),
            Some(AptProcess {
                pid: 20,
                start_ticks: 2
            })
        );
        assert_eq!(apt_process(&chain[..1]), None);
        // Post-Invoke: apt's forked child (same argv) runs system().
        let forked = [
            anc(40, Some(4), "sh -c if [ -x /usr/bin/drydock ]; then ..."),
            anc(35, Some(3), "apt-get install -y hello"),
            anc(20, Some(2), "apt-get install -y hello"),
            anc(10, Some(1), "-bash"),
        ];
        assert_eq!(apt_process(&forked), apt_process(&chain));
        assert_eq!(apt_process(&[anc(20, None, "apt-get install")]), None);
        assert_eq!(
            parse_stat("77 (a) b) c) S 12 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5555 1 1"),
            (Some(12), Some(5555))
        );
        assert_eq!(parse_stat("garbage"), (None, None));
    }

    #[test]
    fn this_process_has_readable_ancestors() {
        let all = read_ancestors(false);
        // Under a container's pid 1 there is nothing above us to read.
        assert_eq!(all.is_empty(), std::os::unix::process::parent_id() <= 1);
        assert!(all.iter().all(|a| a.start_ticks.is_some()), "{all:?}");
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
