#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use super::*;
use crate::store::Command;

fn spec(name: &str, len: usize) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        labels: Default::default(),
        data: vec![b'x'; len],
    }
}

#[test]
fn names_follow_dockers_pattern() {
    for ok in ["a", "web-key", "db.password_2", "A1", &"x".repeat(64)] {
        assert!(validate_name("secret", ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        ".a",
        "a_",
        "has space",
        "ü",
        "a/b",
        &"x".repeat(65),
    ] {
        let e = validate_name("secret", bad).expect_err(bad);
        assert!(
            matches!(e, ControlError::InvalidArgument(_)),
            "{bad}: {e:?}"
        );
    }
    let e = validate_name("config", "bad name").unwrap_err().to_string();
    assert!(e.contains("invalid config name \"bad name\""), "{e}");
}

#[test]
fn secret_size_limit_is_swarms() {
    assert!(validate_secret_spec(&spec("s", 1)).is_ok());
    assert!(validate_secret_spec(&spec("s", MAX_SECRET_SIZE - 1)).is_ok());
    let e = validate_secret_spec(&spec("s", MAX_SECRET_SIZE))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("secret data must be larger than 0 and less than 500KB"),
        "{e}"
    );
    assert!(validate_secret_spec(&spec("s", 0)).is_err());
    let config = ConfigSpec {
        name: "c".into(),
        labels: Default::default(),
        data: vec![0; MAX_SECRET_SIZE + 1],
    };
    assert!(
        validate_config_spec(&config).is_ok(),
        "configs allow 1000KB"
    );
}

fn state_with(secrets: &[(&str, &str)]) -> State {
    let mut st = State::default();
    for (i, (id, name)) in secrets.iter().enumerate() {
        let mut s = new_secret(spec(name, 3), "t");
        s.id = SecretId(id.to_string());
        let r = st.apply(i as u64 + 1, &Command::CreateSecret { secret: s });
        assert_eq!(r.error, None);
    }
    st
}

#[test]
fn lookup_by_id_then_name_then_unique_prefix() {
    let st = state_with(&[("abc111", "web-key"), ("abc222", "abc111x"), ("zzz", "abc")]);
    assert_eq!(resolve_secret(&st, "abc111").unwrap().spec.name, "web-key");
    assert_eq!(resolve_secret(&st, "web-key").unwrap().id.0, "abc111");
    // An exact name wins over an ID prefix.
    assert_eq!(resolve_secret(&st, "abc").unwrap().id.0, "zzz");
    assert_eq!(resolve_secret(&st, "abc2").unwrap().id.0, "abc222");
    let e = resolve_secret(&st, "ab").unwrap_err().to_string();
    assert!(e.contains("ambiguous (2 matches found)"), "{e}");
    let e = resolve_secret(&st, "nope").unwrap_err();
    assert_eq!(e.to_string(), "secret nope not found");
    assert!(matches!(e, ControlError::NotFound(_)));
    assert!(resolve_secret(&st, "").is_err());
}

#[test]
fn updates_may_change_labels_only() {
    let current = new_secret(spec("web-key", 3), "t");
    let mut upd = spec("web-key", 0);
    upd.labels.insert("a".into(), "b".into());
    assert!(check_secret_update(&current, &upd).is_ok());
    assert!(check_secret_update(&current, &spec("", 0)).is_ok());
    assert!(check_secret_update(&current, &spec("other", 0)).is_err());
    assert!(check_secret_update(&current, &spec("web-key", 3)).is_err());

    let config = new_config(
        ConfigSpec {
            name: "app".into(),
            labels: Default::default(),
            data: b"port=80".to_vec(),
        },
        "t",
    );
    let mut same = config.spec.clone();
    same.labels.insert("x".into(), String::new());
    assert!(check_config_update(&config, &same).is_ok());
    same.data = b"port=81".to_vec();
    assert!(check_config_update(&config, &same).is_err());
}

#[test]
fn secrets_leave_the_seam_without_data() {
    let s = new_secret(spec("k", 10), "t");
    assert_eq!(s.id.0.len(), 25);
    assert!(without_data(s).spec.data.is_empty());
}
