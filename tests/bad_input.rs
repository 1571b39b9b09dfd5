//! Bad input, tried as a hostile or careless user would: configuration
//! values and files, drop-ins, special files where drydock reads, damaged
//! state databases, APT hook input, operator reasons and command lines.
//!
//! Every case runs the real binary in a directory of its own (nothing on
//! the host is named) and asserts: the exit status; the message (file, line,
//! column and key where they apply); that nothing changed (type, mode and
//! content hash of every file under the case's directory, and no new file);
//! and that it finished within a deadline. Failures are collected and
//! reported together, each with its case name.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drydock");
/// A hang is a failure: the slowest real case takes well under a second.
const DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- harness

#[derive(Clone)]
enum Input {
    Null,
    Bytes(Vec<u8>),
    File(PathBuf),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Exit {
    Code(i32),
    /// Any non-zero status.
    Failure,
}

type Setup = Box<dyn Fn(&Path) + Send + Sync>;
/// Checks (stdout, stderr) beyond the expected fragments.
type Check = Box<dyn Fn(&str, &str) -> Result<(), String> + Send + Sync>;
/// (name, arguments, stdin, exit, fragments) of a command reading the config.
type ConfigCommand = (
    &'static str,
    Vec<&'static str>,
    Input,
    Exit,
    Vec<&'static str>,
);

struct Case {
    name: String,
    setup: Setup,
    /// `{dir}` is replaced by the case's directory.
    args: Vec<String>,
    stdin: Input,
    exit: Exit,
    /// Each must appear in stderr or stdout (`{dir}` replaced).
    expect: Vec<String>,
    /// None of these may appear (secrets, raw escapes).
    forbid: Vec<String>,
    /// Checked against the combined output; for JSON shape and the like.
    check: Option<Check>,
    twin: Option<Twin>,
}

/// Another command run after the case in the same directory (the daemon
/// beside check-config): it must exit the same and say the same thing
/// after its own context.
struct Twin {
    args: Vec<String>,
    /// The context before the message: (the case's, the twin's).
    contexts: (&'static str, &'static str),
}

impl Case {
    fn new(name: impl Into<String>, args: &[&str], exit: Exit) -> Case {
        Case {
            name: name.into(),
            setup: Box::new(|_| {}),
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: Input::Null,
            exit,
            expect: Vec::new(),
            forbid: Vec::new(),
            check: None,
            twin: None,
        }
    }
    fn setup(mut self, f: impl Fn(&Path) + Send + Sync + 'static) -> Case {
        self.setup = Box::new(f);
        self
    }
    /// A valid configuration, then `more`.
    fn setup_valid(self, more: impl Fn(&Path) + Send + Sync + 'static) -> Case {
        self.setup(move |dir| {
            valid_config(dir);
            more(dir);
        })
    }
    fn expect(mut self, s: impl Into<String>) -> Case {
        self.expect.push(s.into());
        self
    }
    fn expect_all<S: Into<String>>(mut self, all: impl IntoIterator<Item = S>) -> Case {
        self.expect.extend(all.into_iter().map(Into::into));
        self
    }
    fn twin(mut self, args: &[&str], contexts: (&'static str, &'static str)) -> Case {
        let args = args.iter().map(|s| s.to_string()).collect();
        self.twin = Some(Twin { args, contexts });
        self
    }
    fn forbid(mut self, s: impl Into<String>) -> Case {
        self.forbid.push(s.into());
        self
    }
    fn stdin(mut self, input: Input) -> Case {
        self.stdin = input;
        self
    }
    fn check(
        mut self,
        f: impl Fn(&str, &str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        self.check = Some(Box::new(f));
        self
    }
}

/// Type, mode and content (hash) of everything under `dir`, without
/// following symlinks or opening anything but regular files.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let t = meta.file_type();
            let what = if t.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if t.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if t.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut h);
                format!("file {} bytes hash {:x}", meta.len(), h.finish())
            } else {
                "special".to_string()
            };
            out.insert(path, format!("{what} mode {:o}", meta.mode()));
        }
    }
    out
}

fn diff(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut changes = Vec::new();
    for (p, a) in before {
        match after.get(p) {
            None => changes.push(format!("removed {}", p.display())),
            Some(b) if a != b => changes.push(format!("changed {}: {a} -> {b}", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        changes.push(format!("new file {}", p.display()));
    }
    changes
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn spawn_reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs the binary; `Err` when the deadline passed (the process is killed).
fn run_binary(dir: &Path, args: &[String], stdin: &Input) -> Result<Outcome, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("LC_ALL", "C")
        .env_remove("DRYDOCK_CONFIG")
        .env_remove("DRYDOCK_APT_ALLOW")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Input::Null => cmd.stdin(Stdio::null()),
        Input::Bytes(_) => cmd.stdin(Stdio::piped()),
        Input::File(p) => cmd.stdin(std::fs::File::open(p).unwrap()),
    };
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawning: {e}"))?;
    let writer = match (stdin, child.stdin.take()) {
        (Input::Bytes(b), Some(mut pipe)) => {
            let b = b.clone();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&b);
            }))
        }
        _ => None,
    };
    let out = spawn_reader(child.stdout.take().unwrap());
    let err = spawn_reader(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("deadline of {DEADLINE:?} exceeded"));
        }
        std::thread::sleep(Duration::from_millis(3));
    };
    let elapsed = start.elapsed();
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Outcome {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
        elapsed,
    })
}

fn run_case(case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fill = |s: &str| s.replace("{dir}", &dir.display().to_string());
    (case.setup)(dir);
    let args: Vec<String> = case.args.iter().map(|a| fill(a)).collect();
    let before = snapshot(dir);
    let out = run_binary(dir, &args, &case.stdin)?;
    let mut problems = Vec::new();
    let both = format!("{}{}", out.stderr, out.stdout);
    match (case.exit, out.code) {
        (Exit::Code(want), Some(got)) if want == got => {}
        (Exit::Failure, Some(got)) if got != 0 => {}
        (want, got) => problems.push(format!("exit {got:?}, expected {want:?}")),
    }
    for e in &case.expect {
        if !both.contains(&fill(e)) {
            problems.push(format!("expected {:?} in the output", fill(e)));
        }
    }
    for f in &case.forbid {
        if both.contains(&fill(f)) {
            problems.push(format!("{:?} must not appear in the output", fill(f)));
        }
    }
    // A message is for reading: bounded, whatever the input.
    if out.stderr.len() > 8192 {
        problems.push(format!("stderr is {} bytes long", out.stderr.len()));
    }
    if let Some(check) = &case.check
        && let Err(e) = check(&out.stdout, &out.stderr)
    {
        problems.push(e);
    }
    let mut twin_stderr = String::new();
    if let Some(twin) = &case.twin {
        let twin_args: Vec<String> = twin.args.iter().map(|a| fill(a)).collect();
        let t = run_binary(dir, &twin_args, &case.stdin)
            .map_err(|e| format!("{}: {e}", twin_args.join(" ")))?;
        if t.code != out.code {
            problems.push(format!(
                "{} exits {:?}, not {:?} like the case",
                twin_args.join(" "),
                t.code,
                out.code
            ));
        }
        let mine = message_after(&out.stderr, twin.contexts.0);
        let theirs = message_after(&t.stderr, twin.contexts.1);
        if mine.is_none() || mine != theirs {
            problems.push(format!(
                "{} says otherwise:\n      case: {mine:?}\n      twin: {theirs:?}",
                twin_args.join(" ")
            ));
        }
        twin_stderr = format!("\n    --- twin stderr:\n{}", t.stderr.trim_end());
    }
    problems.extend(diff(&before, &snapshot(dir)));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n    (took {:?})\n    --- stderr:\n{}\n    --- stdout:\n{}{twin_stderr}",
            problems.join("\n    "),
            out.elapsed,
            out.stderr.trim_end(),
            out.stdout.trim_end()
        ))
    }
}

/// The rest of the first line of `out` that has `context` in it.
fn message_after<'a>(out: &'a str, context: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.split_once(context).map(|(_, rest)| rest))
}

fn run_all(class: &str, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let total = cases.len();
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
    }
    // Each case is a process of its own in a directory of its own: a few
    // at a time.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if let Err(e) = run_case(case) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("[{}] {e}", case.name));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!("{class}: {total} cases, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{class}: {} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------- fixtures

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// Every path key of a valid configuration, each inside `dir`.
fn base_keys(dir: &Path) -> Vec<(&'static str, &'static str, String)> {
    let d = dir.display();
    vec![
        ("node", "kubeconfig", format!("\"{d}/kubeconfig\"")),
        // The kubelet's kubeconfig stands in for the drydock identity too.
        ("node", "identity-kubeconfig", format!("\"{d}/kubeconfig\"")),
        ("node", "identity-dir", format!("\"{d}/identity\"")),
        ("node", "state-db", format!("\"{d}/state/state.db\"")),
        ("node", "run-dir", format!("\"{d}/run\"")),
        (
            "reboot",
            "sentinel-file",
            format!("\"{d}/reboot-required\""),
        ),
        ("reboot", "boot-dir", format!("\"{d}/boot\"")),
        ("verify", "checks-dir", format!("\"{d}/checks.d\"")),
        ("packages", "dpkg-root", format!("\"{d}/root\"")),
        ("report", "textfile-dir", "\"\"".to_string()),
    ]
}

/// TOML text of the base keys, leaving out `skip` (`section.key`).
fn base_toml(dir: &Path, skip: &str) -> String {
    let mut text = String::new();
    let mut section = "";
    for (s, k, v) in base_keys(dir) {
        if format!("{s}.{k}") == skip {
            continue;
        }
        if s != section {
            text.push_str(&format!("[{s}]\n"));
            section = s;
        }
        text.push_str(&format!("{k} = {v}\n"));
    }
    text
}

fn config(dir: &Path) -> PathBuf {
    dir.join("drydock.toml")
}

fn valid_config(dir: &Path) {
    write(&config(dir), base_toml(dir, ""));
}

/// Where `marker` first occurs in `text`: (line, column), 1-based.
fn position(text: &[u8], marker: &[u8]) -> (usize, usize) {
    let at = text
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap_or_else(|| {
            panic!(
                "marker {:?} not in fixture",
                String::from_utf8_lossy(marker)
            )
        });
    let before = &text[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    (line, col)
}

const CONFIG_ARG: &str = "--config={dir}/drydock.toml";

/// A pre-install input that changes only an unprotected package.
fn benign_hook_input() -> Vec<u8> {
    b"VERSION 3\nAPT::Architecture=amd64\n\nhello 1.0 all none < 2.0 all none /var/cache/apt/archives/hello_2.0_all.deb\n".to_vec()
}

// ------------------------------------------------------- configuration values

/// (section, key, TOML value, message fragment). The value is written as
/// `key = value` on line 2 of a `[section]` file.
fn bad_values() -> Vec<(&'static str, &'static str, String, &'static str)> {
    let mut v: Vec<(&str, &str, String, &str)> = Vec::new();
    let durations = [
        ("lease", "duration", true),
        ("reboot", "sentinel-command-timeout", true),
        ("reboot", "check-interval", true),
        ("gates", "soak", false),
        ("alerts", "timeout", true),
        ("drain", "timeout", true),
        ("drain", "delete-pdb-blocked-after", true),
        ("drain", "pre-drain-wait", false),
        ("drain", "retry-interval", true),
        ("verify", "timeout", true),
        ("verify", "check-timeout", true),
        ("packages", "authorization-ttl", true),
    ];
    for (s, k, zero_is_bad) in durations {
        v.push((s, k, "\"forever\"".into(), "invalid duration"));
        v.push((s, k, "\"-5s\"".into(), "invalid duration"));
        v.push((s, k, "\"10\"".into(), "invalid duration"));
        v.push((s, k, "\"1s 1\"".into(), "invalid duration"));
        v.push((
            s,
            k,
            "\"99999999999999999999999s\"".into(),
            "invalid duration",
        ));
        v.push((s, k, "\"400d\"".into(), "is out of range"));
        v.push((s, k, "\"5000000000y\"".into(), "duration"));
        v.push((s, k, "\"\\u001b[2J1s\"".into(), "invalid duration"));
        v.push((s, k, "5".into(), "invalid type"));
        v.push((s, k, "[\"1s\"]".into(), "invalid type"));
        if zero_is_bad {
            v.push((s, k, "\"0s\"".into(), "is out of range"));
        }
        if k != "delete-pdb-blocked-after" {
            v.push((s, k, "\"\"".into(), "invalid duration"));
        }
    }
    let paths = [
        ("node", "kubeconfig"),
        ("node", "state-db"),
        ("node", "run-dir"),
        ("reboot", "sentinel-file"),
        ("reboot", "boot-dir"),
        ("verify", "checks-dir"),
        ("packages", "dpkg-root"),
        ("report", "textfile-dir"),
    ];
    for (s, k) in paths {
        if k != "textfile-dir" {
            v.push((s, k, "\"\"".into(), "it is empty"));
        }
        v.push((s, k, "\"relative/x\"".into(), "it is relative"));
        v.push((s, k, "\"state.db\"".into(), "it is relative"));
        v.push((s, k, "\"./x\"".into(), "it is relative"));
        v.push((s, k, "\"/a\\u0000b\"".into(), "control characters"));
        v.push((s, k, "\"/a\\nb\"".into(), "control characters"));
        v.push((s, k, "true".into(), "invalid type"));
    }
    v.push((
        "node",
        "state-db",
        "\"/var/lib/drydock/\"".into(),
        "names a directory",
    ));
    v.push((
        "reboot",
        "sentinel-file",
        "\"/\"".into(),
        "names a directory",
    ));
    for (s, k) in [
        ("alerts", "prometheus-url"),
        ("alerts", "alertmanager-url"),
        ("report", "slack-webhook-url"),
        ("report", "webhook-url"),
    ] {
        for bad in [
            "ftp://x",
            "http://",
            "not a url",
            "http://exa mple.com",
            "https://[::1",
            "javascript:alert(1)",
            "http://x\\u0007",
            "https:///no-host",
        ] {
            v.push((s, k, format!("\"{bad}\""), "invalid URL"));
        }
    }
    for (s, k) in [("gates", "node-selector"), ("drain", "pod-selector")] {
        for bad in [
            "a b",
            "=b",
            "k in ()",
            "Upper.Case/x=y",
            "a=b,",
            "k in (a",
            "a=-b",
            "k notin ((a))",
            "k in (a,,b)",
            "!",
            "a==b==c",
        ] {
            v.push((s, k, format!("\"{bad}\""), "invalid label selector"));
        }
        let long_value = format!("\"k={}\"", "v".repeat(64));
        v.push((s, k, long_value, "invalid label selector"));
        let long_prefix = format!("\"{}/k=v\"", "p".repeat(254));
        v.push((s, k, long_prefix, "invalid label selector"));
    }
    for c in ["0", "101", "-1", "9223372036854775807"] {
        v.push(("lease", "concurrency", c.into(), "out of range"));
    }
    v.push(("lease", "concurrency", "\"1\"".into(), "invalid type"));
    v.push(("lease", "concurrency", "1.5".into(), "invalid type"));
    for k in ["namespace", "group"] {
        for bad in ["UPPER", "a_b", "-a", "", "a.b"] {
            v.push(("lease", k, format!("\"{bad}\""), "invalid name"));
        }
        v.push((
            "lease",
            k,
            format!("\"{}\"", "x".repeat(64)),
            "invalid name",
        ));
    }
    for bad in ["-bad", "a..b", "Node1", "a b"] {
        v.push(("node", "name", format!("\"{bad}\""), "invalid name"));
    }
    for bad in [
        "0.0.0.0:0",
        "localhost:80",
        "1.2.3.4",
        "[::1]:99999",
        ":9742",
    ] {
        v.push((
            "report",
            "metrics-listen",
            format!("\"{bad}\""),
            "invalid listen address",
        ));
    }
    for (k, bad) in [
        ("ignore", "("),
        ("ignore", "[z-a]"),
        ("match-only", "(?P<"),
        ("match-only", "a{99999}{99999}{99999}"),
    ] {
        v.push((
            "alerts",
            k,
            format!("\"{bad}\""),
            "invalid regular expression",
        ));
    }
    v.push(("reboot", "check-kernel", "\"yes\"".into(), "invalid type"));
    for k in ["delete-emptydir-data", "evict-unmanaged"] {
        v.push(("drain", k, "1".into(), "invalid type"));
    }
    v.push((
        "report",
        "kubernetes-events",
        "\"false\"".into(),
        "invalid type",
    ));
    v.push(("node", "nmae", "\"x\"".into(), "unknown field"));
    v.push(("drain", "timeuot", "\"1s\"".into(), "unknown field"));
    v
}

/// A list whose element `index` is bad: (key, TOML, index, fragment).
fn bad_lists() -> Vec<(&'static str, &'static str, String, usize, &'static str)> {
    vec![
        (
            "packages",
            "protect",
            r#"["kubelet", "containerd", "BAD"]"#.into(),
            2,
            "invalid package pattern",
        ),
        (
            "packages",
            "protect",
            r#"["kubelet", ""]"#.into(),
            1,
            "invalid package pattern",
        ),
        (
            "packages",
            "protect",
            r#"["a b"]"#.into(),
            0,
            "invalid package pattern",
        ),
        (
            "packages",
            "protect",
            r#"["kubelet", "[unclosed"]"#.into(),
            1,
            "invalid package pattern",
        ),
        (
            "packages",
            "protect",
            format!("[\"kubelet\", \"{}\"]", "x".repeat(300)),
            1,
            "invalid package pattern",
        ),
        (
            "gates",
            "required-daemonsets",
            r#"["kube-system/calico-node", "nope"]"#.into(),
            1,
            "invalid DaemonSet reference",
        ),
        (
            "gates",
            "required-daemonsets",
            r#"["a/b/c"]"#.into(),
            0,
            "invalid DaemonSet reference",
        ),
        (
            "gates",
            "required-daemonsets",
            r#"["x/y", "Kube-System/x"]"#.into(),
            1,
            "invalid DaemonSet reference",
        ),
        (
            "gates",
            "blocking-pod-selectors",
            r#"["app=x", "a b"]"#.into(),
            1,
            "invalid label selector",
        ),
        (
            "gates",
            "blocking-pod-selectors",
            r#"["app=x", ""]"#.into(),
            1,
            "must not be empty",
        ),
        (
            "gates",
            "blocking-pod-selectors",
            r#"["app=x", "y", "k in ()"]"#.into(),
            2,
            "invalid label selector",
        ),
        (
            "reboot",
            "sentinel-command",
            r#"["relative", "x"]"#.into(),
            0,
            "first element is an absolute path",
        ),
        (
            "reboot",
            "sentinel-command",
            r#"["/bin/true", "a\u0000"]"#.into(),
            1,
            "control character",
        ),
        (
            "reboot",
            "sentinel-command",
            r#"["/bin/true", "ok", "\n"]"#.into(),
            2,
            "control character",
        ),
    ]
}

/// A window field that is bad: (window TOML, key suffix, marker, fragment).
fn bad_windows() -> Vec<(String, &'static str, &'static str, &'static str)> {
    let w = |days: &str, start: &str, length: &str, tz: &str| {
        format!(
            "windows = [{{ days = {days}, start = {start}, length = {length}, time-zone = {tz} }}]"
        )
    };
    let mut v = Vec::new();
    for start in [
        "\"+1:+5\"",
        "\"24:00\"",
        "\"2:30\"",
        "\"12:60\"",
        "\"-1:00\"",
        "\"１２:００\"",
        "\"12:00:00\"",
        "\"\"",
        "\" 1:05\"",
    ] {
        v.push((
            w("[\"tue\"]", start, "\"1h\"", "\"UTC\""),
            "start",
            start,
            "invalid time of day",
        ));
    }
    v.push((
        w("[\"funday\"]", "\"02:00\"", "\"1h\"", "\"UTC\""),
        "days[0]",
        "\"funday\"",
        "invalid day",
    ));
    v.push((
        w("[\"mon\", \"tues\"]", "\"02:00\"", "\"1h\"", "\"UTC\""),
        "days[1]",
        "\"tues\"",
        "invalid day",
    ));
    v.push((
        w("[]", "\"02:00\"", "\"1h\"", "\"UTC\""),
        "days",
        "[]",
        "at least one day",
    ));
    for length in ["\"0s\"", "\"8d\"", "\"forever\""] {
        v.push((
            w("[\"tue\"]", "\"02:00\"", length, "\"UTC\""),
            "length",
            length,
            "window length",
        ));
    }
    v.pop();
    v.push((
        w("[\"tue\"]", "\"02:00\"", "\"forever\"", "\"UTC\""),
        "length",
        "\"forever\"",
        "invalid duration",
    ));
    for tz in [
        "\"Mars/Olympus\"",
        "\"../../etc/passwd\"",
        "\"\"",
        "\"/etc/localtime\"",
        "\"EST5EDT,M3.2.0,M11.1.0\"",
        "\"UTC\\n\"",
    ] {
        v.push((
            w("[\"tue\"]", "\"02:00\"", "\"1h\"", tz),
            "time-zone",
            tz,
            "unknown time zone",
        ));
    }
    v
}

struct ConfigCase {
    name: String,
    /// Files to write: (relative path, bytes).
    files: Vec<(String, Vec<u8>)>,
    /// The file the message must name, and what it says.
    expect: Vec<String>,
    forbid: Vec<String>,
}

/// Every value case, in the main file and in a drop-in.
fn config_cases(dir_placeholder: &Path) -> Vec<ConfigCase> {
    let mut out = Vec::new();
    let d = dir_placeholder;
    let mut add = |name: String,
                   section: &str,
                   key_path: &str,
                   body: String,
                   marker: &str,
                   fragment: &str,
                   skip: &str| {
        for in_drop_in in [false, true] {
            let bad = format!("[{section}]\n{body}\n");
            let (pos_line, pos_col) = position(bad.as_bytes(), marker.as_bytes());
            let (bad_file, files) = if in_drop_in {
                (
                    "drydock.toml.d/50-bad.toml".to_string(),
                    vec![
                        ("drydock.toml".to_string(), base_toml(d, skip).into_bytes()),
                        (
                            "drydock.toml.d/50-bad.toml".to_string(),
                            bad.clone().into_bytes(),
                        ),
                    ],
                )
            } else {
                (
                    "drydock.toml".to_string(),
                    vec![
                        ("drydock.toml".to_string(), bad.clone().into_bytes()),
                        (
                            "drydock.toml.d/00-base.toml".to_string(),
                            base_toml(d, skip).into_bytes(),
                        ),
                    ],
                )
            };
            out.push(ConfigCase {
                name: format!("{name}{}", if in_drop_in { " (drop-in)" } else { "" }),
                files,
                expect: vec![
                    format!("{{dir}}/{bad_file}:{pos_line}:{pos_col}: key `{key_path}`"),
                    fragment.to_string(),
                ],
                forbid: vec![],
            });
        }
    };
    for (s, k, value, fragment) in bad_values() {
        let key_path = format!("{s}.{k}");
        // An unknown key is pointed at by name, a bad value by its value.
        let marker = if fragment == "unknown field" {
            k.to_string()
        } else {
            value.clone()
        };
        add(
            format!("{key_path} = {value}"),
            s,
            &key_path,
            format!("{k} = {value}"),
            &marker,
            fragment,
            &key_path,
        );
    }
    for (s, k, value, index, fragment) in bad_lists() {
        let key_path = format!("{s}.{k}");
        // The marker is the bad element itself.
        let arr: toml::Value =
            toml::from_str::<toml::Table>(&format!("x = {value}")).unwrap()["x"].clone();
        let elem = arr.as_array().unwrap()[index].clone();
        let marker = toml::Value::to_string(&elem);
        let marker = if value.contains(&marker) {
            marker
        } else {
            // toml re-quotes some strings; fall back to the first quote of the element.
            let mut starts = value.match_indices('"').map(|(i, _)| i);
            let start = starts.nth(index * 2).unwrap();
            value[start..]
                .split_once(',')
                .map_or(value[start..].trim_end_matches(']'), |(a, _)| a)
                .to_string()
        };
        add(
            format!("{key_path}[{index}] in {value}"),
            s,
            &format!("{key_path}[{index}]"),
            format!("{k} = {value}"),
            &marker,
            fragment,
            "",
        );
    }
    for (body, suffix, marker, fragment) in bad_windows() {
        let key_path = format!("maintenance.windows[0].{suffix}");
        add(
            format!("{key_path}: {body}"),
            "maintenance",
            &key_path,
            body.clone(),
            marker,
            fragment,
            "",
        );
    }
    out
}

/// Other things wrong with configuration text.
fn config_text_cases() -> Vec<ConfigCase> {
    let one = |name: &str, text: Vec<u8>, expect: &[&str]| ConfigCase {
        name: name.to_string(),
        files: vec![("drydock.toml".to_string(), text)],
        expect: expect.iter().map(|s| s.to_string()).collect(),
        forbid: vec![],
    };
    let huge_value = format!("[node]\nname = \"{}\"\n", "a".repeat(500_000));
    let secret_url = "[report]\nslack-webhook-url = \"https://hooks.slack.com/services/T0/B0/SECRETTOKEN with space\"\n";
    let mut cases = vec![
        one(
            "non-UTF-8 value",
            b"[node]\nname = \"caf\xe9\"\n".to_vec(),
            &[
                "{dir}/drydock.toml:2:12: key `node.name`",
                "not valid UTF-8",
            ],
        ),
        one(
            "non-UTF-8 in a comment",
            b"# \xff\xfe\n[node]\n".to_vec(),
            &["{dir}/drydock.toml:1:3:", "not valid UTF-8"],
        ),
        one(
            "non-UTF-8 key",
            b"[drain]\ntime\xffout = \"1s\"\n".to_vec(),
            &["{dir}/drydock.toml:2:5:", "not valid UTF-8"],
        ),
        one(
            "binary garbage",
            b"\x7fELF\x02\x01\x01\x00\x00\x00".to_vec(),
            &["{dir}/drydock.toml:1:", "TOML syntax error"],
        ),
        one(
            "unclosed table",
            b"[node\nname = \"x\"\n".to_vec(),
            &["{dir}/drydock.toml:1:", "TOML syntax error"],
        ),
        one(
            "duplicate key",
            b"[drain]\ntimeout = \"1s\"\ntimeout = \"2s\"\n".to_vec(),
            &["{dir}/drydock.toml:3:", "TOML syntax error"],
        ),
        one(
            "duplicate table",
            b"[drain]\n[drain]\n".to_vec(),
            &["{dir}/drydock.toml:2:", "TOML syntax error"],
        ),
        one(
            "unknown table",
            b"[nonsense]\nx = 1\n".to_vec(),
            &["{dir}/drydock.toml:1:2: key `nonsense`", "unknown field"],
        ),
        one(
            "top-level value",
            b"timeout = \"1s\"\n".to_vec(),
            &["{dir}/drydock.toml:1:1: key `timeout`", "unknown field"],
        ),
        one(
            "section is a value",
            b"drain = 5\n".to_vec(),
            &["key `drain`", "invalid type"],
        ),
        one(
            "integer overflow",
            b"[lease]\nconcurrency = 99999999999999999999\n".to_vec(),
            &["{dir}/drydock.toml:2:", "TOML syntax error"],
        ),
        one(
            "NUL byte",
            b"[node]\x00\n".to_vec(),
            &["{dir}/drydock.toml:1:", "TOML syntax error"],
        ),
        one(
            "huge value is not echoed whole",
            huge_value.into_bytes(),
            &["{dir}/drydock.toml:2:8: key `node.name`", "bytes in all"],
        ),
        one(
            "over 1 MiB",
            format!("# {}\n", "x".repeat(1 << 20)).into_bytes(),
            &["reading config file {dir}/drydock.toml: it is larger than 1048576 bytes"],
        ),
        one(
            "window without days",
            b"[[maintenance.windows]]\nstart = \"02:00\"\nlength = \"1h\"\ntime-zone = \"UTC\"\n"
                .to_vec(),
            &["missing field `days`"],
        ),
        one(
            "escape sequence in a value",
            b"[node]\nname = \"\\u001b[2J\\u001b]0;owned\\u0007\"\n".to_vec(),
            &["{dir}/drydock.toml:2:8: key `node.name`", "\\u{1b}[2J"],
        ),
    ];
    let mut secret = one(
        "webhook secret is not echoed",
        secret_url.as_bytes().to_vec(),
        &["key `report.slack-webhook-url`", "hooks.slack.com/..."],
    );
    secret.forbid.push("SECRETTOKEN".into());
    cases.push(secret);
    let mut cred = one(
        "URL credentials are not echoed",
        b"[alerts]\nprometheus-url = \"ftp://admin:hunter2@prom:9090/\"\n".to_vec(),
        &["key `alerts.prometheus-url`", "invalid URL"],
    );
    cred.forbid.push("hunter2".into());
    cases.push(cred);
    cases
}

/// Commands that read the configuration, and how each fails on a bad one.
/// The daemon is check-config's twin (`config_case`).
fn config_commands() -> Vec<ConfigCommand> {
    vec![
        (
            "check-config",
            vec!["check-config"],
            Input::Null,
            Exit::Code(1),
            vec!["invalid configuration"],
        ),
        (
            "status",
            vec!["status"],
            Input::Null,
            Exit::Code(1),
            vec!["loading configuration"],
        ),
        (
            "pre-install",
            vec!["apt-hook", "pre-install"],
            Input::Bytes(benign_hook_input()),
            Exit::Code(1),
            vec![
                "every package counts as protected",
                "refusing this dpkg run",
                "hello",
            ],
        ),
        (
            "pause",
            vec!["pause", "--reason", "maintenance"],
            Input::Null,
            Exit::Code(1),
            vec![],
        ),
        (
            "post-invoke",
            vec!["apt-hook", "post-invoke"],
            Input::Null,
            Exit::Code(0),
            vec!["apt run not recorded"],
        ),
    ]
}

/// `args` after the case's `--config`.
fn with_config<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&[CONFIG_ARG], args].concat()
}

/// A config command's case on a configuration described by `what`.
/// check-config has the daemon for its twin: the daemon refuses to start
/// on every configuration check-config refuses, with the same message.
fn config_case(what: &str, cmd: &ConfigCommand) -> Case {
    let (cmd_name, args, stdin, exit, extra) = cmd;
    let case = Case::new(format!("{cmd_name}: {what}"), &with_config(args), *exit)
        .stdin(stdin.clone())
        .expect_all(extra.iter().copied());
    if *cmd_name == "check-config" {
        case.twin(
            &[CONFIG_ARG, "daemon"],
            ("invalid configuration: ", "loading configuration: "),
        )
    } else {
        case
    }
}

fn to_cases(config_cases: Vec<ConfigCase>, all_commands_every: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, cc) in config_cases.into_iter().enumerate() {
        let files = std::sync::Arc::new(cc.files);
        for cmd in config_commands() {
            // check-config (and the daemon, its twin) sees every case; the
            // other commands see a sample.
            if cmd.0 != "check-config" && i % all_commands_every != 0 {
                continue;
            }
            let f = files.clone();
            let case = config_case(&cc.name, &cmd)
                .setup(move |dir| {
                    for (rel, bytes) in f.iter() {
                        let text = String::from_utf8_lossy(bytes)
                            .replace("{dir}", &dir.display().to_string());
                        // Keep non-UTF-8 fixtures byte-exact.
                        let bytes = if std::str::from_utf8(bytes).is_ok() {
                            text.into_bytes()
                        } else {
                            bytes.clone()
                        };
                        write(&dir.join(rel), bytes);
                    }
                    // A base for single-file cases: paths stay in the case's dir.
                    if f.len() == 1 {
                        write(
                            &dir.join("drydock.toml.d/00-base.toml"),
                            base_toml(dir, "node.name"),
                        );
                    }
                })
                .expect_all(cc.expect.iter().cloned());
            let case = cc
                .forbid
                .iter()
                .fold(case, |case, f| case.forbid(f.clone()))
                .forbid("\u{1b}");
            cases.push(case);
        }
    }
    cases
}

#[test]
fn bad_configuration_values_are_refused_with_file_line_column_and_key() {
    // The fixtures name `{dir}`; positions are computed from the same text.
    let cases = to_cases(config_cases(Path::new("{dir}")), 7);
    assert!(cases.len() >= 400, "{} cases", cases.len());
    run_all("configuration values", cases);
}

#[test]
fn bad_configuration_text_is_refused_with_a_position() {
    let cases = to_cases(config_text_cases(), 1);
    run_all("configuration text", cases);
}

/// The other half of "one validation path": what check-config accepts,
/// the daemon starts with. Each configuration (the shipped file and the
/// valid fuzz seeds) gets a drop-in that keeps every path in the case's
/// directory; the daemon must get as far as waiting for the node to join,
/// and stop cleanly on SIGTERM.
#[test]
fn the_daemon_starts_on_every_configuration_check_config_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mains = [
        ("shipped", root.join("etc/drydock.toml")),
        ("urls seed", root.join("fuzz/corpus/config/urls.toml")),
        (
            "windows and selectors seed",
            root.join("fuzz/corpus/config/windows-selectors.toml"),
        ),
    ];
    for (name, main) in mains {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::copy(&main, config(dir)).unwrap();
        let paths = base_toml(dir, "").replacen(
            "[node]\n",
            &format!(
                "[node]\nadmin-kubeconfig = \"{}/admin.conf\"\n",
                dir.display()
            ),
            1,
        );
        write(&dir.join("drydock.toml.d/99-paths.toml"), paths);
        let args = [format!("--config={}", config(dir).display())];
        let check = run_binary(dir, &[args[0].clone(), "check-config".into()], &Input::Null)
            .unwrap_or_else(|e| panic!("{name}: check-config: {e}"));
        assert_eq!(check.code, Some(0), "{name}: {}", check.stderr);

        let mut daemon = Command::new(BIN)
            .args([args[0].as_str(), "daemon"])
            .current_dir(dir)
            .env("HOME", dir)
            .env("LC_ALL", "C")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = daemon.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let mut seen = Vec::new();
        let waiting = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line.contains("waiting: node not joined");
                    seen.push(line);
                    if found {
                        break true;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
                Err(_) if start.elapsed() > DEADLINE => break false,
                Err(_) => {}
            }
        };
        let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > 2 * DEADLINE {
                let _ = daemon.kill();
                break daemon.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        seen.extend(rx.try_iter());
        assert!(
            waiting && status.success(),
            "{name}: check-config accepts it, but the daemon (status {status}) said:\n{}",
            seen.join("\n")
        );
    }
}

// ------------------------------------------------------ files and drop-ins

/// Something in place of a file drydock reads.
fn plant(kind: &str, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    match kind {
        "fifo" => mkfifo(path),
        "dev-zero" => symlink("/dev/zero", path).unwrap(),
        "directory" => std::fs::create_dir(path).unwrap(),
        "dangling symlink" => symlink(path.with_extension("missing"), path).unwrap(),
        "symlink loop" => symlink(path, path).unwrap(),
        "socket" => {
            let l = std::os::unix::net::UnixListener::bind(path).unwrap();
            std::mem::forget(l);
        }
        other => panic!("{other}"),
    }
}

const PLANTS: &[(&str, &str)] = &[
    ("fifo", "it is a FIFO, not a regular file"),
    ("dev-zero", "it is a character device, not a regular file"),
    ("directory", "it is a directory, not a regular file"),
    ("dangling symlink", "No such file or directory"),
    ("symlink loop", "symbolic links"),
    ("socket", "it is a socket, not a regular file"),
];

#[test]
fn special_files_and_bad_drop_ins_are_refused_without_hanging() {
    let mut cases = Vec::new();
    for &(kind, main_msg) in PLANTS {
        let drop_msg = match kind {
            "dangling symlink" | "symlink loop" => "it is a symbolic link that cannot be followed",
            _ => main_msg,
        };
        for cmd in config_commands() {
            // The main file itself.
            cases.push(
                config_case(&format!("main config is a {kind}"), &cmd)
                    .setup(move |dir| {
                        plant(kind, &config(dir));
                        write(&dir.join("drydock.toml.d/00-base.toml"), base_toml(dir, ""));
                    })
                    .expect("reading config file {dir}/drydock.toml")
                    .expect(main_msg),
            );
            // A drop-in named *.toml.
            cases.push(
                config_case(&format!("drop-in is a {kind}"), &cmd)
                    .setup_valid(move |dir| plant(kind, &dir.join("drydock.toml.d/50-x.toml")))
                    .expect("config drop-in {dir}/drydock.toml.d/50-x.toml")
                    .expect(drop_msg)
                    .expect("rename it"),
            );
        }
    }
    // The drop-in directory is not a directory.
    for kind in ["fifo", "dev-zero"] {
        cases.push(
            Case::new(
                format!("check-config: drop-in directory is a {kind}"),
                &[CONFIG_ARG, "check-config"],
                Exit::Code(1),
            )
            .setup_valid(move |dir| {
                plant(kind, &dir.join("drydock.toml.d"));
            })
            .expect("listing config drop-ins in {dir}/drydock.toml.d: "),
        );
    }
    // Controls: a hidden editor lock is not a drop-in; a symlink to a real
    // file is one.
    cases.push(
        Case::new(
            "check-config: hidden dangling .#x.toml is no drop-in",
            &[CONFIG_ARG, "check-config"],
            Exit::Code(0),
        )
        .setup_valid(|dir| {
            plant("dangling symlink", &dir.join("drydock.toml.d/.#50-x.toml"));
        })
        .expect("configuration OK"),
    );
    cases.push(
        Case::new(
            "check-config: drop-in symlinked to a bad file",
            &[CONFIG_ARG, "check-config"],
            Exit::Code(1),
        )
        .setup_valid(|dir| {
            write(
                &dir.join("elsewhere/bad.toml"),
                "[drain]\ntimeout = \"0s\"\n",
            );
            std::fs::create_dir_all(dir.join("drydock.toml.d")).unwrap();
            symlink(
                dir.join("elsewhere/bad.toml"),
                dir.join("drydock.toml.d/50-x.toml"),
            )
            .unwrap();
        })
        .expect("{dir}/drydock.toml.d/50-x.toml:2:11: key `drain.timeout`"),
    );
    // Missing and odd --config arguments.
    cases.push(
        Case::new(
            "--config names nothing",
            &["--config={dir}/nope.toml", "check-config"],
            Exit::Code(1),
        )
        .expect("reading config file {dir}/nope.toml: No such file or directory (os error 2)"),
    );
    cases.push(Case::new(
        "--config is empty",
        &["--config=", "check-config"],
        Exit::Failure,
    ));
    run_all("special files", cases);
}

#[test]
fn every_cause_is_named_once() {
    let out = run_binary(
        Path::new("/"),
        &[
            "--config=/nonexistent/drydock-test/x.toml".into(),
            "status".into(),
        ],
        &Input::Null,
    )
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr.matches("os error 2").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.starts_with(
            "drydock: loading configuration: reading config file /nonexistent/drydock-test/x.toml"
        ),
        "{}",
        out.stderr
    );
}

// -------------------------------------------------------------- state DB

const APP_ID: i64 = 0x4452_5944;

fn sqlite(path: &Path, wal: bool, app_id: i64, user_version: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
    if wal {
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
    }
    conn.execute_batch(&format!(
        "CREATE TABLE t (x); INSERT INTO t VALUES (1); PRAGMA application_id = {app_id}; PRAGMA user_version = {user_version};"
    ))
    .unwrap();
    drop(conn);
    assert!(!path.with_extension("db-wal").exists());
}

fn drydock_db(path: &Path) {
    let store = drydock::testing::store::Store::open(path).unwrap();
    store.set("x", &1).unwrap();
}

fn state_db(dir: &Path) -> PathBuf {
    dir.join("state/state.db")
}

type DbFixture = (&'static str, fn(&Path), &'static str);

fn db_fixtures() -> Vec<DbFixture> {
    vec![
        ("empty file", |p| write(p, b""), "is empty (0 bytes)"),
        (
            "text",
            |p| {
                write(
                    p,
                    b"this is not an SQLite database at all, not even close.\n".repeat(3),
                )
            },
            "is not an SQLite database",
        ),
        (
            "short header",
            |p| write(p, b"SQLite format 3\0short"),
            "is not an SQLite database",
        ),
        (
            "foreign WAL db",
            |p| sqlite(p, true, 0x1234, 1),
            "does not belong to drydock (application_id 0x1234)",
        ),
        (
            "foreign rollback db",
            |p| sqlite(p, false, 7, 0),
            "does not belong to drydock (application_id 0x7)",
        ),
        (
            "anonymous WAL db with tables",
            |p| sqlite(p, true, 0, 0),
            "does not belong to drydock (application_id 0x0)",
        ),
        (
            "anonymous rollback db with tables",
            |p| sqlite(p, false, 0, 0),
            "does not belong to drydock",
        ),
        (
            "newer schema, WAL",
            |p| sqlite(p, true, APP_ID, 99),
            "has schema version 99, newer than this drydock understands",
        ),
        (
            "newer schema, rollback",
            |p| sqlite(p, false, APP_ID, 99),
            "has schema version 99",
        ),
        (
            "damaged drydock db",
            |p| {
                drydock_db(p);
                let mut bytes = std::fs::read(p).unwrap();
                let len = bytes.len();
                for b in &mut bytes[4096..len.min(4096 * 3)] {
                    *b = 0xa5;
                }
                std::fs::write(p, bytes).unwrap();
            },
            "is damaged",
        ),
        (
            "fifo",
            |p| plant("fifo", p),
            "is a FIFO, not a regular file",
        ),
        (
            "directory",
            |p| plant("directory", p),
            "is a directory, not a regular file",
        ),
        (
            "/dev/zero",
            |p| plant("dev-zero", p),
            "is a character device, not a regular file",
        ),
        (
            "dangling symlink",
            |p| plant("dangling symlink", p),
            "is a dangling symbolic link",
        ),
        ("socket", |p| plant("socket", p), "is a socket"),
    ]
}

#[test]
fn a_refused_state_db_is_left_byte_identical_with_no_side_files() {
    let commands: Vec<(&str, Vec<&str>, Exit, &str)> = vec![
        (
            "status",
            vec!["status"],
            Exit::Code(1),
            "opening the state store",
        ),
        (
            "status --json",
            vec!["status", "--json"],
            Exit::Code(1),
            "opening the state store",
        ),
        ("history", vec!["history"], Exit::Code(1), ""),
        ("pause", vec!["pause", "--reason", "x"], Exit::Code(1), ""),
        ("resume", vec!["resume"], Exit::Code(1), ""),
        ("reboot", vec!["reboot"], Exit::Code(1), ""),
        ("release", vec!["release", "--force"], Exit::Code(1), ""),
        (
            "post-invoke",
            vec!["apt-hook", "post-invoke"],
            Exit::Code(0),
            "apt run not recorded",
        ),
    ];
    let mut cases = Vec::new();
    for (fixture, make, message) in db_fixtures() {
        for (cmd_name, args, exit, extra) in &commands {
            let mut case = Case::new(
                format!("{cmd_name}: state db is {fixture}"),
                &with_config(args),
                *exit,
            )
            .setup_valid(move |dir| {
                make(&state_db(dir));
                let p = state_db(dir);
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                    // A mode drydock would change if it touched the file.
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
                }
            })
            .expect("{dir}/state/state.db")
            .expect(message);
            if !extra.is_empty() {
                case = case.expect(*extra);
            }
            cases.push(case);
        }
    }
    // The protected hook needs authorizations only while a step runs: with
    // the step lock held by nobody it never opens the DB and refuses.
    run_all("state db", cases);
}

// ------------------------------------------------------------- APT hook

/// The pre-install hook on a valid configuration, refusing `input`.
fn refused_pre_install(name: impl std::fmt::Display, input: Input) -> Case {
    Case::new(
        format!("pre-install: {name}"),
        &[CONFIG_ARG, "apt-hook", "pre-install"],
        Exit::Code(1),
    )
    .setup(valid_config)
    .stdin(input)
    .expect("refusing this dpkg run")
}

fn hook_input(actions: &[u8]) -> Vec<u8> {
    [
        b"VERSION 3\nAPT::Architecture=amd64\nDir=/\n\n".as_slice(),
        actions,
    ]
    .concat()
}

#[test]
fn the_apt_hook_refuses_what_it_cannot_read_and_says_how_to_override() {
    let mut cases = Vec::new();
    // (name, action lines, must appear)
    let unreadable: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "too few fields",
            b"hello 1.0 all none <\n".to_vec(),
            "has 5 fields",
        ),
        (
            "unknown direction",
            b"hello 1.0 all none ?? 2.0 all none /h.deb\n".to_vec(),
            "direction",
        ),
        (
            "upper-case name",
            b"KUBELET - - none < 1.0 amd64 none /k.deb\n".to_vec(),
            "kubelet: unreadable",
        ),
        (
            "mangled protected name",
            b"kube\x01let - - none < 1.0 amd64 none /x.deb\n".to_vec(),
            "control characters",
        ),
        (
            "non-breaking space in name",
            "kubelet\u{a0} - - none < 1.0 amd64 none /x.deb\n"
                .as_bytes()
                .to_vec(),
            "unreadable hook input line",
        ),
        (
            "bad version",
            b"hello - - none < v2 all none /h.deb\n".to_vec(),
            "not a Debian version",
        ),
        (
            "NUL in path",
            b"hello - - none < 2.0 all none /h\x00.deb\n".to_vec(),
            "control characters",
        ),
        (
            "invalid UTF-8",
            b"hello - - none < 2.0 all none \xff\xfe\n".to_vec(),
            "not UTF-8",
        ),
        (
            "unknown action",
            b"hello - - none < 2.0 all none **FROB**\n".to_vec(),
            "unknown action",
        ),
        (
            "unpack without version",
            b"hello - - none < - - none /h.deb\n".to_vec(),
            "without a new version",
        ),
        (
            "remove of nothing",
            b"hello - - none > - - none **REMOVE**\n".to_vec(),
            "not installed",
        ),
        (
            "empty action",
            b"hello - - none < 2.0 all none \n".to_vec(),
            "unreadable hook input line",
        ),
        (
            "escape sequence",
            b"hello - - none < 2.0 all none /\x1b[2J.deb\n".to_vec(),
            "control characters",
        ),
        (
            "5000-byte line",
            [
                b"hello - - none < 2.0 all none /".as_slice(),
                &vec![b'a'; 5000],
                b".deb\n",
            ]
            .concat(),
            "bytes long",
        ),
        (
            "one-letter name",
            b"x - - none < 2.0 all none /x.deb\n".to_vec(),
            "not a Debian package name",
        ),
        (
            "missing arch",
            b"hello - - none < 2.0  none /h.deb\n".to_vec(),
            "unreadable hook input line",
        ),
        (
            "bare path",
            b"/var/cache/apt/archives/kubeadm_1.0_amd64.deb\n".to_vec(),
            "kubeadm: unreadable",
        ),
    ];
    for (name, lines, fragment) in unreadable {
        let input = hook_input(&lines);
        cases.push(
            refused_pre_install(name, Input::Bytes(input))
                .expect("unreadable hook input line 5")
                .expect(fragment)
                .expect("Nothing was installed")
                .expect("DRYDOCK_APT_ALLOW='*'")
                .forbid("\u{1b}"),
        );
    }
    // Lines inside apt's configuration section.
    for (name, line) in [
        ("config line without '='", b"NoEquals\n".as_slice()),
        ("config line with control byte", b"Key\x01=v\n".as_slice()),
        (
            "action line among config",
            b"kubeadm 1 all none = 1 all none /k.deb\n".as_slice(),
        ),
    ] {
        let input = [b"VERSION 3\nA=b\n".as_slice(), line, b"\n"].concat();
        cases.push(
            refused_pre_install(name, Input::Bytes(input)).expect("unreadable hook input line 3"),
        );
    }
    // A .deb named for a protected package under another name.
    for (name, path) in [
        (
            "apt archive",
            "/var/cache/apt/archives/kubelet_1.34.2-1.1_amd64.deb",
        ),
        ("upper-case file", "/tmp/KUBELET_1.0_amd64.deb"),
        ("glob-protected", "/tmp/calico-node_3.0_amd64.deb"),
        ("no version part", "/tmp/runc.deb"),
    ] {
        let line = format!("hello 1.0 amd64 none < 2.0 amd64 none {path}\n");
        cases.push(
            refused_pre_install(
                format!("deb file renamed ({name})"),
                Input::Bytes(hook_input(line.as_bytes())),
            )
            .expect("suspicious: the line is for package hello but unpacks"),
        );
    }
    // Framing.
    let framing: Vec<(&str, Input, &str)> = vec![
        ("empty", Input::Bytes(vec![]), "no input on stdin"),
        (
            "header only",
            Input::Bytes(b"VERSION 3\n".to_vec()),
            "ends inside the configuration",
        ),
        (
            "no header",
            Input::Bytes(b"hello - - none < 1 all none /h.deb\n".to_vec()),
            "not a \"VERSION 3\" header",
        ),
        (
            "version 2",
            Input::Bytes(b"VERSION 2\n\nhello\n".to_vec()),
            "protocol version 2",
        ),
        (
            "version 99",
            Input::Bytes(b"VERSION 99\n\n".to_vec()),
            "protocol version 99",
        ),
        (
            "binary",
            Input::Bytes(vec![0, 1, 2, 0xff, b'\n']),
            "not a \"VERSION 3\" header",
        ),
        (
            "escape in header",
            Input::Bytes(b"\x1b]0;pwned\x07\n\n".to_vec()),
            "not a \"VERSION 3\" header",
        ),
        (
            "over 16 MiB",
            Input::Bytes(vec![b'\n'; (16 << 20) + 1]),
            "larger than 16 MiB",
        ),
        (
            "endless stdin (/dev/zero)",
            Input::File("/dev/zero".into()),
            "larger than 16 MiB",
        ),
    ];
    for (name, input, fragment) in framing {
        cases.push(
            refused_pre_install(format!("framing: {name}"), input)
                .expect(fragment)
                .forbid("\u{1b}"),
        );
    }
    // Odd files where the hook and status look: refused or reported, no hang.
    // (command, exit, planted path, preparation, stdin, what is said)
    let kubelet_upgrade =
        hook_input(b"kubelet 1.0 amd64 none < 2.0 amd64 none /k/kubelet_2.0_amd64.deb\n");
    type Planted = (
        &'static str,
        i32,
        &'static str,
        fn(&Path),
        Input,
        &'static str,
    );
    let planted: Vec<Planted> = vec![
        // A protected change on a joined node (before join every change
        // is provisioning): refused.
        (
            "apt-hook pre-install",
            1,
            "run/upgrade-step.lock",
            |dir| write(&dir.join("kubeconfig"), b"apiVersion: v1\n"),
            Input::Bytes(kubelet_upgrade),
            "kubelet: upgrade 1.0 -> 2.0",
        ),
        // post-invoke finishes and never fails apt; a refused store keeps
        // it from writing.
        (
            "apt-hook post-invoke",
            0,
            "run/apt-pending.json",
            |dir| write(&state_db(dir), b"not a database"),
            Input::Null,
            "apt run not recorded",
        ),
        (
            "status",
            0,
            "kubeconfig",
            |_| {},
            Input::Null,
            "lease slots:  unknown: reading kubeconfig {dir}/kubeconfig",
        ),
        (
            "status",
            0,
            "run/daemon.lock",
            |_| {},
            Input::Null,
            "daemon:       not running",
        ),
    ];
    for &(kind, _) in PLANTS {
        for (cmd, code, rel, prepare, stdin, said) in &planted {
            let args = with_config(&cmd.split(' ').collect::<Vec<_>>());
            let (prepare, rel) = (*prepare, *rel);
            cases.push(
                Case::new(
                    format!("{}: {rel} is a {kind}", cmd.trim_start_matches("apt-hook ")),
                    &args,
                    Exit::Code(*code),
                )
                .setup_valid(move |dir| {
                    prepare(dir);
                    plant(kind, &dir.join(rel));
                })
                .stdin(stdin.clone())
                .expect(*said),
            );
        }
    }
    // An invalid configuration: every package counts as protected.
    cases.push(
        Case::new(
            "pre-install: invalid config refuses even an unprotected package",
            &[CONFIG_ARG, "apt-hook", "pre-install"],
            Exit::Code(1),
        )
        .setup_valid(|dir| {
            write(
                &dir.join("drydock.toml.d/50-protect.toml"),
                "[packages]\nprotect = [\"hello\", \"BAD\"]\n",
            );
        })
        .stdin(Input::Bytes(benign_hook_input()))
        .expect("key `packages.protect[1]`")
        .expect("every package counts as protected")
        .expect("hello: upgrade 1.0 -> 2.0")
        .expect("DRYDOCK_APT_ALLOW=hello"),
    );
    run_all("apt hook", cases);
}

#[test]
fn the_apt_hook_lets_the_administrator_through_when_told() {
    // '*' overrides an unreadable line; the plan is saved in the case's run dir.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    valid_config(dir);
    let mut cmd = Command::new(BIN);
    cmd.arg(format!("--config={}", config(dir).display()))
        .args(["apt-hook", "pre-install"])
        .env("DRYDOCK_APT_ALLOW", "*")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&hook_input(b"hello 1.0 all none ?? 2.0 all none /h.deb\n"))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("allowed by DRYDOCK_APT_ALLOW"), "{stderr}");
    assert!(dir.join("run/apt-pending.json").is_file());
}

// ------------------------------------------------- reasons and status

fn db_with_pause(dir: &Path, reason: &str) {
    valid_config(dir);
    let path = state_db(dir);
    drydock_db(&path);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let json = serde_json::json!({"reason": reason, "since": "2025-01-01T00:00:00Z"});
    conn.execute(
        "INSERT INTO kv (key, json, updated_at) VALUES ('paused', ?1, '2025-01-01T00:00:00Z')",
        [json.to_string()],
    )
    .unwrap();
    drop(conn);
    assert!(!dir.join("state/state.db-wal").exists());
}

#[test]
fn reasons_are_bounded_and_escaped_wherever_they_are_shown() {
    let mut cases = Vec::new();
    let bad_reasons: Vec<(&str, String, &str)> = vec![
        ("newline", "a\nb".into(), "control character \\n"),
        (
            "ANSI clear screen",
            "\u{1b}[2J".into(),
            "control character \\u{1b}",
        ),
        (
            "OSC hyperlink",
            "\u{1b}]8;;http://evil\u{7}x".into(),
            "control character",
        ),
        ("bell", "\u{7}".into(), "control character"),
        ("C1 CSI", "\u{9b}31m".into(), "control character"),
        (
            "right-to-left override",
            "a\u{202e}b".into(),
            "control character",
        ),
        (
            "carriage return",
            "ok\rforged".into(),
            "control character \\r",
        ),
        ("201 characters", "x".repeat(201), "201 characters long"),
        ("100 kB", "y".repeat(100_000), "characters long"),
    ];
    for (name, reason, fragment) in &bad_reasons {
        for cmd in ["pause", "reboot", "cluster pause"] {
            let mut args: Vec<&str> = vec![CONFIG_ARG];
            args.extend(cmd.split(' '));
            args.push("--reason");
            args.push(reason);
            cases.push(
                Case::new(format!("{cmd} --reason {name}"), &args, Exit::Code(2))
                    .setup(valid_config)
                    .expect(*fragment)
                    .forbid("\u{1b}")
                    .forbid("\u{9b}")
                    .forbid("yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"),
            );
        }
    }
    // Reasons already stored (an older drydock, a hand edit) are escaped
    // on the way out.
    for (name, reason) in [
        ("ANSI", "\u{1b}[2J\u{1b}[31mred"),
        ("OSC", "\u{1b}]0;title\u{7}"),
        ("newline", "line one\nSTATUS=forged"),
        ("C1", "\u{9b}2J"),
    ] {
        let r = reason.to_string();
        cases.push(
            Case::new(
                format!("status shows a stored {name} reason escaped"),
                &[CONFIG_ARG, "status"],
                Exit::Code(0),
            )
            .setup(move |dir| db_with_pause(dir, &r))
            .expect("paused:       ")
            .forbid("\u{1b}")
            .forbid("\u{7}")
            .forbid("\u{9b}")
            .forbid("\nSTATUS=forged"),
        );
        let r = reason.to_string();
        cases.push(
            Case::new(
                format!("status --json keeps a stored {name} reason as data"),
                &[CONFIG_ARG, "status", "--json"],
                Exit::Code(0),
            )
            .setup(move |dir| db_with_pause(dir, &r))
            .check(move |stdout, _| {
                let v: serde_json::Value =
                    serde_json::from_str(stdout).map_err(|e| format!("not JSON: {e}"))?;
                status_shape(&v)?;
                match v["local_pause"]["reason"].as_str() {
                    Some(s) if !s.chars().any(char::is_control) => Ok(()),
                    other => Err(format!("local_pause.reason: {other:?}")),
                }
            }),
        );
    }
    for (name, detail) in [
        ("ESC in a record", "{\"reason\":\"\\u001b[2J\"}"),
        ("C1 and DEL in a record", "{\"x\":\"\\u009b2J\\u007f\"}"),
        ("RLO in a record", "{\"x\":\"a\\u202eb\"}"),
    ] {
        cases.push(
            Case::new(
                format!("history shows a stored {name} escaped"),
                &[CONFIG_ARG, "history"],
                Exit::Code(0),
            )
            .setup_valid(move |dir| {
                drydock_db(&state_db(dir));
                let conn = rusqlite::Connection::open(state_db(dir)).unwrap();
                conn.execute(
                    "INSERT INTO history (at, kind, detail) VALUES ('2025-01-01T00:00:00Z', 'note\u{1b}[31m', ?1)",
                    [detail],
                )
                .unwrap();
            })
            .expect("note\\u{1b}[31m")
            .forbid("\u{1b}")
            .forbid("\u{9b}")
            .forbid("\u{7f}")
            .forbid("\u{202e}"),
        );
    }
    let long = "z".repeat(5000);
    cases.push(
        Case::new(
            "status bounds a long stored reason",
            &[CONFIG_ARG, "status"],
            Exit::Code(0),
        )
        .setup(move |dir| db_with_pause(dir, &long))
        .expect("bytes in all")
        .forbid("z".repeat(600)),
    );
    run_all("reasons", cases);
}

/// The stable shape of `status --json`.
fn status_shape(v: &serde_json::Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not an object")?;
    for key in [
        "version",
        "node",
        "daemon",
        "state",
        "summary",
        "reboot_need",
        "gates",
        "local_pause",
        "next_window",
        "held_packages",
        "lease",
    ] {
        if !obj.contains_key(key) {
            return Err(format!("missing key {key}"));
        }
    }
    if v["version"] != 1 {
        return Err(format!("version {}", v["version"]));
    }
    let lease = v["lease"].as_object().ok_or("lease is not an object")?;
    if !(lease.contains_key("slots") && lease.contains_key("error")) {
        return Err(format!("lease shape: {:?}", v["lease"]));
    }
    let text = v.to_string();
    for bad in ["\"Err\"", "\"Ok\"", "LocalPause {", "Some("] {
        if text.contains(bad) {
            return Err(format!("{bad} in {text}"));
        }
    }
    Ok(())
}

#[test]
fn status_json_has_a_stable_shape() {
    let cases = vec![
        Case::new(
            "status --json with no store",
            &[CONFIG_ARG, "status", "--json"],
            Exit::Code(0),
        )
        .setup(valid_config)
        .check(|stdout, _| {
            let v: serde_json::Value =
                serde_json::from_str(stdout).map_err(|e| format!("not JSON: {e}"))?;
            status_shape(&v)?;
            if !v["lease"]["slots"].is_null() || !v["lease"]["error"].is_string() {
                return Err(format!("lease without an API server: {}", v["lease"]));
            }
            if !v["local_pause"].is_null() || !v["state"].is_null() {
                return Err("state from nowhere".into());
            }
            Ok(())
        }),
        Case::new(
            "status --json with a paused store",
            &[CONFIG_ARG, "status", "--json"],
            Exit::Code(0),
        )
        .setup(|dir| db_with_pause(dir, "kernel regression"))
        .check(|stdout, _| {
            let v: serde_json::Value =
                serde_json::from_str(stdout).map_err(|e| format!("not JSON: {e}"))?;
            status_shape(&v)?;
            if v["local_pause"]["reason"] != "kernel regression"
                || !v["local_pause"]["since"].is_string()
            {
                return Err(format!("local_pause: {}", v["local_pause"]));
            }
            Ok(())
        }),
    ];
    run_all("status json", cases);
}

// ------------------------------------------------------------ command line

#[test]
fn bad_command_lines_are_refused_by_the_parser() {
    let mut cases = Vec::new();
    for (name, args) in [
        ("unknown subcommand", vec!["frobnicate"]),
        ("unknown flag", vec!["status", "--bogus"]),
        ("pause without reason", vec!["pause"]),
        ("bad log format", vec!["--log-format=xml", "status"]),
        ("apt-hook without a hook", vec!["apt-hook"]),
        ("unknown hook", vec!["apt-hook", "pre-remove"]),
        ("history with a bad limit", vec!["history", "--limit", "-5"]),
        ("completions for no shell", vec!["completions", "cmd.exe"]),
    ] {
        cases.push(
            Case::new(name, &with_config(&args), Exit::Code(2))
                .setup(valid_config)
                .forbid("panicked"),
        );
    }
    run_all("command line", cases);
}

#[test]
fn the_harness_sees_changes_and_hangs() {
    // A command that writes (a valid config, a first pause creates the
    // store) must be caught by the snapshot...
    let writes = Case::new(
        "pause with a valid config",
        &[CONFIG_ARG, "pause", "--reason", "x"],
        Exit::Code(0),
    )
    .setup(valid_config);
    let err = run_case(&writes).expect_err("the store it created is a change");
    assert!(
        err.contains("new file") && err.contains("state.db"),
        "{err}"
    );
    // ...and a wrong exit status or a missing message by the checks.
    let wrong = Case::new(
        "check-config with a valid config",
        &[CONFIG_ARG, "check-config"],
        Exit::Code(1),
    )
    .setup(valid_config)
    .expect("no such text");
    let err = run_case(&wrong).expect_err("exit 0 and no such text");
    assert!(
        err.contains("exit Some(0)") && err.contains("no such text"),
        "{err}"
    );
    // ...and a twin that refuses otherwise (another file named) by the
    // comparison of messages.
    let other = Case::new(
        "check-config and a daemon reading another file",
        &[CONFIG_ARG, "check-config"],
        Exit::Code(1),
    )
    .setup(|dir| {
        // Every path in the case's directory, should either be accepted.
        let bad = format!("{}[drain]\ntimeout = \"0s\"\n", base_toml(dir, ""));
        write(&config(dir), &bad);
        write(&dir.join("other.toml"), &bad);
    })
    .twin(
        &["--config={dir}/other.toml", "daemon"],
        ("invalid configuration: ", "loading configuration: "),
    );
    let err = run_case(&other).expect_err("the messages name other files");
    assert!(err.contains("daemon says otherwise"), "{err}");
}
