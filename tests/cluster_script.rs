//! The README's first command: `scripts/cluster up` starts a local swarm
//! (3 managers, 2 workers, one containerd), services run on it, and
//! `scripts/cluster down` leaves nothing behind — no agent, containerd,
//! shim or log driver process, no mount, task namespace, link or rule.
//! It used to leave the task containers, their shims, log drivers and
//! root-filesystem mounts running.
//!
//! Runs the binary under test (`APIARY_BIN`), in a state dir of its own
//! (`APIARY_LOCAL`); the bridges are the script's own (`apiary-mgr1` …),
//! so not beside a local swarm of yours. Needs root, containerd, runc,
//! busybox-static, iproute2 and iptables.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{eventually, APIARY, PATIENCE};

fn script(root: &Path, verb: &str) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster"))
        .arg(verb)
        .env("APIARY_BIN", APIARY)
        .env("APIARY_LOCAL", root)
        .output()
        .expect("run scripts/cluster");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/cluster {verb}:\n{text}");
    text
}

fn apiary(root: &Path, args: &[&str]) -> String {
    let out = Command::new(APIARY)
        .arg("-H")
        .arg(format!("unix://{}/mgr1/apiary.sock", root.display()))
        .args(args)
        .output()
        .expect("apiary CLI");
    assert!(
        out.status.success(),
        "apiary {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What of the local swarm is still on the machine.
/// The owner tags of the nodes' data dirs (their task namespaces are
/// named for them), kept by the test once `down` removed the dirs.
static OWNERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn owners(root: &Path) -> Vec<String> {
    let mut held = OWNERS.lock().unwrap_or_else(|e| e.into_inner());
    for n in ["mgr1", "mgr2", "mgr3", "wrk1", "wrk2"] {
        let p = root.join(n).join("data").join("network").join("owner");
        if let Ok(o) = std::fs::read_to_string(p) {
            let o = o.trim().to_string();
            if !o.is_empty() && !held.contains(&o) {
                held.push(o);
            }
        }
    }
    held.clone()
}

/// GET / from `addr` (HTTP/1.0): the status line, or None.
fn http_status(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().map(str::to_string)
}

fn leftovers(root: &Path) -> Vec<String> {
    let r = root.display().to_string();
    let mut left = Vec::new();
    let procs = sh(&format!(
        "for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); case \"$c\" in *{r}/*) echo \"${{p#/proc/}}: $c\";; esac; done"
    ));
    left.extend(
        procs
            .lines()
            .filter(|l| !l.contains("/proc/[0-9]") && !l.contains("tr "))
            .map(|l| format!("process {l}")),
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&r))
            .map(|l| format!("mount {l}")),
    );
    let names = ["mgr1", "mgr2", "mgr3", "wrk1", "wrk2"];
    let owners = owners(root);
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let node = names.iter().any(|x| n == format!("apiary-node-{x}"));
        let task = owners
            .iter()
            .any(|o| n.starts_with(&format!("apiary0-{o}-")));
        if node || task {
            left.push(format!("netns {n}"));
        }
    }
    for l in
        std::iter::once("apiary-lan".to_string()).chain(names.iter().map(|n| format!("al-{n}")))
    {
        if Path::new("/sys/class/net").join(&l).exists() {
            left.push(format!("link {l}"));
        }
    }
    left
}

#[test]
fn cluster_up_runs_services_and_down_leaves_nothing() {
    let root = Path::new("/tmp").join(format!("apiary-script-{}", std::process::id()));
    let up = script(&root, "up");
    assert!(up.contains("The swarm is up"), "{up}");
    let ok = std::panic::catch_unwind(|| {
        for n in ["mgr1", "mgr2", "mgr3", "wrk1", "wrk2"] {
            assert!(apiary(&root, &["node", "ls"]).contains(n), "{n} in node ls");
        }
        apiary(
            &root,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web-fe",
                "-p",
                "8080:8080",
                "--replicas",
                "5",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
            ],
        );
        let out = Command::new(APIARY)
            .arg("-H")
            .arg(format!("unix://{}/mgr1/apiary.sock", root.display()))
            .args(["secret", "create", "s1", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(b"hush")?;
                c.wait()
            })
            .expect("secret create");
        assert!(out.success());
        apiary(
            &root,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "sec",
                "--replicas",
                "2",
                "--secret",
                "s1",
                "busybox",
                "sleep",
                "3600",
            ],
        );
        eventually("7 tasks running", PATIENCE, || {
            let ls = apiary(&root, &["service", "ls"]);
            (ls.contains("5/5") && ls.contains("2/2")).then_some(())
        });
        // The chapter's web-fe answers on every node through the mesh
        // (busybox httpd has no index: 404 is its answer).
        for i in 1..=5 {
            let addr = format!("192.168.213.{i}:8080");
            eventually(&format!("the mesh to answer at {addr}"), PATIENCE, || {
                http_status(&addr).filter(|l| l.starts_with("HTTP/1."))
            });
        }
        assert!(
            !leftovers(&root).is_empty(),
            "the check sees a running swarm"
        );
    });
    let down = script(&root, "down");
    assert!(down.contains("local swarm stopped and removed"), "{down}");
    if let Err(e) = ok {
        std::panic::resume_unwind(e);
    }
    // Processes may take a moment to be reaped.
    let left = std::panic::catch_unwind(|| {
        eventually("nothing of the swarm left", Duration::from_secs(10), || {
            leftovers(&root).is_empty().then_some(())
        })
    });
    assert!(left.is_ok(), "left behind: {:#?}", leftovers(&root));
    assert!(!root.exists(), "{} removed", root.display());
}
