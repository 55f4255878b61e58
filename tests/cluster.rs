//! Cluster tests: real `apiary agent` processes on loopback, driven through
//! the apiary CLI and the real docker CLI, following the seed chapter.

mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{eventually, Cluster, PATIENCE};
use serde_json::Value;

/// Rows of `node ls` as (columns) split on runs of 2+ spaces.
fn table_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
}

fn leader_of(nodes: &[Value]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n["ManagerStatus"]["Leader"] == true)
        .and_then(|n| n["Description"]["Hostname"].as_str().map(String::from))
}

#[test]
fn seed_walkthrough_with_the_apiary_cli() {
    let c = Cluster::new("walk").managers(3).workers(3).start();
    let mgr2 = c.by_name("mgr2");

    // `node ls` from mgr2: six nodes, three managers, `*` on mgr2's own row.
    let out = eventually("mgr2 to list 6 nodes with 3 managers", PATIENCE, || {
        let o = mgr2.apiary(&["node", "ls"]);
        if o.status != 0 {
            return None;
        }
        let rows = table_rows(&o.stdout);
        let managers = rows
            .iter()
            .filter(|r| r.iter().any(|c| c == "Leader" || c == "Reachable"))
            .count();
        (rows.len() == 6 && managers == 3).then_some(o.stdout)
    });
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ] {
        assert!(header.contains(col), "node ls header lacks {col}: {header}");
    }
    let rows = table_rows(&out);
    let starred: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r.first().is_some_and(|c| c.ends_with(" *")))
        .collect();
    assert_eq!(starred.len(), 1, "exactly one row is starred:\n{out}");
    assert!(
        starred[0].contains(&"mgr2".to_string()),
        "mgr2's row is starred:\n{out}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.contains(&"Leader".to_string()))
            .count(),
        1,
        "one leader:\n{out}"
    );
    for w in ["wrk1", "wrk2", "wrk3"] {
        let row = rows
            .iter()
            .find(|r| r.contains(&w.to_string()))
            .expect("worker row");
        assert!(
            row.contains(&"Ready".to_string()) && row.contains(&"Active".to_string()),
            "{w} row: {row:?}"
        );
        assert!(
            !row.iter().any(|c| c == "Leader" || c == "Reachable"),
            "{w} is no manager: {row:?}"
        );
    }

    // join-token prints the whole join command; workers and managers differ
    // only in the token.
    let wt = c.managers[0]
        .apiary(&["swarm", "join-token", "worker"])
        .ok()
        .to_string();
    let mt = c.managers[0]
        .apiary(&["swarm", "join-token", "manager"])
        .ok()
        .to_string();
    assert!(wt.contains("apiary swarm join --token SWMTKN-1-"), "{wt}");
    assert!(wt.contains(&c.managers[0].addr()), "{wt}");
    let tok = |s: &str| {
        s.split_whitespace()
            .find(|w| w.starts_with("SWMTKN-1-"))
            .map(String::from)
    };
    let (w, m) = (
        tok(&wt).expect("worker token"),
        tok(&mt).expect("manager token"),
    );
    assert_eq!(w.len(), 85);
    assert_ne!(w, m);
    assert_eq!(w[..60], m[..60], "same CA digest");

    // Workers can't answer manager questions, the way Docker says it.
    let err = c
        .by_name("wrk1")
        .apiary(&["node", "ls"])
        .fails()
        .to_string();
    assert!(err.contains("not a swarm manager"), "{err}");

    // `info` on a worker and a manager.
    let info = c.by_name("wrk2").apiary(&["info"]).ok().to_string();
    assert!(info.contains("Swarm: active"), "{info}");
    let info = mgr2.apiary(&["info"]).ok().to_string();
    assert!(info.contains("Is Manager: true"), "{info}");
}

#[test]
fn seed_walkthrough_with_the_docker_cli() {
    let c = Cluster::new("dock");
    let mgr1 = c.agent("mgr1", 1);
    let addr = mgr1.addr();
    let out = mgr1
        .docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ])
        .ok()
        .to_string();
    assert!(out.contains("Swarm initialized: current node ("), "{out}");
    let wtoken = mgr1
        .docker(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    let mtoken = mgr1
        .docker(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_string();
    let mut agents = vec![];
    for (name, host, token) in [
        ("wrk1", 10u8, &wtoken),
        ("wrk2", 11, &wtoken),
        ("wrk3", 12, &wtoken),
        ("mgr2", 2, &mtoken),
        ("mgr3", 3, &mtoken),
    ] {
        let a = c.agent(name, host);
        let me = a.addr();
        let out = a
            .docker(&[
                "swarm",
                "join",
                "--token",
                token,
                &addr,
                "--advertise-addr",
                &me,
                "--listen-addr",
                &me,
            ])
            .ok()
            .to_string();
        let want = if name.starts_with("mgr") {
            "as a manager"
        } else {
            "as a worker"
        };
        assert!(out.contains(want), "{name}: {out}");
        agents.push(a);
    }
    let out = eventually(
        "docker node ls to show 6 Ready nodes, 3 managers",
        PATIENCE,
        || {
            let o = mgr1.docker(&["node", "ls"]);
            if o.status != 0 {
                return None;
            }
            let rows = table_rows(&o.stdout);
            let ready = rows
                .iter()
                .filter(|r| r.contains(&"Ready".to_string()))
                .count();
            let managers = rows
                .iter()
                .filter(|r| r.iter().any(|c| c == "Leader" || c == "Reachable"))
                .count();
            (rows.len() == 6 && ready == 6 && managers == 3).then_some(o.stdout)
        },
    );
    assert!(
        out.lines().any(|l| l.contains("mgr1") && l.contains('*')),
        "{out}"
    );

    // docker node inspect / update / promote / demote against apiary.
    let v: Value =
        serde_json::from_str(mgr1.docker(&["node", "inspect", "wrk1"]).ok()).expect("JSON");
    assert_eq!(v[0]["Spec"]["Role"], "worker");
    mgr1.docker(&["node", "update", "--label-add", "zone=a", "wrk1"])
        .ok();
    let v: Value =
        serde_json::from_str(mgr1.docker(&["node", "inspect", "wrk1"]).ok()).expect("JSON");
    assert_eq!(v[0]["Spec"]["Labels"]["zone"], "a");
    let info = agents[0]
        .docker(&[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ])
        .ok()
        .to_string();
    assert_eq!(info.trim(), "active false");
}

#[test]
fn leader_kill_elects_a_new_leader_and_writes_work_again() {
    let mut c = Cluster::new("fail").managers(3).workers(1).start();
    let nodes = c.managers[0].nodes_json().expect("nodes");
    let leader = leader_of(&nodes).expect("a leader");
    let idx = c
        .managers
        .iter()
        .position(|m| m.name == leader)
        .expect("leader agent");
    let killed_at = Instant::now();
    c.managers[idx].kill();
    let survivor = &c.managers[(idx + 1) % 3];
    eventually("a write to succeed after the leader died", PATIENCE, || {
        survivor
            .apiary(&["node", "update", "--label-add", "after=failover", "wrk1"])
            .status
            .eq(&0)
            .then_some(())
    });
    let took = killed_at.elapsed();
    let nodes = survivor.nodes_json().expect("nodes");
    let new_leader = leader_of(&nodes).expect("a new leader");
    assert_ne!(new_leader, leader);
    eprintln!("failover: writes accepted again {took:?} after kill -9 of {leader}");
    // The dead manager is shown Unreachable — by raft, while its
    // heartbeats' 15 s grace still shows it Ready.
    let (state, took) = unreachable_seen(survivor, &leader, killed_at);
    eprintln!("{leader} shown Unreachable {took:?} after its kill -9 (state {state})");
    assert_eq!(
        state, "ready",
        "reachability from raft, not from heartbeats"
    );

    // Back when it restarts (now a follower) ...
    c.managers[idx].start();
    reachable_seen(&c.managers[(idx + 1) % 3], &leader);
    // ... and a follower's death is seen as soon.
    let nodes = c.managers[idx].nodes_json().expect("nodes");
    let leader = leader_of(&nodes).expect("a leader");
    let follower_idx = c
        .managers
        .iter()
        .position(|m| m.name != leader)
        .expect("a follower");
    let follower = c.managers[follower_idx].name.clone();
    let other = c
        .managers
        .iter()
        .position(|m| m.name != follower)
        .expect("another manager");
    let killed_at = Instant::now();
    c.managers[follower_idx].kill();
    let (state, took) = unreachable_seen(&c.managers[other], &follower, killed_at);
    eprintln!(
        "{follower} (a follower) shown Unreachable {took:?} after its kill -9 (state {state})"
    );
    assert_eq!(
        state, "ready",
        "reachability from raft, not from heartbeats"
    );
    c.managers[follower_idx].start();
    reachable_seen(&c.managers[other], &follower);
}

fn reachable_seen(m: &harness::Agent, name: &str) {
    eventually(&format!("{name} Reachable again"), PATIENCE, || {
        let nodes = m.nodes_json()?;
        nodes
            .iter()
            .any(|n| {
                n["Description"]["Hostname"] == name
                    && n["ManagerStatus"]["Reachability"] == "reachable"
            })
            .then_some(())
    });
}

/// Wait for `node ls` on `m` to show the manager `name` Unreachable; its
/// node state at that moment and how long after `since` it was seen.
fn unreachable_seen(m: &harness::Agent, name: &str, since: Instant) -> (String, Duration) {
    eventually(&format!("{name} shown Unreachable"), PATIENCE, || {
        let nodes = m.nodes_json()?;
        nodes
            .iter()
            .find(|n| {
                n["Description"]["Hostname"] == name
                    && n["ManagerStatus"]["Reachability"] == "unreachable"
            })
            .map(|n| {
                (
                    n["Status"]["State"].as_str().unwrap_or("").to_string(),
                    since.elapsed(),
                )
            })
    })
}

#[test]
fn quorum_loss_is_explained_and_force_new_cluster_recovers() {
    let mut c = Cluster::new("quorum").managers(3).workers(1).start();
    c.managers[0]
        .apiary(&["node", "update", "--label-add", "keep=me", "wrk1"])
        .ok();
    c.managers[1].kill();
    c.managers[2].kill();
    let m = &c.managers[0];
    let started = Instant::now();
    let err = m
        .apiary(&["node", "update", "--label-add", "x=y", "wrk1"])
        .fails()
        .to_string();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the write failed fast ({took:?})"
    );
    assert!(
        err.contains("quorum"),
        "the error says quorum is lost: {err}"
    );
    assert!(
        err.contains("mgr2") && err.contains("mgr3"),
        "it names the unreachable managers: {err}"
    );
    assert!(
        err.contains("--force-new-cluster"),
        "it says how to recover: {err}"
    );
    // Reads still answer.
    m.apiary(&["node", "ls"]).ok();

    let addr = m.addr();
    m.apiary(&[
        "swarm",
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
    ])
    .ok();
    eventually("writes to work after --force-new-cluster", PATIENCE, || {
        m.apiary(&["node", "update", "--label-add", "x=y", "wrk1"])
            .status
            .eq(&0)
            .then_some(())
    });
    let v: Value = serde_json::from_str(m.apiary(&["node", "inspect", "wrk1"]).ok()).expect("JSON");
    assert_eq!(v[0]["Spec"]["Labels"]["keep"], "me", "state was kept");
    let nodes = m.nodes_json().expect("nodes");
    let managers = nodes
        .iter()
        .filter(|n| n["ManagerStatus"].is_object())
        .count();
    assert_eq!(managers, 1, "only the survivor is a manager now");
    assert_eq!(leader_of(&nodes).as_deref(), Some("mgr1"));
}

#[test]
fn promote_demote_and_restart_resume_membership() {
    let mut c = Cluster::new("roles").managers(1).workers(2).start();
    let m = &c.managers[0];
    m.apiary(&["node", "promote", "wrk1", "wrk2"]).ok();
    eventually(
        "three managers after promoting both workers",
        PATIENCE,
        || {
            let nodes = m.nodes_json()?;
            (nodes
                .iter()
                .filter(|n| n["ManagerStatus"]["Reachability"] == "reachable")
                .count()
                == 3)
                .then_some(())
        },
    );
    // A promoted node answers manager questions itself.
    eventually("wrk1 to answer node ls", PATIENCE, || {
        c.workers[0]
            .apiary(&["node", "ls"])
            .status
            .eq(&0)
            .then_some(())
    });

    // An even number of managers draws a warning.
    m.apiary(&["node", "demote", "wrk2"]).ok();
    eventually("wrk2 to be a worker again", PATIENCE, || {
        let nodes = m.nodes_json()?;
        let n = nodes
            .iter()
            .find(|n| n["Description"]["Hostname"] == "wrk2")?;
        (n["ManagerStatus"].is_null() && n["Spec"]["Role"] == "worker").then_some(())
    });
    let out = m.apiary(&["info"]);
    out.ok();
    assert!(
        out.stderr
            .to_lowercase()
            .contains("even number of managers"),
        "info warns about an even manager count on stderr: {}",
        out.stderr
    );

    // Restart every agent: membership and roles come back from the data dirs.
    for a in c.managers.iter_mut().chain(c.workers.iter_mut()) {
        a.stop();
    }
    for a in c.managers.iter_mut().chain(c.workers.iter_mut()) {
        a.start();
    }
    let m = &c.managers[0];
    eventually(
        "all three nodes Ready again after a restart",
        PATIENCE,
        || {
            let nodes = m.nodes_json()?;
            (nodes.len() == 3 && nodes.iter().all(|n| n["Status"]["State"] == "ready"))
                .then_some(())
        },
    );
    let nodes = m.nodes_json().expect("nodes");
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["ManagerStatus"].is_object())
            .count(),
        2
    );
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let c = Cluster::new("bad").managers(1).workers(1).start();
    let m = &c.managers[0];
    let addr = m.addr();
    let stranger = c.agent("stranger", 50);
    let me = stranger.addr();
    let join = |token: &str| {
        stranger.apiary(&[
            "swarm",
            "join",
            "--token",
            token,
            &addr,
            "--advertise-addr",
            &me,
            "--listen-addr",
            &me,
        ])
    };

    // Malformed token.
    let err = join("SWMTKN-1-nonsense").fails().to_string();
    assert!(err.contains("invalid join token"), "{err}");

    // A token of another swarm: its CA digest does not match.
    let other = c.agent("other", 60);
    let oaddr = other.addr();
    other
        .apiary(&[
            "swarm",
            "init",
            "--advertise-addr",
            &oaddr,
            "--listen-addr",
            &oaddr,
        ])
        .ok();
    let foreign = other
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    let err = join(&foreign).fails().to_string();
    assert!(err.contains("different swarm"), "{err}");

    // A rotated token stops working at once; the new one works.
    let old = m
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    m.apiary(&["swarm", "join-token", "--rotate", "worker"])
        .ok();
    let new = m
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(old, new);
    let err = join(&old).fails().to_string();
    assert!(err.contains("not valid"), "{err}");
    let nodes_before = m.nodes_json().expect("nodes").len();
    assert_eq!(nodes_before, 2, "failed joins added no node");
    join(&new).ok();

    // Joining again while in a swarm.
    let err = join(&new).fails().to_string();
    assert!(err.contains("already part of a swarm"), "{err}");

    // A stale version on update.
    let v: Value = serde_json::from_str(m.apiary(&["node", "inspect", "wrk1"]).ok()).expect("JSON");
    let version = v[0]["Version"]["Index"].as_u64().expect("version");
    m.apiary(&["node", "update", "--label-add", "a=b", "wrk1"])
        .ok();
    let spec = serde_json::to_string(&v[0]["Spec"]).expect("spec");
    let err = stale_update(m, "wrk1", version, &spec);
    assert!(err.contains("out of sequence"), "{err}");

    // Unknown node.
    let err = m
        .apiary(&["node", "inspect", "nosuchnode"])
        .fails()
        .to_string();
    assert!(err.contains("not found"), "{err}");

    // Demoting the last manager.
    let err = m.apiary(&["node", "demote", "mgr1"]).fails().to_string();
    assert!(err.contains("last manager"), "{err}");

    // Removing a Ready node without --force, and a manager.
    let err = m.apiary(&["node", "rm", "wrk1"]).fails().to_string();
    assert!(err.contains("is not down"), "{err}");
    let err = m
        .apiary(&["node", "rm", "--force", "mgr1"])
        .fails()
        .to_string();
    assert!(err.contains("must be demoted"), "{err}");

    // An address that cannot be bound.
    let lonely = c.agent("lonely", 70);
    let err = lonely
        .apiary(&[
            "swarm",
            "init",
            "--advertise-addr",
            "192.0.2.1:2377",
            "--listen-addr",
            "192.0.2.1:2377",
        ])
        .fails()
        .to_string();
    assert!(err.contains("cannot listen on 192.0.2.1:2377"), "{err}");
    let err = lonely.apiary(&["node", "ls"]).fails().to_string();
    assert!(
        err.contains("not a swarm manager"),
        "init left nothing behind: {err}"
    );

    // After all that, the swarm is as it was plus the one good join.
    eventually("3 nodes", PATIENCE, || {
        (m.nodes_json()?.len() == 3).then_some(())
    });
}

/// POST an update with an old version straight to the API (the CLI always
/// sends the current one).
fn stale_update(m: &harness::Agent, node: &str, version: u64, spec: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&m.socket)
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            spec,
        ])
        .arg(format!(
            "http://localhost/v1.49/nodes/{node}/update?version={version}"
        ))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demoting_the_leader_hands_leadership_over() {
    let c = Cluster::new("handover").managers(3).workers(1).start();
    let nodes = c.managers[0].nodes_json().expect("nodes");
    let leader = leader_of(&nodes).expect("a leader");
    let other = c
        .managers
        .iter()
        .find(|m| m.name != leader)
        .expect("a follower");
    other.apiary(&["node", "demote", &leader]).ok();
    let new_leader = eventually("a new leader, and the old one a worker", PATIENCE, || {
        let nodes = other.nodes_json()?;
        let old = nodes
            .iter()
            .find(|n| n["Description"]["Hostname"] == leader.as_str())?;
        let managers = nodes
            .iter()
            .filter(|n| n["ManagerStatus"].is_object())
            .count();
        (old["ManagerStatus"].is_null() && managers == 2)
            .then(|| leader_of(&nodes))
            .flatten()
    });
    assert_ne!(new_leader, leader);
    other
        .apiary(&["node", "update", "--label-add", "after=handover", "wrk1"])
        .ok();
    let demoted = c.by_name(&leader);
    eventually(
        "the demoted node to stop answering as a manager",
        PATIENCE,
        || {
            let err = demoted.apiary(&["node", "ls"]);
            (err.status != 0 && err.stderr.contains("not a swarm manager")).then_some(())
        },
    );
    eventually("the demoted node to be Ready as a worker", PATIENCE, || {
        let nodes = other.nodes_json()?;
        let n = nodes
            .iter()
            .find(|n| n["Description"]["Hostname"] == leader.as_str())?;
        (n["Status"]["State"] == "ready" && n["Spec"]["Role"] == "worker").then_some(())
    });
}

/// Seconds until the node certificate in an agent's data dir expires.
fn cert_seconds_left(a: &harness::Agent) -> i64 {
    let pem = std::fs::read(a.data_dir().join("certificates/swarm-node.crt")).expect("node cert");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn shortening_cert_expiry_renews_every_node_promptly() {
    let c = Cluster::new("certs").managers(1).workers(2).start();
    let m = &c.managers[0];
    let day = 24 * 3600;
    for a in c.all() {
        let left = cert_seconds_left(a);
        assert!(
            left > 89 * day,
            "{}: default certificates last 90 days, {left}s left",
            a.name
        );
    }
    m.apiary(&["swarm", "update", "--cert-expiry", "2h"]).ok();
    let ca = m
        .docker(&["info", "--format", "{{json .Swarm.Cluster.Spec.CAConfig}}"])
        .ok()
        .to_string();
    let v: Value = serde_json::from_str(&ca).expect("JSON");
    assert_eq!(v["NodeCertExpiry"], 7200u64 * 1_000_000_000, "{ca}");
    for a in c.all() {
        eventually(
            &format!("{} to hold a certificate within the new policy", a.name),
            PATIENCE,
            || (cert_seconds_left(a) <= 2 * 3600 + 60).then_some(()),
        );
    }
    // Renewed nodes still talk to the cluster.
    eventually("all nodes Ready after renewal", PATIENCE, || {
        let nodes = m.nodes_json()?;
        nodes
            .iter()
            .all(|n| n["Status"]["State"] == "ready")
            .then_some(())
    });
    let err = m
        .apiary(&["swarm", "update", "--cert-expiry", "10m"])
        .fails()
        .to_string();
    assert!(err.contains("1h") || err.contains("hour"), "{err}");
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn raft_data_is_encrypted_at_rest_and_autolock_locks_restarted_managers() {
    let mut c = Cluster::new("lock").managers(3).workers(1).start();
    let marker = "Zq7XplorpMarker";
    c.managers[0]
        .apiary(&[
            "node",
            "update",
            "--label-add",
            &format!("note={marker}"),
            "wrk1",
        ])
        .ok();
    eventually("every manager to have the label", PATIENCE, || {
        c.managers
            .iter()
            .all(|m| {
                m.apiary(&["node", "inspect", "wrk1"])
                    .stdout
                    .contains(marker)
            })
            .then_some(())
    });
    for m in &c.managers {
        let hits = files_containing(&m.data_dir(), marker.as_bytes());
        assert!(
            hits.is_empty(),
            "{}: the label is readable on disk in {hits:?}",
            m.name
        );
    }

    // Lock the swarm; the key is printed once and can be shown again.
    let out = c.managers[0]
        .apiary(&["swarm", "update", "--autolock=true"])
        .ok()
        .to_string();
    assert!(out.contains("SWMKEY-1-"), "{out}");
    let key = c.managers[0]
        .apiary(&["swarm", "unlock-key", "-q"])
        .ok()
        .trim()
        .to_string();
    assert!(key.starts_with("SWMKEY-1-") && key.len() == 52, "{key}");

    // A restarted manager serves nothing until unlocked.
    c.managers[1].stop();
    assert!(
        !c.managers[1]
            .data_dir()
            .join("certificates/swarm-node.key")
            .exists(),
        "TLS key sealed"
    );
    c.managers[1].start();
    let m2 = &c.managers[1];
    let err = m2.apiary(&["node", "ls"]).fails().to_string();
    assert!(
        err.contains("Swarm is encrypted and needs to be unlocked"),
        "{err}"
    );
    assert!(m2.apiary(&["info"]).ok().contains("Swarm: locked"));
    let nodes = c.managers[0].nodes_json().expect("nodes");
    assert_eq!(nodes.len(), 4);

    // Wrong keys are refused and change nothing; the right one unlocks.
    let bad = m2.apiary_stdin(
        &["swarm", "unlock"],
        "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n".as_bytes(),
    );
    assert!(bad.fails().contains("invalid unlock key"), "{}", bad.stderr);
    let bad = m2.apiary_stdin(&["swarm", "unlock"], "not-a-key\n".as_bytes());
    assert!(bad.fails().contains("invalid unlock key"), "{}", bad.stderr);
    let unlocked_at = Instant::now();
    m2.apiary_stdin(&["swarm", "unlock"], format!("{key}\n").as_bytes())
        .ok();
    eventually("the unlocked manager to answer", PATIENCE, || {
        m2.apiary(&["node", "ls"]).status.eq(&0).then_some(())
    });
    eprintln!("unlock → serving in {:?}", unlocked_at.elapsed());
    let v: Value =
        serde_json::from_str(m2.apiary(&["node", "inspect", "wrk1"]).ok()).expect("JSON");
    assert_eq!(
        v[0]["Spec"]["Labels"]["note"], marker,
        "state intact after unlock"
    );

    // Rotation: the previous key still unlocks for a while (docker CLI this time).
    let new_key = c.managers[0]
        .apiary(&["swarm", "unlock-key", "--rotate", "-q"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(new_key, key);
    eventually("mgr3 to reseal with the new key", PATIENCE, || {
        c.managers[2]
            .apiary(&["swarm", "unlock-key", "-q"])
            .stdout
            .contains(&new_key)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    c.managers[2].stop();
    c.managers[2].start();
    let m3 = &c.managers[2];
    assert!(m3.apiary(&["info"]).ok().contains("Swarm: locked"));
    m3.docker_stdin(&["swarm", "unlock"], format!("{key}\n").as_bytes())
        .ok();
    eventually("mgr3 unlocked with the previous key", PATIENCE, || {
        m3.apiary(&["node", "ls"]).status.eq(&0).then_some(())
    });

    // Autolock off: a restart comes back unlocked.
    c.managers[0]
        .apiary(&["swarm", "update", "--autolock=false"])
        .ok();
    eventually(
        "mgr2 to store its keys in the clear again",
        PATIENCE,
        || {
            c.managers[1]
                .data_dir()
                .join("certificates/swarm-node.key")
                .exists()
                .then_some(())
        },
    );
    c.managers[1].stop();
    c.managers[1].start();
    eventually("mgr2 to serve after a restart", PATIENCE, || {
        c.managers[1]
            .apiary(&["node", "ls"])
            .status
            .eq(&0)
            .then_some(())
    });
    let err = c.managers[0]
        .apiary(&["swarm", "unlock-key"])
        .fails()
        .to_string();
    assert!(err.contains("no unlock key"), "{err}");
}

/// SIGHUP (a closed terminal, `systemctl reload`, `kill -HUP` out of
/// habit) is logged and ignored; it used to end the agent (exit 129,
/// nothing logged). SIGTERM still stops it cleanly.
#[test]
fn sighup_leaves_the_agent_serving() {
    let mut c = Cluster::new("hup").managers(1).start();
    let m = &mut c.managers[0];
    m.signal("HUP");
    eventually("the SIGHUP logged", PATIENCE, || {
        m.log().contains("SIGHUP ignored").then_some(())
    });
    assert_eq!(m.exited(), None, "the agent exited on SIGHUP:\n{}", m.log());
    m.apiary(&["node", "ls"]).ok();
    m.stop();
}

/// A manager whose data dir fills up (a tmpfs of its own here): its raft
/// core stops on the write error, and the agent exits non-zero instead of
/// staying up as a zombie (calling itself a member, serving stale reads,
/// refusing every write until restarted), so that systemd restarts it.
/// Nothing acknowledged is lost: once space is freed and it restarts, it
/// catches up.
#[test]
fn a_full_data_dir_stops_the_manager_loudly_and_it_catches_up_after() {
    let c = Cluster::new("full");
    let m1 = c.agent("mgr1", 1);
    let addr = m1.addr();
    m1.init_swarm(&[]).ok();
    let token = m1
        .apiary(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_string();
    // mgr3's data dir on a small tmpfs (Cluster's drop unmounts it).
    let data3 = c.root.path().join("mgr3").join("data");
    std::fs::create_dir_all(&data3).expect("mgr3 data dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&data3)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a tmpfs on {}", data3.display());
    let mut managers = vec![m1];
    for (name, host) in [("mgr2", 2), ("mgr3", 3)] {
        let m = c.agent(name, host);
        m.join_swarm(&token, &addr).ok();
        managers.push(m);
    }
    eventually("3 managers Reachable", PATIENCE, || {
        let n = managers[0].nodes_json()?;
        (n.iter()
            .filter(|x| x["ManagerStatus"]["Reachability"] == "reachable")
            .count()
            == 3)
            .then_some(())
    });
    // Fill the tmpfs to the last byte.
    let filler = data3.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }
    // Writes through mgr1 until mgr3 gives up (2 of 3 keep the quorum).
    let payload = "x".repeat(32 * 1024);
    let mut acked = Vec::new();
    for i in 0..400 {
        let name = format!("c{i}");
        if managers[0]
            .apiary_stdin(&["config", "create", &name, "-"], payload.as_bytes())
            .status
            == 0
        {
            acked.push(name);
        }
        if managers[2].exited().is_some() {
            break;
        }
    }
    let status = eventually("mgr3 to exit", PATIENCE, || managers[2].exited());
    let log = managers[2].log();
    assert!(!status.success(), "exit status {status}\n{log}");
    assert!(
        log.contains("raft stopped on this manager") && log.contains("No space left on device"),
        "{log}"
    );
    assert!(!acked.is_empty(), "no write was acknowledged");
    // The other two carry on.
    managers[0]
        .apiary_stdin(&["config", "create", "after-full", "-"], b"ok")
        .ok();
    acked.push("after-full".into());
    // Space back, restarted (as systemd would): it catches up.
    std::fs::remove_file(&filler).expect("remove the filler");
    managers[2].kill();
    managers[2].start();
    eventually("mgr3 to have every acknowledged config", PATIENCE, || {
        let ls = managers[2].apiary(&["config", "ls", "--format", "{{.Name}}"]);
        if ls.status != 0 {
            return None;
        }
        let have: std::collections::HashSet<&str> = ls.stdout.lines().collect();
        acked
            .iter()
            .all(|n| have.contains(n.as_str()))
            .then_some(())
    });
}

/// A damaged raft store (truncated, or its header overwritten): the agent
/// refuses to start with one message naming the file and the ways out,
/// and exits 1 — it used to abort inside redb (exit 134) naming neither.
#[test]
fn a_damaged_raft_store_is_refused_with_one_message() {
    let c = Cluster::new("damaged");
    let mut a = c.agent("solo", 1);
    a.init_swarm(&[]).ok();
    a.apiary_stdin(&["config", "create", "kept", "-"], b"data")
        .ok();
    a.stop();
    let db = a.data_dir().join("raft.redb");
    let good = std::fs::read(&db).expect("raft.redb");
    let start = |what: &str| {
        let out = Command::new("timeout")
            .arg("20")
            .arg(harness::APIARY)
            .arg("agent")
            .arg("--data-dir")
            .arg(a.data_dir())
            .arg("--socket")
            .arg(&a.socket)
            .args(["--task-network", "host"])
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("the raft store {} is damaged", db.display()))
                && stderr.contains("--force-new-cluster")
                && stderr.contains("join this node again"),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked at"),
            "{what}: one message, no panic: {stderr}"
        );
    };
    std::fs::write(&db, &good[..20_000]).expect("truncate");
    start("truncated");
    let mut spoilt = good.clone();
    for b in spoilt.iter_mut().take(64) {
        *b = 0xa5;
    }
    std::fs::write(&db, &spoilt).expect("overwrite the header");
    start("header overwritten");
    // The healthy copy back: the node starts and has its config.
    std::fs::write(&db, &good).expect("restore");
    a.start();
    harness::eventually("the config back", PATIENCE, || {
        let ls = a.apiary(&["config", "ls", "--format", "{{.Name}}"]);
        (ls.status == 0 && ls.stdout.contains("kept")).then_some(())
    });
}
