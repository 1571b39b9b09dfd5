//! A sandboxed apt + dpkg root for tests and the hook benchmark.
//!
//! Real apt, dpkg and unattended-upgrades, never the machine's own dpkg
//! database: a local repository of small script-less .debs built with
//! `dpkg-deb` and indexed with `apt-ftparchive`, an `APT_CONFIG` whose `Dir`
//! is the sandbox, and `Dir::Bin::dpkg` pointing to a two-line wrapper that
//! adds `--root`/`--admindir` (that wrapper is apt's own interface).
//!
//! unattended-upgrades: its `main(options, rootdir)` takes a root, but
//! python-apt's `Cache(rootdir=...)` then re-reads `rootdir/etc/apt` and
//! resets `Dir::Bin::dpkg`. [`Sandbox::unattended_upgrade`] runs a small
//! driver script named `unattended-upgrade` (the name matters: drydock tells
//! u-u runs by their ancestry) that loads /usr/bin/unattended-upgrade as a
//! module, points its hard-coded lock/pid/sentinel paths into the sandbox,
//! and lets APT_CONFIG alone configure apt, exactly as for apt-get.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) const DRYDOCK: &str = env!("CARGO_BIN_EXE_drydock");
pub(crate) const SHIPPED_APT_CONF: &str = include_str!("../../etc/apt/50drydock");

/// `(package, version, file shipped at this sandbox path)`.
pub(crate) const PACKAGES: &[(&str, &str, Option<&str>)] = &[
    ("containerd", "1.0-1", None),
    ("containerd", "2.0-1", None),
    ("kubeadm", "1.34.1-1.1", None),
    ("kubeadm", "1.34.2-1.1", None),
    ("kubeadm", "1.34.3-1.1", None),
    ("kubelet", "1.34.2-1.1", None),
    ("hello", "1.0-1", None),
    ("hello", "2.0-1", None),
    (
        "linux-image-6.1.0-99-amd64",
        "6.1.99-1",
        Some("var/run/reboot-required"),
    ),
];

/// Why the sandbox cannot run here, if it cannot.
pub(crate) fn missing_tools(need_uu: bool) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root (apt and dpkg --root need it)".into());
    }
    let mut tools = vec![
        "apt-get",
        "apt-config",
        "dpkg",
        "dpkg-deb",
        "dpkg-query",
        "apt-ftparchive",
    ];
    if need_uu {
        tools.push("python3");
    }
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if need_uu && !Path::new("/usr/bin/unattended-upgrade").is_file() {
        return Some("unattended-upgrades is not installed".into());
    }
    None
}

pub(crate) struct Sandbox {
    _dir: tempfile::TempDir,
    pub base: PathBuf,
    pub root: PathBuf,
    pub repo: PathBuf,
    pub apt_conf: PathBuf,
    pub config: PathBuf,
    pub state_db: PathBuf,
    pub run_dir: PathBuf,
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Sandbox {
    /// A sandbox with the repository indexed (`apt-get update` done), no
    /// package installed, the hook not wired.
    pub(crate) fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("drydock-apt-")
            .tempdir()
            .unwrap();
        let base = dir.path().to_path_buf();
        let root = base.join("root");
        let repo = base.join("repo");
        for d in [
            "var/lib/dpkg/updates",
            "var/lib/dpkg/info",
            "var/lib/dpkg/triggers",
            "var/lib/apt/lists/partial",
            "var/lib/unattended-upgrades",
            "var/cache/apt/archives/partial",
            "var/log/apt",
            "var/run",
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "usr/bin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        write(&root.join("var/lib/dpkg/status"), "");
        write(&root.join("var/lib/dpkg/available"), "");
        build_repo(&base.join("build"), &repo, PACKAGES);
        write(
            &root.join("etc/apt/sources.list"),
            &format!("deb [trusted=yes] file:{} ./\n", repo.display()),
        );
        // Dir::Bin::dpkg lives at <root>/usr/bin/dpkg: python-apt resets it there.
        let dpkg = root.join("usr/bin/dpkg");
        executable(
            &dpkg,
            &format!(
                "#!/bin/sh\nexec /usr/bin/dpkg --root={r} --admindir={r}/var/lib/dpkg --log={r}/var/log/dpkg.log \"$@\"\n",
                r = root.display()
            ),
        );
        let apt_conf = base.join("apt.conf");
        write(
            &apt_conf,
            &format!(
                "Dir \"{r}/\";\n\
                 Dir::State::status \"{r}/var/lib/dpkg/status\";\n\
                 Dir::Bin::dpkg \"{d}\";\n\
                 APT::Architecture \"amd64\";\n\
                 APT::Architectures {{ \"amd64\"; }};\n\
                 Acquire::Languages \"none\";\n\
                 APT::Sandbox::User \"root\";\n\
                 Dpkg::Use-Pty \"false\";\n",
                r = root.display(),
                d = dpkg.display()
            ),
        );
        let state_db = base.join("state/state.db");
        let run_dir = base.join("run");
        let config = base.join("drydock.toml");
        let sandbox = Sandbox {
            _dir: dir,
            base,
            root,
            repo,
            apt_conf,
            config,
            state_db,
            run_dir,
        };
        sandbox.write_config(&[]);
        check(sandbox.apt_get(&["update"]), "apt-get update");
        sandbox
    }

    /// Writes drydock.toml; `protect` empty means the built-in default set.
    pub(crate) fn write_config(&self, protect: &[&str]) {
        // Joined by default (a kubelet kubeconfig exists): the hook then
        // decides as on a node in service. See [`Sandbox::set_joined`].
        let kubeconfig = self.base.join("kubelet.conf");
        if !kubeconfig.exists() {
            write(&kubeconfig, "# stands for the kubelet's kubeconfig\n");
        }
        let mut text = format!(
            "[node]\nkubeconfig = \"{}\"\nstate-db = \"{}\"\nrun-dir = \"{}\"\n[reboot]\nsentinel-file = \"{}\"\n[packages]\ndpkg-root = \"{}\"\n",
            kubeconfig.display(),
            self.state_db.display(),
            self.run_dir.display(),
            self.root.join("var/run/reboot-required").display(),
            self.root.display()
        );
        if !protect.is_empty() {
            let list: Vec<String> = protect.iter().map(|p| format!("{p:?}")).collect();
            text.push_str(&format!("protect = [{}]\n", list.join(", ")));
        }
        write(&self.config, &text);
    }

    /// Whether the node has joined a cluster: its kubelet kubeconfig exists.
    pub(crate) fn set_joined(&self, joined: bool) {
        let kubeconfig = self.base.join("kubelet.conf");
        if joined {
            write(&kubeconfig, "# stands for the kubelet's kubeconfig\n");
        } else {
            let _ = std::fs::remove_file(kubeconfig);
        }
    }

    pub(crate) fn settings(&self) -> drydock::testing::config::Settings {
        drydock::testing::config::load(&self.config, true).expect("sandbox config is valid")
    }

    pub(crate) fn dpkg(&self) -> drydock::testing::host::dpkg::Dpkg {
        drydock::testing::host::dpkg::Dpkg::new(&self.root)
    }

    /// The shipped /etc/apt/apt.conf.d/50drydock, pointed at the built binary
    /// and the sandbox's drydock.toml. `pre_install_only` drops Post-Invoke.
    pub(crate) fn install_hook(&self, pre_install_only: bool) {
        self.install_hook_at(Path::new(DRYDOCK), pre_install_only);
    }

    /// As [`Sandbox::install_hook`], with `binary` in place of /usr/bin/drydock.
    pub(crate) fn install_hook_at(&self, binary: &Path, pre_install_only: bool) {
        let binary = binary.to_str().expect("UTF-8 binary path");
        assert!(
            !binary.contains(' '),
            "apt splits the hook command at spaces"
        );
        let command = format!("{binary} --config {}", self.config.display());
        let mut text = SHIPPED_APT_CONF
            .replace("/usr/bin/drydock apt-hook", &format!("{command} apt-hook"))
            .replace("/usr/bin/drydock", binary);
        if pre_install_only {
            text = text
                .lines()
                .filter(|l| !l.starts_with("DPkg::Post-Invoke"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        write(&self.root.join("etc/apt/apt.conf.d/50drydock"), &text);
    }

    pub(crate) fn remove_hook(&self) {
        let _ = std::fs::remove_file(self.root.join("etc/apt/apt.conf.d/50drydock"));
    }

    pub(crate) fn apt_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.apt_conf)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .env_remove("DRYDOCK_APT_ALLOW")
            .env_remove("DRYDOCK_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    pub(crate) fn apt_get(&self, args: &[&str]) -> Output {
        self.apt_command("apt-get")
            .args([
                "-y",
                "-q",
                "--allow-downgrades",
                "--allow-change-held-packages",
            ])
            .args(args)
            .output()
            .expect("running apt-get")
    }

    /// Installs without any hook (test setup).
    pub(crate) fn preinstall(&self, specs: &[&str]) {
        let mut args = vec!["install"];
        args.extend_from_slice(specs);
        check(self.apt_get(&args), "apt-get install (setup)");
    }

    /// Raw bytes of the dpkg status file.
    pub(crate) fn status_file(&self) -> Vec<u8> {
        std::fs::read(self.root.join("var/lib/dpkg/status")).unwrap()
    }

    /// Installed packages: name -> (version, selection).
    pub(crate) fn installed(&self) -> BTreeMap<String, (String, String)> {
        self.dpkg()
            .packages()
            .expect("dpkg-query in sandbox")
            .into_iter()
            .filter(|p| p.is_installed())
            .map(|p| (p.name, (p.version, p.want.as_str().to_string())))
            .collect()
    }

    pub(crate) fn version(&self, package: &str) -> Option<String> {
        self.installed().remove(package).map(|(v, _)| v)
    }

    pub(crate) fn selection(&self, package: &str) -> Option<String> {
        self.installed().remove(package).map(|(_, s)| s)
    }

    pub(crate) fn set_selection(&self, package: &str, selection: &str) {
        let mut child = Command::new("dpkg")
            .arg(format!("--root={}", self.root.display()))
            .arg("--set-selections")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{package} {selection}").unwrap();
        assert!(child.wait().unwrap().success());
    }

    pub(crate) fn drydock(&self) -> Command {
        let mut cmd = Command::new(DRYDOCK);
        cmd.arg("--config")
            .arg(&self.config)
            .env_remove("DRYDOCK_APT_ALLOW");
        cmd
    }

    /// Runs unattended-upgrades (the system's script) against the sandbox.
    pub(crate) fn unattended_upgrade(&self, extra_conf: &str) -> Output {
        write(
            &self
                .root
                .join("etc/apt/apt.conf.d/60unattended-upgrades-test"),
            &format!(
                "Unattended-Upgrade::Origins-Pattern {{ \"origin=drydock-test\"; }};\n{extra_conf}"
            ),
        );
        let driver = self.base.join("bin/unattended-upgrade");
        executable(&driver, UU_DRIVER);
        self.apt_command("/usr/bin/python3")
            .arg(&driver)
            .arg(&self.root)
            .output()
            .expect("running unattended-upgrade")
    }
}

const UU_DRIVER: &str = r#"#!/usr/bin/python3
# Runs the system's unattended-upgrade against a sandbox root (argv[1]).
import importlib.machinery, importlib.util, os, sys
import apt, apt_pkg
root = sys.argv[1]
loader = importlib.machinery.SourceFileLoader("uu", "/usr/bin/unattended-upgrade")
spec = importlib.util.spec_from_loader("uu", loader)
uu = importlib.util.module_from_spec(spec)
loader.exec_module(uu)
for name in ("LOCK_FILE", "REBOOT_REQUIRED_FILE", "PROGRESS_LOG", "PID_FILE"):
    setattr(uu, name, root + getattr(uu, name))
def setup_root(rootdir):
    logdir = os.path.join(rootdir, "var", "log", "unattended-upgrades")
    os.makedirs(logdir, exist_ok=True)
    apt_pkg.config.set("Unattended-Upgrade::LogDir", logdir)
uu._setup_alternative_rootdir = setup_root
_init = apt.Cache.__init__
apt.Cache.__init__ = lambda self, progress=None, rootdir=None, memonly=False: _init(self, progress, None, memonly)
os.environ["DEBIAN_FRONTEND"] = "noninteractive"
opts = uu.Options()
opts.verbose = True
sys.exit(uu.main(opts, root))
"#;

/// Builds `packages` into a flat repository at `repo` (Packages, Release).
pub(crate) fn build_repo(build: &Path, repo: &Path, packages: &[(&str, &str, Option<&str>)]) {
    std::fs::create_dir_all(repo).unwrap();
    for (name, version, file) in packages {
        let dir = build.join(format!("{name}_{version}"));
        write(
            &dir.join("DEBIAN/control"),
            &format!(
                "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: drydock tests <tests@drydock.invalid>\nDescription: fake {name} for drydock's apt tests\n"
            ),
        );
        match file {
            Some(path) => write(&dir.join(path), "*** System restart required ***\n"),
            None => write(&dir.join(format!("usr/share/doc/{name}/version")), version),
        }
        check(
            Command::new("dpkg-deb")
                .args(["-Zgzip", "--root-owner-group", "-b"])
                .arg(&dir)
                .arg(repo.join(format!("{name}_{version}_all.deb")))
                .stdout(Stdio::null())
                .output()
                .unwrap(),
            "dpkg-deb -b",
        );
    }
    let packages = check(
        Command::new("apt-ftparchive")
            .args(["packages", "."])
            .current_dir(repo)
            .output()
            .unwrap(),
        "apt-ftparchive packages",
    );
    std::fs::write(repo.join("Packages"), packages.stdout).unwrap();
    let release = check(
        Command::new("apt-ftparchive")
            .args([
                "-o",
                "APT::FTPArchive::Release::Origin=drydock-test",
                "-o",
                "APT::FTPArchive::Release::Label=drydock-test",
                "-o",
                "APT::FTPArchive::Release::Suite=sandbox",
                "-o",
                "APT::FTPArchive::Release::Codename=sandbox",
                "release",
                ".",
            ])
            .current_dir(repo)
            .output()
            .unwrap(),
        "apt-ftparchive release",
    );
    std::fs::write(repo.join("Release"), release.stdout).unwrap();
}
