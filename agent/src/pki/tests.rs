#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::base36;
use super::*;
use crate::store::{NodeId, Role};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);

fn sample_token() -> JoinToken {
    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    JoinToken::new(digest, "0123456789abcdefghijklmno".to_string())
}

fn close(a: SystemTime, b: SystemTime, tolerance: Duration) -> bool {
    let diff = a.duration_since(b).unwrap_or_else(|e| e.duration());
    diff <= tolerance
}

// ---- base 36 ----

#[test]
fn base36_known_vectors() {
    assert_eq!(base36::encode(&[0u8; 32], 50), "0".repeat(50));
    assert_eq!(base36::encode(&[35], 1), "z");
    assert_eq!(base36::encode(&[36], 1), "10");
    assert_eq!(base36::encode(&[0, 36], 4), "0010");
    assert_eq!(base36::encode(&[0xff; 16], 25), "f5lxx1zz5pnorynqglhzmsp33");
    assert_eq!(
        base36::encode(&[0xff; 32], 50),
        "6dp5qcb22im238nr3wvp0ic7q99w035jmy2iw7i6n43d37jtof"
    );
    let mut counting = [0u8; 32];
    for (i, b) in counting.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    assert_eq!(
        base36::encode(&counting, 50),
        "00wjzlh5yt3uk0mzpcor0i12ol0rrpxdydzggt4b2fvr8yealc"
    );
}

#[test]
fn base36_decode_vectors_and_limits() {
    assert_eq!(base36::decode::<1>("z"), Ok([35]));
    assert_eq!(base36::decode::<2>("0010"), Ok([0, 36]));
    assert_eq!(
        base36::decode::<16>("f5lxx1zz5pnorynqglhzmsp33"),
        Ok([0xff; 16])
    );
    // 2^128 no longer fits in 16 bytes.
    assert_eq!(
        base36::decode::<16>("f5lxx1zz5pnorynqglhzmsp34"),
        Err(base36::Base36Error::Overflow)
    );
    assert_eq!(
        base36::decode::<32>("6dp5qcb22im238nr3wvp0ic7q99w035jmy2iw7i6n43d37jtof"),
        Ok([0xff; 32])
    );
    assert_eq!(
        base36::decode::<32>("6dp5qcb22im238nr3wvp0ic7q99w035jmy2iw7i6n43d37jtog"),
        Err(base36::Base36Error::Overflow)
    );
    assert_eq!(
        base36::decode::<4>("1A"),
        Err(base36::Base36Error::InvalidChar { index: 1, ch: 'A' })
    );
    for _ in 0..100 {
        let bytes: [u8; 32] = rand::random();
        assert_eq!(base36::decode::<32>(&base36::encode(&bytes, 50)), Ok(bytes));
    }
}

#[test]
fn node_ids_and_secrets_have_dockers_shape() {
    let is_b36 = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    };
    let a = new_node_id();
    let b = new_node_id();
    assert_eq!(a.0.len(), 25);
    assert!(is_b36(&a.0), "{a}");
    assert_ne!(a, b);
    let s = new_join_secret();
    assert_eq!(s.len(), 25);
    assert!(is_b36(&s));
    assert_ne!(s, new_join_secret());
}

// ---- join tokens ----

#[test]
fn join_token_round_trip() {
    let token = sample_token();
    let text = token.to_string();
    assert_eq!(text.len(), 85);
    assert_eq!(
        text,
        "SWMTKN-1-00wjzlh5yt3uk0mzpcor0i12ol0rrpxdydzggt4b2fvr8yealc-0123456789abcdefghijklmno"
    );
    assert_eq!(JoinToken::parse(&text), Ok(token.clone()));
    assert_eq!(JoinToken::parse(&format!("  {text}\n")), Ok(token));

    let ca = new_root_ca().unwrap();
    let real = JoinToken::new(ca_digest(&ca.cert_pem).unwrap(), new_join_secret());
    let text = real.to_string();
    assert_eq!(text.len(), 85);
    assert_eq!(JoinToken::parse(&text).unwrap(), real);
}

#[test]
fn join_token_errors() {
    let good = sample_token().to_string();
    let digest = &good[9..59];
    let secret = &good[60..];
    let cases: Vec<(String, TokenError)> = vec![
        ("   ".into(), TokenError::Empty),
        (
            good.replacen("SWMTKN", "SWXTKN", 1),
            TokenError::WrongPrefix {
                looks_like_unlock_key: false,
            },
        ),
        (
            UnlockKey::generate().to_string(),
            TokenError::WrongPrefix {
                looks_like_unlock_key: true,
            },
        ),
        (
            good.replacen("-1-", "-2-", 1),
            TokenError::UnsupportedVersion {
                version: "2".into(),
            },
        ),
        ("SWMTKN".into(), TokenError::WrongShape { parts: 1 }),
        (
            format!("SWMTKN-1-{digest}"),
            TokenError::WrongShape { parts: 3 },
        ),
        (format!("{good}-x"), TokenError::WrongShape { parts: 5 }),
        (
            format!("SWMTKN-1-{}-{secret}", &digest[1..]),
            TokenError::DigestLength { len: 49 },
        ),
        (
            format!("SWMTKN-1-{digest}-{}", &secret[..24]),
            TokenError::SecretLength { len: 24 },
        ),
        (
            format!("SWMTKN-1-{}Q-{secret}", &digest[..49]),
            TokenError::InvalidChar {
                part: "CA digest",
                index: 49,
                ch: 'Q',
            },
        ),
        (
            format!("SWMTKN-1-{digest}-{}é", &secret[..24]),
            TokenError::InvalidChar {
                part: "secret",
                index: 24,
                ch: 'é',
            },
        ),
        (
            format!("SWMTKN-1-{}-{secret}", "z".repeat(50)),
            TokenError::DigestOverflow,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(JoinToken::parse(&input), Err(want), "input {input:?}");
    }
}

#[test]
fn token_error_messages_guide_the_user() {
    let err = JoinToken::parse("SWMTKN-1-abc").unwrap_err().to_string();
    assert!(err.starts_with("invalid join token: "), "{err}");
    assert!(err.contains("apiary swarm join-token worker"), "{err}");
    let err = JoinToken::parse(&UnlockKey::generate().to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unlock key"), "{err}");
    let err = UnlockKey::parse("SWMKEY-1-@@").unwrap_err().to_string();
    assert!(err.starts_with("invalid unlock key: "), "{err}");
    assert!(err.contains("apiary swarm unlock-key"), "{err}");
    // A secret must not leak into the error text.
    let token = JoinToken::new([0xff; 32], new_join_secret());
    let broken = format!("{token}-extra");
    let err = JoinToken::parse(&broken).unwrap_err().to_string();
    assert!(!err.contains(&token.secret), "{err}");
}

#[test]
fn secrets_compare() {
    assert!(secrets_equal("abc", "abc"));
    assert!(!secrets_equal("abc", "abd"));
    assert!(!secrets_equal("abc", "abcd"));
    assert!(secrets_equal("", ""));
}

// ---- unlock keys ----

#[test]
fn unlock_key_round_trip() {
    let key = UnlockKey::generate();
    let text = key.to_string();
    assert!(text.starts_with("SWMKEY-1-"));
    assert_eq!(text.len(), 9 + 43);
    assert!(!text.ends_with('='));
    assert_eq!(UnlockKey::parse(&text), Ok(key.clone()));
    assert_eq!(UnlockKey::parse(&format!(" {text}\n")), Ok(key.clone()));
    assert_eq!(UnlockKey::parse(&format!("{text}=")), Ok(key));
    assert_ne!(UnlockKey::generate(), UnlockKey::generate());
    let zero = UnlockKey([0; 32]);
    assert_eq!(
        zero.to_string(),
        "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
}

#[test]
fn unlock_key_errors() {
    let good = UnlockKey::generate().to_string();
    let body = &good[9..];
    assert_eq!(UnlockKey::parse(""), Err(TokenError::UnlockKeyEmpty));
    assert_eq!(
        UnlockKey::parse(&format!("SWMKEX-1-{body}")),
        Err(TokenError::UnlockKeyPrefix {
            looks_like_join_token: false
        })
    );
    assert_eq!(
        UnlockKey::parse(&sample_token().to_string()),
        Err(TokenError::UnlockKeyPrefix {
            looks_like_join_token: true
        })
    );
    assert_eq!(
        UnlockKey::parse(&format!("SWMKEY-2-{body}")),
        Err(TokenError::UnlockKeyVersion {
            version: "2".into()
        })
    );
    assert_eq!(
        UnlockKey::parse(&format!("SWMKEY-1-{}", &body[..40])),
        Err(TokenError::UnlockKeyLength { len: 30 })
    );
    assert_eq!(
        UnlockKey::parse("SWMKEY-1"),
        Err(TokenError::UnlockKeyLength { len: 0 })
    );
    assert!(matches!(
        UnlockKey::parse(&format!("SWMKEY-1-{}*", &body[..42])),
        Err(TokenError::UnlockKeyEncoding { .. })
    ));
}

#[test]
fn debug_output_hides_secrets() {
    let token = JoinToken::new([7; 32], new_join_secret());
    let debug = format!("{token:?}");
    assert!(!debug.contains(&token.secret), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    let key = UnlockKey::generate();
    let debug = format!("{key:?}");
    let text = key.to_string();
    assert!(!debug.contains(&text[9..]), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    let kc = new_key_and_csr().unwrap();
    assert!(!format!("{kc:?}").contains(&kc.key_pem));
}

// ---- certificates ----

#[test]
fn root_ca_shape() {
    let ca = new_root_ca().unwrap();
    let der = cert_der_from_pem(&ca.cert_pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, [CA_COMMON_NAME]);
    assert!(cert.is_ca());
    let now = SystemTime::now();
    let nb = UNIX_EPOCH + Duration::from_secs(cert.validity().not_before.timestamp() as u64);
    let na = UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64);
    assert!(close(nb, now - HOUR, Duration::from_secs(60)));
    assert!(close(na, now + 20 * 365 * DAY, Duration::from_secs(60)));
    // The key is P-256 PKCS#8 that rustls can load.
    let key = key_der_from_pem(&ca.key_pem).unwrap();
    rustls::crypto::ring::sign::any_ecdsa_type(&key).unwrap();
    assert!(ca.key_pem.contains("BEGIN PRIVATE KEY"));
}

#[test]
fn ca_digest_is_sha256_of_der() {
    let ca = new_root_ca().unwrap();
    let der = cert_der_from_pem(&ca.cert_pem).unwrap();
    let want = ring::digest::digest(&ring::digest::SHA256, &der);
    assert_eq!(ca_digest(&ca.cert_pem).unwrap().as_slice(), want.as_ref());
    let other = new_root_ca().unwrap();
    assert_ne!(
        ca_digest(&ca.cert_pem).unwrap(),
        ca_digest(&other.cert_pem).unwrap()
    );
    assert!(matches!(
        ca_digest("not pem"),
        Err(PkiError::PemMissing { .. })
    ));
}

#[test]
fn forged_csr_subject_is_overwritten() {
    let ca = new_root_ca().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["swarm-manager".to_string(), "evil".to_string()])
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "evil");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "swarm-manager");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "other-cluster");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let node = NodeId("abcdefghijklmnopqrstuvwxy".into());
    let pem = sign_csr(&ca, &csr, &node, Role::Worker, "cluster1", 90 * DAY).unwrap();

    let info = parse_node_cert_pem(&pem).unwrap();
    assert_eq!(info.node_id, node);
    assert_eq!(info.role, Role::Worker);
    assert_eq!(info.cluster_id, "cluster1");

    let der = cert_der_from_pem(&pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.is_ca());
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(s) => s.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans, ["swarm-worker", node.0.as_str()]);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    // The certificate carries the CSR's key, not some other one.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn tampered_csr_is_refused() {
    let ca = new_root_ca().unwrap();
    let kc = new_key_and_csr().unwrap();
    let der =
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(kc.csr_pem.as_bytes())
            .unwrap();
    let mut bytes = der.as_ref().to_vec();
    // Flip a bit inside the subject name (offsets near the start are
    // structural, the CN text sits well after them).
    let pos = bytes
        .windows(b"apiary-node".len())
        .position(|w| w == b"apiary-node")
        .unwrap();
    bytes[pos] ^= 0x01;
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
    );
    let node = new_node_id();
    let err = sign_csr(&ca, &pem, &node, Role::Worker, "c", DAY).unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature), "{err}");
    let err = sign_csr(&ca, "garbage", &node, Role::Worker, "c", DAY).unwrap_err();
    assert!(matches!(err, PkiError::PemMissing { .. }), "{err}");
}

#[test]
fn mismatched_ca_key_is_refused() {
    let a = new_root_ca().unwrap();
    let b = new_root_ca().unwrap();
    let mixed = crate::store::RootCa {
        cert_pem: a.cert_pem,
        key_pem: b.key_pem,
    };
    let kc = new_key_and_csr().unwrap();
    let err = sign_csr(&mixed, &kc.csr_pem, &new_node_id(), Role::Worker, "c", DAY).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch), "{err}");
}

#[test]
fn node_cert_round_trip() {
    let ca = new_root_ca().unwrap();
    let kc = new_key_and_csr().unwrap();
    let node = new_node_id();
    let validity = 90 * DAY;
    let before = SystemTime::now();
    let pem = sign_csr(
        &ca,
        &kc.csr_pem,
        &node,
        Role::Manager,
        "clusterid",
        validity,
    )
    .unwrap();
    let info = parse_node_cert_pem(&pem).unwrap();
    assert_eq!(info.node_id, node);
    assert_eq!(info.role, Role::Manager);
    assert_eq!(info.cluster_id, "clusterid");
    assert!(close(
        info.not_before,
        before - HOUR,
        Duration::from_secs(5)
    ));
    assert!(close(
        info.not_after,
        before + validity,
        Duration::from_secs(5)
    ));
    let der = cert_der_from_pem(&pem).unwrap();
    assert_eq!(parse_node_cert_der(&der).unwrap(), info);

    // The node's key loads in rustls and is the one the cert certifies.
    let key = key_der_from_pem(&kc.key_pem).unwrap();
    rustls::crypto::ring::sign::any_ecdsa_type(&key).unwrap();

    // The CA certificate is not a node certificate.
    let err = parse_node_cert_pem(&ca.cert_pem).unwrap_err();
    assert!(matches!(err, PkiError::MissingField { .. }), "{err}");
}

#[test]
fn unknown_role_ou_is_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "swarm-admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "c");
    let cert = params.self_signed(&key).unwrap();
    let err = parse_node_cert_der(cert.der()).unwrap_err();
    assert!(
        matches!(err, PkiError::UnknownRole { ref ou } if ou == "swarm-admin"),
        "{err}"
    );
    assert!(err.to_string().contains("swarm-admin"));
}

#[test]
fn verify_accepts_own_and_rejects_foreign_and_expired() {
    let ca = new_root_ca().unwrap();
    let other = new_root_ca().unwrap();
    let kc = new_key_and_csr().unwrap();
    let node = new_node_id();
    let now = SystemTime::now();

    let pem = sign_csr(&ca, &kc.csr_pem, &node, Role::Worker, "c", 90 * DAY).unwrap();
    let info = verify_node_cert(&pem, &ca.cert_pem, now).unwrap();
    assert_eq!(info.node_id, node);

    // Same CN "swarm-ca", different key: only the signature tells them apart.
    let foreign = sign_csr(&other, &kc.csr_pem, &node, Role::Worker, "c", 90 * DAY).unwrap();
    let err = verify_node_cert(&foreign, &ca.cert_pem, now).unwrap_err();
    assert!(matches!(err, PkiError::NotIssuedByCa { .. }), "{err}");

    let short = sign_csr(
        &ca,
        &kc.csr_pem,
        &node,
        Role::Worker,
        "c",
        Duration::from_secs(1),
    )
    .unwrap();
    let err = verify_node_cert(&short, &ca.cert_pem, now + DAY).unwrap_err();
    assert!(matches!(err, PkiError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");

    let err = verify_node_cert(&pem, &ca.cert_pem, now - DAY).unwrap_err();
    assert!(matches!(err, PkiError::NotYetValid { .. }), "{err}");

    // A node certificate outliving the CA is still refused once the CA expires.
    let err = verify_node_cert(&pem, &ca.cert_pem, now + 21 * 365 * DAY).unwrap_err();
    assert!(
        matches!(err, PkiError::Expired { what, .. } if what == "root CA certificate"),
        "{err}"
    );
}

#[test]
fn bad_node_id_is_refused() {
    let ca = new_root_ca().unwrap();
    let kc = new_key_and_csr().unwrap();
    for id in ["", "Evil", "a.b", "a b"] {
        let err =
            sign_csr(&ca, &kc.csr_pem, &NodeId(id.into()), Role::Worker, "c", DAY).unwrap_err();
        assert!(matches!(err, PkiError::BadNodeId { .. }), "{id:?}: {err}");
    }
}

#[test]
fn validity_out_of_range_is_refused() {
    let ca = new_root_ca().unwrap();
    let kc = new_key_and_csr().unwrap();
    let err = sign_csr(
        &ca,
        &kc.csr_pem,
        &new_node_id(),
        Role::Worker,
        "c",
        Duration::from_secs(u64::MAX),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::BadValidity { .. }), "{err}");
}

/// The certificates must pass the same checks rustls applies on the QUIC
/// connections: chain, key usage, EKU and the role SAN.
#[test]
fn node_certs_pass_webpki_both_ways() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    let ca = new_root_ca().unwrap();
    let kc = new_key_and_csr().unwrap();
    let node = new_node_id();
    let pem = sign_csr(&ca, &kc.csr_pem, &node, Role::Manager, "c", 90 * DAY).unwrap();
    let ee = cert_der_from_pem(&pem).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der_from_pem(&ca.cert_pem).unwrap()).unwrap();
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    for name in ["swarm-manager", node.0.as_str()] {
        server
            .verify_server_cert(
                &ee,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }
    assert!(server
        .verify_server_cert(
            &ee,
            &[],
            &ServerName::try_from("swarm-worker").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_err());

    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap();
    client
        .verify_client_cert(&ee, &[], UnixTime::now())
        .unwrap();
}

#[test]
fn pem_helpers() {
    assert!(matches!(
        cert_der_from_pem(""),
        Err(PkiError::PemMissing { .. })
    ));
    assert!(matches!(
        key_der_from_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        Err(PkiError::PemMissing { .. }) | Err(PkiError::PemRead { .. })
    ));
    let ca = new_root_ca().unwrap();
    // First certificate of a bundle.
    let bundle = format!("{}{}", ca.cert_pem, new_root_ca().unwrap().cert_pem);
    assert_eq!(
        cert_der_from_pem(&bundle).unwrap(),
        cert_der_from_pem(&ca.cert_pem).unwrap()
    );
}

// ---- renewal ----

#[test]
fn renewal_delay_stays_in_window() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let not_before = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let validity = 90 * DAY;
    let not_after = not_before + validity;
    let lo = validity / 2;
    let hi = validity * 8 / 10;
    let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
    for _ in 0..10_000 {
        let d = renewal_delay(not_before, not_after, not_before, &mut rng);
        assert!(d >= lo && d <= hi, "{d:?}");
        min = min.min(d);
        max = max.max(d);
    }
    // The draws spread over the whole slice rather than sticking to one end.
    assert!(min < lo + DAY && max > hi - DAY, "{min:?} {max:?}");

    // Measured from a later `now`.
    let now = not_before + 10 * DAY;
    for _ in 0..1000 {
        let d = renewal_delay(not_before, not_after, now, &mut rng);
        assert!(d >= lo - 10 * DAY && d <= hi - 10 * DAY, "{d:?}");
    }
    // Past the 80 % point: renew at once.
    let late = not_before + validity * 81 / 100;
    assert_eq!(
        renewal_delay(not_before, not_after, late, &mut rng),
        Duration::ZERO
    );
    assert_eq!(
        renewal_delay(not_before, not_after, not_after + DAY, &mut rng),
        Duration::ZERO
    );
    // A window that ends before it starts is already due.
    assert_eq!(
        renewal_delay(not_after, not_before, not_before, &mut rng),
        Duration::ZERO
    );
}

#[test]
fn a_csr_for_an_existing_key_carries_that_key() {
    let ca = new_root_ca().expect("ca");
    let kc = new_key_and_csr().expect("key");
    let id = new_node_id();
    let cert = sign_csr(
        &ca,
        &kc.csr_pem,
        &id,
        crate::store::Role::Worker,
        "c",
        std::time::Duration::from_secs(7200),
    )
    .expect("sign");
    let again = csr_for_key(&kc.key_pem).expect("csr for the same key");
    assert_eq!(
        csr_key_fingerprint(&again).expect("fp"),
        cert_key_fingerprint(&cert).expect("fp")
    );
    let other = new_key_and_csr().expect("other key");
    assert_ne!(
        csr_key_fingerprint(&other.csr_pem).expect("fp"),
        cert_key_fingerprint(&cert).expect("fp")
    );
    assert!(csr_for_key("not a key").is_err());
}
