//! Required DaemonSets (the CNI above all): every pod they want is
//! scheduled, Running and Ready, so the cluster network is whole before a
//! node leaves it.
//!
//! A missing DaemonSet blocks when the operator listed it in
//! `gates.required-daemonsets`; the built-in default (`kube-system/
//! calico-node`) applies only "when present", so clusters with another CNI
//! work without configuration.
//!
//! This gate is cluster-wide: `gates.node-selector` does not narrow it (a
//! CNI pod down on any node is a broken network), so a DaemonSet pod on a
//! node outside the selector still blocks.

use super::{Verdict, list_names};
use crate::cluster::observe::{DaemonSetObservation, DaemonSetState};

pub(crate) const NAME: &str = super::GateName::DaemonSets.as_str();

/// `configured`: the list came from the configuration (missing ones block)
/// rather than from the default (missing ones pass).
pub(crate) fn evaluate(daemonsets: &[DaemonSetObservation], configured: bool) -> Verdict {
    let problems: Vec<String> = daemonsets
        .iter()
        .filter_map(|ds| problem(ds, configured))
        .collect();
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Block(problems.join("; "))
    }
}

fn problem(ds: &DaemonSetObservation, configured: bool) -> Option<String> {
    let name = &ds.name;
    let DaemonSetState::Present {
        desired,
        ready,
        pods,
    } = &ds.state
    else {
        return configured.then(|| format!("DaemonSet {name} not found"));
    };
    if ready < desired {
        return Some(format!("DaemonSet {name}: {ready} of {desired} pods ready"));
    }
    let bad: Vec<_> = pods.iter().filter(|p| !p.running_and_ready()).collect();
    match bad.as_slice() {
        [] => {}
        [p] => {
            let on = p.node.as_deref().unwrap_or("no node");
            let why = if p.terminating {
                "terminating".to_string()
            } else if p.phase != "Running" {
                p.phase.clone()
            } else {
                "not Ready".to_string()
            };
            return Some(format!("DaemonSet {name}: pod {} on {on} {why}", p.name));
        }
        many => {
            return Some(format!(
                "DaemonSet {name}: {} pods not Running and Ready: {}",
                many.len(),
                list_names(many.iter().map(|p| p.name.as_str()))
            ));
        }
    }
    let found = pods.len() as i64;
    if found < i64::from(*desired) {
        return Some(format!(
            "DaemonSet {name}: only {found} of {desired} wanted pods exist"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::observe::PodView;
    use crate::config::NamespacedName;

    fn calico(state: DaemonSetState) -> DaemonSetObservation {
        DaemonSetObservation {
            name: NamespacedName {
                namespace: "kube-system".into(),
                name: "calico-node".into(),
            },
            state,
        }
    }

    fn pod(name: &str, node: &str, phase: &str, ready: bool) -> PodView {
        PodView {
            namespace: "kube-system".into(),
            name: name.into(),
            node: Some(node.into()),
            phase: phase.into(),
            ready,
            terminating: false,
        }
    }

    fn present(desired: i32, ready: i32, pods: Vec<PodView>) -> DaemonSetState {
        DaemonSetState::Present {
            desired,
            ready,
            pods,
        }
    }

    #[test]
    fn healthy_daemonset_passes() {
        let ds = calico(present(
            2,
            2,
            vec![
                pod("c-1", "n1", "Running", true),
                pod("c-2", "n2", "Running", true),
            ],
        ));
        assert_eq!(evaluate(&[ds], true), Verdict::Pass);
    }

    #[test]
    fn missing_default_passes_missing_configured_blocks() {
        let ds = calico(DaemonSetState::Missing);
        assert_eq!(evaluate(std::slice::from_ref(&ds), false), Verdict::Pass);
        assert_eq!(
            evaluate(&[ds], true),
            Verdict::Block("DaemonSet kube-system/calico-node not found".into())
        );
    }

    #[test]
    fn fewer_ready_than_desired_blocks() {
        let ds = calico(present(3, 2, vec![]));
        assert_eq!(
            evaluate(&[ds], false),
            Verdict::Block("DaemonSet kube-system/calico-node: 2 of 3 pods ready".into())
        );
    }

    #[test]
    fn a_pod_not_running_and_ready_blocks_even_if_status_says_ready() {
        // The DaemonSet status can lag behind the pods.
        let ds = calico(present(
            2,
            2,
            vec![
                pod("c-1", "n1", "Running", true),
                pod("c-2", "n2", "Running", false),
            ],
        ));
        assert_eq!(
            evaluate(&[ds], true),
            Verdict::Block("DaemonSet kube-system/calico-node: pod c-2 on n2 not Ready".into())
        );
        let ds = calico(present(1, 1, vec![pod("c-1", "n1", "Pending", false)]));
        assert_eq!(
            evaluate(&[ds], true),
            Verdict::Block("DaemonSet kube-system/calico-node: pod c-1 on n1 Pending".into())
        );
        let mut p = pod("c-1", "n1", "Running", true);
        p.terminating = true;
        let ds = calico(present(1, 1, vec![p]));
        assert_eq!(
            evaluate(&[ds], true),
            Verdict::Block("DaemonSet kube-system/calico-node: pod c-1 on n1 terminating".into())
        );
    }

    #[test]
    fn missing_pods_block() {
        let ds = calico(present(3, 3, vec![pod("c-1", "n1", "Running", true)]));
        assert_eq!(
            evaluate(&[ds], true),
            Verdict::Block(
                "DaemonSet kube-system/calico-node: only 1 of 3 wanted pods exist".into()
            )
        );
    }

    #[test]
    fn problems_of_several_daemonsets_are_all_named() {
        let mut other = calico(DaemonSetState::Missing);
        other.name.name = "kube-proxy".into();
        let ds = calico(present(2, 1, vec![]));
        assert_eq!(
            evaluate(&[ds, other], true),
            Verdict::Block(
                "DaemonSet kube-system/calico-node: 1 of 2 pods ready; DaemonSet kube-system/kube-proxy not found"
                    .into()
            )
        );
    }
}
