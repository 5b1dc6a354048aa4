//! Shell completions and the manual page, generated from the command line's own definition
//! ([`Cli`](crate::cli::Cli)) by clap's companion crates, `clap_complete` and `clap_mangen`,
//! so they always list exactly the subcommands and flags the binary parses.
//!
//! ```text
//! source <(mirrord-net completions bash)          # or: > /etc/bash_completion.d/mirrord-net
//! mirrord-net completions zsh > "${fpath[1]}/_mirrord-net"
//! mirrord-net completions fish > ~/.config/fish/completions/mirrord-net.fish
//! mirrord-net man | man -l -                      # or: > /usr/local/share/man/man1/mirrord-net.1
//! ```
//!
//! The man page is `mirrord-net(1)`: the synopsis, every subcommand, and the session's flags
//! (those of `exec`, which `shell` and `env` share) as its OPTIONS.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The program's name in completions and the man page: what users type.
const NAME: &str = "mirrord-net";

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, NAME, &mut script);
    if shell == Shell::Bash {
        // clap_complete's bash script names a subcommand's state `mirrord__net__subcmd__exec`
        // where it walks the words, but `mirrord__subcmd__net__subcmd__exec` where it offers
        // the subcommand's flags (the `-` of the program's name read as a separator in one
        // place only), so no subcommand's flags would complete. One spelling for both.
        let text = String::from_utf8_lossy(&script).replace("mirrord__subcmd__net", "mirrord__net");
        script = text.into_bytes();
    }
    out.write_all(&script)
}

/// Writes `mirrord-net(1)` as roff: the top level (synopsis, description, subcommands), then
/// one section per subcommand with its own options.
pub fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let command = Cli::command();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_subcommands_section(out)?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        // clap takes static names; the page is printed once and the process exits.
        let name: &'static str = Box::leak(format!("{NAME} {}", sub.get_name()).into_boxed_str());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let sub_man = clap_mangen::Man::new(sub.clone().name(name).bin_name(""));
        let mut section = Vec::new();
        sub_man.render_synopsis_section(&mut section)?;
        sub_man.render_description_section(&mut section)?;
        sub_man.render_options_section(&mut section)?;
        // Each subcommand's parts become sub-sections of its section.
        let text = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        out.write_all(text.as_bytes())?;
    }
    man.render_version_section(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for word in ["exec", "shell", "env", "ls", "completions", "--target"] {
                assert!(text.contains(word), "{shell:?} lacks {word}:\n{text}");
            }
            assert!(
                !text.contains("mirrord__subcmd__net"),
                "{shell:?}: one state name"
            );
        }
    }

    #[test]
    fn the_man_page_has_a_section_per_subcommand() {
        let mut out = Vec::new();
        man_page(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{text}");
        assert!(text.contains(".TH mirrord-net 1"), "{text}");
        for section in ["NAME", "SYNOPSIS", "SUBCOMMANDS", "\"MIRRORD-NET EXEC\""] {
            assert!(
                text.contains(&format!(".SH {section}")),
                "no {section}:\n{text}"
            );
        }
        assert!(text.contains("no\\-target\\-localhost"), "{text}");
    }
}
