//! All nodes Ready (those matching `gates.node-selector`, when set): taking a
//! node out while another is already down loses capacity twice.

use jiff::Timestamp;

use super::{Verdict, ago, list_names};
use crate::cluster::observe::{NodeView, ReadyStatus};

pub(crate) const NAME: &str = super::GateName::NodesReady.as_str();

pub(crate) fn evaluate(nodes: &[NodeView], node_selector: &str, now: Timestamp) -> Verdict {
    if nodes.is_empty() {
        // Fail closed: a selector that matches nothing is a mistake.
        return Verdict::Block(if node_selector.is_empty() {
            "no nodes listed by the API server".into()
        } else {
            format!("no nodes match gates.node-selector {node_selector:?}")
        });
    }
    let not_ready: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.ready != ReadyStatus::True)
        .collect();
    match not_ready.as_slice() {
        [] => Verdict::Pass,
        [n] => Verdict::Block(format!("node {} {}", n.name, describe(n, now))),
        many => Verdict::Block(format!(
            "{} nodes not Ready: {}",
            many.len(),
            list_names(many.iter().map(|n| n.name.as_str()))
        )),
    }
}

fn describe(n: &NodeView, now: Timestamp) -> String {
    let state = match n.ready {
        ReadyStatus::True => "Ready",
        ReadyStatus::False => "NotReady",
        ReadyStatus::Unknown => "Ready status Unknown (kubelet not reporting)",
        ReadyStatus::Missing => "has no Ready condition yet",
    };
    match (n.ready, n.ready_changed_at) {
        (ReadyStatus::Missing, _) | (_, None) => state.to_string(),
        (_, Some(t)) => format!("{state} for {}", ago(now, t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: ReadyStatus, changed: Option<&str>) -> NodeView {
        NodeView {
            name: name.into(),
            ready,
            ready_changed_at: changed.map(|t| t.parse().unwrap()),
        }
    }

    fn now() -> Timestamp {
        "2025-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn all_ready_passes() {
        let nodes = [
            node("a", ReadyStatus::True, Some("2024-12-01T00:00:00Z")),
            node("b", ReadyStatus::True, None),
        ];
        assert_eq!(evaluate(&nodes, "", now()), Verdict::Pass);
    }

    #[test]
    fn one_not_ready_node_is_named_with_duration() {
        let nodes = [
            node("a", ReadyStatus::True, None),
            node("worker-3", ReadyStatus::False, Some("2025-01-01T11:55:00Z")),
        ];
        assert_eq!(
            evaluate(&nodes, "", now()),
            Verdict::Block("node worker-3 NotReady for 5m".into())
        );
        let nodes = [node(
            "w",
            ReadyStatus::Unknown,
            Some("2025-01-01T10:00:00Z"),
        )];
        assert_eq!(
            evaluate(&nodes, "", now()),
            Verdict::Block("node w Ready status Unknown (kubelet not reporting) for 2h".into())
        );
        let nodes = [node("new", ReadyStatus::Missing, None)];
        assert_eq!(
            evaluate(&nodes, "", now()),
            Verdict::Block("node new has no Ready condition yet".into())
        );
    }

    #[test]
    fn several_not_ready_are_counted_and_listed() {
        let nodes: Vec<_> = (1..=6)
            .map(|i| node(&format!("n{i}"), ReadyStatus::False, None))
            .collect();
        assert_eq!(
            evaluate(&nodes, "", now()),
            Verdict::Block("6 nodes not Ready: n1, n2, n3, n4, n5 and 1 more".into())
        );
    }

    #[test]
    fn no_nodes_blocks() {
        assert_eq!(
            evaluate(&[], "role=db", now()),
            Verdict::Block("no nodes match gates.node-selector \"role=db\"".into())
        );
        assert!(matches!(evaluate(&[], "", now()), Verdict::Block(_)));
    }
}
