//! The client's end of the control stream after the hello: the incoming request, the
//! session's listening ports (from the session's watcher; sent when they change and at least
//! every second: the heartbeat), and what the agent reports back.

use std::time::Duration;

use mirrord_net_protocol::framing::{self, FrameDecoder};
use mirrord_net_protocol::messages::{AgentMessage, ClientMessage, IncomingConfig, HEARTBEAT};
use tokio::time::Instant;

use mirrord_net_session::Served;

/// How often the heartbeat is checked for being due.
const WATCH: Duration = Duration::from_millis(250);

/// How other sessions' users know this one: `user@host pid N` (the user who ran the tool,
/// under sudo the one who called sudo; the client's pid).
pub fn session_label() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|user| user.name)
        })
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|host| host.into_string().ok())
        .unwrap_or_else(|| "?".to_owned());
    format!("{user}@{host} pid {}", std::process::id())
}

/// Speaks for the session on the control stream until it ends or this task is dropped.
pub async fn run(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut config: IncomingConfig,
    mut served: tokio::sync::watch::Receiver<Served>,
) {
    if config.session.is_empty() {
        config.session = session_label();
    }
    let write = |message: &ClientMessage| framing::encode(message).ok();
    let Some(frame) = write(&ClientMessage::Incoming(config)) else {
        return;
    };
    if send.write_all(&frame).await.is_err() {
        return;
    }
    let mut last: Option<(Vec<u16>, Instant)> = None;
    let mut watch = tokio::time::interval(WATCH);
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; 4096];
    let mut reading = true;
    loop {
        tokio::select! {
            changed = served.changed() => {
                if changed.is_err() {
                    return;
                }
                if !report(&mut send, &mut served, &mut last).await {
                    return;
                }
            }
            _ = watch.tick() => {
                if !report(&mut send, &mut served, &mut last).await {
                    return;
                }
            }
            read = recv.read(&mut chunk), if reading => {
                match read {
                    Ok(Some(n)) => decoder.push(&chunk[..n]),
                    Ok(None) | Err(_) => reading = false,
                }
                while let Ok(Some(message)) = decoder.next_message::<AgentMessage>() {
                    match message {
                        AgentMessage::Stealing(ports) => {
                            tracing::info!(?ports, "the target's connections to these ports go to the session");
                        }
                        AgentMessage::Mirroring(ports) => {
                            tracing::info!(?ports, "the target's connections to these ports are mirrored into the session");
                        }
                        AgentMessage::IncomingFailed(line) => eprintln!("mirrord-net: {line}"),
                        other => tracing::debug!(?other, "unexpected control message"),
                    }
                }
            }
        }
    }
}

/// Sends the session's listening ports when they changed or the heartbeat is due; `false`
/// once the stream is gone.
async fn report(
    send: &mut quinn::SendStream,
    served: &mut tokio::sync::watch::Receiver<Served>,
    last: &mut Option<(Vec<u16>, Instant)>,
) -> bool {
    let ports = served.borrow_and_update().tcp.clone();
    let due = match &last {
        Some((sent, at)) => *sent != ports || at.elapsed() >= HEARTBEAT,
        None => true,
    };
    if !due {
        return true;
    }
    if let Ok(frame) = framing::encode(&ClientMessage::Listening(ports.clone())) {
        if send.write_all(&frame).await.is_err() {
            return false;
        }
    }
    tracing::debug!(?ports, "session listening");
    *last = Some((ports, Instant::now()));
    true
}
