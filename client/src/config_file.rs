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

/// One flag the file stands for: its long name and its values (none for a switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub flag: String,
    pub values: Vec<String>,
}

impl Setting {
    fn switch(flag: &str) -> Self {
        Self {
            flag: flag.to_owned(),
            values: Vec::new(),
        }
    }

    fn value(flag: &str, value: impl Into<String>) -> Self {
        Self {
            flag: flag.to_owned(),
            values: vec![value.into()],
        }
    }

    fn values(flag: &str, values: Vec<String>) -> Self {
        Self {
            flag: flag.to_owned(),
            values,
        }
    }

    /// The command-line tokens: `--flag` for a switch, `--flag=VALUE` per value (with `=`, so a
    /// value that starts with `-` stays a value).
    fn tokens(&self) -> Vec<OsString> {
        if self.values.is_empty() {
            return vec![format!("--{}", self.flag).into()];
        }
        self.values
            .iter()
            .map(|value| format!("--{}={value}", self.flag).into())
            .collect()
    }
}

/// What a file says: the flags, in the file's order, and one warning per key that counts for
/// nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    pub settings: Vec<Setting>,
    pub warnings: Vec<String>,
}

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

/// A string, number or boolean as the flag's text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// mirrord's configuration, read for every feature mirrord-net has.
mod mirrord {
    use super::{scalar, Map, Setting, Translation, Value};

    pub(super) fn translate(
        config: &Map<String, Value>,
        out: &mut Translation,
    ) -> Result<(), String> {
        if let Some(target) = config.get("target") {
            self::target(target, out)?;
        }
        if let Some(value) = config.get("kubeconfig") {
            out.settings
                .push(Setting::value("kubeconfig", text("kubeconfig", value)?));
        }
        if let Some(value) = config.get("kube_context") {
            out.settings
                .push(Setting::value("context", text("kube_context", value)?));
        }
        if let Some(agent) = config.get("agent") {
            self::agent(agent, out)?;
        }
        if let Some(feature) = config.get("feature") {
            let feature = object("feature", feature)?;
            for (key, value) in feature {
                match key.as_str() {
                    "network" => network(value, out)?,
                    "env" => env(value, out)?,
                    "fs" => fs(value, out)?,
                    // A session always has the target's hostname.
                    "hostname" => {}
                    _ => unsupported(out, &format!("feature.{key}")),
                }
            }
        }
        Ok(())
    }

    fn unsupported(out: &mut Translation, key: &str) {
        out.warnings.push(format!(
            "{key}: mirrord's setting has no mirrord-net counterpart; ignored"
        ));
    }

    fn object<'a>(key: &str, value: &'a Value) -> Result<&'a Map<String, Value>, String> {
        value
            .as_object()
            .ok_or_else(|| format!("{key}: expected an object, found {value}"))
    }

    fn text(key: &str, value: &Value) -> Result<String, String> {
        match value {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("{key}: expected a string, found {other}")),
        }
    }

    fn port(key: &str, value: &Value) -> Result<String, String> {
        value
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .map(|p| p.to_string())
            .ok_or_else(|| format!("{key}: expected a port number, found {value}"))
    }

    /// A string, or mirrord's `"A;B"` list in one string, or an array of strings.
    fn list(key: &str, value: &Value) -> Result<Vec<String>, String> {
        match value {
            Value::String(s) => Ok(s
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()),
            Value::Array(items) => items.iter().map(|item| text(key, item)).collect(),
            other => Err(format!("{key}: expected a string or a list, found {other}")),
        }
    }

    /// `"pod/api"`, `"pod/api/container/app"`, `"targetless"`, or
    /// `{"path": …, "namespace": …}` with the path as a string or `{"pod": "api", "container": "app"}`.
    fn target(value: &Value, out: &mut Translation) -> Result<(), String> {
        let (path, namespace) = match value {
            Value::String(_) => (Some(value), None),
            Value::Object(map) => (map.get("path"), map.get("namespace")),
            other => {
                return Err(format!(
                    "target: expected a path or an object, found {other}"
                ))
            }
        };
        if let Some(namespace) = namespace {
            out.settings.push(Setting::value(
                "namespace",
                text("target.namespace", namespace)?,
            ));
        }
        let (kind_name, container) = match path {
            None => return Ok(()),
            Some(Value::String(path)) if path == "targetless" => {
                out.warnings.push(
                    "target: targetless sessions are not a mirrord-net feature; give --target"
                        .into(),
                );
                return Ok(());
            }
            Some(Value::String(path)) => match path.split_once("/container/") {
                Some((kind_name, container)) => (kind_name.to_owned(), Some(container.to_owned())),
                None => (path.clone(), None),
            },
            Some(Value::Object(map)) => {
                let mut kind_name = None;
                let mut container = None;
                for (key, value) in map {
                    let value = text(&format!("target.path.{key}"), value)?;
                    if key == "container" {
                        container = Some(value);
                    } else {
                        kind_name = Some(format!("{key}/{value}"));
                    }
                }
                match kind_name {
                    Some(kind_name) => (kind_name, container),
                    None => return Err("target.path: names no pod or workload".into()),
                }
            }
            Some(other) => return Err(format!("target.path: expected a path, found {other}")),
        };
        out.settings.push(Setting::value("target", kind_name));
        if let Some(container) = container {
            out.settings.push(Setting::value("container", container));
        }
        Ok(())
    }

    fn agent(value: &Value, out: &mut Translation) -> Result<(), String> {
        for (key, value) in object("agent", value)? {
            match key.as_str() {
                "namespace" => out.settings.push(Setting::value(
                    "agent-namespace",
                    text("agent.namespace", value)?,
                )),
                "image" => {
                    // A string, or {"registry": …, "tag": …} in newer mirrord versions.
                    let image = match value {
                        Value::Object(map) => match (map.get("registry"), map.get("tag")) {
                            (Some(registry), Some(tag)) => format!(
                                "{}:{}",
                                text("agent.image.registry", registry)?,
                                text("agent.image.tag", tag)?
                            ),
                            (Some(registry), None) => text("agent.image.registry", registry)?,
                            _ => return Err("agent.image: needs a registry".into()),
                        },
                        other => text("agent.image", other)?,
                    };
                    out.settings.push(Setting::value("agent-image", image));
                }
                "ephemeral" => match value {
                    Value::Bool(ephemeral) => out.settings.push(Setting::value(
                        "agent",
                        if *ephemeral { "ephemeral" } else { "job" },
                    )),
                    other => {
                        return Err(format!(
                            "agent.ephemeral: expected true or false, found {other}"
                        ))
                    }
                },
                "startup_timeout" => out.settings.push(Setting::value(
                    "agent-timeout",
                    port_or_number("agent.startup_timeout", value)?,
                )),
                _ => unsupported(out, &format!("agent.{key}")),
            }
        }
        Ok(())
    }

    fn port_or_number(key: &str, value: &Value) -> Result<String, String> {
        value
            .as_u64()
            .map(|n| n.to_string())
            .ok_or_else(|| format!("{key}: expected a whole number, found {value}"))
    }

    fn network(value: &Value, out: &mut Translation) -> Result<(), String> {
        let network = match value {
            Value::Object(map) => map,
            // `"network": true` is mirrord's default; there is nothing to turn off here.
            Value::Bool(_) => return Ok(()),
            other => {
                return Err(format!(
                    "feature.network: expected an object, found {other}"
                ))
            }
        };
        for (key, value) in network {
            match key.as_str() {
                "incoming" => incoming(value, out)?,
                "outgoing" => outgoing(value, out)?,
                "dns" => dns(value, out)?,
                _ => unsupported(out, &format!("feature.network.{key}")),
            }
        }
        Ok(())
    }

    /// `feature.network.outgoing`: its `filter.local` / `filter.remote` lists are the
    /// `--local` / `--remote` entries, in the same syntax. Turning TCP or UDP off is not
    /// something mirrord-net does (a warning).
    fn outgoing(value: &Value, out: &mut Translation) -> Result<(), String> {
        let map = match value {
            Value::Object(map) => map,
            Value::Bool(true) => return Ok(()),
            other => {
                return Err(format!(
                    "feature.network.outgoing: expected an object, found {other}"
                ))
            }
        };
        for (key, value) in map {
            let name = format!("feature.network.outgoing.{key}");
            match key.as_str() {
                "filter" => {
                    for (which, entries) in filter_lists(&name, value, out, "destinations")? {
                        let flag = if which == "local" { "local" } else { "remote" };
                        if !entries.is_empty() {
                            out.settings.push(Setting::values(flag, entries));
                        }
                    }
                }
                "tcp" | "udp" if value == &Value::Bool(true) => {}
                _ => unsupported(out, &name),
            }
        }
        Ok(())
    }

    /// `feature.network.dns`: `true`, or `{enabled, filter}` whose `filter.local` /
    /// `filter.remote` list is `--local-dns` / `--remote-dns`. mirrord's entries are
    /// `[name|address|subnet][:port]` matched against `getaddrinfo`'s arguments; a query on
    /// the wire names no port and a numeric host is never looked up, so a port is dropped
    /// and an entry without a name is ignored, each with a warning.
    fn dns(value: &Value, out: &mut Translation) -> Result<(), String> {
        let map = match value {
            Value::Object(map) => map,
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => {
                unsupported(out, "feature.network.dns: false");
                return Ok(());
            }
            other => {
                return Err(format!(
                    "feature.network.dns: expected an object, found {other}"
                ))
            }
        };
        for (key, value) in map {
            let name = format!("feature.network.dns.{key}");
            match key.as_str() {
                "enabled" if value == &Value::Bool(true) => {}
                "filter" => {
                    for (which, entries) in filter_lists(&name, value, out, "names")? {
                        let flag = if which == "local" {
                            "local-dns"
                        } else {
                            "remote-dns"
                        };
                        let mut patterns = Vec::new();
                        for entry in entries {
                            match dns_entry_name(&entry) {
                                (Some(host), None) => patterns.push(host.to_owned()),
                                (Some(host), Some(_)) => {
                                    out.warnings.push(format!(
                                        "{name}.{which}: {entry:?}: a DNS query names no \
                                         port; every lookup of {host} counts"
                                    ));
                                    patterns.push(host.to_owned());
                                }
                                (None, _) => out.warnings.push(format!(
                                    "{name}.{which}: {entry:?}: names no host name (addresses \
                                     are never looked up); ignored"
                                )),
                            }
                        }
                        if patterns.is_empty() && which == "remote" {
                            unsupported(out, &format!("{name}.remote without a host name"));
                        } else if !patterns.is_empty() {
                            out.settings.push(Setting::values(flag, patterns));
                        }
                    }
                }
                _ => unsupported(out, &name),
            }
        }
        Ok(())
    }

    /// The `local` and `remote` lists of a mirrord filter object at `name` (`outgoing.filter`,
    /// `dns.filter`), each as strings; other keys are unsupported (a warning). `what` names
    /// the entries in errors.
    fn filter_lists<'a>(
        name: &str,
        value: &'a Value,
        out: &mut Translation,
        what: &str,
    ) -> Result<Vec<(&'a str, Vec<String>)>, String> {
        let filter = value.as_object().ok_or_else(|| {
            format!("{name}: expected an object with `local` or `remote`, found {value}")
        })?;
        let mut lists = Vec::new();
        for (which, list) in filter {
            if !matches!(which.as_str(), "local" | "remote") {
                unsupported(out, &format!("{name}.{which}"));
                continue;
            }
            let entries = match list {
                Value::String(entry) => vec![entry.clone()],
                Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("{name}.{which}: {item} is not a string"))
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(format!(
                        "{name}.{which}: expected a list of {what}, found {other}"
                    ))
                }
            };
            lists.push((which.as_str(), entries));
        }
        Ok(lists)
    }

    /// The host name of a mirrord DNS filter entry (`None` for an address, a subnet or a
    /// port alone) and its port, if it has one.
    fn dns_entry_name(entry: &str) -> (Option<&str>, Option<&str>) {
        let (host, port) = match entry.rsplit_once(':') {
            // One colon: HOST:PORT. More: an IPv6 address, bracketed or not.
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return (None, None),
            None => (entry, None),
        };
        let numeric = host.is_empty()
            || host.contains('/')
            || host.parse::<std::net::IpAddr>().is_ok()
            || host.starts_with('[');
        ((!numeric).then_some(host), port)
    }

    /// mirrord's HTTP filter applies to ports 80 and 8080 unless it names its ports.
    const MIRRORD_HTTP_FILTER_PORTS: [u16; 2] = [80, 8080];

    fn incoming(value: &Value, out: &mut Translation) -> Result<(), String> {
        let empty = Map::new();
        let (mode, config) = match value {
            Value::String(mode) => (mode.as_str(), &empty),
            Value::Object(map) => (
                map.get("mode").and_then(Value::as_str).unwrap_or("mirror"),
                map,
            ),
            other => {
                return Err(format!(
                    "feature.network.incoming: expected a mode or an object, found {other}"
                ))
            }
        };
        let flag = match mode {
            "steal" => "steal",
            "mirror" => "mirror",
            "off" => return Ok(()),
            other => {
                return Err(format!(
                    "feature.network.incoming.mode: expected steal, mirror or off, found {other:?}"
                ))
            }
        };
        for (key, value) in config {
            let name = format!("feature.network.incoming.{key}");
            match key.as_str() {
                "mode" => {}
                "ports" => {
                    let ports = match value {
                        Value::Array(items) => items
                            .iter()
                            .map(|p| port(&name, p))
                            .collect::<Result<Vec<_>, _>>()?,
                        other => vec![port(&name, other)?],
                    };
                    out.settings.push(Setting::values(flag, ports));
                }
                "port_mapping" => {
                    let pairs = value.as_array().ok_or_else(|| {
                        format!("{name}: expected a list of [local, remote] pairs")
                    })?;
                    let mut mapped = Vec::new();
                    for pair in pairs {
                        match pair.as_array().map(Vec::as_slice) {
                            Some([local, remote]) => mapped.push(format!(
                                "{}:{}",
                                port(&name, local)?,
                                port(&name, remote)?
                            )),
                            _ => {
                                return Err(format!("{name}: {pair} is not a [local, remote] pair"))
                            }
                        }
                    }
                    out.settings.push(Setting::values("port-map", mapped));
                }
                "http_filter" => http_filter(value, out)?,
                _ => unsupported(out, &name),
            }
        }
        if !config.contains_key("ports") {
            // mirrord takes whatever the program listens on.
            out.settings.push(Setting::switch(&format!("{flag}-all")));
        }
        Ok(())
    }

    fn http_filter(value: &Value, out: &mut Translation) -> Result<(), String> {
        let mut ports_given = false;
        for (key, value) in object("feature.network.incoming.http_filter", value)? {
            let name = format!("feature.network.incoming.http_filter.{key}");
            match key.as_str() {
                "header_filter" => out
                    .settings
                    .push(Setting::value("http-header-filter", text(&name, value)?)),
                "path_filter" => out
                    .settings
                    .push(Setting::value("http-path-filter", text(&name, value)?)),
                "ports" => {
                    ports_given = true;
                    let ports = value
                        .as_array()
                        .ok_or_else(|| format!("{name}: expected a list of ports"))?
                        .iter()
                        .map(|p| port(&name, p))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.settings
                        .push(Setting::values("http-filter-port", ports));
                }
                _ => unsupported(out, &name),
            }
        }
        if !ports_given {
            let ports = MIRRORD_HTTP_FILTER_PORTS
                .iter()
                .map(u16::to_string)
                .collect();
            out.settings
                .push(Setting::values("http-filter-port", ports));
        }
        Ok(())
    }

    fn env(value: &Value, out: &mut Translation) -> Result<(), String> {
        let config = match value {
            Value::Bool(true) => return Ok(()),
            // No variable of the target's.
            Value::Bool(false) => {
                out.settings.push(Setting::value("env-exclude", "*"));
                return Ok(());
            }
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "feature.env: expected true, false or an object, found {other}"
                ))
            }
        };
        for (key, value) in config {
            let name = format!("feature.env.{key}");
            match key.as_str() {
                "include" => out
                    .settings
                    .push(Setting::values("env-include", list(&name, value)?)),
                "exclude" => out
                    .settings
                    .push(Setting::values("env-exclude", list(&name, value)?)),
                "override" => {
                    let assignments = object(&name, value)?
                        .iter()
                        .map(|(var, v)| {
                            scalar(v)
                                .map(|v| format!("{var}={v}"))
                                .ok_or_else(|| format!("{name}.{var}: {v} is not a value"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    out.settings.push(Setting::values("env", assignments));
                }
                "env_file" => out
                    .settings
                    .push(Setting::value("env-file", text(&name, value)?)),
                _ => unsupported(out, &name),
            }
        }
        Ok(())
    }

    fn fs(value: &Value, out: &mut Translation) -> Result<(), String> {
        let mode = match value {
            Value::Bool(true) => "read",
            Value::Bool(false) => "off",
            Value::String(mode) => mode.as_str(),
            Value::Object(map) => {
                for key in map.keys().filter(|key| *key != "mode") {
                    unsupported(out, &format!("feature.fs.{key}"));
                }
                map.get("mode").and_then(Value::as_str).unwrap_or("read")
            }
            other => {
                return Err(format!(
                    "feature.fs: expected a mode or an object, found {other}"
                ))
            }
        };
        let ours = match mode {
            "read" => "read",
            "write" => "write",
            "local" | "disabled" => "off",
            "localwithoverrides" => {
                out.warnings.push(
                    "feature.fs.mode: localwithoverrides is taken as local (files off); \
                     name remote paths with --fs-remote"
                        .into(),
                );
                "off"
            }
            other => {
                return Err(format!(
                    "feature.fs.mode: expected read, write, local or localwithoverrides, found {other:?}"
                ))
            }
        };
        out.settings.push(Setting::value("fs-mode", ours));
        Ok(())
    }
}

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
