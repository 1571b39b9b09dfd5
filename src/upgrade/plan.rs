//! The rollout order and one node's steps: pure functions of what the
//! cluster and this node report.
//!
//! Order: control-plane nodes first, one at a time (the Lease); the first
//! one (found by kube-system/kubeadm-config still being below the target
//! while it holds the Lease) runs `kubeadm upgrade apply`, every other node
//! `kubeadm upgrade node`. Workers start only when every control-plane
//! kubelet and the API server's `/version` are at the target.

use serde::{Deserialize, Serialize};

use super::version::{ClusterVersions, KubeVersion, TargetError, check_skew};

/// Which `kubeadm upgrade` this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeadmAction {
    /// `kubeadm upgrade apply`: the first control-plane node.
    Apply,
    /// `kubeadm upgrade node`: every other node.
    Node,
}

/// What this node should do about the cluster's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No target set.
    NoTarget,
    /// The target is refused (syntax or skew): nothing runs.
    Refused(TargetError),
    /// This node's kubelet already runs the target.
    UpToDate,
    /// Not this node's turn yet.
    Wait(String),
    /// Upgrade this node (under the Lease, through the gates).
    Upgrade {
        from: Option<KubeVersion>,
        to: KubeVersion,
        control_plane: bool,
    },
}

/// Whether this node needs an upgrade and may start one now. The choice
/// between `apply` and `node` is made later, while holding the Lease
/// ([`kubeadm_action`]).
pub(crate) fn decide(target: Option<&str>, cluster: &ClusterVersions, node: &str) -> Decision {
    let Some(text) = target else {
        return Decision::NoTarget;
    };
    let to = match KubeVersion::parse_target(text.trim_end_matches('\n')) {
        Ok(v) => v,
        Err(e) => return Decision::Refused(e.into()),
    };
    if let Err(e) = check_skew(to, cluster) {
        return Decision::Refused(e.into());
    }
    let Some(me) = cluster.kubelets.iter().find(|n| n.node == node) else {
        return Decision::Wait(format!("node {node} is not in the cluster's Node list"));
    };
    if me.kubelet == Some(to) {
        return Decision::UpToDate;
    }
    if !me.control_plane
        && let Some(reason) = control_plane_pending(to, cluster)
    {
        return Decision::Wait(reason);
    }
    Decision::Upgrade {
        from: me.kubelet,
        to,
        control_plane: me.control_plane,
    }
}

/// Why workers must still wait for the control plane, if they must.
pub(crate) fn control_plane_pending(to: KubeVersion, cluster: &ClusterVersions) -> Option<String> {
    match cluster.api_server {
        Some(v) if v == to => {}
        Some(v) => return Some(format!("waiting for the API server ({v}) to reach {to}")),
        None => return Some(format!("waiting for the API server to report {to}")),
    }
    let behind: Vec<&str> = cluster
        .kubelets
        .iter()
        .filter(|n| n.control_plane && n.kubelet != Some(to))
        .map(|n| n.node.as_str())
        .collect();
    if behind.is_empty() {
        None
    } else {
        Some(format!(
            "waiting for control-plane node(s) {} to reach {to}",
            behind.join(", ")
        ))
    }
}

/// Decided while holding the Lease: the first control-plane node is the one
/// that finds kubeadm-config still below the target.
pub(crate) fn kubeadm_action(
    control_plane: bool,
    to: KubeVersion,
    kubeadm_config: Option<KubeVersion>,
) -> KubeadmAction {
    match (control_plane, kubeadm_config) {
        (true, Some(v)) if v < to => KubeadmAction::Apply,
        _ => KubeadmAction::Node,
    }
}

/// With more than one Lease slot, two control-plane nodes could hold slots
/// at once, and both find kubeadm-config below the target (two `apply`s).
/// A control-plane upgrade therefore runs only under the group's first
/// slot: the Lease's own exclusivity keeps control planes one at a time,
/// with no race between nodes reading each other's state. `Err`: why this
/// node must give its slot back and wait.
pub(crate) fn control_plane_slot(
    control_plane: bool,
    slot: &str,
    slots: &[String],
) -> Result<(), String> {
    match slots.first() {
        _ if !control_plane => Ok(()),
        Some(first) if first == slot => Ok(()),
        Some(first) => Err(format!(
            "control-plane nodes upgrade one at a time, under Lease slot {first} only (this node holds {slot})"
        )),
        None => Err("no Lease slots are configured".to_string()),
    }
}

/// One step of a node's upgrade, in order. Each is persisted before it
/// runs and checked against what is already true when resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeStep {
    /// Write the apt source for the target minor (if changed), `apt-get update` it.
    AptSource,
    /// Find the exact package version; absent: fail before changing anything.
    ResolvePackages,
    /// Authorize, install kubeadm at that version, hold again.
    InstallKubeadm,
    /// First control-plane node: `etcdctl snapshot save`, checked.
    EtcdSnapshot,
    /// First control-plane node: `kubeadm upgrade plan`.
    KubeadmPlan,
    /// First control-plane node: `kubeadm upgrade apply -y vX.Y.Z`.
    KubeadmApply,
    /// Every other node: `kubeadm upgrade node`.
    KubeadmNode,
    /// Cordon and drain (the reboot cycle's drain).
    Drain,
    /// Authorize, install kubelet and kubectl at that version, hold again.
    InstallKubelet,
    /// `daemon-reload`, restart kubelet over D-Bus.
    RestartKubelet,
    /// A reboot is also needed: reboot instead of restarting the kubelet.
    Reboot,
    /// Node Ready, kubeletVersion at target, required pods, checks.d.
    Verify,
}

impl UpgradeStep {
    pub fn name(self) -> &'static str {
        match self {
            UpgradeStep::AptSource => "apt-source",
            UpgradeStep::ResolvePackages => "resolve-packages",
            UpgradeStep::InstallKubeadm => "install-kubeadm",
            UpgradeStep::EtcdSnapshot => "etcd-snapshot",
            UpgradeStep::KubeadmPlan => "kubeadm-plan",
            UpgradeStep::KubeadmApply => "kubeadm-apply",
            UpgradeStep::KubeadmNode => "kubeadm-node",
            UpgradeStep::Drain => "drain",
            UpgradeStep::InstallKubelet => "install-kubelet",
            UpgradeStep::RestartKubelet => "restart-kubelet",
            UpgradeStep::Reboot => "reboot",
            UpgradeStep::Verify => "verify",
        }
    }

    /// Whether the step runs kubeadm (never repeated once recorded done).
    pub(crate) fn is_kubeadm(self) -> bool {
        matches!(
            self,
            UpgradeStep::KubeadmPlan | UpgradeStep::KubeadmApply | UpgradeStep::KubeadmNode
        )
    }
}

impl std::fmt::Display for UpgradeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The steps of one node's turn. A node that also needs a reboot does the
/// upgrade, then the reboot, in the same turn (the reboot restarts the
/// kubelet; one drain serves both).
pub(crate) fn steps(action: KubeadmAction, reboot_needed: bool) -> Vec<UpgradeStep> {
    use UpgradeStep::*;
    let mut out = vec![AptSource, ResolvePackages, InstallKubeadm];
    match action {
        KubeadmAction::Apply => out.extend([EtcdSnapshot, KubeadmPlan, KubeadmApply]),
        KubeadmAction::Node => out.push(KubeadmNode),
    }
    out.extend([Drain, InstallKubelet]);
    out.push(if reboot_needed {
        Reboot
    } else {
        RestartKubelet
    });
    out.push(Verify);
    out
}

/// The step after `step` in `steps`, `None` when it was the last.
pub(crate) fn next_step(steps: &[UpgradeStep], step: UpgradeStep) -> Option<UpgradeStep> {
    let i = steps.iter().position(|s| *s == step)?;
    steps.get(i + 1).copied()
}

/// What is already true on this node and cluster, for resuming a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The apt source file already has the wanted content.
    pub apt_source_current: bool,
    /// Installed `(version, held)` of kubeadm, kubelet, kubectl.
    pub kubeadm: Option<(String, bool)>,
    pub kubelet: Option<(String, bool)>,
    pub kubectl: Option<(String, bool)>,
    /// The wanted package version, once resolved.
    pub package_version: Option<String>,
    /// kubeadm-config's kubernetesVersion and the API server's version.
    pub kubeadm_config: Option<KubeVersion>,
    pub api_server: Option<KubeVersion>,
    /// This node's kubelet as the Node reports it.
    pub node_kubelet: Option<KubeVersion>,
}

/// Whether `step` is already done according to `facts` (resume without
/// repeating it). Steps whose effect cannot be observed (`kubeadm upgrade
/// node`, the snapshot, the plan) rely on the persisted record instead and
/// answer `false` here.
pub(crate) fn already_done(step: UpgradeStep, to: KubeVersion, facts: &Facts) -> bool {
    let at = |p: &Option<(String, bool)>| match (p, &facts.package_version) {
        (Some((v, held)), Some(want)) => v == want && *held,
        _ => false,
    };
    match step {
        // apt-get update is cheap and needed to see new patch releases.
        UpgradeStep::AptSource | UpgradeStep::ResolvePackages => false,
        UpgradeStep::InstallKubeadm => at(&facts.kubeadm),
        UpgradeStep::KubeadmApply => {
            facts.kubeadm_config == Some(to) && facts.api_server == Some(to)
        }
        UpgradeStep::InstallKubelet => at(&facts.kubelet) && at(&facts.kubectl),
        UpgradeStep::RestartKubelet | UpgradeStep::Verify => false,
        UpgradeStep::EtcdSnapshot
        | UpgradeStep::KubeadmPlan
        | UpgradeStep::KubeadmNode
        | UpgradeStep::Drain
        | UpgradeStep::Reboot => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::version::NodeVersion;

    const V: fn(u64, u64, u64) -> KubeVersion = KubeVersion::new;
    const OLD: KubeVersion = KubeVersion::new(1, 34, 2);
    const NEW: KubeVersion = KubeVersion::new(1, 35, 2);

    fn cluster(
        api: KubeVersion,
        config: KubeVersion,
        nodes: &[(&str, KubeVersion)],
    ) -> ClusterVersions {
        ClusterVersions {
            api_server: Some(api),
            kubeadm_config: Some(config),
            kubelets: nodes
                .iter()
                .map(|(n, v)| NodeVersion {
                    node: n.to_string(),
                    kubelet: Some(*v),
                    control_plane: n.starts_with("cp-"),
                })
                .collect(),
        }
    }

    fn names() -> [&'static str; 6] {
        ["cp-1", "cp-2", "cp-3", "w-1", "w-2", "w-3"]
    }

    #[test]
    fn no_target_and_refused_target() {
        let c = cluster(OLD, OLD, &[("cp-1", OLD)]);
        assert_eq!(decide(None, &c, "cp-1"), Decision::NoTarget);
        assert!(matches!(
            decide(Some("latest"), &c, "cp-1"),
            Decision::Refused(_)
        ));
        assert!(matches!(
            decide(Some("v1.36.0"), &c, "cp-1"),
            Decision::Refused(_)
        ));
    }

    #[test]
    fn control_planes_first_then_workers() {
        let all_old: Vec<_> = names().iter().map(|n| (*n, OLD)).collect();
        let c = cluster(OLD, OLD, &all_old);
        for n in ["cp-1", "cp-2", "cp-3"] {
            assert_eq!(
                decide(Some("v1.35.2"), &c, n),
                Decision::Upgrade {
                    from: Some(OLD),
                    to: NEW,
                    control_plane: true
                }
            );
        }
        for n in ["w-1", "w-2", "w-3"] {
            let Decision::Wait(reason) = decide(Some("v1.35.2"), &c, n) else {
                panic!("{n} must wait");
            };
            assert!(reason.contains("API server"), "{reason}");
        }
        // Applied, one control-plane kubelet done: workers still wait, naming the others.
        let c = cluster(
            NEW,
            NEW,
            &[("cp-1", NEW), ("cp-2", OLD), ("cp-3", OLD), ("w-1", OLD)],
        );
        let Decision::Wait(reason) = decide(Some("v1.35.2"), &c, "w-1") else {
            panic!()
        };
        assert!(reason.contains("cp-2, cp-3"), "{reason}");
        assert_eq!(decide(Some("v1.35.2"), &c, "cp-1"), Decision::UpToDate);
        // All control planes at target: workers go.
        let c = cluster(
            NEW,
            NEW,
            &[("cp-1", NEW), ("cp-2", NEW), ("cp-3", NEW), ("w-1", OLD)],
        );
        assert_eq!(
            decide(Some("v1.35.2"), &c, "w-1"),
            Decision::Upgrade {
                from: Some(OLD),
                to: NEW,
                control_plane: false
            }
        );
    }

    #[test]
    fn unknown_node_waits() {
        let c = cluster(OLD, OLD, &[("cp-1", OLD)]);
        assert!(matches!(
            decide(Some("v1.35.2"), &c, "ghost"),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn first_control_plane_applies_others_node() {
        assert_eq!(kubeadm_action(true, NEW, Some(OLD)), KubeadmAction::Apply);
        assert_eq!(kubeadm_action(true, NEW, Some(NEW)), KubeadmAction::Node);
        // Unknown config: never guess "apply".
        assert_eq!(kubeadm_action(true, NEW, None), KubeadmAction::Node);
        assert_eq!(kubeadm_action(false, NEW, Some(OLD)), KubeadmAction::Node);
        // A patch release within the minor is applied too.
        assert_eq!(
            kubeadm_action(true, V(1, 34, 3), Some(OLD)),
            KubeadmAction::Apply
        );
    }

    /// Simulates the whole rollout with the pure functions alone: exactly
    /// one apply, control planes before workers, one node at a time.
    #[test]
    fn whole_rollout_order() {
        let mut c = cluster(
            OLD,
            OLD,
            &names().iter().map(|n| (*n, OLD)).collect::<Vec<_>>(),
        );
        let mut log = Vec::new();
        loop {
            // The Lease: the first node (in name order) that may go, goes alone.
            let next = names()
                .into_iter()
                .find(|n| matches!(decide(Some("v1.35.2"), &c, n), Decision::Upgrade { .. }));
            let Some(node) = next else { break };
            let cp = node.starts_with("cp-");
            let action = kubeadm_action(cp, NEW, c.kubeadm_config);
            if action == KubeadmAction::Apply {
                c.kubeadm_config = Some(NEW);
                c.api_server = Some(NEW);
            }
            c.kubelets
                .iter_mut()
                .find(|n| n.node == node)
                .unwrap()
                .kubelet = Some(NEW);
            log.push((node, action));
        }
        assert_eq!(
            log,
            vec![
                ("cp-1", KubeadmAction::Apply),
                ("cp-2", KubeadmAction::Node),
                ("cp-3", KubeadmAction::Node),
                ("w-1", KubeadmAction::Node),
                ("w-2", KubeadmAction::Node),
                ("w-3", KubeadmAction::Node),
            ]
        );
        assert!(
            names()
                .iter()
                .all(|n| decide(Some("v1.35.2"), &c, n) == Decision::UpToDate)
        );
    }

    #[test]
    fn control_planes_upgrade_only_under_the_first_slot() {
        let slots: Vec<String> = (0..3).map(|i| format!("drydock-default-{i}")).collect();
        assert_eq!(
            control_plane_slot(true, "drydock-default-0", &slots),
            Ok(())
        );
        let e = control_plane_slot(true, "drydock-default-1", &slots).unwrap_err();
        assert!(
            e.contains("drydock-default-0") && e.contains("drydock-default-1"),
            "{e}"
        );
        assert!(control_plane_slot(true, "drydock-default-2", &slots).is_err());
        // Workers use any slot; one slot: always the first.
        assert_eq!(
            control_plane_slot(false, "drydock-default-2", &slots),
            Ok(())
        );
        assert_eq!(
            control_plane_slot(true, "drydock-default-0", &slots[..1]),
            Ok(())
        );
        assert!(control_plane_slot(true, "x", &[]).is_err());
    }

    /// With two slots, the rule alone keeps control planes apart: whatever
    /// slots two control planes win, at most one may upgrade, so there is
    /// never a second `apply`.
    #[test]
    fn two_slots_never_two_control_planes() {
        let slots: Vec<String> = (0..2).map(|i| format!("s-{i}")).collect();
        for (a, b) in [("s-0", "s-1"), ("s-1", "s-0")] {
            let go = [a, b]
                .iter()
                .filter(|s| control_plane_slot(true, s, &slots).is_ok())
                .count();
            assert_eq!(go, 1);
        }
        // A worker and a control plane together: both may go.
        assert!(control_plane_slot(true, "s-0", &slots).is_ok());
        assert!(control_plane_slot(false, "s-1", &slots).is_ok());
    }

    #[test]
    fn step_lists() {
        use UpgradeStep::*;
        assert_eq!(
            steps(KubeadmAction::Apply, false),
            vec![
                AptSource,
                ResolvePackages,
                InstallKubeadm,
                EtcdSnapshot,
                KubeadmPlan,
                KubeadmApply,
                Drain,
                InstallKubelet,
                RestartKubelet,
                Verify
            ]
        );
        assert_eq!(
            steps(KubeadmAction::Node, true),
            vec![
                AptSource,
                ResolvePackages,
                InstallKubeadm,
                KubeadmNode,
                Drain,
                InstallKubelet,
                Reboot,
                Verify
            ]
        );
        let s = steps(KubeadmAction::Node, false);
        assert_eq!(next_step(&s, KubeadmNode), Some(Drain));
        assert_eq!(next_step(&s, Verify), None);
        assert_eq!(next_step(&s, KubeadmApply), None);
    }

    #[test]
    fn already_done_checks_reality() {
        let mut f = Facts {
            package_version: Some("1.35.2-1.1".into()),
            kubeadm: Some(("1.35.2-1.1".into(), true)),
            kubelet: Some(("1.35.2-1.1".into(), true)),
            kubectl: Some(("1.34.2-1.1".into(), true)),
            kubeadm_config: Some(NEW),
            api_server: Some(OLD),
            ..Facts::default()
        };
        assert!(already_done(UpgradeStep::InstallKubeadm, NEW, &f));
        assert!(!already_done(UpgradeStep::InstallKubelet, NEW, &f));
        assert!(!already_done(UpgradeStep::KubeadmApply, NEW, &f));
        f.api_server = Some(NEW);
        assert!(already_done(UpgradeStep::KubeadmApply, NEW, &f));
        // Right version but no longer held: install again (it re-holds).
        f.kubeadm = Some(("1.35.2-1.1".into(), false));
        assert!(!already_done(UpgradeStep::InstallKubeadm, NEW, &f));
        assert!(!already_done(UpgradeStep::KubeadmNode, NEW, &f));
    }
}
