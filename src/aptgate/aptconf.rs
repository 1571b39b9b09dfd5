//! apt's configuration as it concerns drydock: the hook wiring and
//! unattended-upgrades' settings, read with `apt-config dump` (argv, no
//! shell) and checked by a pure function for `drydock check-config`.

use std::process::{Command, Stdio};

use crate::config::Settings;

/// How the shipped hook is spelled in `DPkg::Pre-Install-Pkgs`.
const PRE_INSTALL_COMMAND: &str = "apt-hook pre-install";

#[derive(Debug, thiserror::Error)]
pub(crate) enum AptConfigError {
    #[error("running apt-config dump: {0}")]
    Spawn(std::io::Error),
    #[error("apt-config dump failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// `(key, value)` pairs of apt's merged configuration; list items end in `::`.
fn read_apt_config() -> Result<Vec<(String, String)>, AptConfigError> {
    let out = Command::new("apt-config")
        .args(["dump", "--format", "%f=%v%n"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(AptConfigError::Spawn)?;
    if !out.status.success() {
        return Err(AptConfigError::Failed {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(parse_dump(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_dump(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// apt's boolean spelling (`StringToBool`).
fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "with" | "on" | "enable"
    ) || value.trim().parse::<i64>().is_ok_and(|n| n != 0)
}

/// The unattended-upgrades blacklist entry for a protection pattern. u-u
/// applies Python's `re.match` (anchored at the start only) to package names.
fn uu_blacklist_regex(pattern: &str) -> String {
    let mut re = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    re.push(c);
                    if c == ']' {
                        break;
                    }
                }
            }
            '.' | '+' => {
                re.push('\\');
                re.push(c);
            }
            c => re.push(c),
        }
    }
    // A trailing ".*" adds nothing to a prefix match.
    match re.strip_suffix(".*") {
        Some(prefix) => prefix.to_string(),
        None => re + "$",
    }
}

/// Warnings about apt's configuration: unattended-upgrades rebooting by
/// itself, the hook missing, protected packages u-u would try to upgrade.
fn warnings(config: &[(String, String)], settings: &Settings) -> Vec<String> {
    let get = |key: &str| {
        config
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let list = |key: &str| -> Vec<&str> {
        let item = format!("{key}::");
        config
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&item))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let mut out = Vec::new();
    if let Some(v) = get("Unattended-Upgrade::Automatic-Reboot").filter(|v| truthy(v)) {
        out.push(format!(
            "unattended-upgrades is configured to reboot by itself (Unattended-Upgrade::Automatic-Reboot \"{v}\"): set it to \"false\" (as /etc/apt/apt.conf.d/50drydock does, unless a later file overrides it); drydock reboots nodes one at a time under the lease"
        ));
    }
    let hooks = list("DPkg::Pre-Install-Pkgs");
    match hooks.iter().find(|h| h.contains(PRE_INSTALL_COMMAND)) {
        None => out.push(
            "the drydock APT hook is not configured (no DPkg::Pre-Install-Pkgs entry runs `drydock apt-hook pre-install`): apt can change protected packages; reinstall /etc/apt/apt.conf.d/50drydock".into(),
        ),
        Some(cmd) => {
            let program = cmd.split(' ').next().unwrap_or_default();
            let key = format!("DPkg::Tools::Options::{program}::Version");
            if get(&key) != Some("3") {
                out.push(format!(
                    "the drydock APT hook needs protocol version 3: set {key} \"3\" (without it every apt run fails)"
                ));
            }
        }
    }
    if !list("DPkg::Post-Invoke")
        .iter()
        .any(|h| h.contains("apt-hook post-invoke"))
    {
        out.push(
            "DPkg::Post-Invoke does not run `drydock apt-hook post-invoke`: apt runs are not recorded and holds are re-applied only by the daemon".into(),
        );
    }
    let blacklist = list("Unattended-Upgrade::Package-Blacklist");
    let missing: Vec<&str> = settings
        .packages
        .protect
        .iter()
        .map(glob::Pattern::as_str)
        .filter(|p| !blacklist.contains(&uu_blacklist_regex(p).as_str()))
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "Unattended-Upgrade::Package-Blacklist lacks entries for protected patterns {}: add {} (held packages are skipped anyway, but a run that reaches the hook is refused whole)",
            missing.join(", "),
            missing
                .iter()
                .map(|p| format!("\"{}\";", uu_blacklist_regex(p)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    out
}

/// [`warnings`] for this machine; a failure to read apt's config is itself a warning.
pub(crate) fn check_apt_config(settings: &Settings) -> Vec<String> {
    match read_apt_config() {
        Ok(config) => warnings(&config, settings),
        Err(e) => vec![format!("could not check apt's configuration: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PROTECTED;

    const SHIPPED: &str = include_str!("../../etc/apt/50drydock");

    #[test]
    fn regexes_for_patterns() {
        assert_eq!(uu_blacklist_regex("kubelet"), "kubelet$");
        assert_eq!(uu_blacklist_regex("containerd.io"), "containerd\\.io$");
        assert_eq!(uu_blacklist_regex("calico-*"), "calico-");
        assert_eq!(uu_blacklist_regex("cni-?x*y"), "cni-.x.*y$");
        assert_eq!(uu_blacklist_regex("lib[!a]b"), "lib[^a]b$");
    }

    /// The shipped conffile mirrors the default protected set.
    #[test]
    fn shipped_blacklist_mirrors_default_patterns() {
        let entries: Vec<String> = SHIPPED
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('"') && l.ends_with("\";"))
            .map(|l| l.trim_end_matches(';').trim_matches('"').to_string())
            .collect();
        let expected: Vec<String> = DEFAULT_PROTECTED
            .iter()
            .map(|p| uu_blacklist_regex(p))
            .collect();
        assert_eq!(entries, expected);
        assert!(SHIPPED.contains("Unattended-Upgrade::Automatic-Reboot \"false\";"));
        assert!(SHIPPED.contains("DPkg::Tools::Options::/usr/bin/drydock::Version \"3\";"));
    }

    fn item(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    fn good() -> Vec<(String, String)> {
        let mut c = vec![
            item(
                "DPkg::Pre-Install-Pkgs::",
                "/usr/bin/drydock apt-hook pre-install",
            ),
            item("DPkg::Tools::Options::/usr/bin/drydock::Version", "3"),
            item(
                "DPkg::Post-Invoke::",
                "/usr/bin/drydock apt-hook post-invoke || true",
            ),
            item("Unattended-Upgrade::Automatic-Reboot", "false"),
        ];
        for p in DEFAULT_PROTECTED {
            c.push(item(
                "Unattended-Upgrade::Package-Blacklist::",
                &uu_blacklist_regex(p),
            ));
        }
        c
    }

    #[test]
    fn good_config_has_no_warnings() {
        assert_eq!(
            warnings(&good(), &Settings::default()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn warns_about_uu_reboot_missing_hook_and_blacklist() {
        let mut c = good();
        c.push(item("Unattended-Upgrade::Automatic-Reboot", "true"));
        let w = warnings(&c, &Settings::default());
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("reboot by itself"), "{w:?}");

        let c: Vec<_> = good()
            .into_iter()
            .filter(|(k, v)| !k.starts_with("DPkg::Tools") && v != "runc$")
            .collect();
        let w = warnings(&c, &Settings::default());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("protocol version 3"));
        assert!(w[1].contains("runc") && !w[1].contains("kubelet"));

        let w = warnings(&[], &Settings::default());
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn parses_dump_lines() {
        let c = parse_dump("A::B=c\nList::=x=y\nnoequals\n");
        assert_eq!(c, [item("A::B", "c"), item("List::", "x=y")]);
        assert!(truthy("1") && truthy("True") && !truthy("false") && !truthy("0"));
    }
}
