//! Test images without a registry: a busybox image built from Debian's
//! static `/bin/busybox`, written as an OCI image-layout tarball or as a
//! `docker save` tarball.

use std::path::Path;

use serde_json::json;

pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to busybox in the image.
const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "httpd", "nc", "wget", "ls", "env", "id", "hostname", "true",
    "false", "yes", "ps", "kill", "stat", "grep", "head", "tail", "mkdir", "rm", "touch", "pwd",
    "date", "printf", "test", "[", "wc", "uname", "whoami", "mount", "ip", "ping", "nslookup",
];

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data).expect("tar file");
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())
        .expect("tar dir");
}

/// The one layer: busybox, its applet links, /etc/passwd, /etc/group,
/// /tmp. Deterministic bytes (mtime 0), so its digest is stable.
pub fn busybox_layer() -> Vec<u8> {
    busybox_layer_with(&[])
}

/// The busybox layer plus `extra` executables (path in the image, bytes).
pub fn busybox_layer_with(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let busybox =
        std::fs::read(BUSYBOX).expect("read /bin/busybox (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for d in [
        "bin", "etc", "root", "home", "home/app", "run", "var", "proc", "sys", "dev",
    ] {
        add_dir(&mut b, d, 0o755);
    }
    add_dir(&mut b, "tmp", 0o1777);
    add_file(&mut b, "bin/busybox", 0o755, &busybox);
    for a in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .expect("tar symlink");
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    add_file(
        &mut b,
        "etc/group",
        0o644,
        b"root:x:0:\napp:x:1000:\nstaff:x:50:\nnogroup:x:65534:\n",
    );
    for (path, data) in extra {
        add_file(&mut b, path.trim_start_matches('/'), 0o755, data);
    }
    b.into_inner().expect("finish layer tar")
}

fn config(layer_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "history": [{"created_by": "apiary test harness"}],
    }))
    .expect("config JSON")
}

/// An OCI image-layout tarball of busybox named `name` (e.g.
/// `busybox:latest`; stored normalised as docker.io/library/busybox:latest).
pub fn busybox_oci_tar(dest: &Path, name: &str) {
    busybox_oci_tar_with(dest, name, &[]);
}

/// The same with `extra` executables in the image (see `busybox_layer_with`).
pub fn busybox_oci_tar_with(dest: &Path, name: &str, extra: &[(&str, &[u8])]) {
    let layer = busybox_layer_with(extra);
    let ld = sha256(&layer);
    let cfg = config(&ld);
    let cd = sha256(&cfg);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{cd}"), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{ld}"), "size": layer.len()}],
    }))
    .expect("manifest JSON");
    let md = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{md}"),
            "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch()},
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))
    .expect("index JSON");
    let mut b = tar::Builder::new(Vec::new());
    add_file(
        &mut b,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    add_file(&mut b, "index.json", 0o644, &index);
    add_dir(&mut b, "blobs", 0o755);
    add_dir(&mut b, "blobs/sha256", 0o755);
    add_file(&mut b, &format!("blobs/sha256/{ld}"), 0o644, &layer);
    add_file(&mut b, &format!("blobs/sha256/{cd}"), 0o644, &cfg);
    add_file(&mut b, &format!("blobs/sha256/{md}"), 0o644, &manifest);
    std::fs::write(dest, b.into_inner().expect("finish tar")).expect("write OCI tarball");
}

/// A `docker save` tarball (manifest.json + `<id>.json` + `<id>/layer.tar`)
/// of the same busybox, tagged `name`.
pub fn busybox_docker_save_tar(dest: &Path, name: &str) {
    let layer = busybox_layer();
    let ld = sha256(&layer);
    let cfg = config(&ld);
    let cd = sha256(&cfg);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{cd}.json"),
        "RepoTags": [name],
        "Layers": [format!("{ld}/layer.tar")],
    }]))
    .expect("manifest.json");
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, &ld, 0o755);
    add_file(&mut b, &format!("{ld}/layer.tar"), 0o644, &layer);
    add_file(&mut b, &format!("{ld}/VERSION"), 0o644, b"1.0");
    add_file(&mut b, &format!("{cd}.json"), 0o644, &cfg);
    add_file(&mut b, "manifest.json", 0o644, &manifest);
    std::fs::write(dest, b.into_inner().expect("finish tar")).expect("write docker-save tarball");
}

/// A static `udp-echo <port>` program (`udp_echo.rs`) for test images:
/// busybox-static's `nc` has no UDP mode and no applet answers UDP. Built
/// in `dir` by the rustc of the toolchain running the tests, linked
/// statically (needs the C library's static archive, libc6-dev).
pub fn udp_echo(dir: &Path) -> Vec<u8> {
    let src = dir.join("udp_echo.rs");
    let out = dir.join("udp-echo");
    std::fs::write(&src, include_str!("udp_echo.rs")).expect("write udp_echo.rs");
    let rustc = std::env::var_os("RUSTC")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let cargo = std::path::PathBuf::from(std::env::var_os("CARGO")?);
            Some(cargo.with_file_name("rustc")).filter(|p| p.exists())
        })
        .unwrap_or_else(|| "rustc".into());
    let built = std::process::Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run {} to build udp-echo: {e}", rustc.display()));
    assert!(
        built.status.success(),
        "building udp-echo with {} failed (a static build needs libc6-dev):\n{}",
        rustc.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::read(&out).expect("read the udp-echo binary")
}
