//! A containerd of the test's own, in a temp dir on disk, shared by the
//! agents of a cluster (each with its own namespace). Killed and cleaned up
//! on drop, even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use apiary::executor::{Containerd, Executor};

use super::eventually;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// The default namespace (tests of the executor itself).
    pub namespace: String,
    /// Every namespace handed out, cleaned on drop.
    namespaces: Mutex<Vec<String>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        // On disk (not /tmp, a tmpfs here), like an agent's data dir, so
        // "secrets are only on tmpfs" means something.
        let dir = tempfile::Builder::new()
            .prefix("apiary-ctd-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{debug}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            debug = d.join("debug.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("-c")
            .arg(d.join("config.toml"))
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        let namespace = format!("apiary-test-{}", std::process::id());
        let daemon = Daemon {
            child: Some(child),
            namespaces: Mutex::new(vec![namespace.clone()]),
            namespace,
            dir,
        };
        let sock = daemon.socket();
        eventually("containerd's socket", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock)
                .is_ok()
                .then_some(())
        });
        daemon
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A namespace for one agent, removed with the daemon.
    pub fn namespace_for(&self, agent: &str) -> String {
        let ns = format!("apiary-test-{}-{agent}", std::process::id());
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ns.clone());
        ns
    }

    pub async fn executor(&self) -> Containerd {
        Containerd::connect(&self.socket(), &self.namespace, &self.state_dir())
            .await
            .expect("connect to containerd")
            // The test binary is not apiary: the shim runs the real binary
            // as log driver.
            .with_log_binary(PathBuf::from(super::APIARY))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Remove whatever a test left, from a runtime of our own (drop may
        // run inside the test's runtime).
        let sock = self.socket();
        let namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let state = self.state_dir();
        let _ = std::thread::spawn({
            let namespaces = namespaces.clone();
            move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    for ns in namespaces {
                        let Ok(exec) = Containerd::connect(&sock, &ns, &state).await else {
                            continue;
                        };
                        if let Ok(list) = exec.list().await {
                            for c in list {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(15),
                                    exec.remove(&c.id),
                                )
                                .await;
                            }
                        }
                    }
                });
            }
        })
        .join();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything still mounted under our dir (snapshots, tmpfs), deepest
        // first.
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        // Empty cgroups the containers left (any hierarchy, v1 or v2), and
        // runc's per-namespace state directories.
        let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_else(|_| Vec::new());
        for ns in &namespaces {
            for h in hierarchies
                .iter()
                .chain([PathBuf::from("/sys/fs/cgroup")].iter())
            {
                let _ = std::fs::remove_dir(h.join("apiary").join(ns));
                let _ = std::fs::remove_dir(h.join("apiary"));
            }
            let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
        }
    }
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// Prepare, start and wait (30 s at most) for a container; its exit code.
pub async fn run_to_exit(exec: &Containerd, spec: &apiary::executor::ContainerSpec) -> i64 {
    exec.prepare(spec).await.expect("prepare");
    exec.start(&spec.id).await.expect("start");
    tokio::time::timeout(Duration::from_secs(30), exec.wait(&spec.id))
        .await
        .expect("container exits within 30 s")
        .expect("wait")
        .code
}

/// Run a test scenario on a two-thread runtime; if it panics, print the
/// named logs (containerd's, a registry's) before passing the panic on.
pub fn run_showing_logs<F: std::future::Future>(
    scenario: F,
    logs: &[(&str, &dyn Fn() -> String)],
) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(scenario))) {
        Ok(out) => out,
        Err(e) => {
            for (name, log) in logs {
                eprintln!("----- {name} log -----\n{}", log());
            }
            std::panic::resume_unwind(e);
        }
    }
}
