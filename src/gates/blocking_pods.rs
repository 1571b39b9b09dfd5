//! Blocking pods: while a pod on this node matches one of
//! `gates.blocking-pod-selectors` (a backup, a batch job that must not be
//! interrupted), this node waits. Finished pods do not block.

use super::{Verdict, list_names};
use crate::cluster::observe::BlockingPods;

pub(crate) const NAME: &str = super::GateName::BlockingPods.as_str();

pub(crate) fn evaluate(found: &[BlockingPods]) -> Verdict {
    let pods: Vec<(String, &str)> = found
        .iter()
        .flat_map(|b| {
            b.pods
                .iter()
                .map(|p| (format!("{}/{}", p.namespace, p.name), b.selector.as_str()))
        })
        .collect();
    match pods.as_slice() {
        [] => Verdict::Pass,
        [(pod, selector)] => Verdict::Block(format!(
            "blocking pod {pod} on this node (selector {selector:?})"
        )),
        many => Verdict::Block(format!(
            "{} blocking pods on this node: {}",
            many.len(),
            list_names(many.iter().map(|(p, _)| p.as_str()))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::observe::PodView;

    fn pod(name: &str) -> PodView {
        PodView {
            namespace: "batch".into(),
            name: name.into(),
            node: Some("me".into()),
            phase: "Running".into(),
            ready: true,
            terminating: false,
        }
    }

    #[test]
    fn no_matching_pods_pass() {
        assert_eq!(evaluate(&[]), Verdict::Pass);
        let empty = BlockingPods {
            selector: "app=backup".into(),
            pods: vec![],
        };
        assert_eq!(evaluate(&[empty]), Verdict::Pass);
    }

    #[test]
    fn matching_pods_block_with_names() {
        let one = BlockingPods {
            selector: "app=backup".into(),
            pods: vec![pod("backup-1")],
        };
        assert_eq!(
            evaluate(std::slice::from_ref(&one)),
            Verdict::Block(
                "blocking pod batch/backup-1 on this node (selector \"app=backup\")".into()
            )
        );
        let two = BlockingPods {
            selector: "drydock.dev/block".into(),
            pods: vec![pod("etl")],
        };
        assert_eq!(
            evaluate(&[one, two]),
            Verdict::Block("2 blocking pods on this node: batch/backup-1, batch/etl".into())
        );
    }
}
