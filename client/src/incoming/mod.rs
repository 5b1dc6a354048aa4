//! Incoming traffic: the flags that take the target's inbound connections into the session
//! (steal) or give it a copy of them (mirror), and the session's side of the conversation
//! about them ([`control`]).
//!
//! The agent does the stealing and mirroring (see the agent's `incoming` module); the client
//! says what to steal or mirror ([`IncomingConfig`], once after the hello) and which ports the session's programs
//! listen on (the session's watcher of its served ports, `session::served`), sent when they
//! change and at least every second, which is also the heartbeat the agent's liveness rule
//! waits for.

pub mod control;

use clap::Args;
use mirrord_net_protocol::http_filter::HttpFilter;
use mirrord_net_protocol::messages::{HttpFilterConfig, IncomingConfig};

/// What of the target's inbound traffic the session takes.
#[derive(Debug, Clone, Default, Args)]
pub struct IncomingArgs {
    /// Take the target's inbound connections on this TCP port into the session, while a
    /// program of the session listens on it (repeatable).
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub steal: Vec<u16>,
    /// Give the session a copy of this port's inbound connections, while a program of the
    /// session listens on it; the target still serves them and the session's answers are
    /// dropped (repeatable).
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub mirror: Vec<u16>,
    /// Steal every port the session's programs listen on that the target serves too.
    #[arg(long)]
    pub steal_all: bool,
    /// Mirror every port the session's programs listen on that the target serves too.
    #[arg(long)]
    pub mirror_all: bool,
    /// The session's program listens on LOCAL for the target's REMOTE (repeatable).
    #[arg(long, value_name = "LOCAL:REMOTE", value_parser = parse_port_map)]
    pub port_map: Vec<(u16, u16)>,
    /// Steal (or mirror) only HTTP requests with a header `Name: value` this regex matches.
    #[arg(long, value_name = "REGEX")]
    pub http_header_filter: Option<String>,
    /// Steal (or mirror) only HTTP requests whose path (with query) this regex matches.
    #[arg(long, value_name = "REGEX")]
    pub http_path_filter: Option<String>,
    /// The ports the HTTP filter applies to (repeatable; default: every stolen or mirrored
    /// port).
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub http_filter_port: Vec<u16>,
    /// Replaces `{{ key }}` in the HTTP filters, regex-escaped.
    #[arg(long, value_name = "VALUE")]
    pub key: Option<String>,
    /// How the agent redirects stolen ports in the target's network namespace: `nftables`,
    /// `iptables` (iptables-legacy: for a target whose other redirects, a sidecar's say, are
    /// iptables rules the steal must come before) or `auto` (nftables where the target's
    /// kernel has it, iptables where not).
    #[arg(long, value_enum, default_value_t, value_name = "MEANS")]
    pub redirect_with: RedirectWith,
}

/// The agent's `--redirect-with`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedirectWith {
    #[default]
    Auto,
    Nftables,
    Iptables,
}

/// A combination of incoming flags this build cannot serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IncomingError {
    #[error("port {0} is given to both --steal and --mirror")]
    StealAndMirror(u16),
    #[error("--port-map names target port {0} twice")]
    RemoteMappedTwice(u16),
    #[error("--port-map names session port {0} twice")]
    LocalMappedTwice(u16),
    #[error("{0}")]
    Filter(String),
    #[error("{0} needs --http-header-filter or --http-path-filter")]
    FilterMissing(&'static str),
    #[error("an HTTP filter needs --steal, --steal-all, --mirror or --mirror-all")]
    FilterWithoutSteal,
}

impl IncomingArgs {
    /// The agent's `--incoming`: the inbound traffic the session may ask for, so the agent
    /// keeps network administration only for a steal and raw sockets only for a mirror.
    pub fn agent_arg(&self) -> &'static str {
        let steal = !self.steal.is_empty() || self.steal_all;
        let mirror = !self.mirror.is_empty() || self.mirror_all;
        match (steal, mirror) {
            (true, true) => "all",
            (true, false) => "steal",
            (false, true) => "mirror",
            (false, false) => "none",
        }
    }

    /// The agent's `--redirect-with`, when it is not the agent's default (`auto`).
    pub fn agent_redirect_arg(&self) -> Option<&'static str> {
        match self.redirect_with {
            RedirectWith::Auto => None,
            RedirectWith::Nftables => Some("nftables"),
            RedirectWith::Iptables => Some("iptables"),
        }
    }

    /// What to ask the agent for; `None` when the session takes no inbound traffic.
    pub fn config(&self) -> Result<Option<IncomingConfig>, IncomingError> {
        if let Some(port) = self.steal.iter().find(|p| self.mirror.contains(p)) {
            return Err(IncomingError::StealAndMirror(*port));
        }
        for (i, (local, remote)) in self.port_map.iter().enumerate() {
            for (l, r) in &self.port_map[..i] {
                if r == remote {
                    return Err(IncomingError::RemoteMappedTwice(*remote));
                }
                if l == local {
                    return Err(IncomingError::LocalMappedTwice(*local));
                }
            }
        }
        let http_filter = self.http_filter()?;
        let takes = |ports: &[u16], all: bool| !ports.is_empty() || all;
        if !takes(&self.steal, self.steal_all) && !takes(&self.mirror, self.mirror_all) {
            if http_filter.is_some() {
                return Err(IncomingError::FilterWithoutSteal);
            }
            return Ok(None);
        }
        let sorted = |ports: &[u16]| {
            let mut ports = ports.to_vec();
            ports.sort_unstable();
            ports.dedup();
            ports
        };
        Ok(Some(IncomingConfig {
            steal: sorted(&self.steal),
            steal_all: self.steal_all,
            mirror: sorted(&self.mirror),
            mirror_all: self.mirror_all,
            port_map: self.port_map.clone(),
            http_filter,
            session: String::new(),
        }))
    }

    /// The HTTP filter to send, compiled here first so that a bad one is the user's error
    /// before anything starts.
    fn http_filter(&self) -> Result<Option<HttpFilterConfig>, IncomingError> {
        let header = self.http_header_filter.as_deref();
        let path = self.http_path_filter.as_deref();
        if header.is_none() && path.is_none() {
            if !self.http_filter_port.is_empty() {
                return Err(IncomingError::FilterMissing("--http-filter-port"));
            }
            return Ok(None);
        }
        HttpFilter::new(header, path, self.key.as_deref())
            .map_err(|err| IncomingError::Filter(one_line(&err.to_string())))?;
        let mut ports = self.http_filter_port.clone();
        ports.sort_unstable();
        ports.dedup();
        Ok(Some(HttpFilterConfig {
            header: header.map(str::to_owned),
            path: path.map(str::to_owned),
            key: self.key.clone(),
            ports,
        }))
    }
}

/// The regex crate's errors span lines (the pattern, a caret, the message): one line here.
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{value:?} is not a TCP port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

fn parse_port_map(value: &str) -> Result<(u16, u16), String> {
    let (local, remote) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not LOCAL:REMOTE"))?;
    Ok((parse_port(local)?, parse_port(remote)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        incoming: IncomingArgs,
    }

    fn parse(args: &[&str]) -> Result<IncomingArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|cli| cli.incoming)
    }

    #[test]
    fn steal_ports_and_port_maps_become_the_agents_request() {
        let args = parse(&[
            "--steal",
            "8080",
            "--steal",
            "80",
            "--steal",
            "8080",
            "--port-map",
            "9000:80",
        ])
        .unwrap();
        assert_eq!(
            args.config().unwrap(),
            Some(IncomingConfig {
                steal: vec![80, 8080],
                port_map: vec![(9000, 80)],
                ..IncomingConfig::default()
            })
        );
        assert_eq!(parse(&[]).unwrap().config().unwrap(), None);
    }

    #[test]
    fn mirror_ports_and_mirror_all_become_the_agents_request() {
        let args = parse(&["--mirror", "8080", "--mirror", "80", "--mirror", "80"]).unwrap();
        assert_eq!(
            args.config().unwrap(),
            Some(IncomingConfig {
                mirror: vec![80, 8080],
                ..IncomingConfig::default()
            })
        );
        let args = parse(&["--mirror-all", "--steal", "9000", "--port-map", "1:2"]).unwrap();
        assert_eq!(
            args.config().unwrap(),
            Some(IncomingConfig {
                steal: vec![9000],
                mirror_all: true,
                port_map: vec![(1, 2)],
                ..IncomingConfig::default()
            })
        );
    }

    #[test]
    fn bad_ports_are_refused_with_the_value_named() {
        let err = parse(&["--steal", "0"]).unwrap_err().to_string();
        assert!(err.contains("\"0\" is not a TCP port"), "{err}");
        let err = parse(&["--port-map", "80"]).unwrap_err().to_string();
        assert!(err.contains("\"80\" is not LOCAL:REMOTE"), "{err}");
        let err = parse(&["--port-map", "80:99999"]).unwrap_err().to_string();
        assert!(err.contains("\"99999\" is not a TCP port"), "{err}");
    }

    #[test]
    fn contradictions_and_missing_features_are_one_line_errors() {
        let args = parse(&["--steal", "80", "--mirror", "80"]).unwrap();
        assert_eq!(args.config(), Err(IncomingError::StealAndMirror(80)));
        let args = parse(&["--port-map", "1:80", "--port-map", "2:80"]).unwrap();
        assert_eq!(args.config(), Err(IncomingError::RemoteMappedTwice(80)));
    }

    #[test]
    fn http_filters_are_compiled_before_they_are_sent() {
        let args = parse(&[
            "--steal",
            "80",
            "--http-header-filter",
            "^X-Run: {{ key }}$",
            "--key",
            "a.b",
            "--http-filter-port",
            "80",
        ])
        .unwrap();
        let filter = args.config().unwrap().unwrap().http_filter.unwrap();
        assert_eq!(filter.header.as_deref(), Some("^X-Run: {{ key }}$"));
        assert_eq!(filter.key.as_deref(), Some("a.b"));
        assert_eq!(filter.ports, vec![80]);
        assert!(filter.applies_to(80) && !filter.applies_to(81));

        let args = parse(&["--steal", "80", "--http-path-filter", "^/api/("]).unwrap();
        let err = args.config().unwrap_err().to_string();
        assert!(
            err.starts_with("the path filter is not a valid regular expression"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");

        let args = parse(&["--steal", "80", "--http-header-filter", "^X: {{key}}$"]).unwrap();
        let err = args.config().unwrap_err().to_string();
        assert_eq!(
            err,
            "the header filter uses {{ key }} but the session has no --key"
        );

        let args = parse(&["--http-path-filter", "^/"]).unwrap();
        assert_eq!(args.config(), Err(IncomingError::FilterWithoutSteal));
        let args = parse(&["--steal", "80", "--http-filter-port", "80"]).unwrap();
        assert_eq!(
            args.config(),
            Err(IncomingError::FilterMissing("--http-filter-port"))
        );
    }
}
