use super::*;

#[test]
fn round_trip_and_every_kind_of_damage_is_detected() {
    let s = Sealer::generate().expect("key");
    let sealed = s.seal("log/1", b"hello swarm").expect("seal");
    assert_eq!(sealed.len(), b"hello swarm".len() + OVERHEAD);
    assert_eq!(s.open("log/1", &sealed).expect("open"), b"hello swarm");
    assert!(
        !sealed.windows(5).any(|w| w == b"hello"),
        "no plaintext in the record"
    );

    // Moved to another place.
    assert!(matches!(
        s.open("log/2", &sealed),
        Err(SealError::Corrupt { .. })
    ));
    // Every single bit flip.
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(
            s.open("log/1", &bad).is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
    // Every truncation.
    for n in 0..sealed.len() {
        assert!(
            s.open("log/1", &sealed[..n]).is_err(),
            "truncation to {n} went unnoticed"
        );
    }
    // Another key.
    let other = Sealer::generate().expect("key");
    assert!(matches!(
        other.open("log/1", &sealed),
        Err(SealError::Corrupt { .. })
    ));
    // Same plaintext twice gives different records (fresh nonces).
    assert_ne!(
        s.seal("x", b"a").expect("seal"),
        s.seal("x", b"a").expect("seal")
    );
}

#[test]
fn key_file_locks_with_the_unlock_key_and_keeps_the_previous_one_for_a_while() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(KEY_FILE);
    let dek = Sealer::generate().expect("dek");
    let k1 = UnlockKey::generate();
    let k2 = UnlockKey::generate();
    KeyFile::plain(&dek).save(&path).expect("save");
    let kf = KeyFile::load(&path).expect("load").expect("present");
    assert_eq!(
        kf.plain_dek(&path).expect("dek").expect("plain").raw(),
        dek.raw()
    );

    let kf = KeyFile::locked(&dek, "PEM-KEY", &k2, Some((&k1, 1000))).expect("lock");
    kf.save(&path).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("PEM-KEY"));
    let kf = KeyFile::load(&path).expect("load").expect("present");
    assert!(kf.plain_dek(&path).expect("ok").is_none());
    let (d, pem) = kf.unlock(&path, &k2, 5000).expect("current key");
    assert_eq!((d.raw(), pem.as_str()), (dek.raw(), "PEM-KEY"));
    assert!(
        kf.unlock(&path, &k1, 999).is_ok(),
        "previous key within its grace"
    );
    assert!(
        matches!(kf.unlock(&path, &k1, 1001), Err(KeyFileError::WrongKey)),
        "previous key after grace"
    );
    assert!(matches!(
        kf.unlock(&path, &UnlockKey::generate(), 0),
        Err(KeyFileError::WrongKey)
    ));
    // Wrong keys change nothing.
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
}

#[test]
fn corrupt_key_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(KEY_FILE);
    std::fs::write(&path, b"{\"mode\":\"plain\",\"dek\":\"!!\"}").expect("write");
    let kf = KeyFile::load(&path).expect("parses").expect("present");
    let err = kf.plain_dek(&path).expect_err("bad base64");
    assert!(err.to_string().contains(KEY_FILE), "{err}");
    std::fs::write(&path, b"garbage").expect("write");
    assert!(matches!(
        KeyFile::load(&path),
        Err(KeyFileError::Corrupt { .. })
    ));
}
