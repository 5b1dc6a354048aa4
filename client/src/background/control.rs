//! The CLI's side of the control socket: connecting to a holder, `ps` and `down`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::dir;
use mirrord_net_fd_passing::recv_with_fds;
use mirrord_net_protocol::framing::{self, FrameDecoder};

use super::control_messages::{self as messages, Op, Phase, Reply, Request, SessionInfo};
use crate::report::{Failure, Kind};

/// Whether a holder answers on `socket`.
pub fn is_live(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Connects to session `name` of the current user and sends `op`.
pub fn connect(name: &str, op: Op) -> Result<UnixStream, Failure> {
    messages::check_name(name).map_err(|message| Failure::new(Kind::Usage, message))?;
    let (uid, _) = dir::owner();
    let socket = dir::socket(&dir::path(uid), name);
    let stream = UnixStream::connect(&socket).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => Failure::new(
            Kind::SessionNotFound,
            format!("no session named {name} (mirrord-net ps lists yours)"),
        ),
        std::io::ErrorKind::PermissionDenied => Failure::new(
            Kind::Permission,
            format!("session {name} is not yours: {}: {err}", socket.display()),
        ),
        std::io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(&socket);
            Failure::new(
                Kind::SessionNotFound,
                format!("no session named {name}: its holder is gone"),
            )
        }
        _ => Failure::new(
            Kind::Internal,
            format!("cannot reach session {name} at {}: {err}", socket.display()),
        ),
    })?;
    let mut writer = &stream;
    // A holder that refuses this user answers before reading and closes: the write may fail
    // then, and the reply still waits to be read.
    let _ = writer.write_all(&framing::encode_json(&Request::new(op)));
    Ok(stream)
}

fn lost(name: &str, err: std::io::Error) -> Failure {
    Failure::new(
        Kind::SessionNotFound,
        format!("session {name} went away while asked: {err}"),
    )
}

/// Reads the next reply, and the descriptors that came with it (blocking).
pub fn recv(
    stream: &UnixStream,
    decoder: &mut FrameDecoder,
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<Option<Reply>> {
    loop {
        match decoder.next_json_message::<Reply>() {
            Ok(Some(reply)) => return Ok(Some(reply)),
            Ok(None) => {}
            Err(err) => return Err(std::io::Error::other(err)),
        }
        let mut buf = [0u8; 16 << 10];
        let n = recv_with_fds(stream.as_fd(), &mut buf, fds, mirrord_net_session::MAX_FDS)?;
        if n == 0 {
            return Ok(None);
        }
        decoder.push(&buf[..n]);
    }
}

/// Asks session `name` for one reply.
fn ask(name: &str, op: Op) -> Result<Reply, Failure> {
    let stream = connect(name, op)?;
    let mut decoder = FrameDecoder::local();
    let mut fds = Vec::new();
    match recv(&stream, &mut decoder, &mut fds) {
        Ok(Some(Reply::Refused { reason })) => Err(Failure::new(Kind::Permission, reason)),
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(Failure::new(
            Kind::SessionNotFound,
            format!("session {name} closed the connection without an answer"),
        )),
        Err(err) => Err(lost(name, err)),
    }
}

/// `mirrord-net ps`.
pub fn ps(json: bool) -> Result<u8, Failure> {
    let (uid, _) = dir::owner();
    let dir = dir::path(uid);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".sock").map(str::to_owned)
            })
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => {
            return Err(Failure::new(
                Kind::Permission,
                format!("cannot read {}: {err}", dir.display()),
            ))
        }
    };
    names.sort();
    let mut sessions = Vec::new();
    for name in names {
        match ask(&name, Op::Info) {
            Ok(Reply::Info(info)) => sessions.push(info),
            // Gone between the listing and the question (or its holder died): not a session.
            Err(Failure {
                kind: Kind::SessionNotFound,
                ..
            }) => {}
            Ok(_) => {}
            Err(failure) => return Err(failure),
        }
    }
    let mut out = std::io::stdout().lock();
    let text = if json {
        serde_json::json!({ "sessions": sessions }).to_string() + "\n"
    } else {
        table(&sessions, now())
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => Ok(0),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(err) => Err(Failure::new(
            Kind::Internal,
            format!("cannot write the output: {err}"),
        )),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The sessions as a table, one line each; an ended session's line ends with why.
pub fn table(sessions: &[SessionInfo], now: u64) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "TARGET".to_owned(),
        "POD".to_owned(),
        "AGENT".to_owned(),
        "ADDRESSES".to_owned(),
        "UP".to_owned(),
        "COMMANDS".to_owned(),
        "STATE".to_owned(),
    ]];
    for info in sessions {
        rows.push([
            info.name.clone(),
            info.target.clone(),
            info.pod.clone().unwrap_or_else(|| "-".to_owned()),
            info.agent.clone(),
            info.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            age(now.saturating_sub(info.started)),
            info.commands.to_string(),
            match &info.phase {
                Phase::Running => "running".to_owned(),
                Phase::Ended(reason) => format!("ended: {reason}"),
            },
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        for (col, width) in widths.iter().enumerate() {
            text.push_str(&format!("{:<width$}  ", row[col]));
        }
        text.push_str(&row[7]);
        text.push('\n');
    }
    text
}

fn age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

/// `mirrord-net down NAME`: returns once the session and its commands are gone.
pub fn down(name: &str) -> Result<u8, Failure> {
    let stream = connect(name, Op::Down)?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut rest = Vec::new();
    let mut reader = &stream;
    // The holder answers Down once everything is gone, or dies trying: either way the end of
    // the connection is the end of the session.
    let _ = reader.read_to_end(&mut rest);
    let mut decoder = FrameDecoder::local();
    decoder.push(&rest);
    match decoder.next_json_message::<Reply>() {
        Ok(Some(Reply::Refused { reason })) => Err(Failure::new(Kind::Permission, reason)),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_says_why_a_session_ended() {
        let mut info = SessionInfo {
            name: "api".into(),
            target: "pid/7".into(),
            pod: None,
            agent: "local pid 9".into(),
            addresses: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            started: 1000,
            commands: 3,
            phase: Phase::Running,
            holder_pid: 8,
            owner_uid: 0,
        };
        let mut ended = info.clone();
        ended.name = "worker-long-name".into();
        ended.phase = Phase::Ended("the agent was lost".into());
        info.started = 1000 - 125;
        let text = table(&[info, ended], 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME "));
        let column = lines[0].find("TARGET").unwrap();
        assert_eq!(lines[1].find("pid/7"), Some(column));
        assert_eq!(lines[2].find("pid/7"), Some(column));
        assert!(lines[1].contains("10.0.0.2,fd00::2"));
        assert!(lines[1].contains(" 2m "), "{}", lines[1]);
        assert!(lines[2].ends_with("ended: the agent was lost"));
    }
}
