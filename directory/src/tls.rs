//! QUIC/TLS 1.3 setup for the directory service.
//!
//! The server presents a self-signed certificate. Clients do not check it against a
//! PKI: what they trust is the ed25519 signature chain from the configured root key
//! on every record and delegation, verified end to end whatever server or cache the
//! bytes came through. TLS here gives confidentiality and integrity of the channel
//! (the handshake signature is still verified); authenticity of data comes from the
//! signatures.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// TLS or QUIC configuration failed (a host bug or an unsupported platform).
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(pub String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks TLS handshake signatures with the crypto provider's algorithms. Shared by
/// the certificate verifiers here and in the mesh transport, which decide trust by
/// other means (record signatures, identity keys) but must still check that the peer
/// holds the certificate's key.
#[derive(Debug, Clone)]
pub struct HandshakeSignatures(Arc<CryptoProvider>);

impl Default for HandshakeSignatures {
    fn default() -> Self {
        HandshakeSignatures(provider())
    }
}

impl HandshakeSignatures {
    /// The provider whose algorithms are used.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.0.clone()
    }

    /// Verify a TLS 1.2 handshake signature.
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// Verify a TLS 1.3 handshake signature.
    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// Every scheme the provider verifies.
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        Duration::from_secs(10)
            .try_into()
            .expect("10 s is a valid idle timeout"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    // Requests are short; few need to be open at once on one connection.
    t.max_concurrent_bidi_streams(16u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// A server configuration with a fresh self-signed certificate.
pub fn server_config() -> Result<quinn::ServerConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let certified = rcgen::generate_simple_self_signed(vec!["liveobjects-directory".into()])
        .map_err(|e| err(&e))?;
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key.into())
        .map_err(|e| err(&e))?;
    crypto.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| err(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// A client configuration that accepts the server's self-signed certificate (see the
/// module docs for why that is sound here).
pub fn client_config() -> Result<quinn::ClientConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let signatures = HandshakeSignatures::default();
    let mut crypto = rustls::ClientConfig::builder_with_provider(signatures.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignaturesAreTheTrust(signatures)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| err(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// Accepts any server certificate but verifies the handshake signature with it.
#[derive(Debug)]
struct SignaturesAreTheTrust(HandshakeSignatures);

impl ServerCertVerifier for SignaturesAreTheTrust {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
