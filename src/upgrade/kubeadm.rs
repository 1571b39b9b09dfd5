//! The kubeadm commands of an upgrade, as argument vectors.

use super::plan::KubeadmAction;
use super::version::KubeVersion;
use crate::config::UpgradeSettings;
use crate::host::command::CommandSpec;

/// `kubeadm upgrade plan vX.Y.Z` (read-only: checks the cluster can go there).
pub(crate) fn plan_spec(u: &UpgradeSettings, to: KubeVersion) -> CommandSpec {
    CommandSpec::new(
        &u.kubeadm,
        ["upgrade".to_string(), "plan".into(), to.to_string()],
        u.kubeadm_timeout,
    )
}

/// `kubeadm upgrade apply -y vX.Y.Z [extra args]` or `kubeadm upgrade node`.
pub(crate) fn upgrade_spec(
    u: &UpgradeSettings,
    action: KubeadmAction,
    to: KubeVersion,
) -> CommandSpec {
    let args: Vec<String> = match action {
        KubeadmAction::Apply => ["upgrade", "apply", "-y"]
            .into_iter()
            .map(String::from)
            .chain([to.to_string()])
            .chain(u.kubeadm_apply_args.iter().cloned())
            .collect(),
        KubeadmAction::Node => vec!["upgrade".into(), "node".into()],
    };
    CommandSpec::new(&u.kubeadm, args, u.kubeadm_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        let u = UpgradeSettings {
            kubeadm_apply_args: vec!["--etcd-upgrade=false".into()],
            ..UpgradeSettings::default()
        };
        let to = KubeVersion::new(1, 35, 2);
        assert_eq!(
            upgrade_spec(&u, KubeadmAction::Apply, to).argv(),
            [
                "/usr/bin/kubeadm",
                "upgrade",
                "apply",
                "-y",
                "v1.35.2",
                "--etcd-upgrade=false"
            ]
        );
        assert_eq!(
            upgrade_spec(&u, KubeadmAction::Node, to).argv(),
            ["/usr/bin/kubeadm", "upgrade", "node"]
        );
        assert_eq!(
            plan_spec(&u, to).argv(),
            ["/usr/bin/kubeadm", "upgrade", "plan", "v1.35.2"]
        );
    }
}
