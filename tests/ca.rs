//! Root CA rotation on a live cluster of real agents: no node drops to Down,
//! the join tokens change their CA digest, a certificate from the old root
//! is refused once every node moved, the docker CLI's `swarm ca --rotate`
//! works, and a node that was off during a rotation gets back in with the
//! current join token.

mod harness;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{eventually, Cluster, APIARY, PATIENCE};
use serde_json::Value;

fn token_parts(t: &str) -> (String, String) {
    let p: Vec<&str> = t.trim().split('-').collect();
    assert_eq!(p.len(), 4, "token shape: {t}");
    (p[2].to_string(), p[3].to_string())
}

fn swarm_json(m: &harness::Agent) -> Value {
    let out = m
        .docker(&["info", "--format", "{{json .Swarm.Cluster}}"])
        .ok()
        .to_string();
    serde_json::from_str(&out).expect("cluster JSON")
}

/// Polls `node ls` (through the CLI, on a socket) until told to stop, and
/// returns every row it saw that was not Ready (or a short listing).
fn watch_nodes(
    socket: String,
    nodes: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut bad = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let out = Command::new(APIARY)
                .args(["-H", &socket, "node", "ls"])
                .output()
                .expect("apiary node ls");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let rows: Vec<&str> = text.lines().skip(1).collect();
            if rows.len() != nodes {
                bad.push(format!("node ls showed {} nodes: {text}", rows.len()));
            }
            for row in rows {
                if !row.contains(" Ready ") {
                    bad.push(row.to_string());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bad
    })
}

/// Call a manager with a given certificate (PEM files of a node), as that
/// node would: Ok if the manager accepted the connection and answered.
fn ping_with(dir: &std::path::Path, ip: &str, manager: &str) -> Result<(), String> {
    use apiary::transport::{Identity, Transport, MANAGER_SERVER_NAME};
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).expect("saved PEM");
    let (ca, cert, key) = (read("ca.crt"), read("node.crt"), read("node.key"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut roots = apiary::pki::certs_from_pem(&ca).expect("ca").into_iter();
        let mut chain = apiary::pki::certs_from_pem(&cert)
            .expect("cert")
            .into_iter();
        let identity = Identity {
            ca_cert: roots.next().expect("root"),
            cert: chain.next().expect("leaf"),
            key: Arc::new(apiary::pki::key_der_from_pem(&key).expect("key")),
            intermediates: chain.collect(),
            extra_roots: roots.collect(),
        };
        let t = Transport::bind(format!("{ip}:0").parse().expect("addr"), Some(identity))
            .expect("bind");
        let r = t
            .call(
                manager.parse().expect("manager addr"),
                MANAGER_SERVER_NAME,
                apiary::rpc::encode(&apiary::rpc::Request::Ping),
                Duration::from_secs(5),
            )
            .await;
        t.close().await;
        match r {
            Ok(b) => match apiary::rpc::decode::<apiary::rpc::Reply>(&b) {
                Ok(apiary::rpc::Reply::Ok) => Ok(()),
                other => Err(format!("answered {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        }
    })
}

#[test]
fn ca_rotation_on_a_live_cluster() {
    let mut c = Cluster::new("carot").managers(3).workers(2).start();
    let m = &c.managers[0];
    let old_w = m
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    let old_m = m
        .apiary(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_string();
    let old_root = m.apiary(&["swarm", "ca"]).ok().trim().to_string();
    assert!(
        old_root.starts_with("-----BEGIN CERTIFICATE-----"),
        "{old_root}"
    );
    // docker swarm ca (no --rotate) prints the same root.
    assert_eq!(m.docker(&["swarm", "ca"]).ok().trim(), old_root);

    // Keep a copy of wrk1's certificate and key from the old root.
    let saved = c.root.path().join("wrk1-old-cert");
    std::fs::create_dir_all(&saved).expect("dir");
    let certs = c.workers[0].data_dir().join("certificates");
    for (from, to) in [
        ("swarm-root-ca.crt", "ca.crt"),
        ("swarm-node.crt", "node.crt"),
        ("swarm-node.key", "node.key"),
    ] {
        std::fs::copy(certs.join(from), saved.join(to)).expect("copy cert");
    }
    let probe_ip = format!("127.{}.0.99", c.net);
    ping_with(&saved, &probe_ip, &m.addr()).expect("the old certificate works before the rotation");

    // Rotate, watching `node ls` all along: nobody may leave Ready.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_nodes(m.host(), 5, stop.clone());
    let started = Instant::now();
    let out = m.apiary(&["swarm", "ca", "--rotate"]).ok().to_string();
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let not_ready = watcher.join().expect("watcher");
    assert!(
        not_ready.is_empty(),
        "nodes left Ready during the rotation: {not_ready:?}\n{}",
        c.logs()
    );
    assert!(out.contains("rotation in progress"), "{out}");
    let new_root = m.apiary(&["swarm", "ca"]).ok().trim().to_string();
    assert_ne!(new_root, old_root, "a new root CA");
    assert!(
        out.trim_end().ends_with(new_root.as_str()),
        "prints the new root last: {out}"
    );
    eprintln!("rotation with the apiary CLI took {took:?}");

    // Every node holds a certificate from the new root and trusts only it.
    let cluster = swarm_json(m);
    assert_eq!(cluster["RootRotationInProgress"], false);
    let issuer = cluster["TLSInfo"]["CertIssuerPublicKey"].clone();
    eventually("every node to trust only the new root", PATIENCE, || {
        let nodes = m.nodes_json()?;
        nodes
            .iter()
            .all(|n| {
                n["Description"]["TLSInfo"]["CertIssuerPublicKey"] == issuer
                    && n["Description"]["TLSInfo"]["TrustRoot"]
                        .as_str()
                        .map(str::trim)
                        == Some(new_root.as_str())
            })
            .then_some(())
    });
    for a in c.all() {
        let ca = std::fs::read_to_string(a.data_dir().join("certificates/swarm-root-ca.crt"))
            .expect("CA file");
        assert_eq!(ca.trim(), new_root, "{}'s trust store", a.name);
    }
    // node inspect --pretty shows the TLS facts and the expiry.
    let pretty = m
        .apiary(&["node", "inspect", "--pretty", "wrk1"])
        .ok()
        .to_string();
    assert!(
        pretty.contains("TLS Info:") && pretty.contains("Certificate Expiry:"),
        "{pretty}"
    );

    // Tokens: new digest, same secrets.
    let new_w = m
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    let new_m = m
        .apiary(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(token_parts(&new_w).0, token_parts(&old_w).0);
    assert_eq!(token_parts(&new_w).1, token_parts(&old_w).1);
    assert_ne!(token_parts(&new_m).0, token_parts(&old_m).0);
    assert_eq!(token_parts(&new_m).1, token_parts(&old_m).1);

    // The old certificate is refused now.
    eventually("the old root's certificate to be refused", PATIENCE, || {
        ping_with(&saved, &probe_ip, &m.addr())
            .is_err()
            .then_some(())
    });
    for mgr in &c.managers[1..] {
        assert!(
            ping_with(&saved, &probe_ip, &mgr.addr()).is_err(),
            "{} still accepts the old root",
            mgr.name
        );
    }

    // The old join token is refused, the new one works.
    let w3 = c.agent("wrk3", 30);
    let a3 = w3.addr();
    let join = |t: &str| {
        w3.apiary(&[
            "swarm",
            "join",
            "--token",
            t,
            &m.addr(),
            "--advertise-addr",
            &a3,
            "--listen-addr",
            &a3,
        ])
    };
    let err = join(&old_w).fails().to_string();
    assert!(
        err.contains("different swarm") || err.contains("rotated"),
        "{err}"
    );
    join(&new_w).ok();

    // The docker CLI rotates too (and waits until every node moved).
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["120", "docker", "swarm", "ca", "--rotate"])
        .env("DOCKER_HOST", m.host())
        .env_remove("DOCKER_CONTEXT")
        .env("DOCKER_CONFIG", m.dir.join("docker-config"))
        .output()
        .expect("docker");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "docker swarm ca --rotate: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    eprintln!("rotation with the docker CLI took {:?}", started.elapsed());
    let docker_root = m.apiary(&["swarm", "ca"]).ok().trim().to_string();
    assert_ne!(docker_root, new_root);
    assert!(
        stdout.trim_end().ends_with(docker_root.as_str()),
        "{stdout}"
    );

    // A node off during a rotation comes back with the current token.
    c.workers[1].stop();
    eventually("wrk2 Down", PATIENCE, || {
        let nodes = m.nodes_json()?;
        nodes
            .iter()
            .any(|n| n["Description"]["Hostname"] == "wrk2" && n["Status"]["State"] == "down")
            .then_some(())
    });
    m.apiary(&["swarm", "ca", "--rotate"]).ok();
    c.workers[1].start();
    let w2 = &c.workers[1];
    let token = m
        .apiary(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    w2.apiary(&["swarm", "join", "--token", &token, &m.addr()])
        .ok();
    eventually("wrk2 Ready again as itself", PATIENCE, || {
        let nodes = m.nodes_json()?;
        let wrk2: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["Description"]["Hostname"] == "wrk2")
            .collect();
        (wrk2.len() == 1 && wrk2[0]["Status"]["State"] == "ready").then_some(())
    });
}
