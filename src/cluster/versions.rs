//! What an upgrade needs to know from the API: the target annotation, the
//! API server's `/version`, kube-system/kubeadm-config's
//! `kubernetesVersion` (kubeadm lets every node read it), every Node's
//! kubelet version and role. And `drydock cluster set-version`'s writer.

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams};

use super::annotations::{self, AnnotationError, KUBERNETES_VERSION};
use crate::upgrade::version::{ClusterVersions, KubeVersion, NodeVersion, TargetError, check_skew};

const KUBEADM_CONFIG_NAMESPACE: &str = "kube-system";
const KUBEADM_CONFIG: &str = "kubeadm-config";
pub(crate) const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("reading the API server's /version: {0}")]
    ApiServer(#[source] kube::Error),
    #[error("reading ConfigMap kube-system/kubeadm-config: {0}")]
    KubeadmConfig(#[source] kube::Error),
    #[error("kube-system/kubeadm-config: {0}")]
    KubeadmConfigContent(String),
    #[error("listing Nodes for their kubelet versions: {0}")]
    Nodes(#[source] kube::Error),
    #[error("reading Namespace {namespace} for the upgrade target: {source}")]
    Namespace {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// The reason is the source (shown after this by error chains).
    #[error("refusing the Kubernetes target")]
    Refused(#[from] TargetError),
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
}

/// The target as written on the Namespace (unvalidated), and the versions.
#[cfg(all(test, feature = "sim"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionObservation {
    pub target: Option<String>,
    pub versions: ClusterVersions,
}

/// `kubernetesVersion` out of kubeadm's ClusterConfiguration YAML.
pub fn kubeadm_config_version(cm: &ConfigMap) -> Result<KubeVersion, String> {
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("ClusterConfiguration"))
        .ok_or("no ClusterConfiguration key")?;
    // Only the one field; kubeadm's others are not drydock's business.
    #[derive(serde::Deserialize)]
    struct ClusterConfiguration {
        #[serde(rename = "kubernetesVersion")]
        kubernetes_version: Option<String>,
    }
    let doc: ClusterConfiguration = serde_saphyr::from_str(yaml)
        .map_err(|e| format!("ClusterConfiguration is not YAML: {e}"))?;
    let text = doc
        .kubernetes_version
        .ok_or("ClusterConfiguration has no kubernetesVersion")?;
    let text = text.as_str();
    KubeVersion::parse_observed(text)
        .ok_or_else(|| format!("unreadable kubernetesVersion {text:?}"))
}

fn node_version(node: &Node) -> NodeVersion {
    NodeVersion {
        node: node.metadata.name.clone().unwrap_or_default(),
        kubelet: node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .and_then(|i| KubeVersion::parse_observed(&i.kubelet_version)),
        control_plane: node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL)),
    }
}

/// Reads everything the skew policy and the rollout order look at. A
/// missing kubeadm-config (404) is `None`; any other failure is an error
/// (the caller then waits: fail closed). Only the tests read the target
/// back; the agent reads what it needs through `observe_versions_as`.
#[cfg(all(test, feature = "sim"))]
pub(crate) async fn observe(
    client: &kube::Client,
    namespace: &str,
) -> Result<VersionObservation, VersionsError> {
    use k8s_openapi::api::core::v1::Namespace;
    let ns: Namespace = Api::all(client.clone())
        .get(namespace)
        .await
        .map_err(|source| VersionsError::Namespace {
            namespace: namespace.to_string(),
            source,
        })?;
    let target = ns
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KUBERNETES_VERSION))
        .cloned();
    let versions = observe_versions(client).await?;
    Ok(VersionObservation { target, versions })
}

/// As [`observe_versions_as`] with one credential for everything (an admin's).
pub(crate) async fn observe_versions(
    client: &kube::Client,
) -> Result<ClusterVersions, VersionsError> {
    observe_versions_as(client, client).await
}

/// `/version` and kubeadm-config with the kubelet's credential (kubeadm
/// grants every node `get` on kubeadm-config); the Node list with the
/// drydock identity: the Node authorizer lets a kubelet read only its own
/// Node.
pub async fn observe_versions_as(
    client: &kube::Client,
    shared: &kube::Client,
) -> Result<ClusterVersions, VersionsError> {
    let info = client
        .apiserver_version()
        .await
        .map_err(VersionsError::ApiServer)?;
    let api_server = KubeVersion::parse_observed(&info.git_version);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), KUBEADM_CONFIG_NAMESPACE);
    let kubeadm_config = match cms
        .get_opt(KUBEADM_CONFIG)
        .await
        .map_err(VersionsError::KubeadmConfig)?
    {
        None => None,
        Some(cm) => Some(kubeadm_config_version(&cm).map_err(VersionsError::KubeadmConfigContent)?),
    };
    let nodes: Api<Node> = Api::all(shared.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(VersionsError::Nodes)?;
    Ok(ClusterVersions {
        api_server,
        kubeadm_config,
        kubelets: list.items.iter().map(node_version).collect(),
    })
}

/// `drydock cluster set-version`: validates `text` strictly and against the
/// cluster, then writes the target annotation. Nothing is written when the
/// target is refused.
pub async fn set_target(
    client: &kube::Client,
    namespace: &str,
    text: &str,
) -> Result<KubeVersion, VersionsError> {
    let to = KubeVersion::parse_target(text).map_err(TargetError::from)?;
    let versions = observe_versions(client).await?;
    check_skew(to, &versions).map_err(TargetError::from)?;
    annotations::set(client, namespace, KUBERNETES_VERSION, Some(&to.to_string())).await?;
    Ok(to)
}

// Against the simulator: only with the `sim` feature.
#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::Scenario;

    #[test]
    fn reads_kubeadm_cluster_configuration() {
        let cm: ConfigMap =
            serde_json::from_value(crate::sim::kubeadm::config_object("v1.34.2")).unwrap();
        assert_eq!(kubeadm_config_version(&cm), Ok(KubeVersion::new(1, 34, 2)));
        let mut broken = cm.clone();
        broken.data.as_mut().unwrap().insert(
            "ClusterConfiguration".into(),
            "kind: ClusterConfiguration\n".into(),
        );
        assert!(
            kubeadm_config_version(&broken)
                .unwrap_err()
                .contains("no kubernetesVersion")
        );
    }

    #[tokio::test]
    async fn observes_the_simulated_cluster_and_sets_only_valid_targets() {
        let sim = Scenario::cluster(1, 2).start().await.unwrap();
        let client = sim.client().unwrap();
        let obs = observe(&client, "drydock").await.unwrap();
        assert_eq!(obs.target, None);
        let v = KubeVersion::new(1, 34, 1);
        assert_eq!(obs.versions.api_server, Some(v));
        assert_eq!(obs.versions.kubeadm_config, Some(v));
        assert_eq!(obs.versions.kubelets.len(), 3);
        assert!(
            obs.versions
                .kubelets
                .iter()
                .any(|n| n.node == "cp-1" && n.control_plane)
        );
        assert!(
            obs.versions
                .kubelets
                .iter()
                .any(|n| n.node == "worker-1" && !n.control_plane)
        );

        for bad in ["latest", "v1.36.0", "v1.33.0", "v1.35.2; rm -rf /"] {
            assert!(
                matches!(
                    set_target(&client, "drydock", bad).await,
                    Err(VersionsError::Refused(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(observe(&client, "drydock").await.unwrap().target, None);
        assert_eq!(
            set_target(&client, "drydock", "v1.35.2").await.unwrap(),
            KubeVersion::new(1, 35, 2)
        );
        assert_eq!(
            observe(&client, "drydock").await.unwrap().target.as_deref(),
            Some("v1.35.2")
        );
    }
}
