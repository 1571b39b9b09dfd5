//! Kubernetes package repositories laid out like pkgs.k8s.io (one flat
//! repository per minor, `core:/stable:/v1.XX/deb/`) built into an apt
//! sandbox, and apt-get/apt-cache wrappers that point real apt at the
//! sandbox (what `[upgrade] apt-get` / `apt-cache` run in the tests).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::apt_sandbox::{Sandbox, build_repo};

/// Two minors, two patches each, of the three packages.
pub(crate) const MINORS: &[(&str, &[&str])] = &[
    ("1.34", &["1.34.2-1.1", "1.34.3-1.1"]),
    ("1.35", &["1.35.1-1.1", "1.35.2-1.1"]),
];

pub(crate) struct K8sRepo {
    /// The `[upgrade] apt-source-template` for these repositories.
    pub template: String,
    pub apt_get: PathBuf,
    pub apt_cache: PathBuf,
    pub source_file: PathBuf,
}

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Whether the apt sandbox can run here: under CI=true a missing tool
/// fails the test, otherwise it is skipped with a message.
pub(crate) fn ready() -> bool {
    match super::apt_sandbox::missing_tools(false) {
        None => true,
        Some(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the apt sandbox must run in CI: {why}"
            );
            println!("SKIPPED: {why}");
            false
        }
    }
}

/// Builds the repositories of [`MINORS`] under the sandbox and the wrappers.
pub(crate) fn build(sandbox: &Sandbox) -> K8sRepo {
    let minors: Vec<(String, Vec<String>)> = MINORS
        .iter()
        .map(|(m, vs)| (m.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect();
    build_minors(sandbox, &minors)
}

/// Builds repositories of the given minors (`("1.34", ["1.34.4-1.1"])`).
pub(crate) fn build_minors(sandbox: &Sandbox, minors: &[(String, Vec<String>)]) -> K8sRepo {
    let top = sandbox.base.join("pkgs.k8s.io");
    for (minor, versions) in minors {
        let packages: Vec<(&str, &str, Option<&str>)> = versions
            .iter()
            .flat_map(|v| ["kubeadm", "kubelet", "kubectl"].map(|p| (p, v.as_str(), None)))
            .collect();
        build_repo(
            &sandbox.base.join(format!("build-{minor}")),
            &top.join(format!("core:/stable:/v{minor}/deb")),
            &packages,
        );
    }
    let bin = sandbox.base.join("bin");
    let apt_get = bin.join("apt-get");
    let apt_cache = bin.join("apt-cache");
    for (path, real) in [
        (&apt_get, "/usr/bin/apt-get"),
        (&apt_cache, "/usr/bin/apt-cache"),
    ] {
        executable(
            path,
            &format!(
                "#!/bin/sh\nif [ -e {base}/fail-{name} ]; then echo \"{name}: injected failure\" >&2; exit 100; fi\ncase \" $* \" in *\" install \"*) if [ -e {base}/fail-install ]; then echo \"{name} install: injected failure\" >&2; exit 100; fi;; esac\nexport APT_CONFIG={}\nexec {real} \"$@\"\n",
                sandbox.apt_conf.display(),
                base = sandbox.base.display(),
                name = path.file_name().unwrap().to_string_lossy(),
            ),
        );
    }
    K8sRepo {
        template: format!(
            "deb [trusted=yes] file:{}/core:/stable:/v{{minor}}/deb/ /",
            top.display()
        ),
        apt_get,
        apt_cache,
        source_file: sandbox.root.join("etc/apt/sources.list.d/kubernetes.list"),
    }
}

impl K8sRepo {
    /// Points `settings.upgrade` at these repositories and wrappers.
    pub(crate) fn configure(&self, settings: &mut drydock::testing::config::Settings) {
        let u = &mut settings.upgrade;
        u.apt_get = self.apt_get.clone();
        u.apt_cache = self.apt_cache.clone();
        u.apt_source_file = self.source_file.clone();
        u.apt_source_template = self.template.clone();
        u.apt_timeout = std::time::Duration::from_secs(120);
    }
}
