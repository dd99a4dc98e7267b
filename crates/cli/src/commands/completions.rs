//! `pitr completions SHELL` and `pitr man`: a shell's completion script and the manual page,
//! generated from the same clap definitions as the command line itself. Neither needs a
//! repository or a configuration file.

use std::io::Write as _;

use clap::CommandFactory;
use pitr_settings::cli::{Cli, CompletionShell};

/// The completion script for `shell`, as bytes.
pub fn script(shell: CompletionShell) -> Vec<u8> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pitr", &mut out);
    out
}

/// The manual page pitr(1), in roff.
pub fn man_page() -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| anyhow::anyhow!("render the manual page: {e}"))?;
    Ok(out)
}

pub fn completions(shell: CompletionShell) -> anyhow::Result<()> {
    write_out(&script(shell))
}

pub fn man() -> anyhow::Result<()> {
    write_out(&man_page()?)
}

fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(crate::stdout_failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_page_come_from_the_command_line() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let text = String::from_utf8(script(shell)).unwrap();
            assert!(text.contains("restore-wal"), "{shell:?}: {text}");
            assert!(text.contains("allow-root"), "{shell:?}");
        }
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(man.contains(".TH"), "{man}");
        assert!(
            man.contains("restore\\-wal") || man.contains("restore-wal"),
            "{man}"
        );
    }
}
