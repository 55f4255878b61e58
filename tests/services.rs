//! Services on real containers: a swarm of real agents running their tasks
//! in a real containerd + runc (started by the test), driven with the
//! docker CLI: replicated and global services, scaling, logs, self-healing
//! after a worker's `kill -9`, drain, and a period without any manager.
//!
//! Needs root, containerd, runc, busybox-static and the docker CLI.

mod harness;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use harness::containerd::Daemon;
use harness::{eventually, running_on, wanted, Cluster, PATIENCE};

/// `GET /` over plain TCP: the whole answer, or None.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `ctr` (part of Debian's containerd) in an agent's namespace.
fn ctr(d: &Daemon, c: &Cluster, agent: &str, args: &[&str]) -> String {
    let ns = format!("apiary-test-{}-{}-{agent}", std::process::id(), c.name);
    let out = Command::new("ctr")
        .arg("-a")
        .arg(d.socket())
        .args(["-n", &ns])
        .args(args)
        .output()
        .expect("ctr (part of Debian's containerd)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Containers running in an agent's namespace, as containerd sees them.
fn containers_running(d: &Daemon, c: &Cluster, agent: &str) -> usize {
    ctr(d, c, agent, &["tasks", "ls"])
        .lines()
        .filter(|l| l.contains("RUNNING"))
        .count()
}

/// The ID of one running container of the agent.
fn first_task(d: &Daemon, c: &Cluster, agent: &str) -> String {
    ctr(d, c, agent, &["tasks", "ls"])
        .lines()
        .find(|l| l.contains("RUNNING"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .expect("a running container")
}

/// Wait until `docker service ps --no-trunc` of `service` shows every one
/// of `needles` (a task's state and ERROR column), then remove the service.
fn shows_task_error(m: &harness::Agent, service: &str, needles: &[&str]) {
    eventually(
        &format!("{needles:?} in {service}'s tasks"),
        PATIENCE,
        || {
            let out = m.docker(&["service", "ps", "--no-trunc", service]).stdout;
            needles.iter().all(|n| out.contains(n)).then_some(())
        },
    );
    m.docker(&["service", "rm", service]).ok();
}

#[test]
fn services_on_real_containers_with_the_docker_cli() {
    let daemon = Arc::new(Daemon::start());
    let mut c = Cluster::new("svc")
        .managers(1)
        .workers(2)
        .containerd(daemon.clone())
        .start();
    // Faster failure detection for the kill -9 part (the default is 5 s).
    c.managers[0]
        .apiary(&["swarm", "update", "--dispatcher-heartbeat", "1s"])
        .ok();

    // Replicated: spread one per node, real containers, logs.
    c.managers[0]
        .docker(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--no-resolve-image",
            "-d",
            "busybox",
            "sh",
            "-c",
            "echo hello from $(hostname); exec sleep 3600",
        ])
        .ok();
    let mut nodes = running_on(&c, &c.managers[0], "web", 3);
    nodes.sort();
    if nodes != vec!["mgr1", "wrk1", "wrk2"] {
        eprintln!(
            "{}\n{}",
            c.managers[0]
                .docker(&["service", "ps", "--no-trunc", "web"])
                .stdout,
            c.logs()
        );
        panic!("one task per node: {nodes:?}");
    }
    assert_eq!(containers_running(&daemon, &c, "wrk1"), 1);
    let logs = eventually("the tasks' output in service logs", PATIENCE, || {
        let out = c.managers[0].docker(&["service", "logs", "web"]);
        (out.stdout.matches("hello from").count() == 3).then_some(out.stdout)
    });
    assert!(logs.contains("web.1."), "docker's task prefix: {logs}");

    // Scale up and down.
    c.managers[0]
        .docker(&["service", "scale", "-d", "web=6"])
        .ok();
    running_on(&c, &c.managers[0], "web", 6);
    c.managers[0]
        .docker(&["service", "scale", "-d", "web=2"])
        .ok();
    running_on(&c, &c.managers[0], "web", 2);
    eventually("scaled-down containers removed", PATIENCE, || {
        let total: usize = ["mgr1", "wrk1", "wrk2"]
            .iter()
            .map(|a| containers_running(&daemon, &c, a))
            .sum();
        (total == 2).then_some(())
    });

    // Global: one per node.
    c.managers[0]
        .docker(&[
            "service",
            "create",
            "--name",
            "agent",
            "--mode",
            "global",
            "--no-resolve-image",
            "-d",
            "busybox",
            "sleep",
            "3600",
        ])
        .ok();
    running_on(&c, &c.managers[0], "agent", 3);

    // Bad input is a clear error or a visible task error, never a hang.
    let err = c.managers[0]
        .docker(&[
            "service",
            "create",
            "--name",
            "web",
            "--no-resolve-image",
            "busybox",
        ])
        .fails()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    c.managers[0]
        .docker(&[
            "service",
            "create",
            "--name",
            "ghost",
            "--no-resolve-image",
            "-d",
            "127.0.0.1:1/no-such-image:1",
        ])
        .ok();
    shows_task_error(&c.managers[0], "ghost", &["Rejected", "no-such-image"]);

    // Host-mode published port: answers on the node that runs the task
    // (each harness agent publishes on its own loopback address).
    c.managers[0]
        .docker(&[
            "service",
            "create",
            "--name",
            "http",
            "-p",
            "published=18081,target=80,mode=host",
            "--no-resolve-image",
            "-d",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec busybox httpd -f -p 80 -h /www",
        ])
        .ok();
    let node = running_on(&c, &c.managers[0], "http", 1).remove(0);
    let ip = c.by_name(&node).ip.clone();
    let answer = eventually("the http task on its node's port 18081", PATIENCE, || {
        http_get(&format!("{ip}:18081")).filter(|a| a.contains("hello-from-"))
    });
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    let ps = c.managers[0]
        .docker(&["service", "ps", "--format", "{{.Ports}}", "http"])
        .ok()
        .to_string();
    assert!(ps.contains("18081->80/tcp"), "PORTS column: {ps}");
    c.managers[0].docker(&["service", "rm", "http"]).ok();
    eventually(
        "nothing answers on 18081 once the service is gone",
        PATIENCE,
        || http_get(&format!("{ip}:18081")).is_none().then_some(()),
    );

    // A host port some other program holds: a clear task error.
    let holders: Vec<std::net::TcpListener> = c
        .all()
        .map(|a| std::net::TcpListener::bind((a.ip.as_str(), 18083)).expect("hold 18083"))
        .collect();
    c.managers[0]
        .docker(&[
            "service",
            "create",
            "--name",
            "busyport",
            "-p",
            "published=18083,target=80,mode=host",
            "--no-resolve-image",
            "-d",
            "busybox",
            "sleep",
            "3600",
        ])
        .ok();
    shows_task_error(
        &c.managers[0],
        "busyport",
        &["host port 18083/tcp is already in use on this node"],
    );
    drop(holders);

    // No manager for a while: workers keep their containers running, and
    // restart a task that dies (Swarm leaves it dead until a manager is back).
    let wrk1_before = containers_running(&daemon, &c, "wrk1");
    c.managers[0].kill();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        containers_running(&daemon, &c, "wrk1"),
        wrk1_before,
        "tasks kept running without managers"
    );
    eventually("wrk1 to notice it is cut off", PATIENCE, || {
        c.workers[0]
            .log()
            .contains("no manager answers")
            .then_some(())
    });
    let victim = first_task(&daemon, &c, "wrk1");
    ctr(
        &daemon,
        &c,
        "wrk1",
        &["tasks", "kill", "-s", "SIGKILL", &victim],
    );
    eventually("the killed task restarted by its node", PATIENCE, || {
        (containers_running(&daemon, &c, "wrk1") == wrk1_before
            && c.workers[0].log().contains("restarting the task here"))
        .then_some(())
    });
    c.managers[0].start();
    // Back: the same tasks, no duplicates, none lost.
    running_on(&c, &c.managers[0], "web", 2);
    running_on(&c, &c.managers[0], "agent", 3);

    // kill -9 of a worker: its replicated tasks run elsewhere.
    c.managers[0]
        .docker(&["service", "scale", "-d", "web=4"])
        .ok();
    running_on(&c, &c.managers[0], "web", 4);
    c.workers[0].kill();
    eventually("wrk1's tasks running elsewhere", PATIENCE, || {
        let w = wanted(&c.managers[0], "web");
        (w.len() == 4
            && w.iter()
                .all(|(n, s)| n != "wrk1" && s.starts_with("Running")))
        .then_some(())
    });

    // Drain: tasks leave wrk2.
    c.managers[0]
        .docker(&["node", "update", "--availability", "drain", "wrk2"])
        .ok();
    eventually("the drained node's tasks on mgr1", PATIENCE, || {
        let w = wanted(&c.managers[0], "web");
        (w.len() == 4
            && w.iter()
                .all(|(n, s)| n == "mgr1" && s.starts_with("Running")))
        .then_some(())
    });
    eventually("the drained node's containers stopped", PATIENCE, || {
        (containers_running(&daemon, &c, "wrk2") == 0).then_some(())
    });

    // The apiary CLI: images on a node, and a secret delivered to a task
    // (on tmpfs at /run/secrets/<name>), read back through its logs.
    let images = c.managers[0].apiary(&["image", "ls"]).ok().to_string();
    assert!(images.contains("busybox"), "{images}");
    let tar = c.root.path().join("busybox.tar");
    let loaded = c.workers[1]
        .apiary(&["image", "load", "-i", tar.to_str().expect("utf-8 path")])
        .ok()
        .to_string();
    assert!(loaded.contains("Loaded image"), "{loaded}");
    c.managers[0]
        .apiary_stdin(&["secret", "create", "db_pass", "-"], b"s3cret-value")
        .ok();
    c.managers[0]
        .apiary(&[
            "service",
            "create",
            "-d",
            "--name",
            "reader",
            "--secret",
            "db_pass",
            "busybox",
            "sh",
            "-c",
            "cat /run/secrets/db_pass; echo; exec sleep 3600",
        ])
        .ok();
    eventually("the secret read inside the task", PATIENCE, || {
        let out = c.managers[0].apiary(&["service", "logs", "reader"]);
        out.stdout.contains("s3cret-value").then_some(())
    });
    let err = c.managers[0]
        .apiary(&["secret", "rm", "db_pass"])
        .fails()
        .to_string();
    assert!(
        err.contains("reader"),
        "removal names the service using it: {err}"
    );
    c.managers[0].apiary(&["service", "rm", "reader"]).ok();

    c.managers[0]
        .docker(&["service", "rm", "web", "agent"])
        .ok();
    eventually("every container removed", PATIENCE, || {
        (containers_running(&daemon, &c, "mgr1") == 0).then_some(())
    });
}

/// `docker image inspect` and the Python SDK's `images.get` (its swarm
/// tests' set-up calls it): by name, by ID prefix, and the 404 SDKs map
/// to `NotFound`.
#[test]
fn image_inspect_with_the_docker_cli_and_the_python_sdk() {
    let daemon = Arc::new(Daemon::start());
    let c = Cluster::new("imginspect")
        .managers(1)
        .containerd(daemon.clone())
        .start();
    let m = &c.managers[0];
    let out = eventually("busybox preloaded", PATIENCE, || {
        let o = m.docker(&[
            "image",
            "inspect",
            "busybox",
            "--format",
            "{{.Id}} {{.Os}} {{.Architecture}} {{json .RepoTags}}",
        ]);
        (o.status == 0).then_some(o.stdout)
    });
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert!(fields[0].starts_with("sha256:"), "{out}");
    assert_eq!(fields[1], "linux", "{out}");
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    assert_eq!(fields[2], arch, "{out}");
    assert_eq!(fields[3], r#"["busybox:latest"]"#, "{out}");
    let prefix = &fields[0]["sha256:".len().."sha256:".len() + 12];
    let by_id = m.docker(&["image", "inspect", prefix, "--format", "{{.Id}}"]);
    assert_eq!(by_id.ok().trim(), fields[0]);
    assert!(m
        .docker(&["image", "inspect", "nosuch"])
        .fails()
        .contains("No such image: nosuch"));
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    let script = r#"
import docker
from docker import errors
c = docker.from_env()
img = c.images.get("busybox")
assert "busybox:latest" in img.tags, img.attrs
try:
    c.images.get("nosuch")
    raise AssertionError("found nosuch")
except errors.ImageNotFound:
    pass
print("ok")
"#;
    let out = Command::new(&py)
        .args(["-c", script])
        .env("DOCKER_HOST", m.host())
        .output()
        .expect("the Python SDK's venv (scripts/setup makes it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
