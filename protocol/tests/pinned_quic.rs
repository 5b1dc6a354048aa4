//! Real QUIC handshakes on loopback with the session's pinning and transport settings.

use std::net::{Ipv4Addr, SocketAddr};

use mirrord_net_protocol::transport::{self, PathProfile};
use mirrord_net_protocol::trust::{SessionIdentity, AGENT_SERVER_NAME};
use std::time::Duration;

fn agent_endpoint(
    agent: &SessionIdentity,
    client_pin: &SessionIdentity,
) -> (quinn::Endpoint, SocketAddr) {
    let config =
        transport::server_config(agent, client_pin.fingerprint(), PathProfile::Loopback).unwrap();
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let endpoint = quinn::Endpoint::new(
        transport::endpoint_config(PathProfile::Loopback),
        Some(config),
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

async fn connect(
    client: &SessionIdentity,
    agent_pin: &SessionIdentity,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut endpoint = quinn::Endpoint::new(
        transport::endpoint_config(PathProfile::Loopback),
        None,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap();
    endpoint.set_default_client_config(
        transport::client_config(client, agent_pin.fingerprint(), PathProfile::Loopback).unwrap(),
    );
    let connection = endpoint.connect(addr, AGENT_SERVER_NAME).unwrap().await?;
    // The server checks the client certificate after the client considers the handshake done;
    // a round trip proves the agent accepted us.
    let mut stream = connection.open_uni().await?;
    stream
        .write_all(b"x")
        .await
        .map_err(|_| quinn::ConnectionError::LocallyClosed)?;
    stream.finish().unwrap();
    match tokio::time::timeout(Duration::from_secs(2), connection.closed()).await {
        Ok(err) => Err(err),
        Err(_) => Ok(connection),
    }
}

async fn serve_one(endpoint: quinn::Endpoint) -> Option<quinn::Connection> {
    let incoming = endpoint.accept().await?;
    let connection = incoming.await.ok()?;
    let mut stream = connection.accept_uni().await.ok()?;
    stream.read_to_end(16).await.ok()?;
    Some(connection)
}

#[tokio::test]
async fn pinned_peers_connect_and_carry_large_datagrams() {
    let agent = SessionIdentity::generate().unwrap();
    let client = SessionIdentity::generate().unwrap();
    let (endpoint, addr) = agent_endpoint(&agent, &client);
    let server = tokio::spawn(serve_one(endpoint));
    let connection = connect(&client, &agent, addr).await.expect("handshake");
    let agent_side = server.await.unwrap().expect("agent accepted");

    let size = connection.max_datagram_size().expect("datagrams enabled");
    assert!(
        size > 60_000,
        "loopback datagrams should be ~64 KiB, got {size}"
    );
    let payload = vec![0x5a; size];
    connection
        .send_datagram_wait(payload.clone().into())
        .await
        .unwrap();
    let got = agent_side.read_datagram().await.unwrap();
    assert_eq!(got.len(), payload.len());
}

#[tokio::test]
async fn agent_refuses_a_client_it_was_not_told_about() {
    let agent = SessionIdentity::generate().unwrap();
    let expected_client = SessionIdentity::generate().unwrap();
    let intruder = SessionIdentity::generate().unwrap();
    let (endpoint, addr) = agent_endpoint(&agent, &expected_client);
    let server = tokio::spawn(serve_one(endpoint));
    assert!(connect(&intruder, &agent, addr).await.is_err());
    assert!(server.await.unwrap().is_none());
}

#[tokio::test]
async fn client_refuses_an_agent_with_another_certificate() {
    let real_agent = SessionIdentity::generate().unwrap();
    let impostor = SessionIdentity::generate().unwrap();
    let client = SessionIdentity::generate().unwrap();
    let (endpoint, addr) = agent_endpoint(&impostor, &client);
    let _server = tokio::spawn(serve_one(endpoint));
    let err = connect(&client, &real_agent, addr).await.unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::TransportError(_)),
        "{err:?}"
    );
}
