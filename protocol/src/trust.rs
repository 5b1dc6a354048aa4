//! Session trust: fresh certificates and pinning verifiers.
//!
//! Each end of a session makes a self-signed certificate that lives only as long as the
//! session ([`SessionIdentity::generate`]). Each end learns the SHA-256 [`Fingerprint`] of the
//! other's certificate out of band and accepts exactly that certificate:
//!
//! - the client passes its fingerprint to the agent it starts (a command-line argument: the
//!   fingerprint is public, so it may appear in a pod spec or `ps`);
//! - the agent prints its fingerprint on its ready line ([`crate::ready`]), which only the
//!   process that started it (or, in Kubernetes, a reader of its log) sees.
//!
//! Certificate chains, names and validity periods play no part: a pinned certificate is the
//! whole trust decision. The TLS handshake still proves possession of the private key, which
//! the verifiers check through the provider's signature algorithms like any other verifier.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name the client asks for in its TLS ClientHello. Any agent certificate carries it, but
/// the pin, not the name, decides.
pub const AGENT_SERVER_NAME: &str = "mirrord-net-agent";

/// SHA-256 of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a SHA-256 fingerprint (64 hex digits): {0:?}")]
pub struct BadFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| BadFingerprint(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot generate a session certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate and its private key, made for one session.
pub struct SessionIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl SessionIdentity {
    pub fn generate() -> Result<Self, TrustError> {
        let certified = rcgen::generate_simple_self_signed(vec![AGENT_SERVER_NAME.to_owned()])?;
        Ok(Self {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl fmt::Debug for SessionIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionIdentity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// ring's provider with AES-128-GCM first: QUIC packet protection is a large share of the
/// tunnel's CPU on bulk transfers, and AES-128 does 10 rounds per block where AES-256 does 14.
/// Both ends prefer it, so it is what every session negotiates.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// TLS settings of the client end: present `identity`, accept only the agent pinned by
/// `agent`.
pub fn client_tls(
    identity: &SessionIdentity,
    agent: Fingerprint,
) -> Result<rustls::ClientConfig, TrustError> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeer::new(agent, &provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain(), identity.key())?;
    config.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(config)
}

/// TLS settings of the agent end: present `identity`, require the client pinned by `client`.
pub fn server_tls(
    identity: &SessionIdentity,
    client: Fingerprint,
) -> Result<rustls::ServerConfig, TrustError> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeer::new(client, &provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.key())?;
    config.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(config)
}

/// Accepts exactly one certificate, by fingerprint, on either side of the handshake.
#[derive(Debug)]
struct PinnedPeer {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedPeer {
    fn new(pin: Fingerprint, provider: &CryptoProvider) -> Self {
        Self {
            pin,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if Fingerprint::of(presented) == self.pin {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled (QUIC requires it).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_its_own_display() {
        let fp = Fingerprint::of(b"abc");
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
        assert!("xyz".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn each_identity_is_new() {
        let a = SessionIdentity::generate().unwrap();
        let b = SessionIdentity::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn pin_accepts_only_its_certificate() {
        let a = SessionIdentity::generate().unwrap();
        let b = SessionIdentity::generate().unwrap();
        let pin = PinnedPeer::new(a.fingerprint(), &provider());
        assert!(pin.check(&a.cert).is_ok());
        assert!(pin.check(&b.cert).is_err());
    }
}
