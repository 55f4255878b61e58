use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn r(s: &str) -> Reference {
    match Reference::parse(s) {
        Ok(r) => r,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn references_parse_with_docker_hub_defaults() {
    let b = r("busybox");
    assert_eq!(b.registry, "docker.io");
    assert_eq!(b.repository, "library/busybox");
    assert_eq!(b.tag.as_deref(), Some("latest"));
    assert_eq!(b.digest, None);
    assert_eq!(b.api_host(), "registry-1.docker.io");
    assert_eq!(b.manifest_ref(), "latest");

    let x = r("127.0.0.1:5000/busybox:1.36");
    assert_eq!(
        (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
        ("127.0.0.1:5000", "busybox", Some("1.36"))
    );
    assert_eq!(x.api_host(), "127.0.0.1:5000");

    let l = r("localhost/team/app");
    assert_eq!(
        (l.registry.as_str(), l.repository.as_str()),
        ("localhost", "team/app")
    );

    let me = r("me/app:v2");
    assert_eq!(me.repository, "me/app");

    let pinned = r(&format!("busybox@{D}"));
    assert_eq!(pinned.tag, None);
    assert_eq!(pinned.digest.as_deref(), Some(D));
    assert_eq!(pinned.manifest_ref(), D);

    // A digest wins over the tag when both are given.
    let both = r(&format!("reg.io:443/a/b:1@{D}"));
    assert_eq!(both.tag.as_deref(), Some("1"));
    assert_eq!(both.manifest_ref(), D);
}

#[test]
fn reference_names_match_the_image_records_prepare_looks_up() {
    for s in [
        "busybox",
        "busybox:1",
        "me/app",
        "127.0.0.1:5000/busybox",
        "ghcr.io/o/r:t",
        &format!("busybox@{D}"),
        &format!("reg:5000/x:1@{D}"),
    ] {
        assert_eq!(r(s).to_string(), image::normalize(s), "{s}");
    }
}

#[test]
fn bad_references_are_refused_with_the_reason() {
    for s in [
        "",
        "Busybox",
        "busybox:",
        "busybox:-x",
        "busybox@sha256:abc",
        "busybox@md5:0123",
        "a//b",
        "reg:5000/",
        "busybox:a/b",
    ] {
        match Reference::parse(s) {
            Err(PullError::InvalidReference(m)) => assert!(!m.is_empty()),
            other => panic!("{s:?} gave {other:?}"),
        }
    }
}

#[test]
fn loopback_and_declared_registries_are_plain_http() {
    let cfg = RegistryConfig {
        insecure: vec!["reg.lan:5000".into(), "10.0.0.9".into()],
    };
    for (host, insecure) in [
        ("127.0.0.1:5000", true),
        ("127.3.4.5", true),
        ("localhost:5000", true),
        ("[::1]:5000", true),
        ("reg.lan:5000", true),
        ("reg.lan:5001", false),
        ("10.0.0.9:5000", true),
        ("10.0.0.9", true),
        ("registry-1.docker.io", false),
        ("ghcr.io", false),
    ] {
        assert_eq!(cfg.is_insecure(host), insecure, "{host}");
    }
}

#[test]
fn bearer_challenges_parse() {
    let ch = parse_challenge(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
    )
    .expect("challenge");
    assert_eq!(ch.scheme, "bearer");
    assert_eq!(ch.params["realm"], "https://auth.docker.io/token");
    assert_eq!(ch.params["service"], "registry.docker.io");
    assert_eq!(
        token_url(&ch, "library/busybox").as_deref(),
        Some("https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fbusybox%3Apull")
    );

    // Commas and escaped quotes inside quoted values, spaces, odd case,
    // unquoted values.
    let ch = parse_challenge(
        r#"bearer  Realm="https://r/t?x=1" , scope="repository:a:pull,push", error=insufficient_scope, note="say \"hi\"""#,
    )
    .expect("challenge");
    assert_eq!(ch.params["realm"], "https://r/t?x=1");
    assert_eq!(ch.params["scope"], "repository:a:pull,push");
    assert_eq!(ch.params["error"], "insufficient_scope");
    assert_eq!(ch.params["note"], r#"say "hi""#);
    // An existing query string is extended; the challenge's scope is kept.
    assert_eq!(
        token_url(&ch, "a").as_deref(),
        Some("https://r/t?x=1&scope=repository%3Aa%3Apull%2Cpush")
    );

    let basic = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic");
    assert_eq!(basic.scheme, "basic");
    // No realm: no token URL.
    let bare = parse_challenge("Bearer").expect("bare");
    assert_eq!(token_url(&bare, "x"), None);
    // An unterminated quote is not a challenge.
    assert_eq!(parse_challenge(r#"Bearer realm="https://x"#), None);
    assert_eq!(parse_challenge(""), None);
}

#[test]
fn registry_errors_keep_the_registrys_words() {
    let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"9"}}]}"#;
    assert_eq!(
        error_message(StatusCode::NOT_FOUND, body),
        "manifest unknown"
    );
    let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"},{"code":"DENIED","message":""}]}"#;
    assert_eq!(
        error_message(StatusCode::UNAUTHORIZED, body),
        "authentication required; denied"
    );
    assert_eq!(
        error_message(
            StatusCode::UNAUTHORIZED,
            br#"{"details":"incorrect username or password"}"#
        ),
        "incorrect username or password"
    );
    assert_eq!(
        error_message(StatusCode::BAD_GATEWAY, b"<html>oops</html>"),
        "502 Bad Gateway"
    );
    assert_eq!(
        error_message(StatusCode::FORBIDDEN, b"go away"),
        "403 Forbidden: go away"
    );
    let e = PullError::Registry {
        registry: "127.0.0.1:5000".into(),
        status: 404,
        message: "manifest unknown".into(),
    };
    assert_eq!(
        e.into_exec("busybox:9").to_string(),
        "pull busybox:9: manifest unknown from registry 127.0.0.1:5000"
    );
}

#[test]
fn retriable_errors_are_the_transient_ones() {
    let reg = |status| PullError::Registry {
        registry: "r".into(),
        status,
        message: "m".into(),
    };
    assert!(reg(503).is_retriable());
    assert!(reg(429).is_retriable());
    assert!(!reg(404).is_retriable());
    assert!(!reg(401).is_retriable());
    assert!(PullError::Connect {
        registry: "r".into(),
        reason: "refused".into()
    }
    .is_retriable());
    assert!(!PullError::InvalidReference("x".into()).is_retriable());
}

fn index(entries: &[(&str, &str, Option<&str>)]) -> Value {
    serde_json::json!({
        "manifests": entries.iter().map(|(digest, arch, variant)| {
            let mut p = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = Value::from(*v);
            }
            serde_json::json!({"digest": digest, "size": 1, "platform": p})
        }).collect::<Vec<_>>(),
    })
}

fn chosen(host: &Platform, idx: &Value) -> Option<String> {
    host.select(idx)
        .and_then(|m| m["digest"].as_str())
        .map(String::from)
}

#[test]
fn platform_choice_from_an_index_honours_arm_variants() {
    let idx = index(&[
        ("amd64", "amd64", None),
        ("armv5", "arm", Some("v5")),
        ("armv6", "arm", Some("v6")),
        ("armv7", "arm", Some("v7")),
        ("arm64", "arm64", Some("v8")),
    ]);
    let p = |arch: &str, variant: Option<&str>| Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: variant.map(String::from),
    };
    assert_eq!(chosen(&p("amd64", None), &idx).as_deref(), Some("amd64"));
    assert_eq!(
        chosen(&p("arm64", Some("v8")), &idx).as_deref(),
        Some("arm64")
    );
    assert_eq!(
        chosen(&p("arm", Some("v7")), &idx).as_deref(),
        Some("armv7")
    );
    // A Pi Zero (ARMv6) never gets the v7 image.
    assert_eq!(
        chosen(&p("arm", Some("v6")), &idx).as_deref(),
        Some("armv6")
    );
    // An ARMv7 host falls back to older variants when v7 is missing.
    let old = index(&[("armv5", "arm", Some("v5")), ("armv6", "arm", Some("v6"))]);
    assert_eq!(
        chosen(&p("arm", Some("v7")), &old).as_deref(),
        Some("armv6")
    );
    // Nothing runnable: no choice (the pull then names the platform).
    let none = index(&[("s390x", "s390x", None)]);
    assert_eq!(chosen(&Platform::host(), &none), None);
    // The host picks its own entry from a typical multi-arch index.
    let want = match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "arm" => Some("armv7"),
        _ => None,
    };
    if let Some(w) = want {
        assert_eq!(chosen(&Platform::host(), &idx).as_deref(), Some(w));
    }
}

// ------------------------------------------------ a fake registry over HTTP

/// Serve `handler` on a free loopback port; returns `127.0.0.1:<port>`.
async fn serve<F>(handler: F) -> String
where
    F: Fn(axum::extract::Request) -> axum::response::Response + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let h = handler.clone();
        async move { h(req) }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn answer(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> axum::response::Response {
    let mut b = axum::response::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(axum::body::Body::from(body)).expect("response")
}

/// A registry that wants a bearer token from its own token endpoint and
/// redirects blobs to a storage host, which must not see the token.
#[tokio::test]
async fn bearer_token_dance_and_redirects_without_credentials() {
    let blob = b"layer bytes".to_vec();
    let blob_digest = format!("sha256:{}", image::sha256_hex(&blob));
    let storage = {
        let blob = blob.clone();
        serve(move |req| {
            if req.headers().contains_key("authorization") {
                return answer(400, &[], b"credentials leaked to storage".to_vec());
            }
            answer(200, &[], blob.clone())
        })
        .await
    };
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let addr_cell = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let registry = {
        let cell = addr_cell.clone();
        let manifest = manifest.clone();
        let blob_digest = blob_digest.clone();
        serve(move |req| {
            let me = cell.get().cloned().unwrap_or_default();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            if path == "/token" {
                assert_eq!(
                    query,
                    "service=fake&scope=repository%3Ateam%2Fapp%3Apull",
                    "token query"
                );
                return answer(200, &[], br#"{"token":"t0k"}"#.to_vec());
            }
            let authed = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                == Some("Bearer t0k");
            if !authed {
                let challenge = format!(
                    r#"Bearer realm="http://{me}/token",service="fake",scope="repository:team/app:pull""#
                );
                return answer(
                    401,
                    &[("www-authenticate", challenge)],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                        .to_vec(),
                );
            }
            match path.as_str() {
                "/v2/team/app/manifests/1" => answer(
                    200,
                    &[("content-type", MT_OCI_MANIFEST.to_string())],
                    manifest.clone(),
                ),
                p if p == format!("/v2/team/app/blobs/{blob_digest}") => answer(
                    307,
                    &[("location", format!("http://{storage}/b/{blob_digest}"))],
                    Vec::new(),
                ),
                _ => answer(
                    404,
                    &[],
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .to_vec(),
                ),
            }
        })
        .await
    };
    addr_cell.set(registry.clone()).expect("set address once");

    let r = Reference::parse(&format!("{registry}/team/app:1")).expect("reference");
    let mut reg = Registry::new(&r, &RegistryConfig::default()).expect("registry");
    assert!(reg.base.starts_with("http://"), "loopback is plain HTTP");
    let (body, mt) = reg.manifest("1", None).await.expect("manifest");
    assert_eq!((body, mt.as_str()), (manifest, MT_OCI_MANIFEST));
    assert_eq!(reg.token.as_deref(), Some("t0k"));
    let got = read_all(reg.blob(&blob_digest).await.expect("blob"), 1024, &reg)
        .await
        .expect("blob body");
    assert_eq!(got, blob);
    // A digest-pinned manifest with the wrong content is refused.
    let wrong = format!("sha256:{}", "1".repeat(64));
    match reg.manifest("1", Some(&wrong)).await {
        Err(PullError::Protocol { detail, .. }) => assert!(detail.contains("expected"), "{detail}"),
        other => panic!("want a digest mismatch, got {other:?}"),
    }
    match reg.manifest("2", None).await {
        Err(e) => assert_eq!(
            e.to_string(),
            format!("manifest unknown from registry {registry}")
        ),
        Ok(_) => panic!("tag 2 should not exist"),
    }
}
