//! The dpkg database, read with `dpkg-query` and changed with
//! `dpkg --set-selections`. Always argv, never a shell; the root is
//! configurable (`packages.dpkg-root`) so tests use a sandbox database.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// What the administrator (or drydock) wants for a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Install,
    Hold,
    Deinstall,
    Purge,
    Unknown,
}

impl Selection {
    fn parse(text: &str) -> Selection {
        match text {
            "install" => Selection::Install,
            "hold" => Selection::Hold,
            "deinstall" => Selection::Deinstall,
            "purge" => Selection::Purge,
            _ => Selection::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Install => "install",
            Selection::Hold => "hold",
            Selection::Deinstall => "deinstall",
            Selection::Purge => "purge",
            Selection::Unknown => "unknown",
        }
    }
}

/// One package as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageState {
    /// Name as dpkg wants it in selections (`binary:Package`, arch-qualified
    /// only for Multi-Arch: same packages).
    pub name: String,
    /// Bare package name, what protection patterns match.
    pub package: String,
    pub version: String,
    pub arch: String,
    pub want: Selection,
    /// dpkg's status word: installed, unpacked, config-files, ...
    pub status: String,
}

impl PackageState {
    /// Files of this package are on disk (anything but config-files / not-installed).
    pub fn is_installed(&self) -> bool {
        !matches!(self.status.as_str(), "not-installed" | "config-files" | "")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DpkgError {
    #[error("running {program} for dpkg root {}: {source}", root.display())]
    Spawn {
        program: &'static str,
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} for dpkg root {} failed ({status}): {stderr}", root.display())]
    Failed {
        program: &'static str,
        root: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("dpkg-query for dpkg root {}: unreadable line {line:?}", root.display())]
    Parse { root: PathBuf, line: String },
}

const QUERY_FORMAT: &str = "${binary:Package}\t${Package}\t${Version}\t${Architecture}\t${db:Status-Want}\t${db:Status-Status}\n";

/// A dpkg database under `root` (admin dir `root/var/lib/dpkg`).
#[derive(Debug, Clone)]
pub struct Dpkg {
    root: PathBuf,
}

impl Dpkg {
    pub fn new(root: impl Into<PathBuf>) -> Dpkg {
        Dpkg { root: root.into() }
    }

    pub(crate) fn admindir(&self) -> PathBuf {
        self.root.join("var/lib/dpkg")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg(format!("--root={}", self.root.display()))
            .arg(format!("--admindir={}", self.admindir().display()))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    /// Every package dpkg knows, with its selection and status.
    pub fn packages(&self) -> Result<Vec<PackageState>, DpkgError> {
        self.start_packages()?.wait()
    }

    /// Starts [`Dpkg::packages`]' `dpkg-query` and returns at once, so the
    /// caller can do other work (open the store) while it runs.
    pub(crate) fn start_packages(&self) -> Result<PackagesQuery, DpkgError> {
        let child = self
            .command("dpkg-query")
            .arg("-W")
            .arg(format!("--showformat={QUERY_FORMAT}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DpkgError::Spawn {
                program: "dpkg-query",
                root: self.root.clone(),
                source,
            })?;
        Ok(PackagesQuery {
            child,
            root: self.root.clone(),
        })
    }

    /// Sets the selection of each named package in one dpkg call.
    pub(crate) fn set_selections(&self, changes: &[(String, Selection)]) -> Result<(), DpkgError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut input = String::new();
        for (name, selection) in changes {
            input.push_str(name);
            input.push(' ');
            input.push_str(selection.as_str());
            input.push('\n');
        }
        let spawn_err = |source| DpkgError::Spawn {
            program: "dpkg",
            root: self.root.clone(),
            source,
        };
        // Another dpkg or apt run (unattended-upgrades, an admin, the APT
        // hook's own apt) may hold dpkg's lock for a while: wait for it, as
        // apt's DPkg::Lock::Timeout does, instead of failing the step.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let mut child = self
                .command("dpkg")
                .arg("--set-selections")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(spawn_err)?;
            // dpkg exits before reading when another run holds its lock:
            // its exit status and stderr say so below (and it is retried).
            let mut cut = false;
            if let Some(mut stdin) = child.stdin.take() {
                match stdin.write_all(input.as_bytes()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => cut = true,
                    other => other.map_err(spawn_err)?,
                }
            }
            let out = child.wait_with_output().map_err(spawn_err)?;
            if out.status.success() && !cut {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if is_lock_contention(&stderr) && std::time::Instant::now() < deadline {
                std::thread::sleep(LOCK_RETRY);
                continue;
            }
            return Err(DpkgError::Failed {
                program: "dpkg --set-selections",
                root: self.root.clone(),
                status: out.status,
                stderr,
            });
        }
        Ok(())
    }
}

/// How long a selection change waits for another dpkg run's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// dpkg's words when another process holds its frontend or database lock.
fn is_lock_contention(stderr: &str) -> bool {
    stderr.contains("frontend lock was locked by another process")
        || stderr.contains("database is locked by another process")
        || stderr.contains("frontend lock is locked by another process")
}

/// A running `dpkg-query` (see [`Dpkg::start_packages`]).
#[derive(Debug)]
pub(crate) struct PackagesQuery {
    child: Child,
    root: PathBuf,
}

impl PackagesQuery {
    /// Waits for dpkg-query and parses its answer.
    pub(crate) fn wait(self) -> Result<Vec<PackageState>, DpkgError> {
        let root = self.root;
        let out = self
            .child
            .wait_with_output()
            .map_err(|source| DpkgError::Spawn {
                program: "dpkg-query",
                root: root.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(DpkgError::Failed {
                program: "dpkg-query",
                root,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        parse_query_output(&String::from_utf8_lossy(&out.stdout))
            .map_err(|line| DpkgError::Parse { root, line })
    }
}

/// Parses `QUERY_FORMAT` lines; the error is the offending line.
fn parse_query_output(text: &str) -> Result<Vec<PackageState>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                [name, package, version, arch, want, status] if !package.is_empty() => {
                    Ok(PackageState {
                        name: name.to_string(),
                        package: package.to_string(),
                        version: version.to_string(),
                        arch: arch.to_string(),
                        want: Selection::parse(want),
                        status: status.to_string(),
                    })
                }
                _ => Err(line.to_string()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_lines() {
        let out = "containerd\tcontainerd\t1.0-1\tamd64\thold\tinstalled\n\
                   libc6:amd64\tlibc6\t2.36-9\tamd64\tinstall\tinstalled\n\
                   old\told\t1\tall\tdeinstall\tconfig-files\n";
        let pkgs = parse_query_output(out).unwrap();
        assert_eq!(pkgs.len(), 3);
        assert_eq!(pkgs[0].want, Selection::Hold);
        assert_eq!(pkgs[1].name, "libc6:amd64");
        assert_eq!(pkgs[1].package, "libc6");
        assert!(pkgs[1].is_installed());
        assert!(!pkgs[2].is_installed());
    }

    #[test]
    fn rejects_short_lines() {
        assert_eq!(
            parse_query_output("containerd\t1.0\n"),
            Err("containerd\t1.0".to_string())
        );
    }
}

#[cfg(test)]
mod lock_tests {
    use super::is_lock_contention;

    #[test]
    fn dpkg_lock_messages_are_waited_for_and_others_are_not() {
        assert!(is_lock_contention(
            "dpkg: error: dpkg frontend lock was locked by another process with pid 9257"
        ));
        assert!(is_lock_contention(
            "dpkg: error: dpkg status database is locked by another process"
        ));
        assert!(!is_lock_contention("dpkg: error: unknown package 'nope'"));
    }
}
