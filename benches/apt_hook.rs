//! What the APT hooks add to a real apt run, measured A/B in one sandbox.
//!
//! `cargo bench --bench apt_hook` (N iterations: DRYDOCK_BENCH_N, default 25).
//! Each iteration runs the same `apt-get install hello=<other version>` (a
//! downgrade/upgrade cycle of one small package) once per configuration,
//! interleaved: no hook, the pre-install hook only, both hooks (the shipped
//! 50drydock). Then it times the hook process alone on a real-sized stdin.

#[path = "../tests/support/apt_sandbox.rs"]
mod apt_sandbox;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apt_sandbox::{DRYDOCK, Sandbox, missing_tools};

fn stats(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(samples[samples.len() / 2]);
    let p90 = ms(samples[(samples.len() * 9 / 10).min(samples.len() - 1)]);
    (median, p90)
}

fn main() {
    if let Some(why) = missing_tools(false) {
        eprintln!("skipping apt hook benchmark: {why}");
        return;
    }
    let n: usize = std::env::var("DRYDOCK_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let sb = Sandbox::new();
    sb.preinstall(&["hello=1.0-1", "containerd=1.0-1", "kubeadm=1.34.1-1.1"]);
    // None: no hook; Some(None): a trivial hook (apt's own cost of running
    // any hook: fork, /bin/sh, pipe); Some(Some(pre_only)): drydock's.
    let configs: [(&str, Option<Option<bool>>); 4] = [
        ("no hook", None),
        ("trivial hook (cat >/dev/null)", Some(None)),
        ("drydock pre-install hook only", Some(Some(true))),
        ("both drydock hooks (50drydock)", Some(Some(false))),
    ];
    let trivial = sb.root.join("etc/apt/apt.conf.d/50drydock");
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    let mut version = ["2.0-1", "1.0-1"].into_iter().cycle();
    // One warm-up run per configuration, not measured.
    for i in 0..=n {
        for (c, (_, hook)) in configs.iter().enumerate() {
            match hook {
                None => sb.remove_hook(),
                Some(None) => std::fs::write(
                    &trivial,
                    "DPkg::Pre-Install-Pkgs {\"/bin/cat >/dev/null\";};\n\
                     DPkg::Tools::Options::/bin/cat::Version \"3\";\n",
                )
                .unwrap(),
                Some(Some(pre_only)) => sb.install_hook(*pre_only),
            }
            let spec = format!("hello={}", version.next().unwrap_or("2.0-1"));
            let start = Instant::now();
            let out = sb.apt_get(&["install", &spec]);
            let took = start.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if i > 0 {
                samples[c].push(took);
            }
        }
    }
    // Paired differences (same iteration, adjacent runs) resist load drift.
    let paired = |c: usize| {
        let mut d: Vec<f64> = samples[c]
            .iter()
            .zip(&samples[0])
            .map(|(a, b)| (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
            .collect();
        d.sort_by(f64::total_cmp);
        (d[d.len() / 2], d[(d.len() * 9 / 10).min(d.len() - 1)])
    };
    let (trivial_median, trivial_p90) = paired(1);
    let (pre_median, pre_p90) = paired(2);
    let (both_median, both_p90) = paired(3);
    println!("apt-get install (one package, one dpkg run), {n} runs each, interleaved:");
    let mut medians = Vec::new();
    for ((name, _), s) in configs.iter().zip(samples.iter_mut()) {
        let (median, p90) = stats(s);
        medians.push(median);
        println!("  {name:<32} median {median:7.2} ms   p90 {p90:7.2} ms");
    }
    for (name, c, (m, p)) in [
        ("a trivial hook", 1, (trivial_median, trivial_p90)),
        ("drydock's pre-install hook", 2, (pre_median, pre_p90)),
        ("both drydock hooks", 3, (both_median, both_p90)),
    ] {
        println!(
            "  added by {name:<27} {:+7.2} ms (difference of medians); paired per run: median {m:+7.2} ms, p90 {p:+7.2} ms",
            medians[c] - medians[0],
        );
    }
    println!(
        "  drydock's pre-install hook beyond a trivial hook: {:+.2} ms (difference of medians)",
        medians[2] - medians[1]
    );

    // The pre-install hook process alone, on apt's real configuration dump.
    let dump = sb
        .apt_command("apt-config")
        .args(["dump", "--format", "%f=%v%n"])
        .output()
        .unwrap()
        .stdout;
    let mut input = b"VERSION 3\n".to_vec();
    input.extend_from_slice(&dump);
    input.extend_from_slice(
        b"\nhello 1.0-1 all none < 2.0-1 all none /var/cache/apt/archives/hello_2.0-1_all.deb\n\
          hello 1.0-1 all none < 2.0-1 all none **CONFIGURE**\n",
    );
    let time = |argv: &[&str]| {
        let mut s = Vec::new();
        for _ in 0..(n * 4) {
            let start = Instant::now();
            let mut child = Command::new(argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // /bin/true may exit before reading: ignore EPIPE there.
            let _ = child.stdin.take().unwrap().write_all(&input);
            assert!(child.wait().unwrap().success());
            s.push(start.elapsed());
        }
        stats(&mut s)
    };
    let config = sb.config.to_string_lossy().into_owned();
    let (hook_median, hook_p90) = time(&[DRYDOCK, "--config", &config, "apt-hook", "pre-install"]);
    let (true_median, true_p90) = time(&["/bin/true"]);
    // The floor for any drydock subcommand: exec, dynamic linking, clap.
    let (version_median, version_p90) = time(&[DRYDOCK, "--version"]);
    println!(
        "pre-install hook process alone ({} bytes of stdin, {} runs): median {hook_median:.2} ms, p90 {hook_p90:.2} ms; /bin/true: median {true_median:.2} ms, p90 {true_p90:.2} ms; drydock --version: median {version_median:.2} ms, p90 {version_p90:.2} ms",
        input.len(),
        n * 4
    );
}
