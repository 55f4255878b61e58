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
    let mut reg = Registry::new(&r, &RegistryConfig::default(), None).expect("registry");
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

// ------------------------------------------------------------ credentials

/// A registry behind HTTP basic auth (as docker-registry with htpasswd):
/// `u`/`p` may read `team/app:1`.
async fn basic_registry() -> String {
    let good = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "u:p")
    );
    serve(move |req| {
        let authed = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            == Some(good.as_str());
        if !authed {
            return answer(
                401,
                &[(
                    "www-authenticate",
                    r#"Basic realm="Registry Realm""#.to_string(),
                )],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_vec(),
            );
        }
        team_app(req.uri().path())
    })
    .await
}

/// What the fake registries hold, once a request is let in: `/v2/` and
/// the manifest of `team/app:1`.
fn team_app(path: &str) -> axum::response::Response {
    match path {
        "/v2/" => answer(200, &[], b"{}".to_vec()),
        "/v2/team/app/manifests/1" => answer(
            200,
            &[("content-type", MT_OCI_MANIFEST.to_string())],
            br#"{"schemaVersion":2,"config":{},"layers":[]}"#.to_vec(),
        ),
        _ => answer(404, &[], Vec::new()),
    }
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: user.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn basic_auth_when_the_registry_asks_for_it() {
    let registry = basic_registry().await;
    let r = Reference::parse(&format!("{registry}/team/app:1")).expect("reference");
    let cfg = RegistryConfig::default();

    let mut anonymous = Registry::new(&r, &cfg, None).expect("registry");
    match anonymous.manifest("1", None).await {
        Err(e @ PullError::Unauthorized { .. }) => {
            let m = e.to_string();
            assert!(
                m.starts_with(&format!(
                    "authentication required from registry {registry}: "
                )),
                "{m}"
            );
            assert!(m.contains(&format!("apiary login {registry}")), "{m}");
            assert!(!e.is_retriable());
        }
        other => panic!("want unauthorized, got {other:?}"),
    }

    let mut wrong = Registry::new(&r, &cfg, Some(&basic("u", "nope"))).expect("registry");
    match wrong.manifest("1", None).await {
        Err(e @ PullError::Unauthorized { .. }) => {
            let m = e.to_string();
            assert!(m.contains("refused user u"), "{m}");
            assert!(!m.contains("nope"), "the password leaked: {m}");
        }
        other => panic!("want refused credentials, got {other:?}"),
    }

    let mut right = Registry::new(&r, &cfg, Some(&basic("u", "p"))).expect("registry");
    let (_, mt) = right
        .manifest("1", None)
        .await
        .expect("manifest with basic auth");
    assert_eq!(mt, MT_OCI_MANIFEST);
    assert!(
        right.basic,
        "the registry's challenge switched basic auth on"
    );

    // Logins: the same check on /v2/.
    auth::login(&registry, &basic("u", "p"), &cfg)
        .await
        .expect("login");
    match auth::login(&format!("http://{registry}/"), &basic("u", "nope"), &cfg).await {
        Err(auth::LoginError::Refused(m)) => assert_eq!(
            m,
            format!("login attempt to http://{registry}/v2/ failed with status: 401 Unauthorized: authentication required")
        ),
        other => panic!("want a refused login, got {other:?}"),
    }
}

/// A registry whose token server wants basic auth: the token for `u`/`p`
/// opens the repository; a login asks for a token without a scope.
#[tokio::test]
async fn tokens_are_asked_for_with_the_credentials() {
    let addr_cell = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let scopes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let registry = {
        let cell = addr_cell.clone();
        let scopes = scopes.clone();
        let good = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "u:p")
        );
        serve(move |req| {
            let me = cell.get().cloned().unwrap_or_default();
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            if req.uri().path() == "/token" {
                scopes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(req.uri().query().unwrap_or("").to_string());
                if auth != good {
                    return answer(
                        401,
                        &[],
                        br#"{"details":"incorrect username or password"}"#.to_vec(),
                    );
                }
                return answer(200, &[], br#"{"access_token":"t0k"}"#.to_vec());
            }
            if auth != "Bearer t0k" {
                return answer(
                    401,
                    &[(
                        "www-authenticate",
                        format!(r#"Bearer realm="http://{me}/token",service="fake""#),
                    )],
                    Vec::new(),
                );
            }
            team_app(req.uri().path())
        })
        .await
    };
    addr_cell.set(registry.clone()).expect("set address once");
    let cfg = RegistryConfig::default();
    let r = Reference::parse(&format!("{registry}/team/app:1")).expect("reference");

    let mut reg = Registry::new(&r, &cfg, Some(&basic("u", "p"))).expect("registry");
    reg.manifest("1", None)
        .await
        .expect("manifest with a token");
    assert_eq!(reg.token.as_deref(), Some("t0k"));

    let mut wrong = Registry::new(&r, &cfg, Some(&basic("u", "x"))).expect("registry");
    match wrong.manifest("1", None).await {
        Err(e @ PullError::Unauthorized { .. }) => assert!(
            e.to_string()
                .starts_with("token server: incorrect username or password from registry"),
            "{e}"
        ),
        other => panic!("want refused credentials, got {other:?}"),
    }

    auth::login(&registry, &basic("u", "p"), &cfg)
        .await
        .expect("login through the token server");
    assert!(matches!(
        auth::login(&registry, &basic("u", "x"), &cfg).await,
        Err(auth::LoginError::Refused(_))
    ));
    let asked = scopes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        asked[0],
        "service=fake&scope=repository%3Ateam%2Fapp%3Apull"
    );
    // A login asks for no scope.
    assert_eq!(asked.last().map(String::as_str), Some("service=fake"));

    // A registry token is used as it is: no token server involved.
    let before = scopes.lock().unwrap_or_else(|e| e.into_inner()).len();
    let token = Credentials::RegistryToken("t0k".into());
    let mut reg = Registry::new(&r, &cfg, Some(&token)).expect("registry");
    reg.manifest("1", None)
        .await
        .expect("manifest with a registry token");
    assert_eq!(
        scopes.lock().unwrap_or_else(|e| e.into_inner()).len(),
        before
    );
}

#[test]
fn registry_auth_headers_decode_like_dockers() {
    use base64::Engine;
    let json = r#"{"username":"u","password":"p?>","serveraddress":"reg:5000"}"#;
    for encoded in [
        base64::engine::general_purpose::URL_SAFE.encode(json),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json),
        base64::engine::general_purpose::STANDARD.encode(json),
    ] {
        let a = AuthConfig::from_header(&encoded)
            .expect("decodes")
            .expect("some");
        assert_eq!(a.serveraddress, "reg:5000");
        assert_eq!(a.credentials().expect("creds"), Some(basic("u", "p?>")));
        // And back: what the CLI sends decodes to the same.
        let again = AuthConfig::from_header(&a.to_header()).expect("round trip");
        assert_eq!(again.as_ref(), Some(&a));
    }
    assert_eq!(AuthConfig::from_header("").expect("empty"), None);
    assert!(AuthConfig::from_header("not base64!").is_err());
    assert!(
        AuthConfig::from_header(&base64::engine::general_purpose::URL_SAFE.encode("[1]")).is_err()
    );
    // config.json's `auth` holds user:password; the docker CLI sends `{}`
    // for a registry it has no login for.
    let a = AuthConfig {
        auth: auth::join_auth("me", "a:b"),
        ..Default::default()
    };
    assert_eq!(a.credentials().expect("creds"), Some(basic("me", "a:b")));
    assert_eq!(AuthConfig::default().credentials().expect("none"), None);
    let bad = AuthConfig {
        auth: "bm9jb2xvbg==".into(), // "nocolon"
        ..Default::default()
    };
    assert!(bad.credentials().is_err());
    // Tokens win over a password.
    let t = AuthConfig {
        username: "u".into(),
        identitytoken: "refresh".into(),
        ..Default::default()
    };
    assert_eq!(
        t.credentials().expect("creds"),
        Some(Credentials::IdentityToken("refresh".into()))
    );
}

#[test]
fn credentials_never_show_in_debug_output() {
    let a = AuthConfig {
        username: "u".into(),
        password: "hunter2".into(),
        auth: auth::join_auth("u", "hunter2"),
        identitytoken: "tok-secret".into(),
        ..Default::default()
    };
    let shown = format!(
        "{a:?} {:?} {:?} {:?}",
        basic("u", "hunter2"),
        Credentials::IdentityToken("tok-secret".into()),
        PullOptions {
            credentials: Some(basic("u", "hunter2")),
            platform: None
        }
    );
    assert!(shown.contains('u'), "{shown}");
    for secret in ["hunter2", "tok-secret", &auth::join_auth("u", "hunter2")] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[test]
fn login_servers_name_their_registry() {
    for (server, registry) in [
        ("", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
        ("https://reg.example.com/v2/", "reg.example.com"),
    ] {
        assert_eq!(auth::registry_of_server(server), registry, "{server}");
    }
    assert_eq!(
        familiar("docker.io/library/busybox:latest"),
        "busybox:latest"
    );
    assert_eq!(familiar("docker.io/me/app:1"), "me/app:1");
    assert_eq!(
        familiar("127.0.0.1:5000/busybox:latest"),
        "127.0.0.1:5000/busybox:latest"
    );
}

#[test]
fn platforms_parse_with_dockers_aliases() {
    let p = |s: &str| Platform::parse(s).expect(s);
    assert_eq!(
        p("linux/amd64"),
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None
        }
    );
    assert_eq!(p("linux/x86_64"), p("linux/amd64"));
    assert_eq!(p("linux/aarch64").architecture, "arm64");
    assert_eq!(p("linux/arm/v6").variant.as_deref(), Some("v6"));
    assert_eq!(p("linux/armv7l").variant.as_deref(), Some("v7"));
    for bad in ["", "linux", "linux/", "/amd64", "linux/arm/v7/x"] {
        assert!(Platform::parse(bad).is_err(), "{bad}");
    }
    // An ARMv7 host runs v6 binaries, not arm64 ones.
    assert!(p("linux/arm/v7").runs(&p("linux/arm/v6")));
    assert!(!p("linux/arm/v7").runs(&p("linux/arm64")));
    assert!(Platform::host().runs(&Platform::host()));
}
