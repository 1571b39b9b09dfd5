//! Installed and running kernels. Debian writes no reboot sentinel for a
//! new kernel, so drydock compares the newest `vmlinuz-*` in the boot
//! directory with the running release, using dpkg's version ordering.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelError {
    #[error("reading the running kernel release from {}: {source}", path.display())]
    Running {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listing installed kernels in {}: {source}", dir.display())]
    BootDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Where Linux publishes `uname -r`.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// The running kernel release (`uname -r`), e.g. `6.1.0-18-amd64`.
pub(crate) fn running_release() -> Result<String, KernelError> {
    std::fs::read_to_string(OSRELEASE)
        .map(|s| s.trim().to_string())
        .map_err(|source| KernelError::Running {
            path: OSRELEASE.into(),
            source,
        })
}

/// A kernel release split into its version and flavour:
/// `6.1.0-18-cloud-amd64` -> (`6.1.0-18`, `cloud-amd64`),
/// `5.15.0-91-generic` -> (`5.15.0-91`, `generic`).
fn split_release(release: &str) -> (&str, &str) {
    // The version is the leading parts that start with a digit.
    let mut end = 0;
    for (i, part) in release.split('-').enumerate() {
        if !part.starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
        end = if i == 0 {
            part.len()
        } else {
            end + 1 + part.len()
        };
    }
    let version = &release[..end];
    let flavour = release[end..].trim_start_matches('-');
    (version, flavour)
}

/// Compares two kernel releases of the same flavour by their versions.
fn compare_releases(a: &str, b: &str) -> Ordering {
    compare_versions(split_release(a).0, split_release(b).0)
}

/// Release names of the kernels installed in `boot_dir` (`vmlinuz-<release>`).
pub(crate) fn installed_releases(boot_dir: &Path) -> Result<Vec<String>, KernelError> {
    let err = |source| KernelError::BootDir {
        dir: boot_dir.into(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(boot_dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(release) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        // dpkg leaves these behind mid-install or on conflicts.
        let leftover = [
            ".dpkg-tmp",
            ".dpkg-new",
            ".dpkg-old",
            ".dpkg-bak",
            ".old",
            ".bak",
        ];
        if release.is_empty() || leftover.iter().any(|s| release.ends_with(s)) {
            continue;
        }
        out.push(release.to_string());
    }
    Ok(out)
}

/// The newest installed release of the running kernel's flavour, if it is
/// newer than the running one. Kernels of other flavours (an `-rt` kernel
/// beside `-amd64`) are not what this machine boots, so they are ignored.
pub(crate) fn newer_installed<'a>(running: &str, installed: &'a [String]) -> Option<&'a str> {
    let flavour = split_release(running).1;
    installed
        .iter()
        .filter(|r| split_release(r).1 == flavour)
        .max_by(|a, b| compare_releases(a, b))
        .map(String::as_str)
        .filter(|newest| compare_releases(newest, running) == Ordering::Greater)
}

/// dpkg's version ordering (`dpkg --compare-versions`): epoch, then upstream
/// version, then Debian revision, each compared with `~` before everything,
/// letters before other characters, and digit runs numerically.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = parse_version(a);
    let (eb, ub, rb) = parse_version(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua, ub))
        .then_with(|| verrevcmp(ra, rb))
}

fn parse_version(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_ordering_matches_the_debian_policy_examples() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0+", Less),
            ("1.0", "1.0a", Less),
            ("1:0.1", "2.0", Greater),
            ("0:2.0", "2.0", Equal),
            ("2.0-1", "2.0-2", Less),
            ("2.0-10", "2.0-9", Greater),
            ("2.0", "2.0-0", Equal),
            ("1.2.3-1ubuntu1", "1.2.3-1", Greater),
            ("007", "7", Equal),
            ("6.1.0-18", "6.1.0-21", Less),
            ("6.12.9+bpo", "6.1.0-30", Greater),
            ("5.15.0-91", "5.15.0-101", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn releases_split_into_version_and_flavour() {
        assert_eq!(split_release("6.1.0-18-amd64"), ("6.1.0-18", "amd64"));
        assert_eq!(
            split_release("6.1.0-18-cloud-amd64"),
            ("6.1.0-18", "cloud-amd64")
        );
        assert_eq!(split_release("5.15.0-91-generic"), ("5.15.0-91", "generic"));
        assert_eq!(split_release("6.12.9+bpo-amd64"), ("6.12.9+bpo", "amd64"));
        assert_eq!(split_release("6.8.0"), ("6.8.0", ""));
    }

    #[test]
    fn newer_kernel_of_the_same_flavour_is_found() {
        let installed: Vec<String> = ["6.1.0-18-amd64", "6.1.0-21-amd64", "6.1.0-9-amd64"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            newer_installed("6.1.0-18-amd64", &installed),
            Some("6.1.0-21-amd64")
        );
        assert_eq!(newer_installed("6.1.0-21-amd64", &installed), None);
        // Running a kernel newer than every file (e.g. removed) is not a reason.
        assert_eq!(newer_installed("6.1.0-25-amd64", &installed), None);
    }

    #[test]
    fn other_flavours_are_ignored() {
        let installed: Vec<String> = ["6.1.0-18-amd64", "6.1.0-30-rt-amd64"]
            .map(String::from)
            .to_vec();
        assert_eq!(newer_installed("6.1.0-18-amd64", &installed), None);
        assert_eq!(
            newer_installed("6.1.0-20-rt-amd64", &installed),
            Some("6.1.0-30-rt-amd64")
        );
    }

    #[test]
    fn boot_dir_listing_skips_symlink_names_and_dpkg_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "vmlinuz",
            "vmlinuz.old",
            "vmlinuz-6.1.0-18-amd64",
            "vmlinuz-6.1.0-21-amd64.dpkg-tmp",
            "initrd.img-6.1.0-21-amd64",
            "config-6.1.0-21-amd64",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            installed_releases(dir.path()).unwrap(),
            vec!["6.1.0-18-amd64".to_string()]
        );
        let missing = dir.path().join("nope");
        let err = installed_releases(&missing).unwrap_err().to_string();
        assert!(err.contains("listing installed kernels in"), "{err}");
    }
}
