//! mirrord's configuration, read for every feature mirrord-net has.

use serde_json::{Map, Value};

use super::translation::{scalar, Setting, Translation};

pub(super) fn translate(config: &Map<String, Value>, out: &mut Translation) -> Result<(), String> {
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
                "target: targetless sessions are not a mirrord-net feature; give --target".into(),
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
                let pairs = value
                    .as_array()
                    .ok_or_else(|| format!("{name}: expected a list of [local, remote] pairs"))?;
                let mut mapped = Vec::new();
                for pair in pairs {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([local, remote]) => {
                            mapped.push(format!("{}:{}", port(&name, local)?, port(&name, remote)?))
                        }
                        _ => return Err(format!("{name}: {pair} is not a [local, remote] pair")),
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
