//! The APT gate against real apt, dpkg and unattended-upgrades in a sandbox
//! root (see tests/support/apt_sandbox.rs). Tests skip, saying why, only
//! when a required tool is missing or not running as root.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Output, Stdio};
use std::time::Duration;

use apt_sandbox::{Sandbox, missing_tools};
use drydock::testing::aptgate::{self, UpgradeStep};
use drydock::testing::store::{Authorization, Store};
use jiff::Timestamp;

macro_rules! require_tools {
    ($uu:expr) => {
        if let Some(why) = missing_tools($uu) {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn history(sb: &Sandbox) -> Vec<serde_json::Value> {
    let out = sb
        .drydock()
        .args(["history", "--json", "--kind", "apt-run", "--limit", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn refused(out: &Output, package_line: &str) {
    let all = text(out);
    assert!(!out.status.success(), "apt should have failed:\n{all}");
    assert!(all.contains("drydock: refusing this dpkg run"), "{all}");
    assert!(
        all.contains(package_line),
        "expected {package_line:?} in:\n{all}"
    );
}

#[test]
fn hook_refuses_protected_changes_and_lets_the_rest_through() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1", "kubeadm=1.34.1-1.1", "hello=1.0-1"]);
    let settings = sb.settings();
    let store = Store::open(&settings.node.state_db).unwrap();
    let plan = aptgate::reconcile_holds(&settings, &store, &sb.dpkg()).unwrap();
    assert_eq!(plan.hold, ["containerd", "kubeadm"]);
    drop(store);
    sb.install_hook(false);
    let wake = {
        std::fs::create_dir_all(&sb.run_dir).unwrap();
        let s = UnixDatagram::bind(aptgate::wake_path(&settings)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };

    // Held packages are changed anyway (as an admin could): the hook stops it.
    let before = sb.status_file();
    let out = sb.apt_get(&["install", "containerd=2.0-1"]);
    refused(&out, "containerd: upgrade 1.0-1 -> 2.0-1");
    assert!(text(&out).contains("DRYDOCK_APT_ALLOW=containerd"));
    assert_eq!(sb.status_file(), before, "dpkg status changed");
    let out = sb.apt_get(&["remove", "kubeadm"]);
    refused(&out, "kubeadm: remove 1.34.1-1.1");
    let out = sb.apt_get(&["install", "hello=2.0-1", "containerd=2.0-1"]);
    refused(&out, "containerd: upgrade 1.0-1 -> 2.0-1");
    assert_eq!(sb.status_file(), before, "dpkg status changed");
    assert!(history(&sb).is_empty(), "refused runs are not apt runs");

    // Unprotected packages go through, are recorded, and wake the daemon.
    let out = sb.apt_get(&["install", "hello=2.0-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.version("hello").as_deref(), Some("2.0-1"));
    let mut buf = [0u8; 16];
    let n = wake.recv(&mut buf).expect("post-invoke wakes the daemon");
    assert_eq!(&buf[..n], b"apt-run");
    let kernel = "linux-image-6.1.0-99-amd64";
    let out = sb.apt_get(&["install", kernel]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(sb.root.join("var/run/reboot-required").is_file());
    assert_eq!(sb.selection("containerd").as_deref(), Some("hold"));

    let runs = history(&sb);
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let first = &runs[0]["detail"];
    assert_eq!(first["origin"], "apt", "{first}");
    assert_eq!(first["plan_recorded"], true, "{first}");
    assert_eq!(
        first["changes"],
        serde_json::json!([{"package": "hello", "arch": "all", "action": "upgrade", "old": "1.0-1", "new": "2.0-1"}])
    );
    assert!(
        first["command"].as_str().unwrap().contains("apt-get"),
        "{first}"
    );
    assert_eq!(runs[1]["detail"]["changes"][0]["package"], kernel);
    assert_eq!(runs[1]["detail"]["changes"][0]["action"], "install");

    let out = sb
        .drydock()
        .args(["history", "--limit", "1"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&format!("apt: install {kernel} 6.1.99-1")),
        "{listing}"
    );
    assert_eq!(listing.lines().count(), 1, "{listing}");

    // The administrator's documented override names the package.
    let out = sb
        .apt_command("apt-get")
        .args([
            "-y",
            "-q",
            "--allow-change-held-packages",
            "install",
            "containerd=2.0-1",
        ])
        .env("DRYDOCK_APT_ALLOW", "containerd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.version("containerd").as_deref(), Some("2.0-1"));
    assert_eq!(
        sb.selection("containerd").as_deref(),
        Some("hold"),
        "re-held"
    );
    let last = history(&sb).pop().unwrap();
    assert_eq!(
        last["detail"]["overridden"][0],
        "containerd upgrade 1.0-1 -> 2.0-1"
    );
}

/// The Pre-Install-Pkgs command exactly as apt parsed it from the sandbox's
/// apt.conf.d (real `apt-config`), and the protocol version apt derives for it.
fn wired_pre_install(sb: &Sandbox) -> (String, String) {
    let dump = |key: &str| {
        let out = sb
            .apt_command("apt-config")
            .args(["dump", "--format", "%v%n", key])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let command = dump("DPkg::Pre-Install-Pkgs")
        .lines()
        .find(|l| l.contains("apt-hook pre-install"))
        .expect("drydock's hook is wired")
        .to_string();
    // apt: the option key is the text before the first space.
    let first_word = command.split(' ').next().unwrap().to_string();
    let version = dump(&format!("DPkg::Tools::Options::{first_word}::Version"));
    (command, version.trim().to_string())
}

/// The hook stood aside quietly: after `apt remove drydock` apt prints
/// nothing about it (no shell "not found", no note on every run).
fn skipped(out: &Output) -> bool {
    let t = text(out);
    out.status.success()
        && !t.contains("not found")
        && !t.lines().any(|l| l.starts_with("drydock: "))
}

#[test]
fn removed_binary_lets_apt_work_and_a_present_one_still_decides() {
    require_tools!(false);
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1", "hello=1.0-1"]);
    // The package's /usr/bin/drydock, at a sandbox path (no space: apt splits there).
    let binary = sb.base.join("usr-bin/drydock");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(apt_sandbox::DRYDOCK, &binary).unwrap();
    sb.install_hook_at(&binary, false);
    let (command, version) = wired_pre_install(&sb);
    assert!(
        command.starts_with(&format!("{} ", binary.display())),
        "{command}"
    );
    assert_eq!(version, "3", "apt must speak protocol 3 to {command}");

    // Installed: a protected change is refused, an unprotected one recorded.
    refused(
        &sb.apt_get(&["install", "containerd=2.0-1"]),
        "containerd: upgrade 1.0-1 -> 2.0-1",
    );
    let out = sb.apt_get(&["install", "hello=2.0-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(history(&sb).len(), 1);

    // A present binary's failure is never excused, whatever its exit status:
    // not executable (sh: 126), or exiting 127 itself (as sh does for "not found").
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sb.apt_get(&["install", "hello=1.0-1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(sb.version("hello").as_deref(), Some("2.0-1"));
    let real = std::fs::read(&binary).unwrap();
    std::fs::write(&binary, "#!/bin/sh\ncat >/dev/null\nexit 127\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = sb.apt_get(&["install", "hello=1.0-1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!skipped(&out), "{}", text(&out));
    assert_eq!(sb.version("hello").as_deref(), Some("2.0-1"));
    std::fs::write(&binary, real).unwrap();

    // `apt remove drydock`: the conffile stays, the binary is gone. apt works,
    // both hook lines stand aside, nothing is recorded (nothing to record with).
    std::fs::remove_file(&binary).unwrap();
    let out = sb.apt_get(&["install", "hello=1.0-1"]);
    assert!(
        out.status.success(),
        "apt must work without drydock:\n{}",
        text(&out)
    );
    assert!(skipped(&out), "{}", text(&out));
    assert_eq!(sb.version("hello").as_deref(), Some("1.0-1"));
    let out = sb.apt_get(&["install", "containerd=2.0-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.version("containerd").as_deref(), Some("2.0-1"));
    assert_eq!(history(&sb).len(), 1);

    // The skipped hook still reads all of its input: a 4 MiB stdin through
    // /bin/sh -c, as apt runs it, is accepted whole.
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&vec![b'x'; 4 << 20]));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("no EPIPE: stdin drained");
    assert!(out.status.success(), "{}", text(&out));
}

/// pid and start time (clock ticks since boot) of this process: the apt
/// process, as far as a post-invoke hook spawned by this test can tell.
fn this_process() -> serde_json::Value {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let start: u64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    serde_json::json!({"pid": std::process::id(), "start_ticks": start})
}

#[test]
fn post_invoke_uses_only_the_plan_of_its_own_apt_run() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.preinstall(&["hello=1.0-1"]);
    std::fs::create_dir_all(&sb.run_dir).unwrap();
    let plan_file = sb.run_dir.join("apt-pending.json");
    let plan = |apt: serde_json::Value, started_at: Timestamp| {
        serde_json::json!({
            "started_at": started_at,
            "apt": apt,
            "actions": [{"package": "hello", "old": null, "direction": "up",
                         "new": {"version": "1.0-1", "arch": "all", "multi_arch": "none"},
                         "op": {"unpack": "/r/hello_1.0-1_all.deb"}}],
        })
        .to_string()
    };
    let post_invoke = || {
        let out = sb
            .drydock()
            .args(["apt-hook", "post-invoke"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(!plan_file.exists(), "the plan is consumed either way");
        history(&sb).pop().unwrap()["detail"].clone()
    };

    // Left by another apt process (its post-invoke never ran): ignored.
    let mut other = this_process();
    other["pid"] = serde_json::json!(1);
    std::fs::write(&plan_file, plan(other, Timestamp::now())).unwrap();
    let d = post_invoke();
    assert_eq!(d["plan_recorded"], false, "{d}");
    assert!(
        d["stale_plan_ignored"]
            .as_str()
            .unwrap()
            .contains("apt process 1 "),
        "{d}"
    );
    assert_eq!(d["changes"], serde_json::json!([]));

    // Same process, but from a day ago: ignored.
    let day_ago = Timestamp::now() - Duration::from_secs(24 * 3600);
    std::fs::write(&plan_file, plan(this_process(), day_ago)).unwrap();
    let d = post_invoke();
    assert_eq!(d["plan_recorded"], false, "{d}");
    assert!(
        d["stale_plan_ignored"].as_str().unwrap().contains("old"),
        "{d}"
    );

    // This run's own plan: used.
    std::fs::write(&plan_file, plan(this_process(), Timestamp::now())).unwrap();
    let d = post_invoke();
    assert_eq!(d["plan_recorded"], true, "{d}");
    assert_eq!(d["stale_plan_ignored"], serde_json::Value::Null);
    assert_eq!(d["changes"][0]["package"], "hello", "{d}");
    assert_eq!(d["changes"][0]["action"], "install", "{d}");
}

#[test]
fn invalid_config_protects_every_package_and_post_invoke_never_fails_apt() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1", "hello=1.0-1"]);
    sb.install_hook(false);
    // Valid, this would protect hello only; the bad key makes it invalid.
    sb.write_config(&["hello"]);
    let valid = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(
        &sb.config,
        format!("{valid}[drain]\ntimeout = \"forever\"\n"),
    )
    .unwrap();

    // The protected set is unknown: every package counts as protected,
    // the default set and the configured one alike...
    let out = sb.apt_get(&["install", "containerd=2.0-1"]);
    refused(&out, "containerd: upgrade 1.0-1 -> 2.0-1");
    assert!(
        text(&out).contains("invalid configuration"),
        "{}",
        text(&out)
    );
    let out = sb.apt_get(&["install", "hello=2.0-1"]);
    refused(&out, "hello: upgrade 1.0-1 -> 2.0-1");
    assert!(
        text(&out).contains("every package counts as protected"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.version("hello").as_deref(), Some("1.0-1"));
    // ...until the administrator names it; post-invoke cannot record the
    // run, apt succeeds, and no plan was written anywhere (the default run
    // dir of an invalid configuration is the host's).
    let out = sb
        .apt_command("apt-get")
        .args([
            "-y",
            "-q",
            "--allow-change-held-packages",
            "install",
            "hello=2.0-1",
        ])
        .env("DRYDOCK_APT_ALLOW", "hello")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!sb.run_dir.join("apt-pending.json").exists());
    assert!(
        text(&out).contains("apt run not recorded"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.version("hello").as_deref(), Some("2.0-1"));

    // A state store that is not SQLite: still no failure for apt.
    std::fs::write(&sb.config, valid).unwrap();
    std::fs::create_dir_all(sb.state_db.parent().unwrap()).unwrap();
    std::fs::write(&sb.state_db, b"this is not an SQLite database at all").unwrap();
    let out = sb.apt_get(&["install", "containerd=2.0-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("apt run not recorded"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.version("containerd").as_deref(), Some("2.0-1"));
    // hello is protected again by the valid config.
    refused(
        &sb.apt_get(&["install", "hello=1.0-1"]),
        "hello: downgrade 2.0-1 -> 1.0-1",
    );
}

#[test]
fn unattended_upgrades_upgrades_unprotected_and_leaves_protected_alone() {
    require_tools!(true);
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1", "kubeadm=1.34.1-1.1", "hello=1.0-1"]);
    let settings = sb.settings();
    let store = Store::open(&settings.node.state_db).unwrap();
    aptgate::reconcile_holds(&settings, &store, &sb.dpkg()).unwrap();
    drop(store);
    sb.install_hook(false);

    let out = sb.unattended_upgrade("");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.version("hello").as_deref(), Some("2.0-1"));
    assert_eq!(sb.version("containerd").as_deref(), Some("1.0-1"));
    assert_eq!(sb.version("kubeadm").as_deref(), Some("1.34.1-1.1"));
    let runs = history(&sb);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["detail"]["origin"], "unattended-upgrades");
    assert_eq!(runs[0]["detail"]["plan_recorded"], true, "{:#}", runs[0]);
    assert_eq!(runs[0]["detail"]["changes"][0]["package"], "hello");

    // Without the blacklist and the holds, the hook alone still stops u-u.
    sb.set_selection("containerd", "install");
    let out = sb.unattended_upgrade("#clear Unattended-Upgrade::Package-Blacklist;\n");
    let all = text(&out);
    assert!(
        all.contains("Packages that will be upgraded: containerd"),
        "{all}"
    );
    assert_eq!(sb.version("containerd").as_deref(), Some("1.0-1"), "{all}");
    let log = std::fs::read_to_string(
        sb.root
            .join("var/log/unattended-upgrades/unattended-upgrades-dpkg.log"),
    )
    .unwrap_or_default();
    assert!(
        format!("{all}{log}").contains("containerd: upgrade 1.0-1 -> 2.0-1"),
        "{all}\n{log}"
    );
    assert_eq!(history(&sb).len(), 1, "a refused run is not recorded");
}

#[test]
fn daemon_authorization_lets_exactly_that_version_through() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.preinstall(&["kubeadm=1.34.1-1.1", "containerd=1.0-1"]);
    sb.install_hook(false);
    let settings = sb.settings();
    let store = Store::open(&settings.node.state_db).unwrap();
    let wanted = ("kubeadm".to_string(), "1.34.2-1.1".to_string());

    // Before the step: refused.
    refused(
        &sb.apt_get(&["install", "kubeadm=1.34.2-1.1"]),
        "kubeadm: upgrade 1.34.1-1.1 -> 1.34.2-1.1",
    );

    let step = UpgradeStep::begin(&settings, &store, std::slice::from_ref(&wanted)).unwrap();
    // (A first install is provisioning, allowed anyway: see
    // provisioning_is_allowed_and_recorded_and_a_refusal_leaves_a_trace.)
    refused(
        &sb.apt_get(&["install", "containerd=2.0-1"]),
        "containerd: upgrade 1.0-1 -> 2.0-1",
    );
    refused(
        &sb.apt_get(&["install", "kubeadm=1.34.3-1.1"]),
        "kubeadm: upgrade 1.34.1-1.1 -> 1.34.3-1.1",
    );
    refused(
        &sb.apt_get(&["install", "kubeadm=1.34.2-1.1", "containerd=2.0-1"]),
        "containerd: upgrade 1.0-1 -> 2.0-1",
    );
    assert_eq!(sb.version("kubeadm").as_deref(), Some("1.34.1-1.1"));
    let out = sb.apt_get(&["install", "kubeadm=1.34.2-1.1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("authorized by drydock's upgrade step"));
    assert_eq!(sb.version("kubeadm").as_deref(), Some("1.34.2-1.1"));
    assert_eq!(
        sb.selection("kubeadm").as_deref(),
        Some("hold"),
        "post-invoke holds it"
    );
    assert_eq!(
        history(&sb)[0]["detail"]["authorized"][0],
        "kubeadm upgrade 1.34.1-1.1 -> 1.34.2-1.1"
    );
    step.finish(&store).unwrap();

    // A row without the running step is not honoured.
    let valid = Timestamp::now() + Duration::from_secs(600);
    store
        .authorize(&Authorization {
            package: "kubeadm".into(),
            version: "1.34.3-1.1".into(),
            expires_at: valid,
        })
        .unwrap();
    refused(
        &sb.apt_get(&["install", "kubeadm=1.34.3-1.1"]),
        "kubeadm: upgrade 1.34.2-1.1 -> 1.34.3-1.1",
    );
    // An expired one is not honoured while the step runs.
    let step = UpgradeStep::begin(&settings, &store, &[]).unwrap();
    store
        .authorize(&Authorization {
            package: "kubeadm".into(),
            version: "1.34.3-1.1".into(),
            expires_at: Timestamp::now() - Duration::from_secs(1),
        })
        .unwrap();
    refused(
        &sb.apt_get(&["install", "kubeadm=1.34.3-1.1"]),
        "kubeadm: upgrade 1.34.2-1.1 -> 1.34.3-1.1",
    );
    step.finish(&store).unwrap();
    assert_eq!(sb.version("kubeadm").as_deref(), Some("1.34.2-1.1"));
}

#[test]
fn holds_follow_patterns_and_release_only_drydocks_own() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.preinstall(&["containerd=1.0-1", "kubeadm=1.34.1-1.1", "hello=1.0-1"]);
    sb.set_selection("kubeadm", "hold"); // the administrator's own hold
    sb.write_config(&["containerd", "kubeadm", "hell*"]);
    let settings = sb.settings();
    let store = Store::open(&settings.node.state_db).unwrap();
    let plan = aptgate::reconcile_holds(&settings, &store, &sb.dpkg()).unwrap();
    assert_eq!(plan.hold, ["containerd", "hello"]);
    assert_eq!(plan.held_by_admin, ["kubeadm"]);
    for p in ["containerd", "kubeadm", "hello"] {
        assert_eq!(sb.selection(p).as_deref(), Some("hold"), "{p}");
    }
    // Idempotent.
    let again = aptgate::reconcile_holds(&settings, &store, &sb.dpkg()).unwrap();
    assert!(again.hold.is_empty() && again.release.is_empty());

    // Dropping patterns releases drydock's holds only.
    sb.write_config(&["containerd"]);
    let settings = sb.settings();
    let plan = aptgate::reconcile_holds(&settings, &store, &sb.dpkg()).unwrap();
    assert_eq!(plan.release, ["hello"]);
    assert_eq!(sb.selection("hello").as_deref(), Some("install"));
    assert_eq!(
        sb.selection("kubeadm").as_deref(),
        Some("hold"),
        "admin's hold stays"
    );
    assert_eq!(sb.selection("containerd").as_deref(), Some("hold"));
    let made: Vec<String> = store.get("holds.made").unwrap().unwrap();
    assert_eq!(made, ["containerd"]);
}

#[test]
fn check_config_warns_when_unattended_upgrades_reboots() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.install_hook(false);
    let check = || {
        sb.drydock()
            .arg("check-config")
            .env("APT_CONFIG", &sb.apt_conf)
            .output()
            .unwrap()
    };
    let out = check();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    std::fs::write(
        sb.root.join("etc/apt/apt.conf.d/99local"),
        "Unattended-Upgrade::Automatic-Reboot \"true\";\n",
    )
    .unwrap();
    let out = check();
    assert!(text(&out).contains("unattended-upgrades is configured to reboot by itself"));
}

/// Runs the hook binary with `input` on stdin; returns (success, stderr) and
/// checks that all of the input was accepted (no EPIPE for apt).
fn hook(config: &std::path::Path, input: Vec<u8>) -> (bool, String) {
    let mut child = std::process::Command::new(apt_sandbox::DRYDOCK)
        .arg("--config")
        .arg(config)
        .args(["apt-hook", "pre-install"])
        .env_remove("DRYDOCK_APT_ALLOW")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("the hook reads all of stdin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_stdin_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drydock.toml");
    // `kubeconfig` names a file that exists: the node has joined, so
    // protected changes are decided, not let through as provisioning.
    std::fs::write(
        &config,
        format!(
            "[node]\nkubeconfig = \"{0}/drydock.toml\"\nstate-db = \"{0}/state.db\"\nrun-dir = \"{0}/run\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let header = b"VERSION 3\nAPT::Architecture=amd64\nDir=/\n".to_vec();
    let with = |tail: &[u8]| [header.as_slice(), tail].concat();
    let huge = |name: &str| {
        let mut l = format!("{name} 1 all none < 2 all none /").into_bytes();
        l.extend(std::iter::repeat_n(b'x', 1 << 20));
        l.extend_from_slice(b".deb\n");
        with(&[b"\n".as_slice(), &l].concat())
    };
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        ("empty", vec![], false, "no input on stdin"),
        ("header only", b"VERSION 3\n".to_vec(), false, "ends inside the configuration"),
        ("truncated config", with(b"Foo::Bar=ba"), false, "ends inside the configuration"),
        ("binary", vec![0x7f, b'E', b'L', b'F', 0, 1, 2, 0xff, b'\n'], false, "not a \"VERSION 3\" header"),
        ("missing header", b"APT::Architecture=amd64\n\nhello - - none < 1 all none /h.deb\n".to_vec(), false, "not a \"VERSION 3\" header"),
        ("wrong version", b"VERSION 2\n\nhello - < 1 /h.deb\n".to_vec(), false, "protocol version 2"),
        ("too large", vec![b'\n'; (16 << 20) + 1], false, "larger than 16 MiB"),
        ("huge unprotected line", huge("hello"), false, "(unknown package): unreadable hook input line"),
        ("huge protected line", huge("containerd"), false, "containerd: unreadable hook input line"),
        ("garbage unprotected", with(b"\nhello ?? what\n"), false, "DRYDOCK_APT_ALLOW='*'"),
        ("garbage naming protected", with(b"\n/pool/kubelet_1.34_amd64.deb\n"), false, "kubelet: unreadable"),
        ("actions inside config", with(b"kubeadm 1 all none = 1 all none /k.deb\n\n"), false, "kubeadm: unreadable"),
        ("extra config, no actions", with(b"Some::New::Key=x y z\nList::=1\n\n"), true, ""),
        ("unprotected actions", with(b"\nhello 1 all none < 2 all none /h.deb\nhello 1 all none < 2 all none **CONFIGURE**\n"), true, ""),
        ("protected action", with(b"\nrunc 1.0 amd64 same < 1.1 amd64 same /r.deb\n"), false, "runc: upgrade 1.0 -> 1.1"),
    ];
    for (name, input, ok, message) in cases {
        let (success, stderr) = hook(&config, input);
        assert_eq!(success, ok, "{name}: {stderr}");
        assert!(
            stderr.contains(message),
            "{name}: expected {message:?} in {stderr:?}"
        );
        if !ok {
            assert!(
                stderr.contains("refusing") || stderr.contains("Nothing was installed"),
                "{name}: {stderr}"
            );
        }
    }
}

/// Provisioning order (issue 11): a protected package's first install, and
/// anything before the node joined, go through and are recorded; an
/// upgrade after join is refused and the refusal is in the history.
#[test]
fn provisioning_is_allowed_and_recorded_and_a_refusal_leaves_a_trace() {
    require_tools!(false);
    let sb = Sandbox::new();
    sb.install_hook(false);
    let refusals = || -> Vec<serde_json::Value> {
        let out = sb
            .drydock()
            .args(["history", "--json", "--kind", "apt-refused"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // Not joined: every change is provisioning.
    sb.set_joined(false);
    let out = sb.apt_get(&["install", "containerd=1.0-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("containerd: install 1.0-1 (allowed: first install"));
    let out = sb.apt_get(&[
        "install",
        "--allow-change-held-packages",
        "containerd=2.0-1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("(allowed: the node has not joined a cluster yet"),
        "{}",
        text(&out)
    );
    let runs = history(&sb);
    assert_eq!(
        runs.last().unwrap()["detail"]["provisioning"],
        serde_json::json!(["containerd upgrade 1.0-1 -> 2.0-1"])
    );

    // Joined: a first install still goes through; changing it does not.
    sb.set_joined(true);
    let out = sb.apt_get(&["install", "kubeadm=1.34.1-1.1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.version("kubeadm").as_deref(), Some("1.34.1-1.1"));
    assert!(refusals().is_empty());
    let out = sb.apt_get(&[
        "install",
        "--allow-change-held-packages",
        "kubeadm=1.34.2-1.1",
    ]);
    refused(&out, "kubeadm: upgrade 1.34.1-1.1 -> 1.34.2-1.1");
    assert_eq!(sb.version("kubeadm").as_deref(), Some("1.34.1-1.1"));
    let recorded = refusals();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        recorded[0]["detail"]["summary"],
        serde_json::json!(["kubeadm: upgrade 1.34.1-1.1 -> 1.34.2-1.1"])
    );
}
