//! kubeadm's part of a simulated cluster: the kube-system/kubeadm-config
//! ConfigMap every kubeadm cluster has, and what `kubeadm upgrade apply`
//! and a kubelet restart change, so an upgrade against the simulator sees
//! what it would see on a real cluster.

use std::path::PathBuf;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use super::SimError;
use super::kinds::Kind;
use super::server::SimHandle;
use super::state::State;
use crate::host::command::{CommandError, CommandOutput, CommandRunner, CommandSpec};

pub(crate) const NAMESPACE: &str = "kube-system";
pub(crate) const NAME: &str = "kubeadm-config";

/// The ConfigMap as kubeadm writes it (ClusterConfiguration, YAML).
pub fn config_object(version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "data": {
            "ClusterConfiguration": format!(
                "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nclusterName: kubernetes\ncontrolPlaneEndpoint: 127.0.0.1:6443\nkubernetesVersion: {version}\nnetworking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n"
            )
        }
    })
}

/// Seeds kubeadm-config when the scenario has control-plane nodes.
pub(super) fn seed(st: &mut State, version: &str) {
    if st.store.get(Kind::ConfigMap, NAMESPACE, NAME).is_none() {
        st.insert(Kind::ConfigMap, config_object(version));
    }
}

impl SimHandle {
    /// `kubernetesVersion` in kubeadm-config, as stored.
    pub fn kubeadm_config_version(&self) -> Option<String> {
        let cm: ConfigMap = self.get(Some(NAMESPACE), NAME)?;
        let yaml = cm.data?.remove("ClusterConfiguration")?;
        yaml.lines()
            .find_map(|l| l.strip_prefix("kubernetesVersion:"))
            .map(|v| v.trim().to_string())
    }

    /// What a successful `kubeadm upgrade apply vX` leaves behind: the API
    /// server serves vX and kubeadm-config says vX. Kubelets are unchanged
    /// until they are restarted with a new package.
    pub(crate) fn kubeadm_upgrade_applied(&self, version: &str) -> Result<(), SimError> {
        self.put(config_object(version))?;
        self.set_server_version(version);
        Ok(())
    }

    /// The kubelet came back from a restart running `version`.
    pub fn kubelet_restarted(&self, node: &str, version: &str) -> Result<(), SimError> {
        self.set_kubelet_version(node, version)
    }
}

/// Runs commands through `inner` (real processes: the recording stand-ins
/// of the tests) and, when a `kubeadm upgrade apply -y vX` succeeded,
/// applies its effects to the simulated cluster.
pub struct KubeadmEffects<R> {
    pub inner: R,
    pub sim: SimHandle,
    /// The configured kubeadm path: only its commands have effects.
    pub kubeadm: PathBuf,
}

impl<R: CommandRunner> CommandRunner for KubeadmEffects<R> {
    fn run<'a>(
        &'a self,
        spec: &'a CommandSpec,
    ) -> BoxFuture<'a, Result<CommandOutput, CommandError>> {
        Box::pin(async move {
            let out = self.inner.run(spec).await?;
            if out.success() && spec.program == self.kubeadm {
                let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
                if let ["upgrade", "apply", rest @ ..] = args.as_slice()
                    && let Some(version) = rest.iter().find(|a| a.starts_with('v'))
                    && let Err(e) = self.sim.kubeadm_upgrade_applied(version)
                {
                    tracing::warn!(error = %e, "simulating kubeadm upgrade apply");
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::command::HostRunner;
    use crate::sim::Scenario;
    use std::time::Duration;

    #[tokio::test]
    async fn kubeadm_config_and_version_follow_the_upgrade() {
        let sim = Scenario::cluster(1, 1).start().await.unwrap();
        assert_eq!(sim.kubeadm_config_version().as_deref(), Some("v1.34.1"));
        let client = sim.client().unwrap();
        assert_eq!(
            client.apiserver_version().await.unwrap().git_version,
            "v1.34.1"
        );
        // `true` stands in for kubeadm: it succeeds, the effects follow.
        let runner = KubeadmEffects {
            inner: HostRunner,
            sim: sim.clone(),
            kubeadm: "/bin/true".into(),
        };
        let spec = CommandSpec::new(
            "/bin/true",
            ["upgrade", "apply", "-y", "v1.35.2"],
            Duration::from_secs(5),
        );
        assert!(runner.run(&spec).await.unwrap().success());
        assert_eq!(sim.kubeadm_config_version().as_deref(), Some("v1.35.2"));
        assert_eq!(
            client.apiserver_version().await.unwrap().git_version,
            "v1.35.2"
        );
        // A failed apply changes nothing.
        let failing = KubeadmEffects {
            inner: HostRunner,
            sim: sim.clone(),
            kubeadm: "/bin/false".into(),
        };
        let spec = CommandSpec::new(
            "/bin/false",
            ["upgrade", "apply", "-y", "v1.36.0"],
            Duration::from_secs(5),
        );
        assert!(!failing.run(&spec).await.unwrap().success());
        assert_eq!(sim.kubeadm_config_version().as_deref(), Some("v1.35.2"));
        sim.kubelet_restarted("worker-1", "v1.35.2").unwrap();
        let node: k8s_openapi::api::core::v1::Node = sim.get(None, "worker-1").unwrap();
        assert_eq!(
            node.status.unwrap().node_info.unwrap().kubelet_version,
            "v1.35.2"
        );
    }
}
