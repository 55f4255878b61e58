//! A registry of the test's own: Debian's `docker-registry` (distribution
//! 2.x) on a free loopback port, storing in a temp dir; images are pushed
//! to it with `skopeo`. Killed and cleaned up on drop, even on panic.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    child: Option<Child>,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("apiary-registry-")
            .tempdir()
            .expect("temp dir");
        // A free port: bind :0, note it, release it for the registry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root = dir.path().join("data").display(),
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let reg = Registry {
            dir,
            addr,
            child: Some(child),
        };
        eventually("the registry's port", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&reg.addr)
                .is_ok()
                .then_some(())
        });
        reg
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Push an OCI-layout tarball (with one image) as `repo:tag`; returns
    /// the manifest digest the registry stores it under.
    pub fn push_oci_archive(&self, tar: &Path, repo_tag: &str) -> String {
        let digest_file = self.dir.path().join("pushed.digest");
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .arg(format!("oci-archive:{}", tar.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("run skopeo (apt-get install skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy to {repo_tag} failed: {}\n----- registry log -----\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        std::fs::read_to_string(&digest_file)
            .expect("skopeo digest file")
            .trim()
            .to_string()
    }

    /// PUT a manifest or index document under `repo:reference` (curl).
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let file = self.dir.path().join("manifest.put");
        std::fs::write(&file, body).expect("write manifest");
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", "PUT", "-H"])
            .arg(format!("Content-Type: {media_type}"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "PUT manifest {repo}:{reference}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
