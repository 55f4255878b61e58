//! Root CA rotation: cross-signing the new root with the old one, and the
//! facts about a CA that nodes and the API compare (issuer subject and key).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::cert::{validity_window, CA_COMMON_NAME, CA_VALIDITY};
use super::PkiError;
use crate::store::RootCa;

/// The new root's key certified by an old root: a node that still trusts
/// only the old root accepts a certificate signed by the new key when this
/// travels with it as an intermediate. Same subject and key as the new root,
/// so a node that trusts the new root never needs it.
pub fn cross_sign(new: &RootCa, old: &RootCa) -> Result<String, PkiError> {
    let new_key =
        KeyPair::from_pem(&new.key_pem).map_err(|source| PkiError::BadCaKey { source })?;
    let old_key =
        KeyPair::from_pem(&old.key_pem).map_err(|source| PkiError::BadCaKey { source })?;
    let old_der = super::cert_der_from_pem(&old.cert_pem)?;
    let issuer = Issuer::from_ca_cert_der(&old_der, old_key)
        .map_err(|source| PkiError::BadCaKey { source })?;
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
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(super::cert::random_serial());
    let cert = params
        .signed_by(&new_key, &issuer)
        .map_err(|source| PkiError::Sign { source })?;
    Ok(cert.pem())
}

/// Every certificate in a PEM text, in order (a trust bundle, or a leaf and
/// its intermediates).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| super::cert::pem_error(e, "certificate", "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err(PkiError::PemMissing {
            what: "certificate",
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The raw subject and SubjectPublicKeyInfo of a CA certificate (PEM): what
/// Docker shows as `CertIssuerSubject` / `CertIssuerPublicKey`, and what
/// tells which root issued a node's certificate (every root is "swarm-ca",
/// so only the key tells them apart).
pub fn ca_subject_and_key(ca_cert_pem: &str) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let der = super::cert_der_from_pem(ca_cert_pem)?;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::BadCertificate {
            what: "root CA certificate",
            reason: e.to_string(),
        })?;
    Ok((
        cert.subject().as_raw().to_vec(),
        cert.tbs_certificate.subject_pki.raw.to_vec(),
    ))
}
