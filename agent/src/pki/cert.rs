//! The swarm's root CA and the node certificates it signs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::store::{NodeId, Role, RootCa};

pub const CA_COMMON_NAME: &str = "swarm-ca";

/// Swarm's root CA lifetime: long enough that no one has to rotate it.
pub(super) const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);
/// Certificates start an hour in the past so a node whose clock runs a
/// little behind the signer's still accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// RFC 5280's limit; 20 random bytes leave 159 bits after the sign bit.
const SERIAL_BYTES: usize = 20;

/// Keys we sign for: what rustls' ring provider verifies. RSA and P-521
/// would work in X.509 but not in every TLS stack, and nobody needs them.
static NODE_KEY_ALGORITHMS: [&SignatureAlgorithm; 3] = [
    &rcgen::PKCS_ECDSA_P256_SHA256,
    &rcgen::PKCS_ECDSA_P384_SHA384,
    &rcgen::PKCS_ED25519,
];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not read {what} PEM: {source}")]
    PemRead {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no {what} found in the PEM text (expected a \"-----BEGIN {label}-----\" block)")]
    PemMissing {
        what: &'static str,
        label: &'static str,
    },
    #[error("{what} is not a valid X.509 certificate: {reason}")]
    BadCertificate { what: &'static str, reason: String },
    #[error("the root CA key is not usable: {source}")]
    BadCaKey {
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "the root CA key does not belong to the root CA certificate; the stored CA is inconsistent"
    )]
    CaKeyMismatch,
    #[error("the certificate signing request is not valid: {reason}")]
    BadCsr { reason: String },
    #[error(
        "the certificate signing request's signature does not verify: it was altered or not \
         made with the key it carries"
    )]
    CsrSignature,
    #[error(
        "the certificate signing request carries an unsupported key ({reason}); node keys must \
         be ECDSA P-256, ECDSA P-384 or Ed25519"
    )]
    UnsupportedKey { reason: String },
    #[error(
        "certificate validity of {validity:?} is out of range (it must end before the year 10000)"
    )]
    BadValidity { validity: Duration },
    #[error("node ID {node_id:?} cannot be put in a certificate: {reason}")]
    BadNodeId { node_id: String, reason: String },
    #[error("could not sign the node certificate: {source}")]
    Sign {
        #[source]
        source: rcgen::Error,
    },
    #[error("node certificate has no {field} in its subject")]
    MissingField { field: &'static str },
    #[error("node certificate has more than one {field} in its subject")]
    DuplicateField { field: &'static str },
    #[error("node certificate's {field} is not a text string")]
    BadField { field: &'static str },
    #[error(
        "node certificate OU {ou:?} is not a known role (expected \"swarm-worker\" or \
         \"swarm-manager\")"
    )]
    UnknownRole { ou: String },
    #[error(
        "certificate was not issued by this swarm's root CA: {reason} (a node from another \
         swarm, or one that missed a CA rotation, must leave and join again with a current token)"
    )]
    NotIssuedByCa { reason: String },
    #[error("{what} is not valid before {} (now {}); check the clocks of the nodes", fmt_time(*not_before), fmt_time(*now))]
    NotYetValid {
        what: &'static str,
        not_before: SystemTime,
        now: SystemTime,
    },
    #[error(
        "{what} expired at {} (now {}); a node whose certificate expired must leave and join \
         again with a current token",
        fmt_time(*not_after),
        fmt_time(*now)
    )]
    Expired {
        what: &'static str,
        not_after: SystemTime,
        now: SystemTime,
    },
}

/// The apiary fields of a node certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub node_id: NodeId,
    pub role: Role,
    pub cluster_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A node's fresh private key and the CSR that asks the CA to certify it.
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

fn to_offset(t: SystemTime) -> Option<OffsetDateTime> {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => -i64::try_from(e.duration().as_secs()).ok()?,
    };
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

fn from_unix(secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

fn fmt_time(t: SystemTime) -> String {
    to_offset(t)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{t:?}"))
}

pub(super) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // Positive (top bit clear) and full length (second bit set), so the
    // DER integer is exactly 20 bytes as RFC 5280 allows.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Validity window starting an hour ago and lasting `validity` from now.
pub(super) fn validity_window(
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = OffsetDateTime::now_utc();
    let bad = || PkiError::BadValidity { validity };
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|v| now.checked_add(v))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(bad)?;
    let not_before = time::Duration::try_from(BACKDATE)
        .ok()
        .and_then(|b| now.checked_sub(b))
        .ok_or_else(bad)?;
    Ok((not_before, not_after))
}

/// New root CA: ECDSA P-256, CN swarm-ca, valid 20 years, not_before backdated 1 h.
pub fn new_root_ca() -> Result<RootCa, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        PkiError::Generate {
            what: "the root CA key",
            source,
        }
    })?;
    let (not_before, not_after) = validity_window(CA_VALIDITY)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "the root CA certificate",
            source,
        })?;
    Ok(RootCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// SHA-256 of the CA certificate's DER.
pub fn ca_digest(ca_cert_pem: &str) -> Result<[u8; 32], PkiError> {
    let der = pem_cert(ca_cert_pem, "root CA certificate")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(out)
}

/// Fresh ECDSA P-256 key and a CSR for it (subject content is irrelevant: the signer overwrites it).
pub fn new_key_and_csr() -> Result<KeyAndCsr, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        PkiError::Generate {
            what: "a node key",
            source,
        }
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "apiary-node");
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| PkiError::Generate {
            what: "a certificate signing request",
            source,
        })?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem,
    })
}

/// Checks the CSR's self-signature and returns its public key; nothing
/// else in it is used, since a joining node chooses all of it.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| pem_error(e, "certificate signing request", "CERTIFICATE REQUEST"))?;
    let (rest, csr) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|e| PkiError::BadCsr {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::BadCsr {
            reason: "trailing bytes after the request".into(),
        });
    }
    csr.verify_signature().map_err(|_| PkiError::CsrSignature)?;
    let spki =
        rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|e| PkiError::UnsupportedKey {
                reason: e.to_string(),
            })?;
    let alg = rcgen::PublicKeyData::algorithm(&spki);
    if !NODE_KEY_ALGORITHMS.contains(&alg) {
        return Err(PkiError::UnsupportedKey {
            reason: format!("{alg:?}"),
        });
    }
    Ok(spki)
}

/// Sign a node CSR with the CA. Only the CSR's key is taken from it: the
/// identity, usages and lifetime come from the caller and cluster policy.
pub fn sign_csr(
    ca: &RootCa,
    csr_pem: &str,
    node_id: &NodeId,
    role: Role,
    cluster_id: &str,
    validity: Duration,
) -> Result<String, PkiError> {
    let public_key = csr_public_key(csr_pem)?;

    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|source| PkiError::BadCaKey { source })?;
    let ca_der = pem_cert(&ca.cert_pem, "root CA certificate")?;
    let ca_cert = parse_cert(&ca_der, "root CA certificate")?;
    // A mismatched pair would produce certificates nobody can verify.
    if ca_cert.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
        return Err(PkiError::CaKeyMismatch);
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
        .map_err(|source| PkiError::BadCaKey { source })?;

    let bad_id = |reason: String| PkiError::BadNodeId {
        node_id: node_id.0.clone(),
        reason,
    };
    // The ID becomes a DNS name peers dial, so it must be a valid label.
    let id = node_id.0.as_str();
    if id.is_empty()
        || id.len() > 63
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad_id(
            "it must be 1 to 63 characters of a-z, 0-9 and '-'".into(),
        ));
    }
    let node_san = node_id
        .0
        .clone()
        .try_into()
        .map_err(|e: rcgen::Error| bad_id(e.to_string()))?;
    let role_san = role
        .ou()
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| bad_id(e.to_string()))?;

    let (not_before, not_after) = validity_window(validity)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster_id);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.ou());
    params
        .distinguished_name
        .push(DnType::CommonName, node_id.0.as_str());
    // webpki matches SANs, not the CN: the role SAN lets a peer dial "any
    // manager" by name, the node SAN a particular node.
    params.subject_alt_names = vec![SanType::DnsName(role_san), SanType::DnsName(node_san)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());

    let cert = params
        .signed_by(&public_key, &issuer)
        .map_err(|source| PkiError::Sign { source })?;
    Ok(cert.pem())
}

fn parse_cert<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate {
            what,
            reason: "trailing bytes after the certificate".into(),
        });
    }
    Ok(cert)
}

/// The one value of a subject attribute; several would make the identity
/// ambiguous, so they are refused rather than picking one.
fn single<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    field: &'static str,
) -> Result<String, PkiError> {
    let first = values.next().ok_or(PkiError::MissingField { field })?;
    if values.next().is_some() {
        return Err(PkiError::DuplicateField { field });
    }
    first
        .as_str()
        .map(str::to_string)
        .map_err(|_| PkiError::BadField { field })
}

fn node_fields(subject: &X509Name<'_>) -> Result<(NodeId, Role, String), PkiError> {
    let cn = single(subject.iter_common_name(), "CN (node ID)")?;
    let ou = single(subject.iter_organizational_unit(), "OU (role)")?;
    let o = single(subject.iter_organization(), "O (cluster ID)")?;
    let role = Role::from_ou(&ou).ok_or(PkiError::UnknownRole { ou })?;
    Ok((NodeId(cn), role, o))
}

fn cert_info(cert: &X509Certificate<'_>, what: &'static str) -> Result<CertInfo, PkiError> {
    let (node_id, role, cluster_id) = node_fields(cert.subject())?;
    let time = |t: &x509_parser::time::ASN1Time| {
        from_unix(t.timestamp()).ok_or_else(|| PkiError::BadCertificate {
            what,
            reason: "validity date out of range".into(),
        })
    };
    Ok(CertInfo {
        node_id,
        role,
        cluster_id,
        not_before: time(&cert.validity().not_before)?,
        not_after: time(&cert.validity().not_after)?,
    })
}

/// Read the apiary fields of a node certificate (CN/OU/O, validity). Error if OU is not a known role.
pub fn parse_node_cert_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse_cert(der, "node certificate")?;
    cert_info(&cert, "node certificate")
}

pub fn parse_node_cert_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let der = pem_cert(pem, "node certificate")?;
    parse_node_cert_der(&der)
}

fn check_validity(
    what: &'static str,
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> Result<(), PkiError> {
    if now < not_before {
        return Err(PkiError::NotYetValid {
            what,
            not_before,
            now,
        });
    }
    if now > not_after {
        return Err(PkiError::Expired {
            what,
            not_after,
            now,
        });
    }
    Ok(())
}

/// Check that `cert_pem` was signed by the CA in `ca_cert_pem` and that
/// both are within their validity at `now`.
pub fn verify_node_cert(
    cert_pem: &str,
    ca_cert_pem: &str,
    now: SystemTime,
) -> Result<CertInfo, PkiError> {
    let ca_der = pem_cert(ca_cert_pem, "root CA certificate")?;
    let ca = parse_cert(&ca_der, "root CA certificate")?;
    let der = pem_cert(cert_pem, "node certificate")?;
    let cert = parse_cert(&der, "node certificate")?;

    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::NotIssuedByCa {
            reason: format!(
                "its issuer is \"{}\", not \"{}\"",
                cert.issuer(),
                ca.subject()
            ),
        });
    }
    // Every swarm's CA is called swarm-ca, so the name proves nothing: the
    // signature decides.
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::NotIssuedByCa {
            reason: format!("its signature does not verify with the CA key ({e})"),
        })?;

    let ca_time = |t: &x509_parser::time::ASN1Time| {
        from_unix(t.timestamp()).ok_or_else(|| PkiError::BadCertificate {
            what: "root CA certificate",
            reason: "validity date out of range".into(),
        })
    };
    check_validity(
        "root CA certificate",
        ca_time(&ca.validity().not_before)?,
        ca_time(&ca.validity().not_after)?,
        now,
    )?;
    let info = cert_info(&cert, "node certificate")?;
    check_validity("node certificate", info.not_before, info.not_after, now)?;
    Ok(info)
}

/// PEM helper for the transport: the first certificate in a PEM string as DER.
pub fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    pem_cert(pem, "certificate")
}

fn pem_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| pem_error(e, what, "CERTIFICATE"))
}

/// A PEM text without the block asked for is `PemMissing` (naming the
/// block), one that does not decode is `PemRead`.
pub(crate) fn pem_error(
    e: rustls::pki_types::pem::Error,
    what: &'static str,
    label: &'static str,
) -> PkiError {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => PkiError::PemMissing { what, label },
        source => PkiError::PemRead { what, source },
    }
}

/// PEM helper for the transport: the first private key (PKCS#8, SEC1 or
/// PKCS#1) in a PEM string as DER.
pub fn key_der_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| pem_error(e, "private key", "PRIVATE KEY"))
}

/// A CSR for an existing key. A node whose certificate expired while it was
/// off proves who it is by asking with the key of its old certificate.
pub fn csr_for_key(key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::Generate {
        what: "a certificate signing request (the node key does not load)",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "apiary-node");
    params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| PkiError::Generate {
            what: "a certificate signing request",
            source,
        })
}

fn fingerprint(spki_der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, spki_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 (hex) of a certificate's public key (its SubjectPublicKeyInfo).
pub fn cert_key_fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = pem_cert(cert_pem, "node certificate")?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::BadCsr {
        reason: format!("not a certificate: {e}"),
    })?;
    Ok(fingerprint(cert.tbs_certificate.subject_pki.raw))
}

/// SHA-256 (hex) of a CSR's public key, after checking its self-signature.
pub fn csr_key_fingerprint(csr_pem: &str) -> Result<String, PkiError> {
    let spki = csr_public_key(csr_pem)?;
    Ok(fingerprint(&rcgen::PublicKeyData::subject_public_key_info(
        &spki,
    )))
}
