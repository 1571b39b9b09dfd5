//! The upgrade target and the version-skew policy: pure functions.
//!
//! A target reaches kubeadm and apt only as one argument of an argument
//! vector, but it is still checked strictly first: `v` then three plain
//! ASCII numbers (no pre-release, no build metadata, no leading zeros), at
//! most [`MAX_TARGET_LEN`] characters. The `semver` crate does the number
//! parsing; everything it would accept beyond `MAJOR.MINOR.PATCH` is refused
//! here.

use std::fmt;

/// Longer input is refused before parsing (and never echoed whole).
pub(crate) const MAX_TARGET_LEN: usize = 32;

/// Kubernetes' supported kubelet skew: a kubelet may be up to this many
/// minors older than the API server (since v1.28).
pub(crate) const KUBELET_MAX_MINOR_SKEW: u64 = 3;

/// A Kubernetes release version, `vMAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl serde::Serialize for KubeVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KubeVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        KubeVersion::parse_target(&text).map_err(serde::de::Error::custom)
    }
}

impl KubeVersion {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        KubeVersion {
            major,
            minor,
            patch,
        }
    }

    /// `1.35` for the apt source path of this minor.
    pub(crate) fn minor_string(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// `1.35.2`: the upstream part of the Debian package version.
    pub(crate) fn bare(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
    }

    /// Strictly parses an operator's target: `v1.35.2` (the `v` is
    /// required, as kubeadm and the Kubernetes release names write it).
    pub(crate) fn parse_target(text: &str) -> Result<KubeVersion, TargetSyntaxError> {
        if text.is_empty() {
            return Err(TargetSyntaxError::Empty);
        }
        if text.len() > MAX_TARGET_LEN {
            return Err(TargetSyntaxError::TooLong { len: text.len() });
        }
        let shown = text.to_string();
        if !text.is_ascii() {
            return Err(TargetSyntaxError::NotAscii { value: shown });
        }
        let Some(rest) = text.strip_prefix('v') else {
            return Err(TargetSyntaxError::NoPrefix { value: shown });
        };
        // semver's own grammar, then refuse the parts Kubernetes targets never have.
        let v = semver::Version::parse(rest).map_err(|e| TargetSyntaxError::Syntax {
            value: shown.clone(),
            reason: e.to_string(),
        })?;
        if !v.pre.is_empty() {
            return Err(TargetSyntaxError::PreRelease { value: shown });
        }
        if !v.build.is_empty() {
            return Err(TargetSyntaxError::BuildMetadata { value: shown });
        }
        Ok(KubeVersion::new(v.major, v.minor, v.patch))
    }

    /// Parses a version the cluster reports (`/version`'s gitVersion, a
    /// Node's kubeletVersion, kubeadm's kubernetesVersion). These may carry
    /// a vendor suffix (`v1.34.2-eks-1`, `v1.34.2+k3s1`): it is ignored;
    /// only `MAJOR.MINOR.PATCH` is compared.
    pub fn parse_observed(text: &str) -> Option<KubeVersion> {
        let text = text.trim();
        if text.len() > 128 || !text.is_ascii() {
            return None;
        }
        let rest = text.strip_prefix('v').unwrap_or(text);
        let v = semver::Version::parse(rest).ok()?;
        Some(KubeVersion::new(v.major, v.minor, v.patch))
    }
}

/// Why a target is not even a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetSyntaxError {
    #[error("the target version is empty")]
    Empty,
    #[error("the target version is {len} bytes long (at most {MAX_TARGET_LEN}): not a version")]
    TooLong { len: usize },
    #[error(
        "target version {value:?} has characters outside ASCII (look-alike digits?): write it like v1.35.2"
    )]
    NotAscii { value: String },
    #[error("target version {value:?} must start with 'v', like v1.35.2")]
    NoPrefix { value: String },
    #[error("target version {value:?} is not a version like v1.35.2: {reason}")]
    Syntax { value: String, reason: String },
    #[error(
        "target version {value:?} is a pre-release: only released versions (v1.35.2) are installed"
    )]
    PreRelease { value: String },
    #[error("target version {value:?} has build metadata: write the release alone, like v1.35.2")]
    BuildMetadata { value: String },
}

/// The versions the cluster runs now, as far as the skew policy needs them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterVersions {
    /// The API server's `/version`.
    pub api_server: Option<KubeVersion>,
    /// `kubernetesVersion` in kube-system/kubeadm-config.
    pub kubeadm_config: Option<KubeVersion>,
    /// Every node's kubelet: `(node, version, is a control-plane node)`.
    pub kubelets: Vec<NodeVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVersion {
    pub node: String,
    pub kubelet: Option<KubeVersion>,
    pub control_plane: bool,
}

impl ClusterVersions {
    /// The control plane's version: the lowest of what the API server and
    /// kubeadm-config say (mid-rollout they differ; the lower one bounds
    /// the next step).
    pub fn control_plane(&self) -> Option<KubeVersion> {
        match (self.api_server, self.kubeadm_config) {
            (Some(a), Some(k)) => Some(a.min(k)),
            (a, k) => a.or(k),
        }
    }

    /// The highest version any part of the control plane already runs.
    fn control_plane_max(&self) -> Option<KubeVersion> {
        self.api_server.into_iter().chain(self.kubeadm_config).max()
    }
}

/// Why a well-formed target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error(
        "cannot check target {target}: the control plane's version is unknown (no /version and no kubeadm-config)"
    )]
    UnknownControlPlane { target: KubeVersion },
    #[error(
        "target {target} is a downgrade: the control plane already runs {current} (kubeadm cannot downgrade)"
    )]
    Downgrade {
        target: KubeVersion,
        current: KubeVersion,
    },
    #[error("target {target} changes the major version from {current}: not supported")]
    Major {
        target: KubeVersion,
        current: KubeVersion,
    },
    #[error("target {target} is more than one minor above the control plane's {current}: upgrade to v{}.{}.x first", current.major, current.minor + 1)]
    TooFar {
        target: KubeVersion,
        current: KubeVersion,
    },
    #[error("target {target} is a downgrade for node {node}, whose kubelet runs {kubelet}")]
    KubeletNewer {
        target: KubeVersion,
        node: String,
        kubelet: KubeVersion,
    },
    #[error(
        "target {target} would leave node {node}'s kubelet {kubelet} more than {KUBELET_MAX_MINOR_SKEW} minors behind the API server: upgrade that node first"
    )]
    KubeletTooOld {
        target: KubeVersion,
        node: String,
        kubelet: KubeVersion,
    },
}

/// Why a target is refused, syntax or policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Syntax(#[from] TargetSyntaxError),
    #[error(transparent)]
    Skew(#[from] SkewError),
}

/// Checks a parsed target against what the cluster runs: no downgrade, at
/// most one minor above the control plane, no kubelet newer than the
/// target (that node would be downgraded), no kubelet left beyond the
/// supported skew. An equal version is accepted (nothing to do, or the
/// rest of a rollout).
pub(crate) fn check_skew(target: KubeVersion, cluster: &ClusterVersions) -> Result<(), SkewError> {
    let Some(current) = cluster.control_plane() else {
        return Err(SkewError::UnknownControlPlane { target });
    };
    let highest = cluster.control_plane_max().unwrap_or(current);
    if target.major != current.major || target.major != highest.major {
        return Err(SkewError::Major { target, current });
    }
    if target < highest {
        return Err(SkewError::Downgrade {
            target,
            current: highest,
        });
    }
    if target.minor > current.minor + 1 {
        return Err(SkewError::TooFar { target, current });
    }
    for n in &cluster.kubelets {
        let Some(kubelet) = n.kubelet else { continue };
        if kubelet > target {
            return Err(SkewError::KubeletNewer {
                target,
                node: n.node.clone(),
                kubelet,
            });
        }
        if kubelet.major != target.major || target.minor > kubelet.minor + KUBELET_MAX_MINOR_SKEW {
            return Err(SkewError::KubeletTooOld {
                target,
                node: n.node.clone(),
                kubelet,
            });
        }
    }
    Ok(())
}

/// Parses and checks an operator's target in one go (the tests' way in to
/// both).
#[cfg(test)]
fn validate_target(text: &str, cluster: &ClusterVersions) -> Result<KubeVersion, TargetError> {
    let target = KubeVersion::parse_target(text)?;
    check_skew(target, cluster)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: fn(u64, u64, u64) -> KubeVersion = KubeVersion::new;

    fn cluster(cp: KubeVersion, kubelets: &[(&str, KubeVersion, bool)]) -> ClusterVersions {
        ClusterVersions {
            api_server: Some(cp),
            kubeadm_config: Some(cp),
            kubelets: kubelets
                .iter()
                .map(|(n, v, c)| NodeVersion {
                    node: n.to_string(),
                    kubelet: Some(*v),
                    control_plane: *c,
                })
                .collect(),
        }
    }

    fn at_1_34() -> ClusterVersions {
        cluster(
            V(1, 34, 2),
            &[
                ("cp-1", V(1, 34, 2), true),
                ("worker-1", V(1, 34, 2), false),
            ],
        )
    }

    #[test]
    fn accepts_patch_and_next_minor() {
        let c = at_1_34();
        assert_eq!(validate_target("v1.34.3", &c), Ok(V(1, 34, 3)));
        assert_eq!(validate_target("v1.35.2", &c), Ok(V(1, 35, 2)));
        assert_eq!(validate_target("v1.35.0", &c), Ok(V(1, 35, 0)));
        // The same version: the rest of a rollout, or nothing to do.
        assert_eq!(validate_target("v1.34.2", &c), Ok(V(1, 34, 2)));
    }

    /// The acceptance corpus: each refused with a reason naming the problem.
    #[test]
    fn bad_target_corpus_is_refused() {
        let c = at_1_34();
        let long = "v1.35.2".to_string() + &"0".repeat(10 * 1024);
        let corpus: Vec<(&str, &str)> = vec![
            ("latest", "must start with 'v'"),
            ("stable", "must start with 'v'"),
            ("1.35", "must start with 'v'"),
            ("v1.35", "not a version"),
            ("1.35.2", "must start with 'v'"),
            ("v1.36.0", "more than one minor above"),
            ("v1.37.1", "more than one minor above"),
            ("v1.34.1", "downgrade"),
            ("v1.33.9", "downgrade"),
            ("v2.0.0", "major"),
            ("v1.35.2; rm -rf /", "not a version"),
            ("$(id)", "must start with 'v'"),
            ("v$(id)", "not a version"),
            ("v1.35.2`id`", "not a version"),
            ("v1.35.2 ", "not a version"),
            (" v1.35.2", "must start with 'v'"),
            ("v1.35.2\n", "not a version"),
            ("v1.35.2\0", "not a version"),
            (&long, "bytes long"),
            ("v1.３５.2", "outside ASCII"), // fullwidth digits
            ("v1.٣٥.2", "outside ASCII"),   // Arabic-Indic digits
            ("v1.35.２", "outside ASCII"),
            ("ｖ1.35.2", "outside ASCII"),
            ("v1.35.2-rc.1", "pre-release"),
            ("v1.35.2+build", "build metadata"),
            ("v01.35.2", "not a version"),
            ("v1.035.2", "not a version"),
            ("v1.35.-2", "not a version"),
            ("v1.35.2.1", "not a version"),
            ("V1.35.2", "must start with 'v'"),
            ("vv1.35.2", "not a version"),
            ("", "empty"),
            ("v99999999999999999999.0.0", "not a version"),
        ];
        for (input, why) in corpus {
            let err = validate_target(input, &c).expect_err(input);
            let text = err.to_string();
            assert!(
                text.contains(why),
                "{input:?}: {text:?} does not say {why:?}"
            );
            assert!(text.len() < 300, "{input:?}: message too long: {text}");
        }
    }

    #[test]
    fn mid_rollout_bounds() {
        // kubeadm apply done (config and /version at 1.35), kubelets mixed.
        let c = cluster(
            V(1, 35, 2),
            &[
                ("cp-1", V(1, 35, 2), true),
                ("cp-2", V(1, 34, 2), true),
                ("w-1", V(1, 34, 2), false),
            ],
        );
        assert!(validate_target("v1.35.2", &c).is_ok());
        assert!(matches!(
            validate_target("v1.35.1", &c),
            Err(TargetError::Skew(SkewError::Downgrade { .. }))
        ));
        // API server still old, config already new: the lower bounds the step.
        let mut c2 = c.clone();
        c2.api_server = Some(V(1, 34, 2));
        assert!(matches!(
            validate_target("v1.36.0", &c2),
            Err(TargetError::Skew(SkewError::TooFar { .. }))
        ));
    }

    #[test]
    fn kubelet_rules() {
        let c = cluster(V(1, 34, 2), &[("w-1", V(1, 34, 3), false)]);
        assert!(matches!(
            validate_target("v1.34.2", &c),
            Err(TargetError::Skew(SkewError::KubeletNewer { .. }))
        ));
        let c = cluster(V(1, 34, 2), &[("w-1", V(1, 31, 0), false)]);
        let err = validate_target("v1.35.0", &c).unwrap_err();
        assert!(err.to_string().contains("w-1"), "{err}");
        assert!(validate_target("v1.34.9", &c).is_ok());
    }

    #[test]
    fn unknown_control_plane_refuses() {
        let c = ClusterVersions::default();
        assert!(matches!(
            validate_target("v1.35.2", &c),
            Err(TargetError::Skew(SkewError::UnknownControlPlane { .. }))
        ));
    }

    #[test]
    fn observed_versions_tolerate_vendor_suffixes() {
        assert_eq!(KubeVersion::parse_observed("v1.34.2"), Some(V(1, 34, 2)));
        assert_eq!(KubeVersion::parse_observed("1.34.2"), Some(V(1, 34, 2)));
        assert_eq!(
            KubeVersion::parse_observed("v1.34.2+k3s1"),
            Some(V(1, 34, 2))
        );
        assert_eq!(
            KubeVersion::parse_observed("v1.34.2-eks-1"),
            Some(V(1, 34, 2))
        );
        assert_eq!(KubeVersion::parse_observed("garbage"), None);
    }

    #[test]
    fn display_and_serde_round_trip() {
        let v = V(1, 35, 2);
        assert_eq!(v.to_string(), "v1.35.2");
        assert_eq!(v.minor_string(), "1.35");
        assert_eq!(v.bare(), "1.35.2");
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "\"v1.35.2\"");
        assert_eq!(serde_json::from_str::<KubeVersion>(&json).unwrap(), v);
        assert!(serde_json::from_str::<KubeVersion>("\"latest\"").is_err());
    }
}
