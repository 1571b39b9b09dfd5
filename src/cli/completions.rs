//! `drydock completions <shell>` and `drydock manpage`: generated from the
//! clap definition at package build time, so they never drift from the CLI.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

#[derive(Debug, clap::Args)]
pub(crate) struct CompletionsArgs {
    /// Shell to generate the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "drydock", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ManpageArgs {
    /// 1: drydock(1), the commands; 5: drydock.toml(5), the configuration.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub section: u8,
}

/// Escapes text for a roff line (leading dots and quotes, backslashes).
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// The drydock(1) man page in roff. Subcommands are described in this page
/// (the package ships no per-subcommand pages to point at).
fn render_manpage() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .manual("drydock manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        writeln!(out, ".TP\n\\fBdrydock {}\\fR", roff(name))?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", roff(&about.to_string()))?;
        }
        for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            let about = nested
                .get_about()
                .map(|a| a.to_string())
                .unwrap_or_default();
            writeln!(
                out,
                ".br\n\\fBdrydock {} {}\\fR: {}",
                roff(name),
                roff(nested.get_name()),
                roff(&about)
            )?;
        }
    }
    writeln!(
        out,
        ".PP\nEach command takes \\fB\\-\\-help\\fR for its options."
    )?;
    writeln!(out, ".SH FILES")?;
    for (path, what) in FILES {
        writeln!(out, ".TP\n\\fI{}\\fR\n{}", roff(path), roff(what))?;
    }
    writeln!(
        out,
        ".SH \"SEE ALSO\"\n\\fBdrydock.toml\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBapt.conf\\fR(5), \\fBapt\\-mark\\fR(8)"
    )?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

const FILES: &[(&str, &str)] = &[
    (
        "/etc/drydock/drydock.toml",
        "the configuration, every key at its default; see drydock.toml(5)",
    ),
    (
        "/etc/drydock/drydock.toml.d/*.toml",
        "drop-ins, merged in lexical order",
    ),
    (
        "/etc/drydock/checks.d/",
        "post-reboot health checks: every executable must exit 0",
    ),
    (
        "/etc/apt/apt.conf.d/50drydock",
        "the APT hooks and unattended-upgrades settings",
    ),
    (
        "/var/lib/drydock/state.db",
        "state and history (SQLite, root only)",
    ),
    (
        "/run/drydock/",
        "the daemon's lock, wake-up and control sockets",
    ),
];

/// The shipped configuration file, the reference for every key.
const SHIPPED_CONFIG: &str = include_str!("../../etc/drydock.toml");

/// drydock.toml(5): the configuration format, with the shipped file (every
/// key at its default, each explained) as its reference.
fn render_config_manpage() -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut out = String::new();
    out.push_str(&format!(
        ".TH DRYDOCK.TOML 5 \"\" \"drydock {version}\" \"drydock manual\"\n"
    ));
    out.push_str(".SH NAME\ndrydock.toml \\- drydock configuration\n");
    out.push_str(".SH SYNOPSIS\n\\fI/etc/drydock/drydock.toml\\fR\n.br\n\\fI/etc/drydock/drydock.toml.d/*.toml\\fR\n");
    out.push_str(
        ".SH DESCRIPTION\nThe configuration of \\fBdrydock\\fR(1) is TOML: the main file, then every \\fI*.toml\\fR drop-in of \\fIdrydock.toml.d\\fR in lexical order, later keys winning. \
         Unknown keys and bad values are errors naming file, line, column and key; \\fBdrydock check\\-config\\fR checks the result, and \\fBsystemctl reload drydock\\fR applies it (a bad file is refused and the running settings stay). \
         Durations are written like \"90s\", \"30m\", \"24h\" or \"1h 30m\".\n",
    );
    out.push_str(".SH \"KEYS AND DEFAULTS\"\nThe shipped file, every key at its default with what it does:\n.PP\n.nf\n");
    for line in SHIPPED_CONFIG.lines() {
        out.push_str(&roff(line));
        out.push('\n');
    }
    out.push_str(".fi\n.SH \"SEE ALSO\"\n\\fBdrydock\\fR(1)\n");
    out.into_bytes()
}

pub(crate) fn manpage(args: &ManpageArgs) -> anyhow::Result<ExitCode> {
    let page = match args.section {
        1 => render_manpage().context("rendering the man page")?,
        5 => render_config_manpage(),
        other => anyhow::bail!("no drydock page in section {other} (there are 1 and 5)"),
    };
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_point_only_at_pages_that_exist() {
        let page = String::from_utf8(render_manpage().unwrap()).unwrap();
        assert!(
            page.contains("drydock check\\-config"),
            "commands are described inline"
        );
        // No drydock-<subcommand>(1) pages are shipped.
        assert!(!page.contains("drydock\\-check\\-config(1)"), "{page}");
        assert!(page.contains("drydock.toml\\fR(5)"), "{page}");
        for (i, _) in page.match_indices("(1)") {
            let before = &page[..i];
            assert!(
                ["systemctl\\fR", "journalctl\\fR", " drydock"]
                    .iter()
                    .any(|p| before.ends_with(p)),
                "a section-1 reference to a page not shipped: {}",
                &before[before.len().saturating_sub(40)..]
            );
        }

        let five = String::from_utf8(render_config_manpage()).unwrap();
        assert!(five.starts_with(".TH DRYDOCK.TOML 5"), "{five}");
        assert!(
            five.contains("kubeconfig = \"/etc/kubernetes/kubelet.conf\""),
            "{five}"
        );
        // No line of the embedded file may start a roff request.
        for line in five
            .lines()
            .skip_while(|l| *l != ".nf")
            .skip(1)
            .take_while(|l| *l != ".fi")
        {
            assert!(!line.starts_with('.') && !line.starts_with('\''), "{line}");
        }
    }
}
