//! APT's `DPkg::Pre-Install-Pkgs` protocol, version 3 (pure parsing).
//!
//! apt writes to the hook's stdin:
//!
//! ```text
//! VERSION 3
//! Some::Config::Key=value          (apt's whole configuration, one item a line)
//! ...
//!                                  (blank line)
//! name oldver oldarch oldma dir newver newarch newma action
//! ```
//!
//! `oldver`/`newver` are `-` when absent (then the arch is `-` too), `dir` is
//! `<`, `>`, `=` or `**`, and `action` is the path of the .deb to unpack,
//! `**CONFIGURE**` or `**REMOVE**`. A line that cannot be read is kept as
//! [`Malformed`] with the names it might concern: the policy refuses the run
//! (what it would change is unknown) and names them. A broken frame (no
//! header, another version, no end of the configuration section) is an
//! error: then nothing about the run can be known.

use std::io::Read;

/// What drydock reads at most; the rest is drained so apt never sees EPIPE.
pub(crate) const MAX_INPUT: usize = 16 << 20;
/// An action line longer than this is malformed (real ones are < 1 KiB).
const MAX_ACTION_LINE: usize = 4096;
/// What drydock drains past `MAX_INPUT` before it stops reading: apt never
/// sends this much, and an endless stdin (`/dev/zero`) must not hold the
/// hook forever.
const MAX_DRAIN: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("no input on stdin: expected apt's \"VERSION 3\" hook protocol")]
    Empty,
    #[error(
        "first line is {0:?}, not a \"VERSION 3\" header: is this hook wired with DPkg::Tools::Options::<command>::Version \"3\"?"
    )]
    NoHeader(String),
    #[error(
        "apt speaks hook protocol version {0}, drydock understands only 3: set DPkg::Tools::Options::<command>::Version \"3\""
    )]
    WrongVersion(String),
    #[error(
        "input ends inside the configuration section (no blank line after it): the planned package actions are unknown"
    )]
    Truncated,
    #[error("input is larger than {} MiB: refusing to guess what it contains", MAX_INPUT >> 20)]
    TooLarge,
}

/// A version as apt reports it; `None` in [`Action`] means "not installed".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PkgVersion {
    pub version: String,
    pub arch: String,
    pub multi_arch: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// `<`: old is older than new (or no old version).
    Up,
    /// `>`: old is newer than new (or no new version).
    Down,
    /// `=`: same version.
    Same,
    /// `**`: apt could not compare.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Unpack this .deb.
    Unpack(String),
    Configure,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    pub package: String,
    pub old: Option<PkgVersion>,
    pub direction: Direction,
    pub new: Option<PkgVersion>,
    pub op: Op,
}

/// A line that could not be understood, and the package names it might be about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based line number in the input.
    pub line: usize,
    pub reason: String,
    /// The start of the line, printable, for messages.
    pub excerpt: String,
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// How many `key=value` lines of apt's configuration were sent. drydock
    /// needs none of them, so they are checked, counted and not kept (the
    /// dump is hundreds of lines on every dpkg run).
    pub config_items: usize,
    pub actions: Vec<Action>,
    pub malformed: Vec<Malformed>,
}

/// Reads all of `input`, keeping at most `MAX_INPUT` bytes; the flag says
/// whether more was there (it is read and dropped).
pub(crate) fn read_all(mut input: impl Read) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut overflow = false;
    let mut drained = 0usize;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = MAX_INPUT - kept.len();
        if n > room {
            overflow = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
        drained += n;
        if drained > MAX_DRAIN {
            break;
        }
    }
    Ok((kept, overflow))
}

/// Parses a whole hook input.
pub fn parse(input: &[u8], overflow: bool) -> Result<Request, FrameError> {
    if overflow {
        return Err(FrameError::TooLarge);
    }
    if input.is_empty() {
        return Err(FrameError::Empty);
    }
    // A final newline ends the last line; it does not start an empty one.
    let body = input.strip_suffix(b"\n").unwrap_or(input);
    let mut lines = body.split(|&b| b == b'\n').enumerate();
    let header = lines.next().map(|(_, l)| l).unwrap_or_default();
    let header = trim_cr(header);
    if header != b"VERSION 3" {
        let text = excerpt(header);
        return match text.strip_prefix("VERSION ") {
            Some(v) => Err(FrameError::WrongVersion(v.trim().to_string())),
            None => Err(FrameError::NoHeader(text)),
        };
    }
    let mut request = Request::default();
    let mut ended = false;
    for (i, raw) in lines.by_ref() {
        let line = trim_cr(raw);
        if line.is_empty() {
            ended = true;
            break;
        }
        match config_line(line) {
            Some(_) => request.config_items += 1,
            None => request.malformed.push(malformed(
                i + 1,
                "not a key=value line in the configuration section",
                line,
            )),
        }
    }
    if !ended {
        return Err(FrameError::Truncated);
    }
    for (i, raw) in lines {
        let line = trim_cr(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match action_line(line) {
            Ok(action) => request.actions.push(action),
            Err(reason) => request.malformed.push(malformed(i + 1, &reason, line)),
        }
    }
    Ok(request)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `key=value` with a non-empty key free of whitespace and control bytes;
/// the value is anything (apt %-quotes what it must).
fn config_line(line: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(line).ok()?;
    let (key, value) = text.split_once('=')?;
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some((key, value))
}

fn action_line(line: &[u8]) -> Result<Action, String> {
    if line.len() > MAX_ACTION_LINE {
        return Err(format!(
            "action line is {} bytes long (limit {MAX_ACTION_LINE})",
            line.len()
        ));
    }
    let text = std::str::from_utf8(line).map_err(|_| "action line is not UTF-8".to_string())?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err("action line contains control characters".into());
    }
    let fields: Vec<&str> = text.splitn(9, [' ', '\t']).collect();
    let [
        name,
        old_v,
        old_a,
        old_ma,
        dir,
        new_v,
        new_a,
        new_ma,
        action,
    ] = fields[..]
    else {
        return Err(format!(
            "action line has {} fields, expected 9 (name, old version/arch/multi-arch, direction, new version/arch/multi-arch, action)",
            fields.len()
        ));
    };
    if !is_package_name(name) {
        return Err(format!("{name:?} is not a Debian package name"));
    }
    let version = |v: &str, a: &str, ma: &str, which: &str| -> Result<Option<PkgVersion>, String> {
        if v == "-" {
            return Ok(None);
        }
        if !is_version(v) {
            return Err(format!("{which} version {v:?} is not a Debian version"));
        }
        if a.is_empty() || ma.is_empty() {
            return Err(format!("{which} architecture or multi-arch field is empty"));
        }
        Ok(Some(PkgVersion {
            version: v.to_string(),
            arch: a.to_string(),
            multi_arch: ma.to_string(),
        }))
    };
    let old = version(old_v, old_a, old_ma, "old")?;
    let new = version(new_v, new_a, new_ma, "new")?;
    let direction = match dir {
        "<" => Direction::Up,
        ">" => Direction::Down,
        "=" => Direction::Same,
        "**" => Direction::Unknown,
        other => return Err(format!("direction {other:?} is not one of <, >, =, **")),
    };
    let action = action.trim_end();
    let op = match action {
        "**CONFIGURE**" => Op::Configure,
        "**REMOVE**" => Op::Remove,
        "" => return Err("action (the .deb path, **CONFIGURE** or **REMOVE**) is empty".into()),
        s if s.starts_with("**") => return Err(format!("unknown action {s:?}")),
        path => Op::Unpack(path.to_string()),
    };
    match (&op, &new, &old) {
        (Op::Unpack(_), None, _) => Err("a .deb to unpack without a new version".into()),
        (Op::Remove, _, None) => Err("a removal of a package that is not installed".into()),
        _ => Ok(Action {
            package: name.to_string(),
            old,
            direction,
            new,
            op,
        }),
    }
}

/// Debian policy 5.6.1, plus the `:arch` qualifier apt may add.
fn is_package_name(name: &str) -> bool {
    let bare = name.split_once(':').map_or(name, |(n, _)| n);
    bare.len() >= 2
        && bare.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && bare
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
}

fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(120)]);
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn malformed(line: usize, reason: &str, text: &[u8]) -> Malformed {
    Malformed {
        line,
        reason: reason.to_string(),
        excerpt: excerpt(text),
        candidates: candidates(text),
    }
}

/// The package a `.deb` path names by apt's convention
/// (`.../name_version_arch.deb`), lowercased; `None` when it is not a .deb.
pub(crate) fn deb_file_package(path: &str) -> Option<String> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.strip_suffix(".deb")?;
    let name = stem.split('_').next().unwrap_or(stem);
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// Every word of a line that might be a package name: plain words (without
/// `:arch`), and the name part of `.../name_version_arch.deb` paths.
fn candidates(line: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(line).to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == '=' || c.is_control()) {
        let base = word.rsplit('/').next().unwrap_or(word);
        let name = if base.ends_with(".deb") {
            base.split('_').next().unwrap_or(base)
        } else {
            base.split(':').next().unwrap_or(base)
        };
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "VERSION 3\n\
        APT::Architecture=amd64\n\
        APT::Build-Essential::=build-essential\n\
        DPkg::Tools::Options::/usr/bin/drydock::Version=3\n\
        \n\
        containerd 1.0-1 amd64 same < 2.0-1 amd64 same /var/cache/apt/archives/containerd_2.0-1_amd64.deb\n\
        hello - - none < 1.0-1 all none /tmp/repo/./hello_1.0-1_all.deb\n\
        kubeadm 1.34.1-1.1 all none > - - none **REMOVE**\n\
        hello - - none < 1.0-1 all none **CONFIGURE**\n\
        foo 1:2.0 all none = 1:2.0 all foreign /x/foo_1%3a2.0_all.deb\n";

    #[test]
    fn parses_a_real_shaped_request() {
        let r = parse(SAMPLE.as_bytes(), false).unwrap();
        assert_eq!(r.config_items, 3);
        assert_eq!(
            config_line(b"APT::Build-Essential::=build-essential"),
            Some(("APT::Build-Essential::", "build-essential"))
        );
        assert!(r.malformed.is_empty(), "{:?}", r.malformed);
        assert_eq!(r.actions.len(), 5);
        let c = &r.actions[0];
        assert_eq!(c.package, "containerd");
        assert_eq!(c.old.as_ref().unwrap().version, "1.0-1");
        assert_eq!(c.new.as_ref().unwrap().multi_arch, "same");
        assert_eq!(c.direction, Direction::Up);
        assert!(matches!(&c.op, Op::Unpack(p) if p.ends_with("containerd_2.0-1_amd64.deb")));
        assert_eq!(r.actions[1].old, None);
        assert_eq!(r.actions[2].op, Op::Remove);
        assert_eq!(r.actions[2].new, None);
        assert_eq!(r.actions[2].direction, Direction::Down);
        assert_eq!(r.actions[3].op, Op::Configure);
        assert_eq!(r.actions[4].direction, Direction::Same);
    }

    #[test]
    fn framing_errors() {
        assert_eq!(parse(b"", false), Err(FrameError::Empty));
        assert_eq!(parse(b"VERSION 3\n", true), Err(FrameError::TooLarge));
        assert_eq!(
            parse(b"VERSION 2\n\nfoo\n", false),
            Err(FrameError::WrongVersion("2".into()))
        );
        assert!(matches!(
            parse(b"/var/cache/apt/archives/x_1_all.deb\n", false),
            Err(FrameError::NoHeader(_))
        ));
        assert!(matches!(
            parse(b"\x7fELF\x00\x01\x02binary", false),
            Err(FrameError::NoHeader(h)) if !h.contains('\0')
        ));
        assert_eq!(parse(b"VERSION 3", false), Err(FrameError::Truncated));
        assert_eq!(parse(b"VERSION 3\n", false), Err(FrameError::Truncated));
        assert_eq!(
            parse(b"VERSION 3\nA=b\n", false),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            parse(b"VERSION 3\nA::B=c\nD=e", false),
            Err(FrameError::Truncated)
        );
    }

    #[test]
    fn header_with_crlf_and_no_actions() {
        let r = parse(b"VERSION 3\r\nA=b\r\n\r\n", false).unwrap();
        assert_eq!(r.config_items, 1);
        assert!(r.actions.is_empty());
    }

    #[test]
    fn extra_and_odd_config_lines_are_accepted() {
        let r = parse(b"VERSION 3\nX::Y=\nZ=a=b\nQuoted::%3d=%0a\n\n", false).unwrap();
        assert_eq!(r.config_items, 3);
        assert_eq!(config_line(b"Z=a=b"), Some(("Z", "a=b")));
        assert_eq!(config_line(b"X::Y="), Some(("X::Y", "")));
        for bad in [
            &b"=v"[..],
            b"a b=c",
            b"a\tb=c",
            b"a\x01=c",
            b"no-equals",
            b"\xff=1",
        ] {
            assert_eq!(config_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(config_line("k\u{a0}ey=v".as_bytes()), None);
        assert!(r.malformed.is_empty());
    }

    #[test]
    fn action_lines_in_the_config_section_are_malformed_with_candidates() {
        // No blank line after the config: the actions look like config.
        let r = parse(
            b"VERSION 3\nA=b\ncontainerd 1.0-1 all none = 1.0-1 all none /x.deb\n\n",
            false,
        )
        .unwrap();
        assert_eq!(r.malformed.len(), 1);
        assert_eq!(r.malformed[0].line, 3);
        assert!(
            r.malformed[0]
                .candidates
                .contains(&"containerd".to_string())
        );
    }

    #[test]
    fn malformed_action_lines() {
        let cases: &[&[u8]] = &[
            b"containerd 1.0-1 all none <",
            b"containerd 1.0-1 all none ? 2.0-1 all none /x.deb",
            b"Containerd - - none < 2.0-1 all none /x.deb",
            b"containerd - - none < - - none /x.deb",
            b"containerd - - none > - - none **REMOVE**",
            b"containerd - - none < 2.0-1 all none **FROB**",
            b"containerd - - none < v2 all none /x.deb",
            b"containerd - - none < 2.0-1 all none /x\x00.deb",
            b"containerd - - none < 2.0-1 all none \xff\xfe",
        ];
        for case in cases {
            let mut input = b"VERSION 3\nA=b\n\n".to_vec();
            input.extend_from_slice(case);
            input.push(b'\n');
            let r = parse(&input, false).unwrap();
            assert!(
                r.actions.is_empty(),
                "{:?} parsed",
                String::from_utf8_lossy(case)
            );
            assert_eq!(r.malformed.len(), 1);
            assert_eq!(r.malformed[0].line, 4);
            assert!(
                r.malformed[0]
                    .candidates
                    .contains(&"containerd".to_string()),
                "{:?}",
                r.malformed[0]
            );
        }
    }

    #[test]
    fn huge_action_line_is_malformed_but_names_are_found() {
        let mut input = b"VERSION 3\n\nkubelet - - none < 1 all none /".to_vec();
        input.extend(std::iter::repeat_n(b'a', 10_000));
        input.extend_from_slice(b"/kubeadm_1_all.deb\n");
        let r = parse(&input, false).unwrap();
        assert_eq!(r.malformed.len(), 1);
        assert!(r.malformed[0].reason.contains("bytes long"));
        assert!(r.malformed[0].excerpt.len() <= 120);
        let c = &r.malformed[0].candidates;
        assert!(c.contains(&"kubelet".to_string()) && c.contains(&"kubeadm".to_string()));
    }

    #[test]
    fn read_all_drains_and_flags_overflow() {
        let data = vec![b'x'; MAX_INPUT + 10];
        let (kept, overflow) = read_all(&data[..]).unwrap();
        assert_eq!(kept.len(), MAX_INPUT);
        assert!(overflow);
        let (kept, overflow) = read_all(&b"abc"[..]).unwrap();
        assert_eq!((kept.as_slice(), overflow), (&b"abc"[..], false));
    }
}
