//! Transport errors and their mapping from quinn / rustls failures.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{ConnectionError, VarInt};
use rustls::AlertDescription;

use super::{close_code, MAX_FRAME};

/// Why a transport operation failed.
///
/// `Remote` carries the handler's own message unchanged, so the caller can show it as is.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound (port in use, address not on this host...).
    #[error("cannot bind the cluster port on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The certificate, key or CA given as our identity cannot be used.
    #[error("invalid TLS identity: {0}")]
    Identity(String),
    /// A cluster call was attempted before this node had a certificate.
    #[error("cannot call {addr}: this node has no cluster certificate yet (join the swarm first)")]
    NoIdentity { addr: SocketAddr },
    /// No QUIC connection could be established (no answer, reset, bad address).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The TLS handshake failed or the peer refused our certificate.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    /// The call did not complete within its deadline.
    #[error("call to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// The connection or stream went away during the call.
    #[error("connection to {addr} closed: {reason}")]
    Closed { addr: SocketAddr, reason: String },
    /// A frame exceeded [`MAX_FRAME`] (refused before sending, or on receipt).
    #[error("message of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge { len: u64 },
    /// The peer answered something that is not a valid response frame.
    #[error("malformed response from {addr}: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    /// The remote handler returned an error; this is its message.
    #[error("{0}")]
    Remote(String),
}

impl TransportError {
    /// Whether trying again (later, or against another manager) may succeed.
    ///
    /// Network-level failures are retriable; certificate problems, oversized messages and
    /// errors returned by the remote handler are not (the caller decides about the latter).
    pub fn is_retriable(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::Timeout { .. }
            | TransportError::Closed { .. } => true,
            TransportError::Bind { .. }
            | TransportError::Identity(_)
            | TransportError::NoIdentity { .. }
            | TransportError::Tls { .. }
            | TransportError::FrameTooLarge { .. }
            | TransportError::Protocol { .. }
            | TransportError::Remote(_) => false,
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    if (0x100..=0x1ff).contains(&code) {
        Some(AlertDescription::from((code & 0xff) as u8))
    } else {
        None
    }
}

/// How the peer is named in messages: "the manager", "the worker", or "the peer".
fn peer_noun(server_name: &str) -> &'static str {
    match server_name {
        "swarm-manager" => "the manager",
        "swarm-worker" => "the worker",
        _ => "the peer",
    }
}

/// Our side refused the peer's certificate: say why in terms an operator understands.
fn local_alert_reason(alert: AlertDescription, server_name: &str) -> String {
    let who = peer_noun(server_name);
    match alert {
        AlertDescription::UnknownCA => {
            format!("{who}'s certificate is not signed by the cluster CA (is it another swarm?)")
        }
        AlertDescription::DecryptError => {
            format!("{who}'s certificate signature does not match the cluster CA")
        }
        AlertDescription::CertificateExpired => {
            format!("{who}'s certificate has expired or is not valid yet (check both clocks)")
        }
        AlertDescription::BadCertificate => {
            format!("{who}'s certificate is not valid for the name {server_name:?}")
        }
        AlertDescription::UnsupportedCertificate => {
            format!("{who}'s certificate is not meant for this use (extended key usage)")
        }
        AlertDescription::NoApplicationProtocol => {
            format!("{who} does not speak the apiary protocol")
        }
        other => format!("{who}'s certificate was refused (TLS alert {other:?})"),
    }
}

/// The peer refused us (its TLS stack sent an alert).
fn remote_alert_reason(alert: AlertDescription, server_name: &str) -> String {
    let who = peer_noun(server_name);
    match alert {
        AlertDescription::UnknownCA | AlertDescription::DecryptError => format!(
            "{who} refused our certificate: it is not signed by its cluster CA \
             (this node may belong to another swarm; leave and join again)"
        ),
        AlertDescription::CertificateExpired => format!(
            "{who} refused our certificate as expired or not valid yet \
             (check the clocks, or join again with a token)"
        ),
        AlertDescription::NoApplicationProtocol => {
            format!("{who} does not speak the apiary protocol")
        }
        other => format!("{who} refused the TLS handshake (TLS alert {other:?})"),
    }
}

/// Map a quinn connection error seen during a call to `addr` into a [`TransportError`].
pub(crate) fn from_connection_error(
    err: &ConnectionError,
    addr: SocketAddr,
    server_name: &str,
) -> TransportError {
    match err {
        ConnectionError::TransportError(e) => match tls_alert(e.code) {
            Some(alert) => TransportError::Tls {
                addr,
                reason: format!("{} ({})", local_alert_reason(alert, server_name), e.reason),
            },
            None => TransportError::Protocol {
                addr,
                reason: e.to_string(),
            },
        },
        ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(alert) => TransportError::Tls {
                addr,
                reason: remote_alert_reason(alert, server_name),
            },
            None => TransportError::Closed {
                addr,
                reason: err.to_string(),
            },
        },
        ConnectionError::ApplicationClosed(close)
            if close.error_code == close_code::CERTIFICATE_REQUIRED =>
        {
            TransportError::Tls {
                addr,
                reason: format!(
                    "{} requires a cluster certificate for this call (join the swarm first)",
                    peer_noun(server_name)
                ),
            }
        }
        ConnectionError::ApplicationClosed(close) => TransportError::Closed {
            addr,
            reason: app_close_reason(close.error_code, &close.reason),
        },
        ConnectionError::TimedOut => TransportError::Connect {
            addr,
            reason: "no answer (is the node up and UDP reachable?)".to_owned(),
        },
        ConnectionError::Reset => TransportError::Connect {
            addr,
            reason: "connection reset (the node restarted or forgot the connection)".to_owned(),
        },
        ConnectionError::VersionMismatch | ConnectionError::CidsExhausted => {
            TransportError::Connect {
                addr,
                reason: err.to_string(),
            }
        }
        ConnectionError::LocallyClosed => TransportError::Closed {
            addr,
            reason: "closed locally (shutdown or certificate change)".to_owned(),
        },
    }
}

fn app_close_reason(code: VarInt, reason: &[u8]) -> String {
    let reason = String::from_utf8_lossy(reason);
    if reason.is_empty() {
        format!("closed by peer (code {code})")
    } else {
        format!("closed by peer: {reason}")
    }
}
