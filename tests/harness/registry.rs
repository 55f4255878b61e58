//! A registry of the test's own: Debian's `docker-registry` (distribution
//! 2.x) on a free loopback port, storing in a temp dir; images are pushed
//! to it with `skopeo`. Killed and cleaned up on drop, even on panic.
//! `Registry::private` puts it behind htpasswd basic auth (one user, its
//! bcrypt hash made with apache2-utils' `htpasswd`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The one user of a private registry: (name, password).
    pub user: Option<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    /// Anyone may pull and push.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// Only `user` with `password` may pull and push (HTTP basic auth, as
    /// docker-registry's htpasswd access controller asks for it).
    pub fn private(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user.to_string(), password.to_string())))
    }

    fn start_with(user: Option<(String, String)>) -> Registry {
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
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root = dir.path().join("data").display(),
        );
        if let Some((name, password)) = &user {
            let out = Command::new("htpasswd")
                .args(["-nbB", name, password])
                .output()
                .expect("run htpasswd (apt-get install apache2-utils)");
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: apiary-test\n    path: {}\n",
                file.display()
            ));
        }
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
            user,
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
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file);
        if let Some((name, password)) = &self.user {
            cmd.arg(format!("--dest-creds={name}:{password}"));
        }
        let out = cmd
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
        let mut cmd = Command::new("curl");
        if let Some((name, password)) = &self.user {
            cmd.arg("-u").arg(format!("{name}:{password}"));
        }
        let out = cmd
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
