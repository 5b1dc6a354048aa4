//! The command's environment: the flags that shape it, and its composition for a session;
//! `mirrord-net env` prints it ([`env_command`](crate::env_command)).
//!
//! The rules live in the `mirrord-net-env-injector` crate (no I/O); this module feeds it the
//! local environment, the target's (from the agent's hello) and the flags, and splits the
//! result the way the session applies it: the base environment (local overlaid with the
//! target's) goes into [`SessionSpec::env`](mirrord_net_session::SessionSpec::env), the
//! `--env-file`/`-e` assignments into `env_overrides`, which the session sets after HOME,
//! USER and LOGNAME of the user the command runs as. `mirrord-net env` composes the same
//! pieces with the same function as the session ([`mirrord_net_session::command_env`]), so what it
//! prints is what the command gets.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use mirrord_net_env_injector::{self as injector, dotenv, Filter, Pattern, Var};

/// The environment flags of `exec`, `shell` and `env`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EnvArgs {
    /// Take only the target's variables whose names match PATTERN (`*`, `?`, `\`; repeatable).
    #[arg(long = "env-include", value_name = "PATTERN", value_parser = RawParser(parse_pattern))]
    pub include: Vec<Pattern>,
    /// Do not take the target's variables whose names match PATTERN; wins over --env-include
    /// (repeatable).
    #[arg(long = "env-exclude", value_name = "PATTERN", value_parser = RawParser(parse_pattern))]
    pub exclude: Vec<Pattern>,
    /// Set NAME to VALUE for the command, over everything else (repeatable; the last wins).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = RawParser(parse_assignment))]
    pub set: Vec<Var>,
    /// Set the variables of a dotenv FILE (repeatable, in order; -e wins over them).
    #[arg(long = "env-file", value_name = "FILE", value_parser = RawParser(parse_env_file))]
    pub files: Vec<EnvFile>,
}

/// A dotenv file, read and parsed while the command line is (so a bad one stops everything
/// before anything starts, with a usage error).
#[derive(Debug, Clone)]
pub struct EnvFile {
    pub path: PathBuf,
    pub vars: Vec<Var>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EnvFormat {
    Dotenv,
    Json,
}

/// The command's environment as the session applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnv {
    /// The local environment overlaid with the target's, filtered.
    pub base: Vec<Var>,
    /// `--env-file` assignments in file order, then `-e` ones: set last.
    pub overrides: Vec<Var>,
}

impl CommandEnv {
    /// Composes `local` with the target's `environ` as `args` say.
    pub fn compose(args: &EnvArgs, local: Vec<Var>, environ: &[Var]) -> CommandEnv {
        let filter = Filter::new(args.include.clone(), args.exclude.clone());
        let overrides = args
            .files
            .iter()
            .flat_map(|file| file.vars.iter().cloned())
            .chain(args.set.iter().cloned())
            .collect();
        CommandEnv {
            base: injector::compose(local, environ, &filter),
            overrides,
        }
    }

    /// Composes this process's environment with the target's.
    pub fn for_target(args: &EnvArgs, environ: &[Var]) -> CommandEnv {
        let local = std::env::vars_os()
            .map(|(name, value)| (name.into_vec(), value.into_vec()))
            .collect();
        CommandEnv::compose(args, local, environ)
    }

    /// The base environment as [`SessionSpec::env`](mirrord_net_session::SessionSpec::env) takes it.
    pub fn base_os(&self) -> Vec<(OsString, OsString)> {
        to_os(&self.base)
    }

    pub fn overrides_os(&self) -> Vec<(OsString, OsString)> {
        to_os(&self.overrides)
    }
}

fn to_os(vars: &[Var]) -> Vec<(OsString, OsString)> {
    vars.iter()
        .map(|(name, value)| {
            (
                OsStr::from_bytes(name).to_owned(),
                OsStr::from_bytes(value).to_owned(),
            )
        })
        .collect()
}

/// A clap value parser from a function of the flag's raw bytes; its error becomes a usage
/// error naming the flag.
#[derive(Clone)]
struct RawParser<T>(fn(&OsStr) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for RawParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        (self.0)(value).map_err(|why| invalid(cmd, arg, why))
    }
}

fn parse_pattern(value: &OsStr) -> Result<Pattern, String> {
    Pattern::parse(value.as_bytes()).map_err(|err| err.to_string())
}

fn parse_assignment(value: &OsStr) -> Result<Var, String> {
    injector::parse_assignment(value.as_bytes()).map_err(|err| err.to_string())
}

/// Reads and parses the file while the command line is parsed, so a bad file is a usage error
/// before anything starts.
fn parse_env_file(value: &OsStr) -> Result<EnvFile, String> {
    let path = PathBuf::from(value);
    let contents =
        std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let vars = dotenv::parse(&contents).map_err(|err| format!("{} {err}", path.display()))?;
    Ok(EnvFile { path, vars })
}

/// A usage error (exit code 2) naming the flag and what is wrong with its value.
fn invalid(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    why: impl std::fmt::Display,
) -> clap::Error {
    let flag = arg
        .and_then(|arg| arg.get_long())
        .map_or_else(String::new, |long| format!("--{long}: "));
    clap::Error::raw(ErrorKind::ValueValidation, format!("{flag}{why}\n")).with_cmd(cmd)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn var(name: &str, value: &str) -> Var {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    fn env_args(flags: &[&str]) -> EnvArgs {
        let mut argv = vec!["mirrord-net", "exec", "--target", "pid/1"];
        argv.extend_from_slice(flags);
        argv.extend_from_slice(&["--", "true"]);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Exec { session, .. } => session.env,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_repeat_and_keep_their_order() {
        let args = env_args(&[
            "--env-include",
            "APP_*",
            "--env-include",
            "DB_?",
            "--env-exclude",
            "APP_SECRET",
            "-e",
            "A=1",
            "--env",
            "A=2=3",
        ]);
        let include: Vec<_> = args.include.iter().map(Pattern::as_str).collect();
        assert_eq!(include, ["APP_*", "DB_?"]);
        assert_eq!(args.exclude.len(), 1);
        assert_eq!(args.set, [var("A", "1"), var("A", "2=3")]);
    }

    #[test]
    fn bad_flag_values_are_usage_errors_naming_the_flag() {
        let argv = [
            "mirrord-net",
            "exec",
            "--target",
            "pid/1",
            "-e",
            "NOEQUALS",
            "--",
            "true",
        ];
        let err = Cli::try_parse_from(argv).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("--env: \"NOEQUALS\" is not NAME=VALUE"),
            "{err}"
        );
        let argv = [
            "mirrord-net",
            "shell",
            "--target",
            "pid/1",
            "--env-exclude",
            "A=B",
        ];
        let err = Cli::try_parse_from(argv).unwrap_err();
        assert!(err.to_string().contains("--env-exclude: pattern"), "{err}");
    }

    #[test]
    fn env_file_is_read_while_parsing_and_errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("mnet-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.env");
        std::fs::write(&good, "A=1\nexport B='two'\n").unwrap();
        let bad = dir.join("bad.env");
        std::fs::write(&bad, "A=1\n2B=x\n").unwrap();

        let args = env_args(&["--env-file", good.to_str().unwrap()]);
        assert_eq!(args.files[0].vars, [var("A", "1"), var("B", "two")]);

        let argv = [
            "mirrord-net",
            "exec",
            "--target",
            "pid/1",
            "--env-file",
            bad.to_str().unwrap(),
            "--",
            "true",
        ];
        let err = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(
            err.contains(&format!("--env-file: {} line 2:", bad.display())),
            "{err}"
        );
        let missing = dir.join("missing.env");
        let argv = [
            "mirrord-net",
            "exec",
            "--target",
            "pid/1",
            "--env-file",
            missing.to_str().unwrap(),
            "--",
            "true",
        ];
        let err = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_come_before_dash_e_in_the_overrides() {
        let args = EnvArgs {
            files: vec![EnvFile {
                path: "f".into(),
                vars: vec![var("A", "file"), var("B", "file")],
            }],
            set: vec![var("A", "flag")],
            ..EnvArgs::default()
        };
        let env = CommandEnv::compose(
            &args,
            vec![var("HOME", "/home/me")],
            &[var("HOME", "/root"), var("X", "pod")],
        );
        assert_eq!(env.base, [var("HOME", "/home/me"), var("X", "pod")]);
        assert_eq!(
            env.overrides,
            [var("A", "file"), var("B", "file"), var("A", "flag")]
        );
    }
}
