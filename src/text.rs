//! Text from outside (operator reasons, cluster annotations, file contents,
//! error messages) made safe to show: control characters escaped so nothing
//! can move a terminal's cursor, forge a journal line or a second sd_notify
//! assignment, and length bounded so one value cannot flood a message.
//!
//! Every place that shows such text goes through here.

use std::borrow::Cow;

/// The longest reason `drydock pause` / `drydock reboot` accept (characters).
pub const MAX_REASON: usize = 200;
/// How much of a value an error message quotes (characters).
pub(crate) const MAX_QUOTED: usize = 80;
/// How long one error message may get (characters).
const MAX_MESSAGE: usize = 1000;

/// Characters a terminal or log viewer may interpret: C0/C1 controls, DEL,
/// and the Unicode bidirectional overrides that reorder what is displayed.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character written as a Rust-style escape (`\n`,
/// `\u{1b}`); borrowed when nothing needed escaping.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max` characters of `s`; a cut is marked with how long it was.
pub(crate) fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => Cow::Owned(format!("{}... ({} bytes in all)", &s[..cut], s.len())),
    }
}

/// Escaped, then bounded: what to put in a status line, an Event, a chat
/// message, or a log field.
pub(crate) fn display(s: &str, max: usize) -> String {
    // Truncate first so a huge value is not escaped whole; the escape then
    // adds at most a small factor.
    truncate(&escape(&truncate(s, max)), max + 40).into_owned()
}

/// A value quoted for an error message: `"..."`, escaped, at most
/// [`MAX_QUOTED`] characters of it.
pub(crate) fn quote(s: &str) -> String {
    format!("\"{}\"", display(s, MAX_QUOTED).replace('"', "\\\""))
}

/// Checks an operator's reason (`pause`, `reboot`): one line of printable
/// text, at most [`MAX_REASON`] characters. Used as a clap value parser.
pub(crate) fn reason(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if let Some(c) = trimmed.chars().find(|&c| is_unsafe(c)) {
        return Err(format!(
            "the reason contains the control character {}: give one line of plain text",
            c.escape_default()
        ));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_REASON {
        return Err(format!(
            "the reason is {chars} characters long: at most {MAX_REASON} are kept in the state and shown in status lines"
        ));
    }
    Ok(trimmed.to_string())
}

/// [`reason`] for clap (`value_parser = ReasonParser`). Its own error text:
/// clap's default would echo the refused value, escape sequences and all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReasonParser;

impl clap::builder::TypedValueParser for ReasonParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --reason: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("it is not UTF-8".into()))?;
        reason(text).map_err(refuse)
    }
}

/// An error and its causes on one line, each cause once: a cause whose text
/// the message already contains (thiserror messages often embed their
/// source) is not repeated. Escaped and bounded.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    display(&out, MAX_MESSAGE)
}

/// As [`error_chain`] for an `anyhow::Error` (its context layers included).
pub(crate) fn anyhow_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    display(&out, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_control_and_bidi_character() {
        assert_eq!(escape("plain text"), "plain text");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(
            escape("\u{1b}]8;;http://x\u{7}"),
            "\\u{1b}]8;;http://x\\u{7}"
        );
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        assert_eq!(escape("ünïcödé ✓"), "ünïcödé ✓");
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 2), "éé... (10 bytes in all)");
        let huge = "x".repeat(5 << 20);
        let shown = display(&huge, 80);
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with("(5242880 bytes in all)"), "{shown}");
        let q = quote("a\"b\nc");
        assert_eq!(q, "\"a\\\"b\\nc\"");
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(reason("  kernel bug  ").unwrap(), "kernel bug");
        assert!(reason("a\nb").unwrap_err().contains("\\n"));
        assert!(reason("\u{1b}[2J").is_err());
        assert!(reason(&"x".repeat(MAX_REASON)).is_ok());
        assert!(
            reason(&"x".repeat(MAX_REASON + 1))
                .unwrap_err()
                .contains("201")
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}: {source}")]
    struct Outer {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn chains_name_each_cause_once() {
        let e = Outer {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        let shown = error_chain(&e);
        assert_eq!(shown.matches("os error 2").count(), 1, "{shown}");
        let a = anyhow::Error::new(e).context("loading configuration");
        let shown = anyhow_chain(&a);
        assert!(
            shown.starts_with("loading configuration: reading /x: "),
            "{shown}"
        );
        assert_eq!(shown.matches("os error 2").count(), 1, "{shown}");
    }
}
