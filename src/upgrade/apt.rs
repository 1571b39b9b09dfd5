//! The Kubernetes apt source and packages: the source line for the target
//! minor (pkgs.k8s.io keeps one repository per minor), refreshing only that
//! source, finding the exact package version, installing it under an
//! authorization the APT hook honours, and holding it again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::version::KubeVersion;
use crate::aptgate::step::{StepError, UpgradeStep as AuthorizedStep};
use crate::config::upgrade::MINOR_PLACEHOLDER;
use crate::config::{Settings, UpgradeSettings};
use crate::host::command::{CommandError, CommandOutput, CommandRunner, CommandSpec};
use crate::host::dpkg::{Dpkg, DpkgError, Selection};
use crate::store::Store;

/// The store, even after a panic elsewhere poisoned its lock (it holds no
/// invariant a panic could break: every write is one transaction).
pub(crate) fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wait for another apt or dpkg run (unattended-upgrades) instead of
/// failing at once on its lock.
const LOCK_WAIT: &str = "DPkg::Lock::Timeout=120";

/// The packages an upgrade installs, in the order they are resolved.
pub(crate) const PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("writing apt source {}: {source}", path.display())]
    WriteSource {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Command {
        what: String,
        #[source]
        source: CommandError,
    },
    #[error("{what}: `{command}` {reason}")]
    Failed {
        what: String,
        command: String,
        reason: String,
        output: Box<CommandOutput>,
    },
    #[error("no {package} package at {to} in the apt sources (seen: {seen}); nothing was changed")]
    NotAvailable {
        package: String,
        to: KubeVersion,
        seen: String,
    },
    #[error("authorizing {packages}: {source}")]
    Authorize {
        packages: String,
        #[source]
        source: Box<StepError>,
    },
    #[error("holding {packages} again: {source}")]
    Hold {
        packages: String,
        #[source]
        source: DpkgError,
    },
    #[error("after installing, {package} is {found}, not {want} held")]
    NotInstalled {
        package: String,
        want: String,
        found: String,
    },
}

impl AptError {
    /// The command's output, when a command failed (the evidence to keep).
    pub fn output(&self) -> Option<&CommandOutput> {
        match self {
            AptError::Failed { output, .. } => Some(output),
            _ => None,
        }
    }
}

/// The source file's whole content for the target's minor.
pub fn render_source(template: &str, to: KubeVersion) -> String {
    format!(
        "# Written by drydock for Kubernetes v{minor} packages; rewritten when the upgrade target's minor changes.\n{}\n",
        template.replace(MINOR_PLACEHOLDER, &to.minor_string()),
        minor = to.minor_string(),
    )
}

/// Writes `content` to `path` unless it is there already (atomically: a
/// temporary file beside it, fsync, rename). Returns whether it changed.
pub(crate) fn ensure_source(path: &Path, content: &str) -> Result<bool, AptError> {
    let err = |source| AptError::WriteSource {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(current) if current == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".drydock-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(content.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

fn apt_env(spec: CommandSpec) -> CommandSpec {
    spec.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
}

/// `apt-get update` of drydock's source file alone (the other sources are
/// neither fetched nor have their lists cleaned).
pub(crate) fn update_spec(u: &UpgradeSettings) -> CommandSpec {
    apt_env(CommandSpec::new(
        &u.apt_get,
        [
            "-q".to_string(),
            "-o".to_string(),
            format!("Dir::Etc::sourcelist={}", u.apt_source_file.display()),
            "-o".to_string(),
            "Dir::Etc::sourceparts=-".to_string(),
            "-o".to_string(),
            "APT::Get::List-Cleanup=0".to_string(),
            "-o".to_string(),
            LOCK_WAIT.to_string(),
            "update".to_string(),
        ],
        u.apt_timeout,
    ))
}

/// `apt-cache madison kubeadm kubelet kubectl`.
pub(crate) fn madison_spec(u: &UpgradeSettings) -> CommandSpec {
    apt_env(CommandSpec::new(
        &u.apt_cache,
        std::iter::once("madison").chain(PACKAGES),
        u.apt_timeout,
    ))
}

/// `apt-get install` of exact versions. Held packages need
/// `--allow-change-held-packages`; the APT hook still checks each one
/// against drydock's authorization.
pub(crate) fn install_spec(u: &UpgradeSettings, packages: &[(String, String)]) -> CommandSpec {
    let mut args: Vec<String> = [
        "-q",
        "-y",
        "--no-install-recommends",
        "--allow-change-held-packages",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "-o",
        LOCK_WAIT,
        "install",
    ]
    .map(String::from)
    .to_vec();
    args.extend(packages.iter().map(|(p, v)| format!("{p}={v}")));
    apt_env(CommandSpec::new(&u.apt_get, args, u.apt_timeout))
}

/// One `apt-cache madison` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MadisonEntry {
    pub package: String,
    pub version: String,
    pub source: String,
}

/// Parses `apt-cache madison` output: `pkg | version | source`. Lines that
/// do not have that shape are skipped.
pub(crate) fn parse_madison(text: &str) -> Vec<MadisonEntry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '|').map(str::trim);
            let package = parts.next()?;
            let version = parts.next()?;
            let source = parts.next()?;
            (!package.is_empty() && !version.is_empty()).then(|| MadisonEntry {
                package: package.to_string(),
                version: version.to_string(),
                source: source.to_string(),
            })
        })
        .collect()
}

/// `1:1.35.2-1.1` -> `1.35.2`.
pub fn upstream_version(debian: &str) -> &str {
    let no_epoch = debian.split_once(':').map_or(debian, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(v, _)| v)
}

/// The exact Debian versions of the three packages for the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersions {
    pub kubeadm: String,
    pub kubelet: String,
    pub kubectl: String,
}

impl PackageVersions {
    pub fn get(&self, package: &str) -> Option<&str> {
        match package {
            "kubeadm" => Some(&self.kubeadm),
            "kubelet" => Some(&self.kubelet),
            "kubectl" => Some(&self.kubectl),
            _ => None,
        }
    }

    pub fn pairs(&self, packages: &[&str]) -> Vec<(String, String)> {
        packages
            .iter()
            .filter_map(|p| self.get(p).map(|v| (p.to_string(), v.to_string())))
            .collect()
    }
}

/// Picks each package's version whose upstream part is the target's.
/// apt-cache lists a package's versions newest first, so the first match is
/// the newest Debian revision. Any package missing: an error, before
/// anything was changed.
pub(crate) fn resolve(
    entries: &[MadisonEntry],
    to: KubeVersion,
) -> Result<PackageVersions, AptError> {
    let want = to.bare();
    let pick = |package: &str| {
        entries
            .iter()
            .find(|e| e.package == package && upstream_version(&e.version) == want)
            .map(|e| e.version.clone())
            .ok_or_else(|| {
                let seen: Vec<&str> = entries
                    .iter()
                    .filter(|e| e.package == package)
                    .map(|e| e.version.as_str())
                    .collect();
                AptError::NotAvailable {
                    package: package.to_string(),
                    to,
                    seen: if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    },
                }
            })
    };
    Ok(PackageVersions {
        kubeadm: pick("kubeadm")?,
        kubelet: pick("kubelet")?,
        kubectl: pick("kubectl")?,
    })
}

/// Runs a command; a failure carries its output.
pub(crate) async fn run_checked(
    runner: &dyn CommandRunner,
    spec: &CommandSpec,
    what: &str,
) -> Result<CommandOutput, AptError> {
    let out = runner.run(spec).await.map_err(|source| AptError::Command {
        what: what.to_string(),
        source,
    })?;
    match out.failure() {
        None => Ok(out),
        Some(reason) => Err(AptError::Failed {
            what: what.to_string(),
            command: spec.display(),
            reason,
            output: Box::new(out),
        }),
    }
}

/// The apt source step: writes the source for `to`'s minor if it differs,
/// then refreshes that source. Returns whether the file changed and the
/// update's output.
pub async fn refresh_source(
    runner: &dyn CommandRunner,
    u: &UpgradeSettings,
    to: KubeVersion,
) -> Result<(bool, CommandOutput), AptError> {
    let changed = ensure_source(
        &u.apt_source_file,
        &render_source(&u.apt_source_template, to),
    )?;
    let out = run_checked(
        runner,
        &update_spec(u),
        "refreshing the Kubernetes apt source",
    )
    .await?;
    Ok((changed, out))
}

/// Finds the exact versions for `to`.
pub async fn find_versions(
    runner: &dyn CommandRunner,
    u: &UpgradeSettings,
    to: KubeVersion,
) -> Result<(PackageVersions, CommandOutput), AptError> {
    let out = run_checked(
        runner,
        &madison_spec(u),
        "listing Kubernetes package versions",
    )
    .await?;
    Ok((resolve(&parse_madison(&out.stdout), to)?, out))
}

/// Installed `(version, held)` of a package, `None` when not installed.
/// (The simulated fleet's machines read it back.)
#[cfg(feature = "sim")]
pub(crate) fn installed(dpkg: &Dpkg, package: &str) -> Result<Option<(String, bool)>, DpkgError> {
    Ok(dpkg
        .packages()?
        .into_iter()
        .find(|p| p.package == package && p.is_installed())
        .map(|p| (p.version, p.want == Selection::Hold)))
}

/// Authorizes exactly `packages` (name, version) for the APT hook, installs
/// them, revokes the authorization, holds them again and checks dpkg agrees.
/// The authorization lives only while this runs (see `aptgate::step`).
pub async fn install_exact(
    runner: &dyn CommandRunner,
    settings: &Settings,
    store: &Mutex<Store>,
    packages: &[(String, String)],
) -> Result<CommandOutput, AptError> {
    let names = packages
        .iter()
        .map(|(p, v)| format!("{p}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let step = AuthorizedStep::begin(settings, &lock(store), packages).map_err(|source| {
        AptError::Authorize {
            packages: names.clone(),
            source: Box::new(source),
        }
    })?;
    let result = run_checked(
        runner,
        &install_spec(&settings.upgrade, packages),
        &format!("installing {names}"),
    )
    .await;
    // Revoke before anything else; a failed revoke is only logged (the
    // step lock is gone with it, so the hook ignores the rows anyway).
    let finished = step.finish(&lock(store));
    if let Err(e) = finished {
        tracing::warn!(error = %e, "revoking package authorizations after the install");
    }
    let dpkg = Dpkg::new(&settings.packages.dpkg_root);
    // Hold again even after a failed install: what is there stays protected.
    let holds: Vec<(String, Selection)> = packages
        .iter()
        .map(|(p, _)| (p.clone(), Selection::Hold))
        .collect();
    let held = dpkg
        .set_selections(&holds)
        .map_err(|source| AptError::Hold {
            packages: names.clone(),
            source,
        });
    let out = result?;
    held?;
    let states = dpkg.packages().map_err(|source| AptError::Hold {
        packages: names.clone(),
        source,
    })?;
    for (package, want) in packages {
        let found = states
            .iter()
            .find(|s| &s.package == package && s.is_installed());
        match found {
            Some(s) if &s.version == want && s.want == Selection::Hold => {}
            other => {
                return Err(AptError::NotInstalled {
                    package: package.clone(),
                    want: want.clone(),
                    found: other.map_or("not installed".to_string(), |s| {
                        format!("{} ({})", s.version, s.want.as_str())
                    }),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: KubeVersion = KubeVersion::new(1, 35, 2);

    #[test]
    fn source_for_the_minor() {
        let t = UpgradeSettings::default().apt_source_template;
        let text = render_source(&t, NEW);
        assert!(text.ends_with(
            "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.35/deb/ /\n"
        ));
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn source_rewritten_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubernetes.list");
        let t = "deb [trusted=yes] file:/repo/v{minor}/ ./";
        assert!(ensure_source(&path, &render_source(t, KubeVersion::new(1, 34, 2))).unwrap());
        assert!(!ensure_source(&path, &render_source(t, KubeVersion::new(1, 34, 2))).unwrap());
        // Same minor, another patch: the same file.
        assert!(!ensure_source(&path, &render_source(t, KubeVersion::new(1, 34, 9))).unwrap());
        assert!(ensure_source(&path, &render_source(t, NEW)).unwrap());
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("file:/repo/v1.35/ ./")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temporary files left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn update_touches_only_our_source() {
        let u = UpgradeSettings::default();
        let argv = update_spec(&u).argv();
        assert!(
            argv.contains(
                &"Dir::Etc::sourcelist=/etc/apt/sources.list.d/kubernetes.list".to_string()
            )
        );
        assert!(argv.contains(&"Dir::Etc::sourceparts=-".to_string()));
        assert_eq!(argv.last().unwrap(), "update");
        let install = install_spec(&u, &[("kubeadm".into(), "1.35.2-1.1".into())]).argv();
        assert_eq!(install.last().unwrap(), "kubeadm=1.35.2-1.1");
    }

    const MADISON: &str =
        "   kubeadm | 1.35.2-1.2 | https://pkgs.k8s.io/core:/stable:/v1.35/deb  Packages
   kubeadm | 1.35.2-1.1 | https://pkgs.k8s.io/core:/stable:/v1.35/deb  Packages
   kubeadm | 1.35.1-1.1 | https://pkgs.k8s.io/core:/stable:/v1.35/deb  Packages
   kubelet | 1.35.2-1.1 | https://pkgs.k8s.io/core:/stable:/v1.35/deb  Packages
   kubectl | 1:1.35.2-1.1 | https://pkgs.k8s.io/core:/stable:/v1.35/deb  Packages
   kubectl | 1.35.20-1.1 | https://pkgs.k8s.io/core:/stable:/v1.35/deb  Packages
N: Unable to locate package whatever
";

    #[test]
    fn resolves_exact_versions() {
        let entries = parse_madison(MADISON);
        assert_eq!(entries.len(), 6);
        let v = resolve(&entries, NEW).unwrap();
        assert_eq!(v.kubeadm, "1.35.2-1.2");
        assert_eq!(v.kubelet, "1.35.2-1.1");
        assert_eq!(v.kubectl, "1:1.35.2-1.1");
        assert_eq!(upstream_version("1.35.20-1.1"), "1.35.20");
    }

    #[test]
    fn missing_version_names_what_was_seen() {
        let entries = parse_madison(MADISON);
        let err = resolve(&entries, KubeVersion::new(1, 35, 3)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no kubeadm package at v1.35.3"), "{text}");
        assert!(
            text.contains("1.35.2-1.2, 1.35.2-1.1, 1.35.1-1.1"),
            "{text}"
        );
        assert!(text.contains("nothing was changed"));
        let err = resolve(&parse_madison(""), NEW).unwrap_err();
        assert!(err.to_string().contains("seen: none"));
    }
}
