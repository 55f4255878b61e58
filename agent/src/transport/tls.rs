//! rustls and quinn configurations built from an [`Identity`].
//!
//! All configs use the ring provider explicitly (never the process default), speak TLS 1.3
//! only (QUIC requires it) and carry exactly the ALPNs the caller is entitled to.

use std::sync::{Arc, OnceLock};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{
    Identity, TransportError, ALPN_CLUSTER, ALPN_JOIN, KEEP_ALIVE_INTERVAL, MAX_CONCURRENT_CALLS,
    MAX_IDLE_TIMEOUT,
};

/// The one crypto provider every config is built with (ring; aws-lc-rs stays out of the graph).
pub(super) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Keep-alive, idle timeout and stream limits shared by both sides of every connection.
fn transport_config() -> Arc<TransportConfig> {
    let mut config = TransportConfig::default();
    config
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        // Milliseconds; the constant is small, so the conversion cannot overflow a VarInt.
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            MAX_IDLE_TIMEOUT.as_millis() as u32,
        ))))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_CALLS))
        // Calls are bi-streams only; nobody needs uni-streams.
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(config)
}

fn roots<'a>(
    cas: impl IntoIterator<Item = &'a CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(|e| {
            TransportError::Identity(format!("the cluster CA certificate is unusable: {e}"))
        })?;
    }
    Ok(Arc::new(roots))
}

/// Every root the identity trusts: the CA, plus the previous one during a rotation.
fn identity_roots(identity: &Identity) -> Result<Arc<RootCertStore>, TransportError> {
    roots(std::iter::once(&identity.ca_cert).chain(identity.extra_roots.iter()))
}

/// The chain we present: our leaf, any cross-signed intermediates, then the CA (so a
/// joining node sees the CA it is pinning).
fn our_chain(identity: &Identity) -> Vec<CertificateDer<'static>> {
    let mut chain = vec![identity.cert.clone()];
    chain.extend(identity.intermediates.iter().cloned());
    if identity.cert != identity.ca_cert {
        chain.push(identity.ca_cert.clone());
    }
    chain
}

/// Server side: client certificates are optional at the TLS layer (join clients have none)
/// but verified against our CA when presented; the ALPN check after the handshake refuses
/// certificate-less clients on [`ALPN_CLUSTER`].
pub(super) fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(identity_roots(identity)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| {
                TransportError::Identity(format!("cannot build the client verifier: {e}"))
            })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Identity(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(our_chain(identity), identity.key.clone_key())
        .map_err(|e| TransportError::Identity(format!("certificate and key do not fit: {e}")))?;
    tls.alpn_protocols = vec![ALPN_CLUSTER.to_vec(), ALPN_JOIN.to_vec()];
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Identity(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    // A Pi on flaky Wi-Fi that changes address keeps its session.
    config.migration(true);
    Ok(config)
}

/// How a client checks the server's certificate.
pub(super) enum ServerTrust<'a> {
    /// Must chain to this CA (and carry the requested DNS name).
    Ca(&'a CertificateDer<'static>),
    /// Must chain to one of the identity's roots (cluster calls).
    Identity(&'a Identity),
    /// Anything goes, but the handshake signature is still checked (CA fetch during join).
    Unverified,
}

/// A client config: `client_auth` is the certificate we present (None = none), `alpn` the one
/// protocol we offer.
pub(super) fn client_config(
    trust: ServerTrust<'_>,
    client_auth: Option<&Identity>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Identity(e.to_string()))?;
    let builder = match trust {
        ServerTrust::Ca(ca) => builder.with_root_certificates(roots([ca])?),
        ServerTrust::Identity(identity) => {
            builder.with_root_certificates(identity_roots(identity)?)
        }
        ServerTrust::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider })),
    };
    let mut tls = match client_auth {
        Some(identity) => builder
            .with_client_auth_cert(our_chain(identity), identity.key.clone_key())
            .map_err(|e| {
                TransportError::Identity(format!("certificate and key do not fit: {e}"))
            })?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Identity(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The mTLS client config for cluster calls.
pub(super) fn cluster_client_config(
    identity: &Identity,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config(
        ServerTrust::Identity(identity),
        Some(identity),
        ALPN_CLUSTER,
    )
}

/// Accepts any server certificate chain but still checks that the server holds the key of the
/// certificate it presented. Used only to fetch the CA during a join; the caller then pins the
/// CA against the join token's digest and checks the returned chain against it.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
