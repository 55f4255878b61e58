//! Root CA, node certificates, join tokens and unlock keys.
//!
//! Pure functions over PEM strings: storing the CA, rotating tokens and
//! scheduling renewals belong to the manager and the node.

mod base36;
mod cert;
mod renew;
mod rotate;
mod token;

#[cfg(test)]
mod tests;

pub use cert::{
    ca_digest, cert_der_from_pem, cert_key_fingerprint, csr_for_key, csr_key_fingerprint,
    key_der_from_pem, new_key_and_csr, new_root_ca, parse_node_cert_der, parse_node_cert_pem,
    sign_csr, verify_node_cert, CertInfo, KeyAndCsr, PkiError, CA_COMMON_NAME,
};
pub use renew::renewal_delay;
pub use rotate::{ca_subject_and_key, certs_from_pem, cross_sign};
pub use token::{new_join_secret, new_node_id, secrets_equal, JoinToken, TokenError, UnlockKey};
