//! The containerd executor against a real containerd (started by the test
//! in a temp dir, with its own socket and namespace): image import in both
//! tarball formats, exit codes, logs, limits, secrets, stop, re-adoption
//! after the client goes away, and clean removal.
//!
//! Needs root, containerd, runc and busybox-static.

mod harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use apiary::executor::logs::{self, LogOptions, Stream};
use apiary::executor::{
    ContainerSpec, ContainerStatus, Containerd, ExecError, Executor, FileMount,
};
use harness::containerd::{run_showing_logs, run_to_exit, Daemon};
use harness::eventually;

/// The filesystem type mounted exactly at `dir`, if any.
fn mount_type(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.to_string_lossy().into_owned();
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&want.as_str()) {
            return None;
        }
        let sep = f.iter().position(|x| *x == "-")?;
        f.get(sep + 1).map(|s| s.to_string())
    })
}

fn cgroup_v2() -> bool {
    let out = Command::new("stat")
        .args(["-fc", "%T", "/sys/fs/cgroup"])
        .output()
        .expect("stat /sys/fs/cgroup");
    String::from_utf8_lossy(&out.stdout).trim() == "cgroup2fs"
}

fn sh(id: &str, image: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        name: format!("svc.1.{id}"),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        labels: HashMap::from([("com.apiary.test".to_string(), id.to_string())]),
        ..Default::default()
    }
}

/// The container's output lines of one stream, once `want` lines are in.
fn lines(exec: &Containerd, id: &str, stream: Stream, want: usize) -> Vec<String> {
    let path = exec.log_path(id).expect("log path");
    eventually(
        &format!("{want} {stream:?} lines in {}", path.display()),
        Duration::from_secs(10),
        || {
            let got: Vec<String> = logs::read(&path, &LogOptions::default())
                .into_iter()
                .filter(|l| l.stream == stream)
                .map(|l| l.line)
                .collect();
            (got.len() >= want).then_some(got)
        },
    )
}

#[test]
fn containerd_executor_end_to_end() {
    let daemon = Daemon::start();
    run_showing_logs(scenario(&daemon), &[("containerd", &|| daemon.log())]);
}

async fn scenario(daemon: &Daemon) {
    let exec = daemon.executor().await;
    let images = daemon.dir.path().join("images");
    std::fs::create_dir_all(&images).expect("images dir");

    // ---- images, both formats
    let oci = images.join("busybox-oci.tar");
    harness::image::busybox_oci_tar(&oci, "busybox:latest");
    let saved = images.join("savedbox.tar");
    harness::image::busybox_docker_save_tar(&saved, "savedbox:1");
    let names = exec
        .load_image(std::fs::File::open(&oci).expect("open OCI tar"))
        .await
        .expect("load OCI layout");
    assert_eq!(names, vec!["docker.io/library/busybox:latest".to_string()]);
    let names = exec
        .load_image(std::fs::File::open(&saved).expect("open docker-save tar"))
        .await
        .expect("load docker save");
    assert_eq!(names, vec!["docker.io/library/savedbox:1".to_string()]);
    // Loading again is harmless.
    exec.load_image(std::fs::File::open(&oci).expect("open OCI tar"))
        .await
        .expect("load OCI layout again");
    let listed: Vec<String> = exec
        .images()
        .await
        .expect("image list")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(
        listed.contains(&"docker.io/library/busybox:latest".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"docker.io/library/savedbox:1".to_string()),
        "{listed:?}"
    );

    // ---- exit code and logs on both streams (short image name)
    let spec = sh("exit3", "busybox", "echo out; echo err >&2; exit 3");
    assert_eq!(run_to_exit(&exec, &spec).await, 3);
    assert_eq!(lines(&exec, "exit3", Stream::Stdout, 1), vec!["out"]);
    assert_eq!(lines(&exec, "exit3", Stream::Stderr, 1), vec!["err"]);
    // Waiting again on an exited container answers at once.
    assert_eq!(exec.wait("exit3").await.expect("wait again").code, 3);
    // Stopping a stopped container is fine.
    exec.stop("exit3", None, Duration::from_secs(1))
        .await
        .expect("stop an exited container");

    // ---- the docker-save image runs too
    let spec = sh("saved", "docker.io/library/savedbox:1", "echo from-saved");
    assert_eq!(run_to_exit(&exec, &spec).await, 0);
    assert_eq!(lines(&exec, "saved", Stream::Stdout, 1), vec!["from-saved"]);

    // ---- env, workdir, user, hostname
    let mut spec = sh(
        "who",
        "busybox:latest",
        r#"echo "$FOO|$(pwd)|$(id -u):$(id -g)|$(hostname)|$PATH""#,
    );
    spec.env = vec!["FOO=bar".into()];
    spec.workdir = Some("/tmp".into());
    spec.user = Some("app".into());
    spec.hostname = Some("myhost".into());
    assert_eq!(run_to_exit(&exec, &spec).await, 0);
    assert_eq!(
        lines(&exec, "who", Stream::Stdout, 1),
        vec!["bar|/tmp|1000:1000|myhost|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    let mut spec = sh("who2", "busybox", "id -u; id -g");
    spec.user = Some("1234:staff".into());
    assert_eq!(run_to_exit(&exec, &spec).await, 0);
    assert_eq!(lines(&exec, "who2", Stream::Stdout, 2), vec!["1234", "50"]);
    let mut spec = sh("nouser", "busybox", "true");
    spec.user = Some("nosuchuser".into());
    match exec.prepare(&spec).await {
        Err(ExecError::InvalidSpec(m)) => assert!(m.contains("nosuchuser"), "{m}"),
        other => panic!("unknown user should be InvalidSpec, got {other:?}"),
    }

    // ---- secret files: readable inside with their mode, only on tmpfs
    let mut spec = sh(
        "secret",
        "busybox",
        "cat /run/secrets/x; echo; stat -c %a /run/secrets/x",
    );
    spec.files = vec![FileMount {
        target: "/run/secrets/x".into(),
        data: b"s3cret".to_vec(),
        mode: 0o440,
    }];
    assert_eq!(run_to_exit(&exec, &spec).await, 0);
    assert_eq!(
        lines(&exec, "secret", Stream::Stdout, 2),
        vec!["s3cret", "440"]
    );
    let secrets_dir = daemon.state_dir().join("secrets").join("secret");
    assert_eq!(mount_type(&secrets_dir).as_deref(), Some("tmpfs"));

    // ---- a missing image whose registry cannot be reached (nothing
    // listens on port 1) names itself and says how to get it without one
    match exec
        .prepare(&sh("noimg", "127.0.0.1:1/nosuch:1", "true"))
        .await
    {
        Err(ExecError::Image(m)) => {
            assert!(m.contains("nosuch:1"), "{m}");
            assert!(m.contains("cannot reach registry 127.0.0.1:1"), "{m}");
            assert!(m.contains("image load"), "{m}");
        }
        other => panic!("missing image should be ExecError::Image, got {other:?}"),
    }

    // ---- a long runner with limits, stopped with SIGTERM within grace
    let mut spec = sh(
        "sleeper",
        "busybox",
        "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.2; done",
    );
    spec.memory_limit = Some(64 * 1024 * 1024);
    spec.nano_cpus = Some(500_000_000);
    exec.prepare(&spec).await.expect("prepare sleeper");
    // Idempotent.
    exec.prepare(&spec).await.expect("prepare sleeper again");
    let pid = exec.start("sleeper").await.expect("start sleeper");
    assert!(pid > 0);
    lines(&exec, "sleeper", Stream::Stdout, 1);
    let cg = format!("apiary/{}/sleeper", daemon.namespace);
    let (mem_file, cpu_file) = if cgroup_v2() {
        (
            PathBuf::from("/sys/fs/cgroup").join(&cg).join("memory.max"),
            PathBuf::from("/sys/fs/cgroup").join(&cg).join("cpu.max"),
        )
    } else {
        (
            PathBuf::from("/sys/fs/cgroup/memory")
                .join(&cg)
                .join("memory.limit_in_bytes"),
            PathBuf::from("/sys/fs/cgroup/cpu")
                .join(&cg)
                .join("cpu.cfs_quota_us"),
        )
    };
    let mem = std::fs::read_to_string(&mem_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", mem_file.display()));
    assert_eq!(mem.trim(), "67108864", "{}", mem_file.display());
    let cpu = std::fs::read_to_string(&cpu_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", cpu_file.display()));
    assert!(
        cpu.trim().starts_with("50000"),
        "{}: {cpu}",
        cpu_file.display()
    );

    // ---- re-adoption: a new client sees it; dropping the old one kills nothing
    drop(exec);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exec = daemon.executor().await;
    let listed = exec.list().await.expect("list");
    let sleeper = listed
        .iter()
        .find(|c| c.id == "sleeper")
        .unwrap_or_else(|| panic!("sleeper not listed: {listed:?}"));
    assert_eq!(sleeper.status, ContainerStatus::Running { pid });
    assert_eq!(
        sleeper.labels.get("com.apiary.test").map(String::as_str),
        Some("sleeper")
    );
    let exited = listed
        .iter()
        .find(|c| c.id == "exit3")
        .expect("exit3 listed");
    assert_eq!(exited.status, ContainerStatus::Exited { code: 3 });
    // Starting a running container returns its PID.
    assert_eq!(exec.start("sleeper").await.expect("start again"), pid);

    let t = Instant::now();
    exec.stop("sleeper", Some("SIGTERM"), Duration::from_secs(10))
        .await
        .expect("stop sleeper");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        t.elapsed()
    );
    assert_eq!(exec.wait("sleeper").await.expect("wait sleeper").code, 0);
    assert!(lines(&exec, "sleeper", Stream::Stdout, 2).contains(&"bye".to_string()));

    // ---- SIGKILL after the grace period
    let spec = sh(
        "stubborn",
        "busybox",
        "trap '' TERM; echo up; while true; do sleep 0.2; done",
    );
    exec.prepare(&spec).await.expect("prepare stubborn");
    exec.start("stubborn").await.expect("start stubborn");
    lines(&exec, "stubborn", Stream::Stdout, 1);
    let t = Instant::now();
    exec.stop("stubborn", None, Duration::from_secs(1))
        .await
        .expect("stop stubborn");
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        exec.wait("stubborn").await.expect("wait stubborn").code,
        137
    );

    // ---- remove cleans everything
    let ids: Vec<String> = exec
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    for id in &ids {
        exec.remove(id)
            .await
            .unwrap_or_else(|e| panic!("remove {id}: {e}"));
        // Again: already gone is fine.
        exec.remove(id)
            .await
            .unwrap_or_else(|e| panic!("remove {id} again: {e}"));
    }
    assert!(exec.list().await.expect("list").is_empty());
    assert_eq!(
        mount_type(&secrets_dir),
        None,
        "secrets tmpfs still mounted"
    );
    assert!(!secrets_dir.exists(), "secrets dir left behind");
    assert!(!exec.log_path("exit3").expect("log path").exists());
    assert!(
        !snapshot_exists(daemon, "sleeper").await,
        "sleeper's snapshot left behind"
    );
    match exec.wait("exit3").await {
        Err(ExecError::NotFound(_)) => {}
        other => panic!("wait on a removed container: {other:?}"),
    }
}

async fn snapshot_exists(daemon: &Daemon, key: &str) -> bool {
    use containerd_client::services::v1::snapshots::{
        snapshots_client::SnapshotsClient, StatSnapshotRequest,
    };
    let channel = containerd_client::connect(daemon.socket())
        .await
        .expect("connect");
    let mut req = containerd_client::tonic::Request::new(StatSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: key.into(),
    });
    req.metadata_mut().insert(
        "containerd-namespace",
        daemon.namespace.parse().expect("namespace header"),
    );
    SnapshotsClient::new(channel).stat(req).await.is_ok()
}
