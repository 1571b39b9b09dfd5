//! `drydock completions <shell>` and `drydock manpage`: generated from the
//! clap definition at package build time, so they never drift from the CLI.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// Shell to generate the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "drydock", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// The drydock(1) man page in roff.
pub fn render_manpage() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .section("1")
        .manual("drydock manual")
        .render(&mut out)?;
    Ok(out)
}

pub fn manpage() -> anyhow::Result<ExitCode> {
    let page = render_manpage().context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}
