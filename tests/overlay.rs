//! Overlay networks across real nodes: three agents, each in a network
//! namespace of its own (a machine of its own) on an underlay the test
//! makes (a bridge in a fourth namespace), real containerd + runc and the
//! busybox image. What the chapter does: a service on an overlay reached
//! by name from a task on another node (embedded DNS, VIP load balancing,
//! `tasks.NAME`), and `-p 8080:80` answering on every node through the
//! routing mesh, including nodes with no task.

mod harness;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use harness::containerd::Daemon;
use harness::{eventually, Agent, Cluster, Netns, PATIENCE};

/// The underlay's subnet: only inside the test's namespaces.
const UNDERLAY: &str = "192.168.250";

fn sh(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = sh(program, args);
    assert!(ok, "{program} {}: {out}", args.join(" "));
    out
}

/// A switch (a bridge in a namespace of its own) and a namespace per node
/// plugged into it, node `i` at `192.168.250.i`.
struct Underlay {
    switch: Netns,
    nodes: Vec<Netns>,
}

impl Underlay {
    fn new(tag: u32, n: usize) -> Underlay {
        let switch = Netns::new(&format!("apyov-{tag}-sw"));
        must(
            "ip",
            &["-n", &switch.name, "link", "add", "sw0", "type", "bridge"],
        );
        must("ip", &["-n", &switch.name, "link", "set", "sw0", "up"]);
        must(
            "ip",
            &[
                "-n",
                &switch.name,
                "addr",
                "add",
                &format!("{UNDERLAY}.254/24"),
                "dev",
                "sw0",
            ],
        );
        let mut nodes = Vec::new();
        for i in 1..=n {
            let ns = Netns::new(&format!("apyov-{tag}-n{i}"));
            let (a, b) = (format!("apyov{tag}a{i}"), format!("apyov{tag}b{i}"));
            must(
                "ip",
                &["link", "add", &a, "type", "veth", "peer", "name", &b],
            );
            must("ip", &["link", "set", &a, "netns", &switch.name]);
            must("ip", &["link", "set", &b, "netns", &ns.name]);
            must(
                "ip",
                &["-n", &switch.name, "link", "set", &a, "master", "sw0", "up"],
            );
            must("ip", &["-n", &ns.name, "link", "set", &b, "name", "eth0"]);
            must(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{UNDERLAY}.{i}/24"),
                    "dev",
                    "eth0",
                ],
            );
            must("ip", &["-n", &ns.name, "link", "set", "eth0", "up"]);
            nodes.push(ns);
        }
        Underlay { switch, nodes }
    }
}

/// Run `args` inside the namespace `ns` (the host's programs).
fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let mut a = vec!["netns", "exec", ns];
    a.extend(args);
    sh("ip", &a)
}

fn owner(a: &Agent) -> String {
    std::fs::read_to_string(a.data_dir().join("network").join("owner"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Task IDs of the service's tasks that should run, once `n` run.
fn running(m: &Agent, service: &str, n: usize) -> Vec<String> {
    eventually(&format!("{n} running tasks of {service}"), PATIENCE, || {
        let out = m.docker(&[
            "service",
            "ps",
            service,
            "--no-trunc",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.ID}}|{{.CurrentState}}",
        ]);
        let rows: Vec<(String, String)> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        (rows.len() == n && rows.iter().all(|(_, s)| s.starts_with("Running")))
            .then(|| rows.into_iter().map(|(id, _)| id).collect())
    })
}

fn inspect(m: &Agent, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["inspect"];
    a.extend(args);
    serde_json::from_str(m.docker(&a).ok()).expect("inspect JSON")
}

/// A task's address on `network` (without the prefix).
fn task_addr(m: &Agent, task: &str, network: &str) -> String {
    let t = inspect(m, &["--type", "task", task]);
    t[0]["NetworksAttachments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["Network"]["Spec"]["Name"] == network)
        .and_then(|a| a["Addresses"][0].as_str())
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("task {task} has no address on {network}: {t}"))
        .to_string()
}

/// GET / from `addr:port` inside `ns`, with busybox nc (Debian's static
/// busybox wget crashes): the body's last line, if the answer came.
fn http_get(ns: &str, addr: &str, port: u16) -> (bool, String) {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "busybox",
            "nc",
            "-w",
            "5",
            addr,
            &port.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run busybox nc");
    if let Some(mut i) = child.stdin.take() {
        use std::io::Write;
        let _ = i.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let out = child.wait_with_output().expect("busybox nc");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ok = text.starts_with("HTTP/1.") && text.contains(" 200 ");
    (
        ok,
        text.lines().last().unwrap_or_default().trim().to_string(),
    )
}

/// A web server answering its hostname (the task ID's first 12
/// characters) at / and 2 MiB at /big.
const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && dd if=/dev/zero of=/www/big bs=1024 count=2048 2>/dev/null && exec httpd -f -p 80 -h /www";

/// The bytes `GET path` from `addr:80` inside `ns` brought back.
fn http_bytes(ns: &str, addr: &str, path: &str) -> usize {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "nc", "-w", "10", addr, "80"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run busybox nc");
    if let Some(mut i) = child.stdin.take() {
        use std::io::Write;
        let _ = i.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    }
    child
        .wait_with_output()
        .map(|o| o.stdout.len())
        .unwrap_or(0)
}

/// A swarm of `n` agents, each in a namespace of its own on a test-made
/// underlay (`<prefix>1` the manager, the others workers, all Ready), for
/// `scenario`; then everything of theirs is removed, and their logs shown
/// if it failed.
fn on_nodes(
    name: &str,
    prefix: &str,
    tag_offset: u32,
    n: usize,
    scenario: impl FnOnce(&mut [Agent], &Underlay),
) {
    let daemon = Arc::new(Daemon::start());
    let tag = std::process::id() % 10_000 + tag_offset;
    let under = Underlay::new(tag, n);
    let c = Cluster::new(name).containerd(daemon.clone());
    let mut nodes: Vec<Agent> = under
        .nodes
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut a = c.agent_in_netns(&format!("{prefix}{}", i + 1), ns);
            a.ip = format!("{UNDERLAY}.{}", i + 1);
            a
        })
        .collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = &nodes[0];
        m.init_swarm(&[]).ok();
        let token = m
            .apiary(&["swarm", "join-token", "-q", "worker"])
            .ok()
            .trim()
            .to_string();
        for w in &nodes[1..] {
            w.join_swarm(&token, &m.addr()).ok();
        }
        eventually(&format!("{n} nodes Ready"), PATIENCE, || {
            let ls = m.docker(&["node", "ls", "--format", "{{.Status}}"]);
            (ls.stdout.lines().filter(|l| *l == "Ready").count() == n).then_some(())
        });
        scenario(&mut nodes, &under)
    }));
    let owners: Vec<String> = nodes.iter().map(owner).collect();
    let logs: String = nodes
        .iter()
        .map(|a| format!("===== {} =====\n{}\n", a.name, a.log()))
        .collect();
    drop(nodes);
    // Task namespaces are host-wide: remove the agents' by their tags.
    for o in owners.iter().filter(|o| !o.is_empty()) {
        let prefix = format!("apiary0-{o}-");
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                let _ = sh("ip", &["netns", "del", &n]);
            }
        }
    }
    drop(under);
    if let Err(e) = result {
        eprintln!("{logs}");
        std::panic::resume_unwind(e);
    }
}

#[test]
fn overlay_dns_vips_and_the_routing_mesh_across_three_nodes() {
    on_nodes("overlay", "n", 0, 3, scenario);
}

fn scenario(nodes: &mut [Agent], under: &Underlay) {
    let (first, rest) = nodes.split_at_mut(2);
    let (n1, n3) = (&first[0], &mut rest[0]);

    n1.docker(&["network", "create", "-d", "overlay", "backnet"])
        .ok();
    // web on n1 and n2; its client on n3; front publishes through the
    // mesh from n2 only.
    n1.docker(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "name=backnet,alias=www",
        "--constraint",
        "node.hostname!=n3",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ])
    .ok();
    n1.docker(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "client",
        "--network",
        "backnet",
        "--constraint",
        "node.hostname==n3",
        "busybox",
        "sleep",
        "3600",
    ])
    .ok();
    n1.docker(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "front",
        "-p",
        "8080:80",
        "--constraint",
        "node.hostname==n2",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ])
    .ok();
    let web = running(n1, "web", 2);
    let client = running(n1, "client", 1);
    running(n1, "front", 1);

    // ---- what the managers allocated
    let svc = inspect(n1, &["--type", "service", "web"]);
    let vip = svc[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .and_then(|v| v.first())
        .and_then(|v| v["Addr"].as_str())
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("web has no virtual IP: {svc}"))
        .to_string();
    let web_addrs: BTreeSet<String> = web.iter().map(|t| task_addr(n1, t, "backnet")).collect();
    assert_eq!(web_addrs.len(), 2, "two addresses: {web_addrs:?}");
    assert!(!web_addrs.contains(&vip));
    let front = inspect(n1, &["--type", "service", "front"]);
    assert_eq!(
        front[0]["Endpoint"]["Ports"][0]["PublishedPort"], 8080,
        "{front}"
    );
    let ls = n1.docker(&["service", "ls", "--format", "{{.Name}} {{.Ports}}"]);
    assert!(ls.stdout.contains("front *:8080->80/tcp"), "{}", ls.stdout);

    // ---- from the client's task on n3: names, VIP, tasks.NAME
    let ns = format!("apiary0-{}-{}", owner(n3), client[0]);
    let resolves = |name: &str| -> BTreeSet<String> {
        let (_, out) = in_ns(&ns, &["busybox", "nslookup", name, "127.0.0.11"]);
        // busybox prints the server first ("Address: 127.0.0.11:53").
        out.lines()
            .filter_map(|l| {
                l.strip_prefix("Address: ")
                    .or_else(|| l.strip_prefix("Address 1: "))
            })
            .map(|a| a.trim().to_string())
            .filter(|a| !a.starts_with("127.0.0.11"))
            .collect()
    };
    eventually(
        "web to resolve to its virtual IP in the client",
        PATIENCE,
        || (resolves("web") == BTreeSet::from([vip.clone()])).then_some(()),
    );
    assert_eq!(resolves("www"), BTreeSet::from([vip.clone()]), "the alias");
    assert_eq!(resolves("tasks.web"), web_addrs, "tasks.web: every task");
    assert!(
        resolves("front").is_empty(),
        "front shares no network with the client"
    );
    // The client's own files say so too.
    let resolv = std::fs::read_to_string(
        n3.data_dir()
            .join("network")
            .join("tasks")
            .join(&client[0])
            .join("resolv.conf"),
    )
    .unwrap_or_default();
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");

    // The VIP spreads connections over both tasks, on the other nodes.
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (ok, body) = http_get(&ns, &vip, 80);
        assert!(ok, "GET the VIP from n3: {body}");
        seen.insert(body.trim().to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both web tasks answer through the VIP: {seen:?}"
    );
    for a in &web_addrs {
        let (ok, body) = http_get(&ns, a, 80);
        assert!(
            ok && !body.trim().is_empty(),
            "GET task {a} across the overlay: {body}"
        );
    }

    // ---- the routing mesh: every node answers on 8080, n3 and n1
    // without a front task, from a client outside the swarm.
    for i in [1, 2, 3] {
        let addr = format!("{UNDERLAY}.{i}");
        eventually(
            &format!("the mesh to answer at {addr}:8080"),
            PATIENCE,
            || {
                let (ok, body) = http_get(&under.switch.name, &addr, 8080);
                (ok && !body.is_empty()).then_some(())
            },
        );
    }
    // And on the node's own loopback.
    let (ok, body) = http_get(&under.nodes[2].name, "127.0.0.1", 8080);
    assert!(
        ok && !body.trim().is_empty(),
        "the mesh on n3's loopback: {body}"
    );

    // ---- MTU: the overlay's accounts for VXLAN; a 1400-byte ping and a
    // 2 MiB transfer across nodes go through whole.
    let eth1 = in_ns(&ns, &["ip", "link", "show", "eth1"]).1;
    assert!(eth1.contains("mtu 1450"), "{eth1}");
    let a = web_addrs.iter().next().cloned().unwrap_or_default();
    let (ok, out) = in_ns(
        &ns,
        &["busybox", "ping", "-c", "2", "-s", "1400", "-W", "3", &a],
    );
    assert!(ok, "1400-byte ping across the overlay: {out}");
    let got = http_bytes(&ns, &vip, "/big");
    assert!(
        got > 2 * 1024 * 1024,
        "2 MiB through the VIP: got {got} bytes"
    );

    // ---- dnsrr: the name is the tasks' addresses (the apiary CLI's flag)
    n1.apiary(&[
        "service",
        "create",
        "-d",
        "--name",
        "db",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "backnet",
        "--constraint",
        "node.hostname!=n3",
        "busybox",
        "sleep",
        "3600",
    ])
    .ok();
    let db = running(n1, "db", 2);
    let db_addrs: BTreeSet<String> = db.iter().map(|t| task_addr(n1, t, "backnet")).collect();
    let db_svc = inspect(n1, &["--type", "service", "db"]);
    assert!(
        db_svc[0]["Endpoint"]["VirtualIPs"].is_null(),
        "no VIP in dnsrr mode: {db_svc}"
    );
    eventually("db to resolve to its tasks", PATIENCE, || {
        (resolves("db") == db_addrs).then_some(())
    });

    // ---- n3's agent killed and started again: the client's container
    // lives on, and its names and VIP come back with the new process.
    n3.kill();
    n3.start();
    eventually(
        "web to resolve again after n3's agent restarted",
        PATIENCE,
        || (resolves("web") == BTreeSet::from([vip.clone()])).then_some(()),
    );
    assert!(http_get(&ns, &vip, 80).0, "the VIP after the restart");
    assert_eq!(running(n1, "client", 1), client, "the same client task");

    // ---- update: a network added (front becomes a name on backnet), a
    // port added to the mesh (the apiary CLI's flags)
    n1.apiary(&[
        "service",
        "update",
        "-d",
        "--network-add",
        "backnet",
        "--publish-add",
        "8081:80",
        "front",
    ])
    .ok();
    running(n1, "front", 1);
    eventually(
        "front to resolve on backnet after --network-add",
        PATIENCE,
        || (resolves("front").len() == 1).then_some(()),
    );
    eventually(
        "the mesh to answer on the added port 8081",
        PATIENCE,
        || {
            http_get(&under.switch.name, &format!("{UNDERLAY}.1"), 8081)
                .0
                .then_some(())
        },
    );

    // ---- node loss: n2's cable pulled. Once it is down, the mesh and
    // the VIP send nothing to its tasks; web is rescheduled on n1.
    let n2_tasks: BTreeSet<String> = ["web", "front"]
        .iter()
        .flat_map(|s| {
            let out = n1.docker(&[
                "service",
                "ps",
                s,
                "--no-trunc",
                "--filter",
                "node=n2",
                "--format",
                "{{.ID}}",
            ]);
            out.stdout
                .lines()
                .map(|l| l[..12].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!n2_tasks.is_empty(), "n2 runs tasks");
    let pulled = std::time::Instant::now();
    must(
        "ip",
        &["-n", &under.nodes[1].name, "link", "set", "eth0", "down"],
    );
    eventually("n2 to be Down", Duration::from_secs(60), || {
        let ls = n1.docker(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
        ls.stdout.lines().any(|l| l == "n2 Down").then_some(())
    });
    let down_after = pulled.elapsed();
    // From now on no answer comes from a task on n2.
    running(n1, "web", 2);
    let mut answers = BTreeSet::new();
    for _ in 0..20 {
        let (ok, body) = http_get(&ns, &vip, 80);
        assert!(ok, "the VIP answers after n2 went down: {body}");
        assert!(
            !n2_tasks.contains(&body),
            "answer from {body}, a task on the lost n2"
        );
        answers.insert(body);
    }
    eprintln!("cable pulled -> n2 Down: {down_after:?}; answers since: {answers:?}");
    // front ran on n2 only: its mesh port no longer answers.
    let (ok, body) = http_get(&under.switch.name, &format!("{UNDERLAY}.1"), 8080);
    assert!(
        !ok || !n2_tasks.contains(&body),
        "the mesh sent to the lost n2: {body}"
    );
    must(
        "ip",
        &["-n", &under.nodes[1].name, "link", "set", "eth0", "up"],
    );

    // ---- a service gone: its name goes; the overlay goes from a node
    // with no task left on it.
    n1.docker(&["service", "rm", "client"]).ok();
    let n3_links = || in_ns(&under.nodes[2].name, &["ip", "-o", "link", "show"]).1;
    eventually("n3 to remove backnet's links", PATIENCE, || {
        let links = n3_links();
        let vni = 4097;
        (!links.contains(&format!("apo{vni:x}")) && !links.contains(&format!("apx{vni:x}")))
            .then_some(())
    });
    assert!(
        n3_links().contains("apo1000"),
        "n3 still serves the mesh (ingress)"
    );
    let err = n1.docker(&["network", "rm", "backnet"]).fails().to_string();
    assert!(err.contains("is in use by service"), "{err}");
    n1.docker(&["service", "rm", "web", "front", "db"]).ok();
    n1.docker(&["network", "rm", "backnet"]).ok();
}

/// The chapter's users bring compose files: `docker stack deploy` against
/// apiary, on two nodes. The stack's services reach each other by their
/// short names on the stack's default network, its port answers through
/// the mesh, `stack ls|services|ps` list it by its label, and `stack rm`
/// takes everything of it away.
#[test]
fn docker_stack_deploy_of_a_compose_file() {
    on_nodes("stack", "s", 1, 2, stack_scenario);
}

fn stack_scenario(nodes: &mut [Agent], under: &Underlay) {
    let (m, w) = (&nodes[0], &nodes[1]);
    let dir = m.dir.join("stack");
    std::fs::create_dir_all(&dir).expect("stack dir");
    std::fs::write(dir.join("token.txt"), "s3cret\n").expect("secret file");
    let compose = format!(
        r#"version: "3.8"
services:
  web:
    image: busybox
    command: ["sh", "-c", "{HTTPD}"]
    ports:
      - "8080:80"
    deploy:
      replicas: 2
  api:
    image: busybox
    command: ["sleep", "3600"]
    secrets:
      - token
    deploy:
      placement:
        constraints: ["node.hostname==s2"]
secrets:
  token:
    file: ./token.txt
"#
    );
    std::fs::write(dir.join("compose.yml"), compose).expect("compose file");
    let file = dir.join("compose.yml").display().to_string();
    let out = m.docker(&[
        "stack",
        "deploy",
        "--resolve-image",
        "never",
        "-c",
        &file,
        "app",
    ]);
    let text = out.ok().to_string();
    assert!(text.contains("Creating network app_default"), "{text}");
    assert!(text.contains("Creating service app_web"), "{text}");

    // Listed by the stack's label.
    let ls = m.docker(&["stack", "ls", "--format", "{{.Name}} {{.Services}}"]);
    assert_eq!(ls.ok().trim(), "app 2");
    running(m, "app_web", 2);
    let api = running(m, "app_api", 1);
    let services = m.docker(&[
        "stack",
        "services",
        "app",
        "--format",
        "{{.Name}} {{.Replicas}}",
    ]);
    let mut rows: Vec<&str> = services.ok().lines().collect();
    rows.sort();
    assert_eq!(rows, ["app_api 1/1", "app_web 2/2"]);
    let ps = m.docker(&["stack", "ps", "app", "--format", "{{.Name}}"]);
    assert_eq!(ps.ok().lines().count(), 3, "{}", ps.stdout);

    // api reaches web by its short name (the alias on app_default).
    let ns = format!("apiary0-{}-{}", owner(w), api[0]);
    let web_vip = eventually("web to resolve in api", PATIENCE, || {
        let (_, out) = in_ns(&ns, &["busybox", "nslookup", "web", "127.0.0.11"]);
        out.lines()
            .filter_map(|l| l.strip_prefix("Address: "))
            .find(|a| !a.starts_with("127.0.0.11"))
            .map(|a| a.trim().to_string())
    });
    assert!(http_get(&ns, &web_vip, 80).0, "api GETs web by name");
    // The published port through the mesh, on both nodes.
    for i in [1, 2] {
        let addr = format!("{UNDERLAY}.{i}");
        eventually(
            &format!("the stack's port at {addr}:8080"),
            PATIENCE,
            || http_get(&under.switch.name, &addr, 8080).0.then_some(()),
        );
    }

    // stack rm: services, the network and the secret go.
    m.docker(&["stack", "rm", "app"]).ok();
    eventually("the stack gone", PATIENCE, || {
        let s = m.docker(&["service", "ls", "-q"]).stdout;
        let n = m.docker(&["network", "ls", "--format", "{{.Name}}"]).stdout;
        let sec = m.docker(&["secret", "ls", "-q"]).stdout;
        (s.trim().is_empty() && !n.contains("app_default") && sec.trim().is_empty()).then_some(())
    });
}

/// Sniff every frame in namespace `ns` for `secs` seconds (AF_PACKET,
/// Python): whether `marker` was seen, and how many frames were.
fn sniff(ns: &str, marker: &str, secs: f64) -> std::process::Child {
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\ns.settimeout(0.2)\nend = time.time() + {secs}\nseen, frames = False, 0\nwhile time.time() < end:\n    try:\n        b = s.recv(65535)\n    except socket.timeout:\n        continue\n    frames += 1\n    seen = seen or {marker:?}.encode() in b\nprint(seen, frames)\n"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 sniffer")
}

fn sniffed(child: std::process::Child) -> (bool, usize) {
    let out = child.wait_with_output().expect("sniffer");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut w = text.split_whitespace();
    let seen = w.next() == Some("True");
    let frames = w.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (seen, frames)
}

const MARKER: &str = "APIARY-PLAINTEXT-MARKER-0123456789";

/// `--opt encrypted`: the same request over a plain and an encrypted
/// overlay between two nodes, with a capture on the underlay: the plain
/// one shows the payload, the encrypted one does not, and both deliver.
#[test]
fn an_encrypted_overlay_hides_its_traffic_on_the_wire() {
    on_nodes("crypt", "e", 2, 2, encrypted_scenario);
}

fn encrypted_scenario(nodes: &mut [Agent], under: &Underlay) {
    let (m, w) = (&nodes[0], &nodes[1]);
    m.docker(&["network", "create", "-d", "overlay", "plain-net"])
        .ok();
    m.docker(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--opt",
        "encrypted",
        "secret-net",
    ])
    .ok();
    // The key never shows.
    let inspect = m
        .docker(&["network", "inspect", "secret-net"])
        .ok()
        .to_string();
    assert!(inspect.contains("\"encrypted\""), "{inspect}");
    assert!(!inspect.to_lowercase().contains("key"), "{inspect}");
    let serve = format!(
        "mkdir -p /www && for i in $(seq 60); do echo {MARKER}; done > /www/marker && exec httpd -f -p 80 -h /www"
    );
    m.docker(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "srv",
        "--network",
        "plain-net",
        "--network",
        "secret-net",
        "--constraint",
        "node.hostname==e1",
        "busybox",
        "sh",
        "-c",
        &serve,
    ])
    .ok();
    m.docker(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "cli",
        "--network",
        "plain-net",
        "--network",
        "secret-net",
        "--constraint",
        "node.hostname==e2",
        "busybox",
        "sleep",
        "3600",
    ])
    .ok();
    let srv = running(m, "srv", 1);
    let cli = running(m, "cli", 1);
    let plain = task_addr(m, &srv[0], "plain-net");
    let secret = task_addr(m, &srv[0], "secret-net");
    let ns = format!("apiary0-{}-{}", owner(w), cli[0]);
    let cli_secret = task_addr(m, &cli[0], "secret-net");
    let addrs = in_ns(&ns, &["ip", "-o", "-4", "addr", "show"]).1;
    let dev = addrs
        .lines()
        .find(|l| l.contains(&format!(" {cli_secret}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no device with {cli_secret}: {addrs}"))
        .to_string();
    let mtu = in_ns(&ns, &["ip", "link", "show", &dev]).1;
    assert!(
        mtu.contains("mtu 1400"),
        "the encrypted network's MTU: {mtu}"
    );
    // Both deliver (the encrypted one through the agents' tunnel).
    eventually("the encrypted network to deliver", PATIENCE, || {
        (http_bytes(&ns, &secret, "/marker") > 2000).then_some(())
    });
    assert!(http_bytes(&ns, &plain, "/marker") > 2000);

    let sniffer = sniff(&under.switch.name, MARKER, 3.0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let got = http_bytes(&ns, &plain, "/marker");
    let (seen, frames) = sniffed(sniffer);
    assert!(
        got > 2000 && frames > 0,
        "plain GET {got} bytes, {frames} frames"
    );
    assert!(
        seen,
        "the control: the plain overlay's payload shows on the underlay"
    );

    let sniffer = sniff(&under.switch.name, MARKER, 3.0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let got = http_bytes(&ns, &secret, "/marker");
    let (seen, frames) = sniffed(sniffer);
    assert!(
        got > 2000 && frames > 0,
        "encrypted GET {got} bytes, {frames} frames"
    );
    assert!(
        !seen,
        "the encrypted overlay's payload must not show on the underlay"
    );
    // Names resolve on it as on any overlay.
    let (_, out) = in_ns(&ns, &["busybox", "nslookup", "srv", "127.0.0.11"]);
    assert!(out.contains("Address: 10."), "{out}");
}
