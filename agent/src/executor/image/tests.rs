use super::*;

#[test]
fn references_normalize_like_docker() {
    for (given, want) in [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("me/app", "docker.io/me/app:latest"),
        (
            "docker.io/library/busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        ("reg:5000/x", "reg:5000/x:latest"),
        ("reg.local/team/x:2", "reg.local/team/x:2"),
        ("localhost/x", "localhost/x:latest"),
        ("busybox@sha256:abc", "docker.io/library/busybox@sha256:abc"),
    ] {
        assert_eq!(normalize(given), want, "{given}");
    }
    assert_eq!(
        candidates("busybox:latest"),
        ["docker.io/library/busybox:latest", "busybox:latest"]
    );
    assert_eq!(
        candidates("docker.io/library/x:1"),
        ["docker.io/library/x:1"]
    );
}

#[test]
fn chain_ids_follow_the_oci_spec() {
    let a = format!("sha256:{}", "a".repeat(64));
    let b = format!("sha256:{}", "b".repeat(64));
    let c = format!("sha256:{}", "c".repeat(64));
    let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
    assert_eq!(ids[0], a);
    let ab = format!("sha256:{}", sha256_hex(format!("{a} {b}").as_bytes()));
    assert_eq!(ids[1], ab);
    assert_eq!(
        ids[2],
        format!("sha256:{}", sha256_hex(format!("{ab} {c}").as_bytes()))
    );
    assert!(chain_ids(&[]).is_empty());
    // Known vector: sha256("") is e3b0…
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

fn index() -> Value {
    json!({"manifests": [
        {"digest": "sha256:amd", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:v6", "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "sha256:v7", "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:arm64", "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:att", "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]})
}

fn plat(arch: &str, variant: Option<&str>) -> Platform {
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: variant.map(String::from),
    }
}

#[test]
fn platform_selection_honours_variants() {
    let idx = index();
    let pick = |p: Platform| {
        p.select(&idx)
            .and_then(|m| m["digest"].as_str())
            .map(String::from)
    };
    assert_eq!(pick(plat("amd64", None)).as_deref(), Some("sha256:amd"));
    assert_eq!(
        pick(plat("arm64", Some("v8"))).as_deref(),
        Some("sha256:arm64")
    );
    assert_eq!(pick(plat("arm", Some("v7"))).as_deref(), Some("sha256:v7"));
    assert_eq!(pick(plat("arm", Some("v6"))).as_deref(), Some("sha256:v6"));
    assert_eq!(pick(plat("riscv64", None)), None);
    // A v6-only image runs on a v7 host; a v7-only one not on v6.
    let only_v6 = json!({"manifests": [idx["manifests"][1].clone()]});
    assert!(plat("arm", Some("v7")).select(&only_v6).is_some());
    let only_v7 = json!({"manifests": [idx["manifests"][2].clone()]});
    assert!(plat("arm", Some("v6")).select(&only_v7).is_none());
    // arm64 without a variant is fine.
    assert_eq!(
        plat("arm64", Some("v8")).score(Some(&json!({"os": "linux", "architecture": "arm64"}))),
        Some(2)
    );
    let host = Platform::host();
    assert_eq!(host.os, "linux");
}

#[test]
fn index_entry_names() {
    let e = |ann: Value| json!({"digest": "sha256:x", "size": 1, "annotations": ann});
    assert_eq!(
        entry_name(&e(
            json!({"org.opencontainers.image.ref.name": "busybox:latest"})
        ))
        .as_deref(),
        Some("docker.io/library/busybox:latest")
    );
    assert_eq!(
        entry_name(&e(
            json!({"io.containerd.image.name": "docker.io/library/a:1",
                               "org.opencontainers.image.ref.name": "1"})
        ))
        .as_deref(),
        Some("docker.io/library/a:1")
    );
    // A bare tag names nothing.
    assert_eq!(
        entry_name(&e(json!({"org.opencontainers.image.ref.name": "latest"}))),
        None
    );
    assert_eq!(entry_name(&json!({"digest": "sha256:x"})), None);
}

#[test]
fn docker_save_gets_a_schema2_manifest() {
    let config = Desc {
        media_type: MT_DOCKER_CONFIG.into(),
        digest: "sha256:c".into(),
        size: 10,
    };
    let layer = Desc {
        media_type: MT_DOCKER_LAYER.into(),
        digest: "sha256:l".into(),
        size: 20,
    };
    let m: Value = serde_json::from_slice(&docker_manifest(&config, &[layer])).expect("json");
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], MT_DOCKER_MANIFEST);
    assert_eq!(m["config"]["digest"], "sha256:c");
    assert_eq!(
        m["layers"][0],
        json!({"mediaType": MT_DOCKER_LAYER, "digest": "sha256:l", "size": 20})
    );
}

#[test]
fn tar_paths_and_links_resolve() {
    assert_eq!(clean("./blobs/sha256/ab"), "blobs/sha256/ab");
    assert_eq!(
        resolve_rel(Path::new("abc"), "../def/layer.tar"),
        "def/layer.tar"
    );
    let t = Tarball {
        blobs: HashMap::from([("def/layer.tar".to_string(), ("sha256:d".to_string(), 5))]),
        small: HashMap::new(),
        links: HashMap::from([("abc/layer.tar".to_string(), "def/layer.tar".to_string())]),
    };
    assert_eq!(
        t.blob("abc/layer.tar").expect("linked"),
        ("sha256:d".to_string(), 5)
    );
    assert!(t.blob("nope").is_err());
}
