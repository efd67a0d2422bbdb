//! QUIC/TLS 1.3 setup for the directory service, and certificates bound to ed25519
//! identity keys (the mesh transport uses them too).
//!
//! The server presents a self-signed certificate of its ed25519 key (for the root
//! server: the root key). The client pins that key: a server presenting any other
//! key is refused during the handshake, so a man in the middle can neither read
//! requests (which names a client resolves, what it publishes) nor answer them.
//! Authenticity of data still comes from the ed25519 signature chain from the root
//! key on every record and delegation, verified end to end whatever server or cache
//! the bytes came through.

use crate::keys::{Identity, PublicKey};
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

/// A self-signed certificate of `identity`'s ed25519 key, and that key in PKCS#8:
/// whoever checks the certificate's key ([`ed25519_key_of`]) knows which identity
/// holds it, as TLS verifies the handshake signature with that key.
pub fn certificate(
    identity: &Identity,
    name: &str,
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let der = PrivatePkcs8KeyDer::from(identity.to_pkcs8_der());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|e| err(&e))?;
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| err(&e))?;
    let cert = params.self_signed(&key_pair).map_err(|e| err(&e))?;
    Ok((cert.der().clone(), der))
}

/// The ed25519 key of a certificate: its SubjectPublicKeyInfo field, parsed out of
/// the certificate's structure (webpki, as TLS does to check the handshake
/// signature, so the key pinned and the key that signed are the same), and
/// accepted only if it is exactly an Ed25519 SPKI (RFC 8410).
///
/// It once searched the certificate's bytes for the SPKI header instead: a
/// certificate with that header and a victim's key in its subject name (before
/// the real key field) passed as the victim, while the handshake was signed with
/// the attacker's own key.
pub fn ed25519_key_of(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&SPKI_PREFIX[..])?;
    Some(PublicKey(key.try_into().ok()?))
}

/// A server configuration presenting a certificate of `identity`'s key.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let (cert, key) = certificate(identity, "liveobjects-directory")?;
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

/// A client configuration that accepts only a server holding `server_key`.
pub fn client_config(server_key: PublicKey) -> Result<quinn::ClientConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let signatures = HandshakeSignatures::default();
    let mut crypto = rustls::ClientConfig::builder_with_provider(signatures.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerKey {
            expected: server_key,
            signatures,
        }))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| err(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// Accepts only a certificate of the pinned ed25519 key, and verifies the
/// handshake signature with it (so the server holds that key's secret). No PKI:
/// the key is the identity.
#[derive(Debug)]
struct PinnedServerKey {
    expected: PublicKey,
    signatures: HandshakeSignatures,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match ed25519_key_of(end_entity) {
            Some(key) if key == self.expected => Ok(ServerCertVerified::assertion()),
            Some(key) => Err(rustls::Error::General(format!(
                "the directory server presented key {}, not the pinned {} (the root key \
                 you trust): refusing it, it may be an impostor; check --directory and \
                 --root",
                key.short(),
                self.expected.short()
            ))),
            None => Err(rustls::Error::General(
                "the directory server's certificate has no ed25519 key: refusing it".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is read from the certificate's own key field: a certificate that
    /// carries another key's SPKI bytes in its subject name (before the real key
    /// field) still yields its real key.
    #[test]
    fn the_key_comes_from_the_key_field_not_from_bytes_that_look_like_one() {
        let victim = Identity::generate().public();
        let attacker = Identity::generate();
        let (honest, _) = certificate(&attacker, "liveobjects-directory").unwrap();
        assert_eq!(ed25519_key_of(&honest), Some(attacker.public()));

        // The attacker's certificate, with 44 bytes of subject name to overwrite
        // (the subject comes before the key field).
        let placeholder = "X".repeat(44);
        let der = PrivatePkcs8KeyDer::from(attacker.to_pkcs8_der());
        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, placeholder.as_str());
        let cert = params.self_signed(&key_pair).unwrap();
        let mut der = cert.der().as_ref().to_vec();
        let at = der
            .windows(44)
            .position(|w| w == placeholder.as_bytes())
            .expect("the subject name is in the certificate");
        let mut forged_spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        forged_spki.extend_from_slice(&victim.0);
        der[at..at + 44].copy_from_slice(&forged_spki);
        let forged = CertificateDer::from(der);
        // The victim's key bytes now come first in the certificate...
        let first = forged
            .as_ref()
            .windows(12)
            .position(|w| w == &forged_spki[..12])
            .unwrap();
        assert_eq!(&forged.as_ref()[first + 12..first + 44], &victim.0[..]);
        // ...but the key is the attacker's.
        assert_eq!(ed25519_key_of(&forged), Some(attacker.public()));
    }
}
