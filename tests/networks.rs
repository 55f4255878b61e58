//! Swarm networks as objects: `swarm init` makes `ingress`, `network
//! create|ls|inspect|rm|prune` with both CLIs and the Python Docker SDK,
//! subnets from the swarm's pool (`--default-addr-pool`), replicated to
//! every manager, and bad input refused with nothing created; a service
//! on one gets a virtual IP there. Also `docker events` of swarm objects
//! (both CLIs' objects, the docker CLI and the Python SDK reading them).
//!
//! Needs the docker CLI and the Python SDK's venv (`scripts/setup` makes
//! it in target/pyenv).

mod harness;

use std::process::Command;

use harness::{Agent, Cluster};

/// `network ls` names, sorted.
fn names(a: &Agent) -> Vec<String> {
    let mut v: Vec<String> = a
        .apiary(&["network", "ls", "--format", "{{.Name}}"])
        .ok()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("APIARY_PYTHON") {
        return p.into();
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it makes the Python Docker SDK's venv), or set APIARY_PYTHON",
        p.display()
    );
    p
}

#[test]
fn networks_with_both_clis_and_the_python_sdk() {
    let c = Cluster::new("nets").managers(3).workers(1).start();
    let (m1, m2, w) = (&c.managers[0], &c.managers[1], &c.workers[0]);

    // ---- swarm init made the routing mesh's network
    let ls = m1.apiary(&["network", "ls"]).ok().to_string();
    let header = ls.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NETWORK ID") && header.contains("SCOPE"),
        "{ls}"
    );
    let ingress = ls
        .lines()
        .find(|l| l.contains("ingress"))
        .unwrap_or_default();
    assert!(
        ingress.contains("overlay") && ingress.contains("swarm"),
        "{ls}"
    );
    let out = m1.docker(&[
        "network",
        "inspect",
        "ingress",
        "--format",
        "{{.Ingress}} {{(index .IPAM.Config 0).Subnet}} {{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}",
    ]);
    assert_eq!(out.ok().trim(), "true 10.0.0.0/24 4096");

    // ---- create with both CLIs: given and allocated subnets
    m1.docker(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.50.0.0/24",
        "--gateway",
        "10.50.0.254",
        "--label",
        "tier=back",
        "back",
    ])
    .ok();
    let front = m1
        .apiary(&["network", "create", "--opt", "encrypted", "front"])
        .ok()
        .trim()
        .to_string();
    assert_eq!(front.len(), 25, "a swarm ID: {front}");
    let out = m1.docker(&[
        "network",
        "inspect",
        "front",
        "--format",
        "{{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).Gateway}} {{.Scope}} {{.Driver}} {{index .Options \"encrypted\"}}|",
    ]);
    assert_eq!(out.ok().trim(), "10.0.1.0/24 10.0.1.1 swarm overlay |");
    let out = m1.apiary(&[
        "network",
        "inspect",
        "back",
        "--format",
        "{{json .IPAM.Config}}",
    ]);
    assert_eq!(
        out.ok().trim(),
        r#"[{"Gateway":"10.50.0.254","Subnet":"10.50.0.0/24"}]"#
    );
    // Replicated: another manager lists them; filters as docker's.
    assert_eq!(names(m2), ["back", "front", "ingress"]);
    let q = m2
        .docker(&["network", "ls", "-q", "--filter", "label=tier=back"])
        .ok()
        .trim()
        .to_string();
    assert_eq!(q.len(), 12, "{q}");
    let out = m2.docker(&[
        "network",
        "ls",
        "--filter",
        "name=fro",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(out.ok().trim(), "front");
    assert!(m2
        .docker(&["network", "ls", "--filter", "color=blue"])
        .fails()
        .contains("invalid filter 'color'"));

    // ---- bad input: a clear error each, nothing created
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.50.0.0/25",
                "x1",
            ],
            "overlaps network back",
        ),
        (
            &["network", "create", "-d", "overlay", "back"],
            "network with name back already exists",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.1.2.3/40",
                "x2",
            ],
            "invalid subnet",
        ),
        (
            &["network", "create", "-d", "overlay", "web.net"],
            "invalid network name",
        ),
        (&["network", "create", "x3"], "use -d overlay"),
        // The docker CLI refuses this one itself.
        (
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--gateway",
                "10.9.9.9",
                "x4",
            ],
            "must have a corresponding subnet",
        ),
    ];
    for (args, want) in cases {
        let err = m1.docker(args).fails().to_string();
        assert!(err.contains(want), "docker {args:?}: {err}");
    }
    let err = m1
        .apiary(&["network", "create", "--subnet", "10.0.1.128/25", "x5"])
        .fails()
        .to_string();
    assert!(err.contains("overlaps network front"), "{err}");
    let err = m1
        .apiary(&["network", "create", "--gateway", "10.9.9.9", "x6"])
        .fails()
        .to_string();
    assert!(err.contains("need --subnet"), "{err}");
    assert_eq!(names(m1), ["back", "front", "ingress"]);

    // ---- a service on a network gets a virtual IP there, and holds it
    m1.docker(&[
        "service",
        "create",
        "-d",
        "--replicas",
        "0",
        "--name",
        "onfront",
        "--network",
        "name=front,alias=fe",
        "busybox",
        "sleep",
        "1",
    ])
    .ok();
    let svc: serde_json::Value =
        serde_json::from_str(m1.docker(&["service", "inspect", "onfront"]).ok()).unwrap();
    let front_id = m1
        .docker(&["network", "inspect", "-f", "{{.ID}}", "front"])
        .ok()
        .trim()
        .to_string();
    let vips = &svc[0]["Endpoint"]["VirtualIPs"];
    assert_eq!(vips[0]["NetworkID"], front_id.as_str(), "{svc}");
    let addr = vips[0]["Addr"].as_str().unwrap_or_default();
    assert!(addr.starts_with("10.") && addr.ends_with("/24"), "{svc}");
    let target = &svc[0]["Spec"]["TaskTemplate"]["Networks"][0];
    assert_eq!(target["Target"], front_id.as_str(), "kept by ID: {svc}");
    assert_eq!(target["Aliases"][0], "fe");
    let err = m1.docker(&["network", "rm", "front"]).fails().to_string();
    assert!(err.contains("in use by service onfront"), "{err}");
    let err = m1
        .docker(&[
            "service",
            "create",
            "--network",
            "ingress",
            "busybox",
            "sleep",
            "1",
        ])
        .fails()
        .to_string();
    assert!(
        err.contains("explicitly attached to the ingress network"),
        "{err}"
    );
    m1.docker(&["service", "rm", "onfront"]).ok();
    let err = m1
        .apiary(&[
            "service",
            "create",
            "--network",
            "nosuch",
            "busybox",
            "sleep",
            "1",
        ])
        .fails()
        .to_string();
    assert!(err.contains("network nosuch not found"), "{err}");
    // A worker has no say over swarm networks.
    assert!(w
        .apiary(&["network", "ls"])
        .fails()
        .contains("not a swarm manager"));

    // ---- the Python Docker SDK
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/networks.py"
        ))
        .env("DOCKER_HOST", m2.host())
        .output()
        .expect("run the Python SDK script");
    assert!(
        out.status.success(),
        "python SDK:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // ---- rm and prune; ingress stays
    assert_eq!(m1.docker(&["network", "rm", "back"]).ok().trim(), "back");
    assert!(m1
        .apiary(&["network", "rm", "back"])
        .fails()
        .contains("network back not found"));
    let out = m1.apiary(&["network", "prune", "-f"]);
    assert_eq!(out.ok(), "Deleted Networks:\nfront\n");
    assert_eq!(names(m2), ["ingress"]);
}

/// `swarm init --default-addr-pool … --default-addr-pool-mask-length …
/// --data-path-port …`: kept and shown as docker shows them, and the
/// networks' subnets come from that pool.
#[test]
fn init_takes_the_address_pool_and_data_path_port() {
    let c = Cluster::new("pool");
    let a = c.agent("solo", 1);
    let err = a
        .init_swarm(&["--data-path-port", "80"])
        .fails()
        .to_string();
    assert!(err.contains("1024 to 49151"), "{err}");
    a.init_swarm(&[
        "--default-addr-pool",
        "10.60.0.0/16",
        "--default-addr-pool-mask-length",
        "26",
        "--data-path-port",
        "7789",
    ])
    .ok();
    let out = a.docker(&[
        "info",
        "--format",
        "{{json .Swarm.Cluster.DefaultAddrPool}} {{.Swarm.Cluster.SubnetSize}} {{.Swarm.Cluster.DataPathPort}}",
    ]);
    assert_eq!(out.ok().trim(), r#"["10.60.0.0/16"] 26 7789"#);
    a.docker(&["network", "create", "-d", "overlay", "mine"])
        .ok();
    let out = a.docker(&[
        "network",
        "inspect",
        "ingress",
        "mine",
        "--format",
        "{{(index .IPAM.Config 0).Subnet}}",
    ]);
    assert_eq!(out.ok(), "10.60.0.0/26\n10.60.0.64/26\n");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `docker events` of swarm objects: kept ones with --since/--until, by
/// type, live ones as they happen, and through the Python SDK.
#[test]
fn docker_events_of_swarm_objects() {
    let c = Cluster::new("events").managers(1).start();
    let m = &c.managers[0];
    let t0 = format!("{:.3}", unix_now() - 1.0);
    m.apiary_stdin(&["secret", "create", "ev-secret", "-"], b"x")
        .ok();
    m.docker(&["network", "create", "-d", "overlay", "ev-net"])
        .ok();
    m.docker(&[
        "service",
        "create",
        "-d",
        "--replicas",
        "0",
        "--name",
        "ev-svc",
        "busybox",
        "sleep",
        "1",
    ])
    .ok();
    m.docker(&[
        "service",
        "update",
        "-d",
        "--replicas",
        "0",
        "--env-add",
        "A=1",
        "ev-svc",
    ])
    .ok();
    m.docker(&["service", "rm", "ev-svc"]).ok();
    let t1 = format!("{:.3}", unix_now() + 1.0);
    let all = m
        .docker(&[
            "events",
            "--since",
            &t0,
            "--until",
            &t1,
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
        ])
        .ok()
        .to_string();
    let lines: Vec<&str> = all.lines().collect();
    for want in [
        "secret create ev-secret",
        "network create ev-net",
        "service create ev-svc",
        "service update ev-svc",
        "service remove ev-svc",
    ] {
        assert!(lines.contains(&want), "{want:?} in:\n{all}");
    }
    let pos = |w: &str| lines.iter().position(|l| *l == w);
    assert!(
        pos("service create ev-svc") < pos("service remove ev-svc"),
        "in order: {all}"
    );
    let services = m
        .docker(&[
            "events",
            "--since",
            &t0,
            "--until",
            &t1,
            "--filter",
            "type=service",
            "--filter",
            "event=remove",
            "--format",
            "{{.Type}} {{.Action}}",
        ])
        .ok()
        .to_string();
    assert_eq!(services.trim(), "service remove", "{services}");
    let err = m
        .docker(&[
            "events",
            "--since",
            &t0,
            "--until",
            &t1,
            "--filter",
            "colour=red",
        ])
        .fails()
        .to_string();
    assert!(err.contains("invalid filter 'colour'"), "{err}");

    // Live: a watcher started first sees the next create.
    let mut watcher = Command::new("docker")
        .args([
            "events",
            "--filter",
            "type=config",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])
        .env("DOCKER_HOST", m.host())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker events");
    std::thread::sleep(std::time::Duration::from_millis(500));
    m.apiary_stdin(&["config", "create", "ev-config", "-"], b"y")
        .ok();
    let mut first = String::new();
    {
        use std::io::BufRead;
        let out = watcher.stdout.take().expect("stdout");
        let mut r = std::io::BufReader::new(out);
        r.read_line(&mut first).expect("read an event");
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(first.trim(), "create ev-config");

    // The Python SDK reads the same.
    let script = format!(
        "import docker\nc = docker.from_env()\nev = list(c.events(since={t0}, until={t1}, decode=True, filters={{'type': 'network'}}))\nnames = [e['Actor']['Attributes'].get('name') for e in ev]\nassert 'ev-net' in names, ev\nassert all(e['Type'] == 'network' and e['scope'] == 'swarm' for e in ev), ev\n"
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .env("DOCKER_HOST", m.host())
        .output()
        .expect("python SDK");
    assert!(
        out.status.success(),
        "python SDK events:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
