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
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if names.iter().any(|x| n.starts_with(&format!("apiary-{x}-"))) {
            left.push(format!("netns {n}"));
        }
    }
    for n in names {
        if Path::new("/sys/class/net")
            .join(format!("apiary-{n}"))
            .exists()
        {
            left.push(format!("bridge apiary-{n}"));
        }
    }
    left.extend(
        sh("iptables-save")
            .lines()
            .filter(|l| l.contains("APY-") && l.contains("apiary-"))
            .map(|l| format!("rule {l}")),
    );
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
                "web",
                "--replicas",
                "5",
                "-p",
                "published=18301,target=80,mode=host",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "80",
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
