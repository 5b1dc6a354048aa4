//! `-f/--config FILE`: a session's flags from a file, and mirrord's own configuration.
//!
//! A configuration file is *translated into the flags it stands for*, which clap then parses
//! exactly as it parses the command line. So the file can hold nothing a flag cannot, its
//! values meet the same checks with the same messages, and every setting has one meaning and
//! one name. What the command line gives (a flag, or the environment variable that stands for
//! it) wins: a setting the command line already has is not taken from the file.
//!
//! Two vocabularies, in one file or apart:
//!
//! * **mirrord-net's own**: every long flag of `exec`/`shell`/`env`, by its name with `-` or
//!   `_` (`"steal": [8080]`, `"http_header_filter": "…"`, `"as_root": true`). A list is the
//!   flag repeated, `true` is a switch, `false` leaves it off. Found by asking clap, so a new
//!   flag is a new key without a line here.
//! * **mirrord's** (`.mirrord/mirrord.json`): `target` (a path such as
//!   `pod/api/container/app`, or `{path, namespace}`), `feature.network.incoming`,
//!   `feature.env`, `feature.fs`, `agent`, `kubeconfig`, `kube_context`, translated by
//!   [`mirrord`] below into the same flags.
//!
//! JSON, or TOML for a file named `*.toml`. A malformed file is one error with its line and
//! column; a key that is neither vocabulary's, or a mirrord key mirrord-net has no feature for,
//! is one warning naming it, and the rest of the file still counts.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use serde_json::{Map, Value};

/// A file that cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    Read(PathBuf, std::io::Error),
    /// Not JSON (or TOML): where and why.
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed, but a value has the wrong shape (`"steal": "yes"`).
    Value {
        path: PathBuf,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(path, err) => {
                write!(
                    f,
                    "cannot read the configuration file {}: {err}",
                    path.display()
                )
            }
            ConfigError::Syntax {
                path,
                line,
                column,
                message,
            } => write!(f, "{}:{line}:{column}: {message}", path.display()),
            ConfigError::Value { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// How one of the session's flags takes values, as clap declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagShape {
    Switch,
    /// Said several times to count (`-vv`): a number in the file.
    Count,
    Value,
}

impl FlagShape {
    /// The shape of a clap argument.
    pub fn of(arg: &clap::Arg) -> Self {
        match arg.get_action() {
            clap::ArgAction::Count => FlagShape::Count,
            action if action.takes_values() => FlagShape::Value,
            _ => FlagShape::Switch,
        }
    }
}

/// Reads and translates `path`. `flag_shape` answers for the long flags of the subcommand.
pub fn load(
    path: &Path,
    flag_shape: &dyn Fn(&str) -> Option<FlagShape>,
) -> Result<Translation, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read(path.into(), err))?;
    let document = parse(path, &text)?;
    translate(&document, flag_shape).map_err(|message| ConfigError::Value {
        path: path.into(),
        message,
    })
}

/// JSON, or TOML when the file's name ends in `.toml`.
fn parse(path: &Path, text: &str) -> Result<Value, ConfigError> {
    let syntax = |line, column, message: String| ConfigError::Syntax {
        path: path.into(),
        line,
        column,
        message,
    };
    let is_toml = path.extension().is_some_and(|ext| ext == "toml");
    let value = if is_toml {
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            syntax(line, column, err.message().to_owned())
        })?;
        serde_json::to_value(table).map_err(|err| ConfigError::Value {
            path: path.into(),
            message: err.to_string(),
        })?
    } else {
        serde_json::from_str(text).map_err(|err| {
            // serde_json's message ends with " at line L column C": said once, in front.
            let message = err.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(head, _)| head)
                .to_owned();
            syntax(err.line(), err.column(), message)
        })?
    };
    if !value.is_object() {
        return Err(syntax(1, 1, "the configuration must be an object".into()));
    }
    Ok(value)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, tail)| tail)
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The keys of mirrord's configuration that mirrord-net reads (`mirrord::translate`).
const MIRRORD_KEYS: &[&str] = &["target", "feature", "agent", "kubeconfig", "kube_context"];

/// mirrord's other top-level keys: features mirrord-net does not have (one warning each).
const MIRRORD_UNSUPPORTED: &[&str] = &[
    "accept_invalid_certificates",
    "connect_tcp",
    "container",
    "experimental",
    "external_proxy",
    "internal_proxy",
    "kill_exisiting",
    "operator",
    "pause",
    "sip_binaries",
    "skip_build_tools",
    "skip_extra_build_tools",
    "skip_processes",
    "skip_sip",
    "telemetry",
    "use_proxy",
];

/// The translation itself, on a parsed document.
pub fn translate(
    document: &Value,
    flag_shape: &dyn Fn(&str) -> Option<FlagShape>,
) -> Result<Translation, String> {
    let mut out = Translation::default();
    let Some(object) = document.as_object() else {
        return Err("the configuration must be an object".into());
    };
    let mut mirrord_part = Map::new();
    for (key, value) in object {
        let flag = key.replace('_', "-");
        // `target`, `agent` and `kubeconfig` are words of both vocabularies: mirrord's shapes
        // (an object, a target path naming a container) go the mirrord way.
        let mirrord_shaped = value.is_object()
            || value
                .as_str()
                .is_some_and(|s| s.contains("/container/") || s == "targetless")
            || flag_shape(&flag).is_none();
        if MIRRORD_KEYS.contains(&key.as_str()) && mirrord_shaped {
            mirrord_part.insert(key.clone(), value.clone());
        } else if let Some(shape) = flag_shape(&flag) {
            own_setting(&flag, shape, value, &mut out.settings)?;
        } else if MIRRORD_UNSUPPORTED.contains(&key.as_str()) {
            out.warnings.push(format!(
                "{key}: mirrord's setting has no mirrord-net counterpart; ignored"
            ));
        } else {
            out.warnings.push(format!("{key}: unknown key; ignored"));
        }
    }
    mirrord::translate(&mirrord_part, &mut out)?;
    Ok(out)
}

/// A key of mirrord-net's own vocabulary: the flag of that name.
fn own_setting(
    flag: &str,
    shape: FlagShape,
    value: &Value,
    settings: &mut Vec<Setting>,
) -> Result<(), String> {
    match (shape, value) {
        (FlagShape::Switch, Value::Bool(true)) => settings.push(Setting::switch(flag)),
        (FlagShape::Switch, Value::Bool(false)) => {}
        (FlagShape::Switch, other) => {
            return Err(format!("{flag}: expected true or false, found {other}"))
        }
        (FlagShape::Count, value) => {
            let count = match value {
                Value::Bool(set) => u64::from(*set),
                other => other.as_u64().filter(|n| *n <= 8).ok_or_else(|| {
                    format!("{flag}: expected a count from 0 to 8, found {other}")
                })?,
            };
            settings.extend((0..count).map(|_| Setting::switch(flag)));
        }
        (FlagShape::Value, Value::Array(items)) => {
            let values = items
                .iter()
                .map(|item| scalar(item).ok_or_else(|| format!("{flag}: {item} is not a value")))
                .collect::<Result<Vec<_>, _>>()?;
            if !values.is_empty() {
                settings.push(Setting::values(flag, values));
            }
        }
        (FlagShape::Value, Value::Object(map)) if flag == "env" => {
            // `"env": {"NAME": "VALUE"}` reads better than a list of assignments.
            let values = map
                .iter()
                .map(|(name, v)| {
                    scalar(v)
                        .map(|v| format!("{name}={v}"))
                        .ok_or_else(|| format!("env.{name}: {v} is not a value"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            settings.push(Setting::values(flag, values));
        }
        (FlagShape::Value, other) => match scalar(other) {
            Some(value) => settings.push(Setting::value(flag, value)),
            None => return Err(format!("{flag}: {other} is not a value")),
        },
    }
    Ok(())
}

/// mirrord's configuration, read for every feature mirrord-net has.
mod mirrord;
mod translation;

use translation::scalar;
pub use translation::{Setting, Translation};

/// The command line with the configuration file's flags in it, or `argv` unchanged when no
/// `-f/--config` is given. `command` is the whole command line's clap command; a subcommand's
/// `target` is taken as optional here (the file may give it), and the caller parses the
/// returned command line as usual, where it is required again.
pub fn merge_into_command_line(
    command: clap::Command,
    argv: Vec<OsString>,
) -> Result<Vec<OsString>, MergeError> {
    let command = command
        .mut_subcommand("exec", optional_target)
        .mut_subcommand("shell", optional_target)
        .mut_subcommand("env", optional_target)
        .mut_subcommand("up", optional_target);
    let matches = command
        .clone()
        .try_get_matches_from(argv.clone())
        .map_err(MergeError::Usage)?;
    let Some((name, sub_matches)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(Some(path)) = sub_matches
        .try_get_one::<PathBuf>("config")
        .ok()
        .map(|p| p.cloned())
    else {
        return Ok(argv);
    };
    let sub_command = command
        .find_subcommand(name)
        .expect("clap matched this subcommand");
    let flag_shape = |flag: &str| {
        sub_command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag))
            .map(FlagShape::of)
    };
    let translation = load(&path, &flag_shape).map_err(MergeError::Config)?;
    for warning in &translation.warnings {
        eprintln!("mirrord-net: warning: {}: {warning}", path.display());
    }
    let given_on_command_line = |flag: &str| {
        sub_command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag))
            .is_some_and(|arg| {
                matches!(
                    sub_matches.value_source(arg.get_id().as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
    };
    let from_file: Vec<OsString> = translation
        .settings
        .iter()
        .filter(|setting| flag_shape(&setting.flag).is_some())
        .filter(|setting| !given_on_command_line(&setting.flag))
        .flat_map(Setting::tokens)
        .collect();
    for setting in &translation.settings {
        if flag_shape(&setting.flag).is_none() {
            // A mirrord setting whose flag this subcommand lacks (never for exec and shell).
            eprintln!(
                "mirrord-net: warning: {}: --{} does not apply to `{name}`; ignored",
                path.display(),
                setting.flag
            );
        }
    }
    // Right after the subcommand's name: before a trailing command and its own arguments.
    let at = argv
        .iter()
        .position(|arg| arg == name)
        .map_or(argv.len(), |i| i + 1);
    let mut merged = argv;
    merged.splice(at..at, from_file);
    Ok(merged)
}

fn optional_target(command: clap::Command) -> clap::Command {
    // `--target` is required unless `--session` is given: both rules go for this pass.
    command.mut_arg("target", |arg| {
        arg.required(false)
            .required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)
    })
}

/// Why a command line with a configuration file cannot be parsed.
#[derive(Debug)]
pub enum MergeError {
    /// The command line itself is wrong (clap's own message, help and version included).
    Usage(clap::Error),
    Config(ConfigError),
}

#[cfg(test)]
mod tests;
