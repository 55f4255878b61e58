//! Registry pulls against a real `docker-registry` on loopback (plain
//! HTTP, as Docker treats 127.0.0.0/8) and a real containerd, both started
//! by the test: pull by tag, by digest and through an image index, a task
//! whose image is pulled by `prepare` runs, and failures carry the
//! registry's own reason. Then a private registry (htpasswd) with real
//! agents and both CLIs: logins checked against the registry, `docker pull`
//! and `apiary image pull` with their progress, and a service whose worker
//! pulls with the credentials given by `--with-registry-auth`.
//!
//! Needs root, containerd, runc, busybox-static, docker-registry, skopeo,
//! curl, apache2-utils (htpasswd), util-linux (script) and the docker CLI.

mod harness;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary::executor::pull::{Progress, PullOptions};
use apiary::executor::{ContainerSpec, Containerd, ExecError, Executor};
use harness::containerd::{run_showing_logs, run_to_exit, Daemon};
use harness::registry::Registry;
use harness::{eventually, running_on, Cluster, PATIENCE};

#[test]
fn pulls_from_a_loopback_registry() {
    let daemon = Daemon::start();
    let registry = Registry::start();
    run_showing_logs(
        scenario(&daemon, &registry),
        &[
            ("containerd", &|| daemon.log()),
            ("registry", &|| registry.log()),
        ],
    );
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn echo(id: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        name: format!("svc.1.{id}"),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), "echo pulled and running".into()],
        labels: HashMap::from([("com.apiary.test".to_string(), id.to_string())]),
        ..Default::default()
    }
}

async fn prepare_error(exec: &Containerd, id: &str, image: &str) -> String {
    match exec.prepare(&echo(id, image)).await {
        Err(ExecError::Image(m)) => m,
        other => panic!("prepare of {image} gave {other:?}, want an image error"),
    }
}

async fn scenario(daemon: &Daemon, registry: &Registry) {
    let exec = daemon.executor().await;
    let reg = &registry.addr;
    let tar = daemon.dir.path().join("busybox-oci.tar");
    harness::image::busybox_oci_tar(&tar, "busybox:latest");
    let digest = registry.push_oci_archive(&tar, "busybox:latest");
    assert!(digest.starts_with("sha256:"), "{digest}");

    // ---- pull by tag, with per-layer progress
    let events = Mutex::new(Vec::<Progress>::new());
    let record = |p: Progress| events.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    let name = exec
        .pull(
            &format!("{reg}/busybox:latest"),
            &PullOptions::default(),
            &record,
        )
        .await
        .expect("pull by tag");
    assert_eq!(name, format!("{reg}/busybox:latest"));
    let events = events.into_inner().unwrap_or_else(|e| e.into_inner());
    let layers = match events.first() {
        Some(Progress::Resolved {
            digest: d, layers, ..
        }) => {
            assert_eq!(d, &digest);
            layers.clone()
        }
        other => panic!("first progress event {other:?}, want Resolved"),
    };
    assert_eq!(layers.len(), 1, "{events:?}");
    let (layer, size) = &layers[0];
    assert!(
        events.iter().any(|e| matches!(e,
            Progress::Layer { digest, done, total } if digest == layer && done == size && total == size)),
        "no final byte count for {layer}: {events:?}"
    );
    assert!(events.contains(&Progress::LayerDone {
        digest: layer.clone()
    }));
    assert_eq!(events.last(), Some(&Progress::Done { name: name.clone() }));
    let images = exec.images().await.expect("image ls");
    let listed = images
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{name} not in {images:?}"));
    assert_eq!(listed.digest, digest);

    // ---- pull by digest
    let pinned = exec
        .pull(
            &format!("{reg}/busybox@{digest}"),
            &PullOptions::default(),
            &|_| {},
        )
        .await
        .expect("pull by digest");
    assert_eq!(pinned, format!("{reg}/busybox@{digest}"));
    // A digest that is not there: the registry's reason.
    let missing = format!("sha256:{}", "0".repeat(64));
    let e = prepare_error(&exec, "bad-digest", &format!("{reg}/busybox@{missing}")).await;
    assert!(e.contains("unknown") && e.contains(reg.as_str()), "{e}");

    // ---- a task whose image is not here yet: prepare pulls it, through
    // an image index (a foreign platform listed first, then this one).
    let manifest_len = {
        let url = format!("http://{reg}/v2/busybox/manifests/{digest}");
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
            ])
            .arg(&url)
            .output()
            .expect("curl manifest");
        assert!(out.status.success(), "GET {url}");
        out.stdout.len()
    };
    let entry = |arch: &str, variant: Option<&str>| {
        let mut p = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest_len, "platform": p,
        })
    };
    let foreign = if arch() == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(foreign, None), entry(arch(), None)],
    });
    registry.put_manifest(
        "busybox",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).expect("index JSON"),
    );
    let spec = echo("pulled-task", &format!("{reg}/busybox:multi"));
    assert_eq!(run_to_exit(&exec, &spec).await, 0);
    let log = exec.log_path(&spec.id).expect("log path");
    harness::eventually("the task's output", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("pulled and running"))
    });
    exec.remove(&spec.id).await.expect("remove");

    // An index with nothing for this platform says so.
    let only_foreign = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(foreign, None)],
    });
    registry.put_manifest(
        "busybox",
        "foreign",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&only_foreign).expect("index JSON"),
    );
    let e = prepare_error(&exec, "foreign", &format!("{reg}/busybox:foreign")).await;
    assert!(e.contains("no image for this node's platform"), "{e}");

    // ---- failures name the registry's reason
    let e = prepare_error(&exec, "missing-tag", &format!("{reg}/busybox:9")).await;
    assert_eq!(
        e,
        format!("pull {reg}/busybox:9: manifest unknown from registry {reg}")
    );
    let e = prepare_error(&exec, "missing-repo", &format!("{reg}/nothing/here")).await;
    assert!(e.ends_with(&format!("from registry {reg}")), "{e}");
    // Nothing listens on port 1.
    let e = prepare_error(&exec, "refused", "127.0.0.1:1/busybox").await;
    assert!(
        e.contains("cannot reach registry 127.0.0.1:1") && e.contains("refused"),
        "{e}"
    );
    let e = prepare_error(&exec, "bad-ref", &format!("{reg}/BusyBox")).await;
    assert!(e.contains("invalid reference format"), "{e}");
    // No container was left behind by the failures.
    let left: Vec<String> = exec
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
}

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Pa55";

/// Layer IDs (12 hex digits, as docker shows them) on lines saying `what`.
fn layers_saying(out: &str, what: &str) -> usize {
    out.lines()
        .filter(|l| {
            l.split_once(": ").is_some_and(|(id, rest)| {
                id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && rest.trim() == what
            })
        })
        .count()
}

#[test]
fn private_registry_with_logins_and_both_clis() {
    let daemon = Arc::new(Daemon::start());
    let registry = Registry::private(USER, PASSWORD);
    let c = Cluster::new("priv")
        .managers(1)
        .workers(1)
        .containerd(daemon.clone())
        .start();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        private_scenario(&c, &registry)
    }));
    if let Err(e) = result {
        eprintln!("{}", c.logs());
        eprintln!("----- registry log -----\n{}", registry.log());
        std::panic::resume_unwind(e);
    }
    // Credentials stay out of every log.
    let logs = c.logs();
    assert!(
        !logs.contains(PASSWORD),
        "the password is in an agent's log"
    );
}

fn private_scenario(c: &Cluster, registry: &Registry) {
    let (m, w) = (&c.managers[0], &c.workers[0]);
    let reg = registry.addr.as_str();
    let tar = registry.dir.path().join("busybox-oci.tar");
    harness::image::busybox_oci_tar(&tar, "busybox:latest");
    let digest = registry.push_oci_archive(&tar, "busybox:latest");
    for tag in ["svc", "open"] {
        registry.push_oci_archive(&tar, &format!("busybox:{tag}"));
    }
    let image = format!("{reg}/busybox:latest");

    // ---- apiary on the manager: refused without a login, with the
    // registry's reason and the way out.
    let e = m.apiary(&["image", "pull", &image]).fails().to_string();
    assert!(
        e.contains(&format!("authentication required from registry {reg}")),
        "{e}"
    );
    assert!(e.contains(&format!("apiary login {reg}")), "{e}");
    let e = m
        .apiary_stdin(&["login", "-u", USER, "--password-stdin", reg], b"wrong\n")
        .fails()
        .to_string();
    assert!(
        e.contains(&format!(
            "login attempt to http://{reg}/v2/ failed with status: 401 Unauthorized"
        )),
        "{e}"
    );
    let config = m.docker_config().join("config.json");
    assert!(!config.exists(), "a refused login was stored");
    let out = m.apiary_stdin(
        &["login", "-u", USER, "--password-stdin", reg],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert_eq!(out.ok(), "Login Succeeded\n");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config.json")).expect("JSON");
    assert!(stored["auths"][reg]["auth"].is_string(), "{stored}");

    // Plain output (not a terminal): one line per layer event.
    let out = m.apiary(&["image", "pull", &image]).ok().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"latest: Pulling from busybox"),
        "{out}"
    );
    assert_eq!(layers_saying(&out, "Pulling fs layer"), 1, "{out}");
    assert_eq!(layers_saying(&out, "Download complete"), 1, "{out}");
    assert_eq!(layers_saying(&out, "Pull complete"), 1, "{out}");
    assert!(
        !out.contains("Downloading"),
        "no bars off a terminal: {out}"
    );
    assert!(
        !out.contains('\x1b'),
        "no terminal codes off a terminal: {out}"
    );
    assert!(
        lines.contains(&format!("Digest: {digest}").as_str()),
        "{out}"
    );
    let newer = format!("Status: Downloaded newer image for {image}");
    assert!(lines.contains(&newer.as_str()), "{out}");
    assert_eq!(lines.last(), Some(&image.as_str()), "{out}");
    let out = m.apiary(&["image", "pull", "-q", &image]).ok().to_string();
    assert_eq!(out, format!("{image}\n"));
    let ls = m.apiary(&["image", "ls"]).ok().to_string();
    assert!(ls.contains(&format!("{reg}/busybox ")), "{ls}");
    // Logged out, refused again.
    let out = m.apiary(&["logout", reg]);
    assert_eq!(out.ok(), format!("Removing login credentials for {reg}\n"));
    let e = m.apiary(&["image", "pull", &image]).fails().to_string();
    assert!(e.contains("authentication required"), "{e}");

    // ---- the docker CLI on the worker: the same through its own API.
    // (Refused pulls are left to apiary's CLI above: on a 401 the docker
    // CLI asks for a login on the terminal, and waits for one.)
    let e = w
        .docker_stdin(&["login", "-u", USER, "--password-stdin", reg], b"wrong\n")
        .fails()
        .to_string();
    assert!(e.contains("401 Unauthorized"), "{e}");
    let out = w.docker_stdin(
        &["login", "-u", USER, "--password-stdin", reg],
        PASSWORD.as_bytes(),
    );
    assert!(out.ok().contains("Login Succeeded"), "{}", out.stdout);
    // On a terminal, docker draws its progress bars from our messages.
    let out = w.docker_tty(&["pull", &image]);
    let tty = out.ok();
    assert!(tty.contains("Downloading") && tty.contains("[="), "{tty:?}");
    assert!(tty.contains("Pull complete"), "{tty:?}");
    assert!(
        tty.contains("\x1b["),
        "cursor movement on a terminal: {tty:?}"
    );
    assert!(tty.contains(&newer), "{tty:?}");
    let out = w.docker(&["pull", &image]).ok().to_string();
    assert!(
        out.contains(&format!("Status: Image is up to date for {image}")),
        "{out}"
    );

    // ---- a service whose worker pulls with the manager's login: the
    // docker CLI pins the digest through /distribution, with credentials.
    m.apiary_stdin(
        &["login", "-u", USER, "--password-stdin", reg],
        PASSWORD.as_bytes(),
    )
    .ok();
    let svc_image = format!("{reg}/busybox:svc");
    let out = m.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "private",
        "--with-registry-auth",
        "--constraint",
        "node.role==worker",
        &svc_image,
        "sh",
        "-c",
        "echo private and running; exec sleep 3600",
    ]);
    out.ok();
    assert!(
        !out.stderr.contains("could not be accessed"),
        "{}",
        out.stderr
    );
    let pinned = m
        .docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            "private",
        ])
        .ok()
        .trim()
        .to_string();
    assert_eq!(pinned, format!("{svc_image}@{digest}"));
    assert_eq!(running_on(c, m, "private", 1), vec!["wrk1"]);
    let logs = eventually("the private task's output", PATIENCE, || {
        let out = m.docker(&["service", "logs", "private"]);
        out.stdout
            .contains("private and running")
            .then_some(out.stdout)
    });
    assert!(logs.contains("private."), "{logs}");
    // Docker keeps the credentials out of inspect; so do we.
    let inspect = m
        .docker(&["service", "inspect", "private"])
        .ok()
        .to_string();
    let auth_b64 = stored["auths"][reg]["auth"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    assert!(
        !inspect.contains(PASSWORD) && !inspect.contains(&auth_b64),
        "{inspect}"
    );
    assert!(!inspect.contains("RegistryAuth"), "{inspect}");

    // Without --with-registry-auth the worker pulls anonymously: refused,
    // and the task says why.
    m.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "anonymous",
        "--no-resolve-image",
        "--constraint",
        "node.role==worker",
        &format!("{reg}/busybox:open"),
    ])
    .ok();
    let why = eventually("the anonymous pull's refusal", PATIENCE, || {
        let out = m.docker(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Error}}",
            "anonymous",
        ]);
        out.stdout
            .lines()
            .find(|l| l.contains("authentication required"))
            .map(String::from)
    });
    assert!(why.contains(&format!("apiary login {reg}")), "{why}");
    m.docker(&["service", "rm", "anonymous"]).ok();

    // An image no registry answers for: the docker CLI warns that it could
    // not pin the digest and creates the service all the same.
    let out = m.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "unpinned",
        "127.0.0.1:1/nothing:1",
    ]);
    out.ok();
    assert!(
        out.stderr.contains("could not be accessed on a registry"),
        "{}",
        out.stderr
    );
    m.docker(&["service", "rm", "unpinned", "private"]).ok();
}
