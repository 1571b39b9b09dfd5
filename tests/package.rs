//! The .deb: built by scripts/build-deb, inspected with dpkg-deb, checked by
//! lintian and systemd-analyze, and installed, removed and purged by real
//! dpkg in a private root.
//!
//! `package_from_test_binary` packages the binary cargo built for the tests
//! (fast, runs with `cargo test --test package`). The production build
//! (`cargo build --profile production`) is `#[ignore]`d because it takes
//! many minutes:
//!     cargo test --test package -- --ignored

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn build_deb(args: &[&str], out: &Path) -> PathBuf {
    let stdout = run(Command::new(repo().join("scripts/build-deb"))
        .args(args)
        .arg("--out")
        .arg(out));
    let deb = PathBuf::from(stdout.lines().last().expect("build-deb prints the .deb"));
    let version = env!("CARGO_PKG_VERSION");
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with(&format!("drydock_{version}-")) && name.ends_with(".deb"),
        "{name}"
    );
    deb
}

fn check_deb(deb: &Path) {
    let info = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains(" Package: drydock\n"), "{info}");
    assert!(
        info.contains(&format!(" Version: {}-", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    assert!(
        info.contains(" Depends: ") && info.contains("libc6 (>= 2."),
        "{info}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "{script} missing:\n{info}");
    }
    // The exporter is optional (as a Recommends it pulled 39 packages).
    assert!(
        info.contains(" Suggests: prometheus-node-exporter\n"),
        "{info}"
    );
    assert!(!info.contains(" Recommends:"), "{info}");

    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for path in [
        "./usr/bin/drydock",
        "./lib/systemd/system/drydock.service",
        "./etc/drydock/drydock.toml",
        "./etc/drydock/drydock.toml.d/",
        "./etc/drydock/checks.d/",
        "./usr/share/man/man1/drydock.1.gz",
        "./usr/share/man/man5/drydock.toml.5.gz",
        "./usr/share/bash-completion/completions/drydock",
        "./usr/share/zsh/vendor-completions/_drydock",
        "./usr/share/fish/vendor_completions.d/drydock.fish",
        "./usr/share/doc/drydock/copyright",
        "./usr/share/doc/drydock/changelog.Debian.gz",
        "./usr/share/drydock/prometheus/drydock.rules.yml",
        "./usr/share/drydock/prometheus/drydock.rules.test.yml",
        "./usr/share/drydock/prometheus/drydock.rules.days.test.yml",
        "./usr/share/drydock/grafana/drydock-fleet.json",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{contents}"
        );
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with(" ./usr/bin/drydock"))
    );

    let conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg("conffiles"));
    assert!(
        conffiles.lines().any(|l| l == "/etc/drydock/drydock.toml"),
        "{conffiles}"
    );
    if repo().join("etc/apt/50drydock").exists() {
        assert!(
            conffiles
                .lines()
                .any(|l| l == "/etc/apt/apt.conf.d/50drydock"),
            "{conffiles}"
        );
    }

    // Unpacked: the unit verifies against the packaged binary, the man
    // page is roff, the maintainer scripts parse.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let ctrl = dir.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(ctrl.join(script)));
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/drydock.service")).unwrap();
    verify_unit(&unit, &root.join("usr/bin/drydock"), dir.path());
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/drydock.1.gz")));
    assert!(man.contains(".TH drydock 1"), "{man}");
    assert!(man.contains("drydock.toml\\fR(5)"), "{man}");
    let man5 = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man5/drydock.toml.5.gz")));
    assert!(man5.starts_with(".TH DRYDOCK.TOML 5"), "{man5}");
    // Reload reports the daemon's verdict, and needs no procps.
    assert!(
        unit.contains("\nExecReload=/usr/bin/drydock reload\n"),
        "{unit}"
    );
    assert!(!unit.contains("/bin/kill"), "{unit}");

    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .expect("lintian runs (apt-get install lintian)");
    let stdout = String::from_utf8_lossy(&lintian.stdout);
    assert!(
        lintian.status.success() && stdout.trim().is_empty(),
        "lintian found problems (fix them or add a reasoned override to debian/lintian-overrides):\n{stdout}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );
}

/// `systemd-analyze verify` with ExecStart pointing at `binary` (the unit's
/// /usr/bin/drydock is not installed here). Warnings fail the test too.
fn verify_unit(unit: &str, binary: &Path, dir: &Path) {
    assert!(unit.contains("ExecStart=/usr/bin/drydock daemon\n"));
    let copy = dir.join("drydock.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/drydock", binary.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn package_unit_file_verifies_and_bad_units_do_not() {
    let unit = std::fs::read_to_string(repo().join("systemd/drydock.service")).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=drydock",
        "RuntimeDirectory=drydock",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(unit.lines().any(|l| l.starts_with("TimeoutStopSec=")));
    let dir = tempfile::tempdir().unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_drydock"));
    verify_unit(&unit, &binary, dir.path());
    // The check can fail: a typo is reported.
    let bad = unit.replace("Type=notify", "Type=notfy");
    let copy = dir.path().join("bad.service");
    std::fs::write(
        &copy,
        bad.replace("/usr/bin/drydock", binary.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("notfy"));
}

#[test]
fn package_from_test_binary() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(&["--binary", env!("CARGO_BIN_EXE_drydock")], out.path());
    check_deb(&deb);
}

#[test]
#[ignore = "cargo build --profile production takes many minutes: cargo test --test package -- --ignored"]
fn package_release_build() {
    let deb = build_deb(&[], &repo().join("target/debian"));
    assert_eq!(deb.parent().unwrap(), repo().join("target/debian"));
    check_deb(&deb);
    // The production build: no simulator subcommands.
    let help = run(Command::new(repo().join("target/production/drydock")).arg("--help"));
    assert!(help.contains("daemon"), "{help}");
    let subcommands: Vec<&str> = help
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .collect();
    assert!(
        !subcommands.contains(&"sim") && !subcommands.contains(&"simulate"),
        "{help}"
    );
}

/// dpkg on a private root: `(stdout+stderr, success)`. Maintainer scripts
/// run chrootless with DPKG_ROOT set, as mmdebstrap runs them.
fn dpkg_in(root: &Path, args: &[&str]) -> (String, bool) {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .output()
        .expect("dpkg runs");
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.success(),
    )
}

fn package_status(root: &Path) -> String {
    let (out, _) = dpkg_in(root, &["-s", "drydock"]);
    out.lines()
        .find_map(|l| l.strip_prefix("Status: "))
        .unwrap_or("not known")
        .to_string()
}

#[test]
fn package_installs_removes_and_purges_with_real_dpkg() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: dpkg --root needs root");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(&["--binary", env!("CARGO_BIN_EXE_drydock")], out.path());
    let root = out.path().join("root");
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    let host_wants = Path::new("/etc/systemd/system/multi-user.target.wants/drydock.service");
    let host_had_it = host_wants.exists();
    let host_state = Path::new("/var/lib/drydock");
    let host_had_state = host_state.exists();

    let (log, ok) = dpkg_in(&root, &["-i", deb.to_str().unwrap()]);
    assert!(ok, "install:\n{log}");
    assert_eq!(package_status(&root), "install ok installed");
    assert!(root.join("usr/bin/drydock").is_file());
    assert!(root.join("etc/apt/apt.conf.d/50drydock").is_file());
    assert!(root.join("etc/drydock/drydock.toml").is_file());
    let state =
        std::fs::metadata(root.join("var/lib/drydock")).expect("postinst made the state dir");
    assert_eq!(state.permissions().mode() & 0o777, 0o700);
    assert!(root.join("etc/drydock/checks.d").is_dir());
    assert!(
        root.join("etc/systemd/system/multi-user.target.wants/drydock.service")
            .symlink_metadata()
            .is_ok(),
        "enabled on first install (inside the root)"
    );
    assert_eq!(host_wants.exists(), host_had_it, "the host was not touched");
    assert_eq!(
        host_state.exists(),
        host_had_state,
        "the host was not touched"
    );
    let conffiles =
        std::fs::read_to_string(root.join("var/lib/dpkg/info/drydock.conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/apt/apt.conf.d/50drydock"),
        "{conffiles}"
    );

    std::fs::write(
        root.join("etc/drydock/drydock.toml.d/10-site.toml"),
        "# site\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/drydock/checks.d/10-check"), "#!/bin/sh\n").unwrap();
    // Remove: binary gone; configuration, the apt wiring and state stay.
    std::fs::write(root.join("var/lib/drydock/state.db"), "kept").unwrap();
    let (log, ok) = dpkg_in(&root, &["-r", "drydock"]);
    assert!(ok, "remove:\n{log}");
    assert_eq!(package_status(&root), "deinstall ok config-files");
    assert!(!root.join("usr/bin/drydock").exists());
    assert!(root.join("etc/apt/apt.conf.d/50drydock").is_file());
    assert!(root.join("var/lib/drydock/state.db").is_file());

    // Purge: everything of drydock's is gone; the administrator's own
    // drop-in and check (written before the remove) stay.
    let (log, ok) = dpkg_in(&root, &["-P", "drydock"]);
    assert!(ok, "purge:\n{log}");
    assert_eq!(package_status(&root), "not known");
    for gone in [
        "etc/apt/apt.conf.d/50drydock",
        "etc/drydock/drydock.toml",
        "var/lib/drydock",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
    for kept in [
        "etc/drydock/drydock.toml.d/10-site.toml",
        "etc/drydock/checks.d/10-check",
    ] {
        assert!(
            root.join(kept).is_file(),
            "purge deleted the admin's {kept}"
        );
    }
    assert_eq!(host_wants.exists(), host_had_it, "the host was not touched");
}
