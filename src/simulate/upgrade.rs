//! The package side of a simulated machine for `drydock simulate
//! --upgrade-to`: a dpkg database of its own (real dpkg-query reads it and
//! real `dpkg --set-selections` holds in it), and a [`CommandRunner`] that
//! plays apt-get, apt-cache, kubeadm and etcdctl as they behave on a node:
//! an install changes the database, `kubeadm upgrade apply` changes the
//! simulated cluster (kubeadm-config, `/version`) as on a real one. Nothing
//! is executed and nothing outside the simulation's directory is touched.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::future::BoxFuture;

use crate::config::Settings;
use crate::host::command::{CommandError, CommandOutput, CommandRunner, CommandSpec};
use crate::sim::SimHandle;
use crate::upgrade::KubeVersion;

pub(crate) const PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

/// pkgs.k8s.io's Debian version of `v`: `1.35.2-1.1`.
pub(crate) fn debian_version(v: KubeVersion) -> String {
    format!("{}.{}.{}-1.1", v.major, v.minor, v.patch)
}

fn stanza(package: &str, version: &str) -> String {
    format!(
        "Package: {package}\nStatus: hold ok installed\nPriority: optional\nSection: admin\n\
         Maintainer: drydock simulate <simulate@localhost>\nArchitecture: amd64\n\
         Version: {version}\nDescription: simulated {package}\n\n"
    )
}

/// A machine's dpkg database under `root`: the three packages at `version`
/// (Debian form), held, as on a node before its upgrade.
pub(crate) fn seed(root: &Path, version: &str) -> std::io::Result<()> {
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("updates"))?;
    std::fs::create_dir_all(admin.join("info"))?;
    std::fs::write(admin.join("available"), "")?;
    let status: String = PACKAGES.iter().map(|p| stanza(p, version)).collect();
    std::fs::write(admin.join("status"), status)
}

/// Points a node's settings at its simulated tools and files under `dir`.
/// The tool paths are names the runner answers to; none is executed.
pub(crate) fn configure(settings: &mut Settings, dir: &Path) {
    let u = &mut settings.upgrade;
    let bin = dir.join("bin");
    u.apt_get = bin.join("apt-get");
    u.apt_cache = bin.join("apt-cache");
    u.kubeadm = bin.join("kubeadm");
    u.etcdctl = bin.join("etcdctl");
    u.apt_source_file = dir.join("etc/apt/sources.list.d/kubernetes.list");
    u.etcd_snapshot_dir = dir.join("etcd-snapshots");
    settings.packages.dpkg_root = dir.join("root");
    settings.node.run_dir = dir.join("run");
}

/// The simulated tools of one machine.
pub(crate) struct SimTools {
    pub sim: SimHandle,
    pub settings: crate::config::UpgradeSettings,
    pub dpkg_root: PathBuf,
    /// The package versions the repositories offer.
    pub available: Vec<String>,
}

impl SimTools {
    fn answer(&self, spec: &CommandSpec) -> (i32, String, String) {
        let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        let u = &self.settings;
        if spec.program == u.apt_get {
            if args.contains(&"update") {
                return (
                    0,
                    "Hit:1 simulated pkgs.k8s.io InRelease\n".into(),
                    String::new(),
                );
            }
            if let Some(i) = args.iter().position(|a| *a == "install") {
                return self.install(&args[i + 1..]);
            }
        } else if spec.program == u.apt_cache && args.first() == Some(&"madison") {
            let mut out = String::new();
            for p in &args[1..] {
                for v in self.available.iter().rev() {
                    let minor = v.split('.').take(2).collect::<Vec<_>>().join(".");
                    out.push_str(&format!(
                        "{p:>10} | {v} | https://pkgs.k8s.io/core:/stable:/v{minor}/deb  Packages\n"
                    ));
                }
            }
            return (0, out, String::new());
        } else if spec.program == u.kubeadm {
            if let ["upgrade", "apply", rest @ ..] = args.as_slice()
                && let Some(v) = rest.iter().find(|a| a.starts_with('v'))
                && let Err(e) = self.sim.kubeadm_upgrade_applied(v)
            {
                return (1, String::new(), format!("simulated kubeadm: {e}\n"));
            }
            return (
                0,
                format!("[upgrade] simulated: kubeadm {}\n", args.join(" ")),
                String::new(),
            );
        } else if spec.program == u.etcdctl {
            let last = args.last().copied().unwrap_or_default();
            if args.contains(&"save") {
                return match std::fs::write(last, b"simulated etcd snapshot") {
                    Ok(()) => (0, format!("Snapshot saved at {last}\n"), String::new()),
                    Err(e) => (1, String::new(), format!("writing {last}: {e}\n")),
                };
            }
            if args.contains(&"status") {
                let json = r#"{"hash":1,"revision":1,"totalKey":100,"totalSize":23}"#;
                return (0, format!("{json}\n"), String::new());
            }
        }
        (
            2,
            String::new(),
            format!("simulated {}: unexpected call\n", spec.display()),
        )
    }

    /// `apt-get install pkg=version ...`: every version must be offered;
    /// then the database says so (the selection is left as it was, as apt
    /// leaves a held package's).
    fn install(&self, wanted: &[&str]) -> (i32, String, String) {
        let status_path = self.dpkg_root.join("var/lib/dpkg/status");
        let Ok(mut status) = std::fs::read_to_string(&status_path) else {
            return (
                100,
                String::new(),
                "E: the dpkg database is unreadable\n".into(),
            );
        };
        for w in wanted {
            let Some((package, version)) = w.split_once('=') else {
                return (
                    100,
                    String::new(),
                    format!("E: not an exact version: {w}\n"),
                );
            };
            if !PACKAGES.contains(&package) || !self.available.iter().any(|v| v == version) {
                return (
                    100,
                    String::new(),
                    format!("E: Version '{version}' for '{package}' was not found\n"),
                );
            }
            let stanzas: Vec<String> = status
                .split("\n\n")
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    if s.lines().next() == Some(&format!("Package: {package}")) {
                        let held = s.contains("Status: hold ");
                        let mut new = stanza(package, version);
                        if !held {
                            new = new.replace("Status: hold ", "Status: install ");
                        }
                        new.trim_end().to_string()
                    } else {
                        s.trim_end().to_string()
                    }
                })
                .collect();
            status = stanzas.join("\n\n") + "\n\n";
        }
        match std::fs::write(&status_path, status) {
            Ok(()) => (
                0,
                format!("Setting up {}\n", wanted.join(" ")),
                String::new(),
            ),
            Err(e) => (
                100,
                String::new(),
                format!("E: writing the dpkg database: {e}\n"),
            ),
        }
    }

    /// The kubelet version the machine's package now has (`v1.35.2`).
    pub(crate) fn installed_kubelet(&self) -> Option<String> {
        let dpkg = crate::host::dpkg::Dpkg::new(&self.dpkg_root);
        let (version, _) = crate::upgrade::apt::installed(&dpkg, "kubelet").ok()??;
        Some(format!(
            "v{}",
            crate::upgrade::apt::upstream_version(&version)
        ))
    }
}

impl CommandRunner for SimTools {
    fn run<'a>(
        &'a self,
        spec: &'a CommandSpec,
    ) -> BoxFuture<'a, Result<CommandOutput, CommandError>> {
        Box::pin(async move {
            let started = Instant::now();
            let (code, stdout, stderr) = self.answer(spec);
            Ok(CommandOutput {
                argv: spec.argv(),
                exit_code: Some(code),
                timed_out: false,
                stdout,
                stderr,
                truncated: false,
                duration_ms: started.elapsed().as_millis() as u64,
            })
        })
    }
}
