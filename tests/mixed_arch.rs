//! Mixed-architecture cluster: an x86_64 manager (the binary under test) and
//! an aarch64 agent (the static `aarch64-unknown-linux-musl` release binary
//! run under `qemu-aarch64-static`), as on an edge site where a Raspberry Pi
//! joins a cloud manager.
//!
//! Needs `scripts/build-static aarch64` first (`scripts/test` does it) and
//! Debian's `qemu-user-static`. Missing either is a failure, not a skip.

mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Cluster, PATIENCE};
use serde_json::Value;

const QEMU: &str = "qemu-aarch64-static";

/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;

/// The static aarch64 release binary, checked to exist and to be aarch64.
fn arm_binary() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let path = root.join("target/aarch64-unknown-linux-musl/release/apiary");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the aarch64 binary {} is missing ({e}): run `scripts/build-static aarch64` first",
            path.display()
        )
    });
    let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    assert!(
        bytes.starts_with(b"\x7fELF") && machine == Some(EM_AARCH64),
        "{} is not an aarch64 ELF binary: run `scripts/build-static aarch64`",
        path.display()
    );
    path
}

/// `qemu-aarch64-static` can run the aarch64 binary.
fn check_qemu(arm: &str) {
    match Command::new(QEMU).arg(arm).arg("--version").output() {
        Err(e) => panic!(
            "cannot run {QEMU} ({e}): install Debian's qemu-user-static \
             (apt-get install qemu-user-static)"
        ),
        Ok(o) => assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("apiary "),
            "`{QEMU} {arm} --version` failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// Poll `f` until it gives a value; on timeout panic with what was awaited,
/// the last thing seen and every agent's log tail.
#[track_caller]
fn wait<T>(
    c: &Cluster,
    what: &str,
    patience: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                let tails: Vec<String> = c
                    .all()
                    .map(|a| {
                        let log = a.log();
                        let lines: Vec<&str> = log.lines().collect();
                        let from = lines.len().saturating_sub(80);
                        format!("===== {} =====\n{}", a.name, lines[from..].join("\n"))
                    })
                    .collect();
                panic!(
                    "timed out after {patience:?} waiting for {what}\nlast seen: {last}\n{}",
                    tails.join("\n")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn by_host<'a>(nodes: &'a [Value], host: &str) -> Result<&'a Value, String> {
    nodes
        .iter()
        .find(|n| n["Description"]["Hostname"] == host)
        .ok_or_else(|| format!("no node {host} in {nodes:?}"))
}

fn summary(nodes: &[Value]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{} arch={} state={} role={} manager={}",
                n["Description"]["Hostname"],
                n["Description"]["Platform"]["Architecture"],
                n["Status"]["State"],
                n["Spec"]["Role"],
                n["ManagerStatus"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn mixed_architecture_cluster() {
    let arm = arm_binary();
    let arm = arm.to_str().expect("UTF-8 path").to_string();
    check_qemu(&arm);

    let mut c = Cluster::new("arm").start();
    let t0 = Instant::now();
    let pi1 = c.agent_with("pi1", 10, &[QEMU, &arm]);
    eprintln!(
        "pi1 (aarch64 under qemu) serving its socket after {:?}",
        t0.elapsed()
    );

    // pi1 joins as a worker, driven by the x86_64 CLI over its socket: the
    // same Engine API whatever the agent's architecture.
    let m = &c.managers[0];
    let maddr = m.addr();
    let token = m
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    let paddr = pi1.addr();
    let t0 = Instant::now();
    pi1.apiary(&[
        "swarm",
        "join",
        "--token",
        &token,
        &maddr,
        "--advertise-addr",
        &paddr,
        "--listen-addr",
        &paddr,
    ])
    .ok();
    eprintln!("pi1 swarm join returned after {:?}", t0.elapsed());
    c.workers.push(pi1);
    let m = &c.managers[0];
    let pi1 = c.by_name("pi1");

    // Both Ready, each with its own architecture.
    let t0 = Instant::now();
    wait(
        &c,
        "mgr1 (x86_64) and pi1 (aarch64) Ready",
        PATIENCE,
        || {
            let nodes = m.nodes_json().ok_or("node inspect failed")?;
            let s = summary(&nodes);
            let mgr = by_host(&nodes, "mgr1")?;
            let pi = by_host(&nodes, "pi1")?;
            (nodes.len() == 2
                && mgr["Status"]["State"] == "ready"
                && pi["Status"]["State"] == "ready")
                .then_some(())
                .ok_or(s)
        },
    );
    eprintln!("pi1 Ready after {:?}", t0.elapsed());
    let nodes = m.nodes_json().expect("nodes");
    let (mgr, pi) = (
        by_host(&nodes, "mgr1").expect("mgr1"),
        by_host(&nodes, "pi1").expect("pi1"),
    );
    assert_eq!(mgr["Description"]["Platform"]["Architecture"], "x86_64");
    assert_eq!(pi["Description"]["Platform"]["Architecture"], "aarch64");
    assert_eq!(mgr["Description"]["Platform"]["OS"], "linux");
    assert_eq!(pi["Description"]["Platform"]["OS"], "linux");
    assert_eq!(mgr["ManagerStatus"]["Leader"], true);
    assert_eq!(pi["Spec"]["Role"], "worker");
    assert!(pi["ManagerStatus"].is_null(), "pi1 is a worker: {pi}");

    // The docker-style views say the same.
    let ls = m.apiary(&["node", "ls"]).ok().to_string();
    for host in ["mgr1", "pi1"] {
        let row = ls
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == host))
            .unwrap_or_else(|| panic!("no {host} row in node ls:\n{ls}"));
        assert!(row.contains("Ready"), "{host} not Ready in node ls:\n{ls}");
    }
    let pretty = m
        .apiary(&["node", "inspect", "--pretty", "pi1"])
        .ok()
        .to_string();
    assert!(
        pretty
            .lines()
            .any(|l| l.trim_start().starts_with("Architecture:")
                && l.trim_end().ends_with("aarch64")),
        "node inspect --pretty pi1:\n{pretty}"
    );
    let info = pi1.apiary(&["info"]).ok().to_string();
    assert!(
        info.contains("Architecture: aarch64"),
        "pi1's own info reports aarch64:\n{info}"
    );

    // The aarch64 CLI against the x86_64 manager.
    let out = Command::new(QEMU)
        .arg(&arm)
        .arg("-H")
        .arg(m.host())
        .args(["node", "ls"])
        .output()
        .expect("run the aarch64 CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pi1") && stdout.contains("mgr1"),
        "aarch64 `apiary node ls` against mgr1:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Promote the emulated node: it renews its certificate as a manager,
    // joins raft, and becomes Reachable.
    let t0 = Instant::now();
    m.apiary(&["node", "promote", "pi1"]).ok();
    wait(&c, "pi1 promoted and Reachable", PATIENCE, || {
        let nodes = m.nodes_json().ok_or("node inspect failed")?;
        let s = summary(&nodes);
        let pi = by_host(&nodes, "pi1")?;
        let leaders = nodes
            .iter()
            .filter(|n| n["ManagerStatus"]["Leader"] == true)
            .count();
        (pi["Spec"]["Role"] == "manager"
            && pi["ManagerStatus"]["Reachability"] == "reachable"
            && leaders == 1)
            .then_some(())
            .ok_or(s)
    });
    eprintln!("pi1 Reachable after promote in {:?}", t0.elapsed());
    let nodes = m.nodes_json().expect("nodes");
    eprintln!("after promote: {}", summary(&nodes));
    // A manager under emulation answers manager questions itself.
    let nodes = wait(&c, "pi1 to answer node ls as a manager", PATIENCE, || {
        let nodes = pi1.nodes_json().ok_or("pi1 node inspect failed")?;
        (nodes.len() == 2)
            .then_some(nodes.clone())
            .ok_or(summary(&nodes))
    });
    assert_eq!(
        by_host(&nodes, "pi1").expect("pi1")["Description"]["Platform"]["Architecture"],
        "aarch64"
    );
    eprintln!(
        "pi1 answering as a manager {:?} after promote",
        t0.elapsed()
    );
    // Hold the two-voter cluster for a while: every commit now needs the
    // emulated voter's acknowledgement, and its election timer (a few
    // hundred ms) must not fire while the leader is alive. Writes go through
    // both managers in turn (pi1 forwards to the leader).
    let hold = Duration::from_secs(10);
    let t0 = Instant::now();
    let (mut writes, mut slowest) = (0u32, Duration::ZERO);
    while t0.elapsed() < hold {
        let via = if writes % 2 == 0 { pi1 } else { m };
        let w = Instant::now();
        via.apiary(&[
            "node",
            "update",
            "--label-add",
            &format!("n={writes}"),
            "pi1",
        ])
        .ok();
        slowest = slowest.max(w.elapsed());
        writes += 1;
        let nodes = m.nodes_json().expect("node inspect");
        let stable = by_host(&nodes, "mgr1").is_ok_and(|n| n["ManagerStatus"]["Leader"] == true)
            && by_host(&nodes, "pi1")
                .is_ok_and(|n| n["ManagerStatus"]["Reachability"] == "reachable");
        assert!(
            stable,
            "leadership moved or pi1 became unreachable {:?} into the hold: {}\n{}",
            t0.elapsed(),
            summary(&nodes),
            c.logs()
        );
    }
    eprintln!(
        "with pi1 a voter for {hold:?}: {writes} writes, slowest {slowest:?}, leader stayed mgr1"
    );
    // A write through the emulated manager (forwarded to the leader if pi1
    // is a follower) commits with both voters.
    pi1.apiary(&["node", "update", "--label-add", "arch=arm64", "pi1"])
        .ok();

    // Demote it back: it leaves raft and becomes a plain worker again.
    let t0 = Instant::now();
    m.apiary(&["node", "demote", "pi1"]).ok();
    wait(&c, "pi1 demoted to a Ready worker", PATIENCE, || {
        let nodes = m.nodes_json().ok_or("node inspect failed")?;
        let s = summary(&nodes);
        let pi = by_host(&nodes, "pi1")?;
        let mgr = by_host(&nodes, "mgr1")?;
        (pi["Spec"]["Role"] == "worker"
            && pi["ManagerStatus"].is_null()
            && pi["Status"]["State"] == "ready"
            && mgr["ManagerStatus"]["Leader"] == true)
            .then_some(())
            .ok_or(s)
    });
    eprintln!("pi1 a worker again after demote in {:?}", t0.elapsed());
    wait(&c, "pi1 to refuse manager questions", PATIENCE, || {
        let o = pi1.apiary(&["node", "ls"]);
        (o.status != 0 && o.stderr.contains("not a swarm manager"))
            .then_some(())
            .ok_or(format!("status {} stderr {}", o.status, o.stderr))
    });
    eprintln!(
        "pi1 refusing manager questions {:?} after demote",
        t0.elapsed()
    );
    // What raft did under emulation (shown with --nocapture or on failure).
    for a in c.all() {
        let log = a.log().to_lowercase();
        eprintln!(
            "{}: {} log lines mention an election or vote",
            a.name,
            log.lines()
                .filter(|l| l.contains("elect") || l.contains("vote"))
                .count()
        );
    }
    // The one remaining manager still has quorum and takes writes; the label
    // written through pi1 while it was a manager survived.
    m.apiary(&["node", "update", "--label-add", "site=edge", "pi1"])
        .ok();
    let v: Value = serde_json::from_str(m.apiary(&["node", "inspect", "pi1"]).ok()).expect("JSON");
    assert_eq!(v[0]["Spec"]["Labels"]["arch"], "arm64");
    assert_eq!(v[0]["Spec"]["Labels"]["site"], "edge");
    assert_eq!(v[0]["Description"]["Platform"]["Architecture"], "aarch64");
}
