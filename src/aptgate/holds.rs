//! Keeping protected packages on dpkg hold.
//!
//! [`plan`] is pure: installed packages + patterns + the holds drydock made
//! before -> what to hold, what to release. [`reconcile`] applies it. The
//! names of holds drydock made are kept in the store (kv `holds.made`), so
//! removing a pattern releases only those: an administrator's own hold stays.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::Settings;
use crate::host::dpkg::{Dpkg, DpkgError, PackageState, Selection};
use crate::store::{Store, StoreError};

/// Store key of the set of package names drydock put on hold.
pub(crate) const HOLDS_MADE_KEY: &str = "holds.made";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HoldPlan {
    /// Protected, installed, not held yet: drydock holds them.
    pub hold: Vec<String>,
    /// Held by drydock, no longer protected: drydock releases them.
    pub release: Vec<String>,
    /// Protected and held by someone else: left alone, not drydock's.
    pub held_by_admin: Vec<String>,
    /// Every protected installed package, as `name version`.
    pub protected: Vec<String>,
    /// The holds drydock owns once the plan is applied.
    pub made: BTreeSet<String>,
}

/// Decides holds; `made` is what drydock held before.
pub(crate) fn plan(
    packages: &[PackageState],
    is_protected: impl Fn(&str) -> bool,
    made: &BTreeSet<String>,
) -> HoldPlan {
    let mut p = HoldPlan::default();
    for pkg in packages.iter().filter(|p| p.is_installed()) {
        let ours = made.contains(&pkg.name);
        if is_protected(&pkg.package) {
            p.protected.push(format!("{} {}", pkg.name, pkg.version));
            match (pkg.want, ours) {
                (Selection::Hold, false) => p.held_by_admin.push(pkg.name.clone()),
                (Selection::Hold, true) => {
                    p.made.insert(pkg.name.clone());
                }
                _ => {
                    p.hold.push(pkg.name.clone());
                    p.made.insert(pkg.name.clone());
                }
            }
        } else if ours && pkg.want == Selection::Hold {
            p.release.push(pkg.name.clone());
        }
        // Ours but no longer held (an admin unheld it) and unprotected: forget it.
    }
    p
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("reconciling dpkg holds: {0}")]
    Dpkg(#[from] DpkgError),
    #[error("reconciling dpkg holds: {0}")]
    Store(#[from] StoreError),
}

/// Reads dpkg, applies the plan, records what drydock now owns.
pub fn reconcile(settings: &Settings, store: &Store, dpkg: &Dpkg) -> Result<HoldPlan, HoldError> {
    let packages = dpkg.packages()?;
    reconcile_with(settings, store, dpkg, &packages)
}

/// As [`reconcile`], with a dpkg state already read.
pub(crate) fn reconcile_with(
    settings: &Settings,
    store: &Store,
    dpkg: &Dpkg,
    packages: &[PackageState],
) -> Result<HoldPlan, HoldError> {
    let before: BTreeSet<String> = store.get(HOLDS_MADE_KEY)?.unwrap_or_default();
    let plan = plan(packages, |n| settings.is_protected(n), &before);
    // Record new holds before making them: a crash in between leaves a name
    // we own but did not hold yet, which the next run simply holds.
    let mut owned: BTreeSet<String> = before.union(&plan.made).cloned().collect();
    if owned != before {
        store.set(HOLDS_MADE_KEY, &owned)?;
    }
    let mut changes: Vec<(String, Selection)> = plan
        .hold
        .iter()
        .map(|n| (n.clone(), Selection::Hold))
        .collect();
    changes.extend(plan.release.iter().map(|n| (n.clone(), Selection::Install)));
    dpkg.set_selections(&changes)?;
    owned.clone_from(&plan.made);
    if owned != before {
        store.set(HOLDS_MADE_KEY, &owned)?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, want: Selection, status: &str) -> PackageState {
        PackageState {
            name: name.into(),
            package: name.into(),
            version: "1.0".into(),
            arch: "amd64".into(),
            want,
            status: status.into(),
        }
    }

    fn protected(n: &str) -> bool {
        n == "containerd" || n.starts_with("calico-")
    }

    #[test]
    fn holds_protected_installed_packages() {
        let pkgs = [
            pkg("containerd", Selection::Install, "installed"),
            pkg("calico-node", Selection::Hold, "installed"),
            pkg("calico-old", Selection::Deinstall, "config-files"),
            pkg("hello", Selection::Install, "installed"),
        ];
        let p = plan(&pkgs, protected, &BTreeSet::new());
        assert_eq!(p.hold, ["containerd"]);
        assert_eq!(p.held_by_admin, ["calico-node"]);
        assert!(p.release.is_empty());
        assert_eq!(p.made, BTreeSet::from(["containerd".to_string()]));
        assert_eq!(p.protected, ["containerd 1.0", "calico-node 1.0"]);
    }

    #[test]
    fn releases_only_holds_drydock_made() {
        let made = BTreeSet::from(["containerd".to_string(), "gone".to_string()]);
        let pkgs = [
            pkg("containerd", Selection::Hold, "installed"),
            pkg("admin-held", Selection::Hold, "installed"),
        ];
        // containerd is no longer protected.
        let p = plan(&pkgs, |_| false, &made);
        assert_eq!(p.release, ["containerd"]);
        assert!(p.hold.is_empty());
        assert!(
            p.made.is_empty(),
            "uninstalled and released names are forgotten"
        );
    }

    #[test]
    fn re_holds_what_drydock_owns_if_unheld() {
        let made = BTreeSet::from(["containerd".to_string()]);
        let pkgs = [pkg("containerd", Selection::Install, "installed")];
        let p = plan(&pkgs, protected, &made);
        assert_eq!(p.hold, ["containerd"]);
        assert!(p.made.contains("containerd"));
    }
}
