//! Running the host side of one upgrade step: apt source, package
//! versions, installs, the etcd snapshot and kubeadm. Drain, kubelet
//! restart, reboot and verify go through the agent's own ports (the same
//! ones the reboot cycle uses); [`run_step`] answers [`Outcome::Agent`]
//! for them.
//!
//! Each step first checks what is already true ([`plan::already_done`] and
//! the persisted [`Progress`]), so a step resumed after a crash or a
//! `drydock resume` does not repeat work, and a kubeadm step recorded as
//! done is never run again. Every command's output goes to the history.

use serde::{Deserialize, Serialize};
use serde_json::json;

use std::sync::Mutex;

use super::apt::{self, PackageVersions, lock};
use super::etcd::{self, Snapshot};
use super::kubeadm;
use super::plan::{self, Facts, KubeadmAction, UpgradeStep};
use super::version::KubeVersion;
use crate::config::Settings;
use crate::host::command::{CommandOutput, CommandRunner, CommandSpec};
use crate::host::dpkg::Dpkg;
use crate::store::Store;

/// History kind of every command an upgrade runs.
pub const HISTORY_COMMAND: &str = "upgrade-command";
/// History kind of a saved etcd snapshot.
pub const HISTORY_SNAPSHOT: &str = "etcd-snapshot";

/// One node's upgrade as far as it got; persisted with the agent state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Progress {
    pub from: Option<KubeVersion>,
    pub to: KubeVersion,
    pub action: KubeadmAction,
    /// The whole plan for this turn, in order.
    pub steps: Vec<UpgradeStep>,
    /// The step to run (or being run).
    pub step: UpgradeStep,
    /// Steps finished (a kubeadm step listed here is never repeated).
    #[serde(default)]
    pub done: Vec<UpgradeStep>,
    #[serde(default)]
    pub packages: Option<PackageVersions>,
    #[serde(default)]
    pub snapshot: Option<Snapshot>,
}

impl Progress {
    pub fn new(
        from: Option<KubeVersion>,
        to: KubeVersion,
        action: KubeadmAction,
        reboot_needed: bool,
    ) -> Progress {
        let steps = plan::steps(action, reboot_needed);
        Progress {
            from,
            to,
            action,
            step: steps[0],
            steps,
            done: Vec::new(),
            packages: None,
            snapshot: None,
        }
    }

    /// Marks the current step done and moves to the next; `false` when
    /// that was the last one.
    pub fn advance(&mut self) -> bool {
        if !self.done.contains(&self.step) {
            self.done.push(self.step);
        }
        match plan::next_step(&self.steps, self.step) {
            Some(next) => {
                self.step = next;
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_done(&self, step: UpgradeStep) -> bool {
        self.done.contains(&step)
    }

    /// Verification may start after a kubelet restart only once the new
    /// kubelet is installed and its restart recorded.
    pub(crate) fn kubelet_restart_recorded(&self) -> bool {
        self.is_done(UpgradeStep::InstallKubelet) && self.is_done(UpgradeStep::RestartKubelet)
    }

    /// The turn's reboot may be asked for only at its step, the new
    /// kubelet installed.
    pub(crate) fn at_reboot(&self) -> bool {
        self.step == UpgradeStep::Reboot && self.is_done(UpgradeStep::InstallKubelet)
    }

    /// Whether `self` can come after `before` in the same turn: the same
    /// plan, nothing recorded done forgotten, no step back. Anything else
    /// (a stale or foreign record) would let a kubeadm step run twice.
    pub(crate) fn follows(&self, before: &Progress) -> bool {
        let at = |p: &Progress| p.steps.iter().position(|s| *s == p.step);
        self.from == before.from
            && self.to == before.to
            && self.action == before.action
            && self.steps == before.steps
            && before.done.iter().all(|s| self.done.contains(s))
            && matches!((at(before), at(self)), (Some(b), Some(a)) if a >= b)
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ran and succeeded.
    Done,
    /// Already true (or recorded done): nothing ran.
    AlreadyDone,
    /// Not a host step: the agent does it with its own ports.
    Agent,
}

/// A failed step: the reason, and the output of the command that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub step: UpgradeStep,
    pub error: String,
    pub output: Option<Box<CommandOutput>>,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade step {}: {}", self.step, self.error)
    }
}

fn record(store: &Mutex<Store>, step: UpgradeStep, to: KubeVersion, out: &CommandOutput) {
    let detail = json!({
        "step": step.name(),
        "to": to.to_string(),
        "output": out,
    });
    let appended = lock(store).append_history(HISTORY_COMMAND, &detail);
    if let Err(e) = appended {
        tracing::warn!(error = %e, step = step.name(), "recording an upgrade command in the history");
    }
}

fn fail(
    step: UpgradeStep,
    error: impl std::fmt::Display,
    output: Option<&CommandOutput>,
) -> StepFailure {
    StepFailure {
        step,
        error: error.to_string(),
        output: output.cloned().map(Box::new),
    }
}

async fn run_kubeadm(
    runner: &dyn CommandRunner,
    store: &Mutex<Store>,
    step: UpgradeStep,
    to: KubeVersion,
    spec: &CommandSpec,
) -> Result<(), StepFailure> {
    let out = runner
        .run(spec)
        .await
        .map_err(|e| fail(step, format!("running {}: {e}", spec.display()), None))?;
    record(store, step, to, &out);
    match out.failure() {
        None => Ok(()),
        Some(reason) => Err(fail(
            step,
            format!("`{}` {reason}", spec.display()),
            Some(&out),
        )),
    }
}

/// Installed `(version, held)` of the three packages.
fn package_facts(
    settings: &Settings,
    facts: &mut Facts,
    step: UpgradeStep,
) -> Result<(), StepFailure> {
    let dpkg = Dpkg::new(&settings.packages.dpkg_root);
    let all = dpkg
        .packages()
        .map_err(|e| fail(step, format!("reading the dpkg database: {e}"), None))?;
    let find = |name: &str| {
        all.iter()
            .find(|p| p.package == name && p.is_installed())
            .map(|p| {
                (
                    p.version.clone(),
                    p.want == crate::host::dpkg::Selection::Hold,
                )
            })
    };
    facts.kubeadm = find("kubeadm");
    facts.kubelet = find("kubelet");
    facts.kubectl = find("kubectl");
    Ok(())
}

/// Runs the host side of `progress.step`. `cluster` holds what the API
/// says (kubeadm-config, `/version`), read by the caller just before.
/// On success the caller persists `progress.advance()`.
pub async fn run_step(
    runner: &dyn CommandRunner,
    settings: &Settings,
    store: &Mutex<Store>,
    node: &str,
    progress: &mut Progress,
    cluster: &Facts,
) -> Result<Outcome, StepFailure> {
    let step = progress.step;
    let to = progress.to;
    let u = &settings.upgrade;
    if step.is_kubeadm() && progress.is_done(step) {
        return Ok(Outcome::AlreadyDone);
    }
    let mut facts = cluster.clone();
    facts.package_version = progress.packages.as_ref().map(|p| p.kubeadm.clone());
    match step {
        UpgradeStep::AptSource => {
            let result = apt::refresh_source(runner, u, to).await;
            match result {
                Ok((changed, out)) => {
                    record(store, step, to, &out);
                    if changed {
                        tracing::info!(file = %u.apt_source_file.display(), minor = %to.minor_string(), "apt source rewritten for the target minor");
                    }
                    Ok(Outcome::Done)
                }
                Err(e) => {
                    if let Some(out) = e.output() {
                        record(store, step, to, out);
                    }
                    Err(fail(step, &e, e.output()))
                }
            }
        }
        UpgradeStep::ResolvePackages => match apt::find_versions(runner, u, to).await {
            Ok((versions, out)) => {
                record(store, step, to, &out);
                progress.packages = Some(versions);
                Ok(Outcome::Done)
            }
            Err(e) => {
                if let Some(out) = e.output() {
                    record(store, step, to, out);
                }
                Err(fail(step, &e, e.output()))
            }
        },
        UpgradeStep::InstallKubeadm | UpgradeStep::InstallKubelet => {
            let Some(versions) = progress.packages.clone() else {
                return Err(fail(
                    step,
                    "no package version was resolved for this upgrade",
                    None,
                ));
            };
            package_facts(settings, &mut facts, step)?;
            let names: &[&str] = if step == UpgradeStep::InstallKubeadm {
                &["kubeadm"]
            } else {
                facts.package_version = Some(versions.kubelet.clone());
                &["kubelet", "kubectl"]
            };
            let wanted = versions.pairs(names);
            let all_there = wanted.iter().all(|(p, v)| {
                let f = match p.as_str() {
                    "kubeadm" => &facts.kubeadm,
                    "kubelet" => &facts.kubelet,
                    _ => &facts.kubectl,
                };
                f.as_ref().is_some_and(|(have, held)| have == v && *held)
            });
            if all_there {
                return Ok(Outcome::AlreadyDone);
            }
            match apt::install_exact(runner, settings, store, &wanted).await {
                Ok(out) => {
                    record(store, step, to, &out);
                    Ok(Outcome::Done)
                }
                Err(e) => {
                    if let Some(out) = e.output() {
                        record(store, step, to, out);
                    }
                    Err(fail(step, &e, e.output()))
                }
            }
        }
        UpgradeStep::EtcdSnapshot => {
            if let Some(s) = &progress.snapshot
                && s.path.is_file()
            {
                return Ok(Outcome::AlreadyDone);
            }
            let path = etcd::snapshot_path(u, node, progress.from, to, jiff::Timestamp::now());
            match etcd::snapshot(runner, u, &path).await {
                Ok((snapshot, outputs)) => {
                    for out in &outputs {
                        record(store, step, to, out);
                    }
                    let appended = lock(store).append_history(HISTORY_SNAPSHOT, &json!(snapshot));
                    if let Err(e) = appended {
                        tracing::warn!(error = %e, "recording the etcd snapshot in the history");
                    }
                    tracing::info!(path = %snapshot.path.display(), size = snapshot.size, revision = snapshot.revision, "etcd snapshot saved and checked");
                    progress.snapshot = Some(snapshot);
                    Ok(Outcome::Done)
                }
                Err(e) => {
                    if let Some(out) = e.output() {
                        record(store, step, to, out);
                    }
                    Err(fail(step, &e, e.output()))
                }
            }
        }
        UpgradeStep::KubeadmPlan => {
            run_kubeadm(runner, store, step, to, &kubeadm::plan_spec(u, to)).await?;
            Ok(Outcome::Done)
        }
        UpgradeStep::KubeadmApply => {
            if plan::already_done(step, to, &facts) {
                return Ok(Outcome::AlreadyDone);
            }
            run_kubeadm(
                runner,
                store,
                step,
                to,
                &kubeadm::upgrade_spec(u, KubeadmAction::Apply, to),
            )
            .await?;
            Ok(Outcome::Done)
        }
        UpgradeStep::KubeadmNode => {
            run_kubeadm(
                runner,
                store,
                step,
                to,
                &kubeadm::upgrade_spec(u, KubeadmAction::Node, to),
            )
            .await?;
            Ok(Outcome::Done)
        }
        UpgradeStep::Drain
        | UpgradeStep::RestartKubelet
        | UpgradeStep::Reboot
        | UpgradeStep::Verify => Ok(Outcome::Agent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_record_of_the_same_plan_follows() {
        let v = |m, p| KubeVersion::new(1, m, p);
        let p = Progress::new(Some(v(34, 2)), v(35, 2), KubeadmAction::Apply, false);
        let mut later = p.clone();
        later.advance();
        later.advance();
        assert!(later.follows(&p));
        assert!(later.follows(&later));
        assert!(!p.follows(&later), "a step back");
        let other = Progress::new(Some(v(34, 2)), v(35, 2), KubeadmAction::Node, false);
        assert!(!other.follows(&p), "another plan");
        let retarget = Progress::new(Some(v(34, 2)), v(35, 1), KubeadmAction::Apply, false);
        assert!(!retarget.follows(&p));
        let mut forgot = later.clone();
        forgot.done.clear();
        assert!(!forgot.follows(&later), "a done step forgotten");
    }

    #[test]
    fn progress_walks_the_plan_and_remembers_what_is_done() {
        let mut p = Progress::new(
            Some(KubeVersion::new(1, 34, 2)),
            KubeVersion::new(1, 35, 2),
            KubeadmAction::Apply,
            false,
        );
        assert_eq!(p.step, UpgradeStep::AptSource);
        let mut seen = vec![p.step];
        while p.advance() {
            seen.push(p.step);
        }
        assert_eq!(seen, p.steps);
        assert_eq!(p.done, p.steps);
        assert!(p.is_done(UpgradeStep::KubeadmApply));
        // Round-trips through the store's JSON.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Progress>(&json).unwrap(), p);
    }
}
