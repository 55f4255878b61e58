//! Registry pulls against a real `docker-registry` on loopback (plain
//! HTTP, as Docker treats 127.0.0.0/8) and a real containerd, both started
//! by the test: pull by tag, by digest and through an image index, a task
//! whose image is pulled by `prepare` runs, and failures carry the
//! registry's own reason.
//!
//! Needs root, containerd, runc, busybox-static, docker-registry, skopeo
//! and curl.

mod harness;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use apiary::executor::pull::{Progress, PullOptions};
use apiary::executor::{ContainerSpec, Containerd, ExecError, Executor};
use harness::containerd::{run_to_exit, Daemon};
use harness::registry::Registry;

#[test]
fn pulls_from_a_loopback_registry() {
    let daemon = Daemon::start();
    let registry = Registry::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(scenario(&daemon, &registry))
    }));
    if let Err(e) = result {
        eprintln!("----- containerd log -----\n{}", daemon.log());
        eprintln!("----- registry log -----\n{}", registry.log());
        std::panic::resume_unwind(e);
    }
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
