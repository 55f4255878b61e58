//! A small harness for cluster tests: real `apiary agent` processes on
//! loopback addresses, driven through the real CLIs, read like the seed
//! chapter (`Cluster::new("walk").managers(3).workers(3).start()`).
#![allow(dead_code)]

pub mod containerd;
pub mod image;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

pub const APIARY: &str = env!("CARGO_BIN_EXE_apiary");

/// Each cluster in this process gets its own 127.N.0.0/16 slice, so tests
/// can run side by side on the same port numbers as a real swarm (2377).
/// 0 = not chosen yet; the first cluster picks a band from the process ID,
/// so that two test binaries run at once (by hand) rarely meet.
static NEXT_NET: AtomicU8 = AtomicU8::new(0);

fn next_net() -> u8 {
    let band = 20 + (std::process::id() % 20) as u8 * 10;
    let _ = NEXT_NET.compare_exchange(0, band, Ordering::SeqCst, Ordering::SeqCst);
    let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
    // Wrap within 20..=249, skipping 127.0/8's own first slices.
    20 + (n.wrapping_sub(20)) % 230
}

/// How long to wait for something that should happen "soon" (elections,
/// joins, heartbeats). Generous: CI machines are slow and shared.
pub const PATIENCE: Duration = Duration::from_secs(40);

pub struct Agent {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The program (and its first arguments) that runs `apiary`: empty for
    /// the binary under test, e.g. `["qemu-aarch64-static", "<arm apiary>"]`
    /// for another architecture's binary.
    pub prefix: Vec<String>,
    /// More `apiary agent` flags (containerd socket and namespace).
    pub extra: Vec<String>,
    /// The task bridge and subnet this agent makes (removed on drop).
    pub bridge: Option<(String, String)>,
    /// Environment variables set for the agent (on its next start).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Agent {
    pub fn addr(&self) -> String {
        format!("{}:2377", self.ip)
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log file");
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            None => Command::new(APIARY),
        };
        let child = cmd
            .args(["agent", "--data-dir"])
            .arg(self.data_dir())
            .arg("--socket")
            .arg(&self.socket)
            .args(["--hostname", &self.name, "--log-level", "info,apiary=debug"])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn apiary agent");
        self.child = Some(child);
        let sock = self.socket.clone();
        eventually(
            &format!("{}'s socket to answer", self.name),
            Duration::from_secs(20),
            || {
                std::os::unix::net::UnixStream::connect(&sock)
                    .is_ok()
                    .then_some(())
            },
        );
    }

    /// `kill -9`: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(
                        status.success(),
                        "{} exited with {status} on SIGTERM\n{}",
                        self.name,
                        self.log()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!(
                        "{} did not stop on SIGTERM within 15s\n{}",
                        self.name,
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Send the agent a signal (`kill -<sig>`, e.g. "HUP").
    pub fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("a running agent");
        assert!(
            run_quietly("kill", &[&format!("-{sig}"), &c.id().to_string()]),
            "kill -{sig} {}",
            self.name
        );
    }

    /// The agent's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// Where both CLIs keep registry logins for this agent's user (as on
    /// a real machine, `apiary login` and `docker login` share it).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.join("docker-config")
    }

    fn apiary_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(APIARY);
        cmd.arg("-H")
            .arg(self.host())
            .args(args)
            .env("DOCKER_CONFIG", self.docker_config());
        cmd
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", self.host())
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.docker_config());
        cmd
    }

    /// Run `apiary <args>` against this agent.
    pub fn apiary(&self, args: &[&str]) -> Out {
        let out = self
            .apiary_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run apiary CLI");
        Out::from(out, format!("apiary {}", args.join(" ")))
    }

    /// Run the real docker CLI against this agent's socket.
    pub fn docker(&self, args: &[&str]) -> Out {
        let out = self
            .docker_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker CLI (is it installed?)");
        Out::from(out, format!("docker {}", args.join(" ")))
    }

    /// Run the real docker CLI on a terminal of its own (util-linux
    /// `script` gives it a pty), to see what a user at a terminal sees.
    pub fn docker_tty(&self, args: &[&str]) -> Out {
        let quoted: Vec<String> = std::iter::once("docker")
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        // The docker command's environment, for `script` to pass on.
        let docker = self.docker_cmd(&[]);
        let env = docker
            .get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())));
        // A terminal of a real size: docker leaves the bars out when it
        // cannot tell the width.
        let line = format!("stty cols 150 rows 50; {}", quoted.join(" "));
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .envs(env)
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .expect("run docker under script (util-linux)");
        Out::from(out, format!("docker {} (on a terminal)", args.join(" ")))
    }

    /// Run `apiary <args>` with `input` on its stdin (`secret create NAME -`).
    pub fn apiary_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let cmd = self.apiary_cmd(args);
        with_stdin(cmd, input, format!("apiary {}", args.join(" ")))
    }

    /// Run the real docker CLI with `input` on its stdin.
    pub fn docker_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let cmd = self.docker_cmd(args);
        with_stdin(cmd, input, format!("docker {}", args.join(" ")))
    }

    /// `swarm init` on this agent's address, with `extra` flags: the
    /// command's output.
    pub fn init_swarm(&self, extra: &[&str]) -> Out {
        let addr = self.addr();
        let mut args = vec![
            "swarm",
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ];
        args.extend(extra);
        self.apiary(&args)
    }

    /// `swarm join --token <token> <manager>` on this agent's address.
    pub fn join_swarm(&self, token: &str, manager: &str) -> Out {
        let addr = self.addr();
        self.apiary(&[
            "swarm",
            "join",
            "--token",
            token,
            manager,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ])
    }

    /// The `ID` of this node as it reports itself.
    pub fn node_id(&self) -> String {
        let out = self.apiary(&["node", "inspect", "self"]);
        let v: Vec<serde_json::Value> = serde_json::from_str(out.ok()).expect("node inspect JSON");
        v[0]["ID"].as_str().expect("node ID").to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if let Some((bridge, subnet)) = &self.bridge {
            remove_bridge(bridge, subnet);
        }
    }
}

fn run_quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Remove what an agent's bridge network made on the host: its tasks'
/// namespaces (their veths go with them once the containers are gone),
/// its rules and chains, the bridge.
pub fn remove_bridge(bridge: &str, subnet: &str) {
    use apiary::network::{ipam::Subnet, rules};
    let prefix = format!("{bridge}-");
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                run_quietly("ip", &["netns", "del", &n]);
            }
        }
    }
    if let Ok(subnet) = Subnet::parse(subnet) {
        for (table, chain, spec) in rules::base_rules(bridge, &subnet) {
            if rules::is_builtin(&chain) {
                let mut a = vec!["-w", "-t", table, "-D", &chain];
                a.extend(spec.iter().map(|s| s.as_str()));
                while run_quietly("iptables", &a) {}
            }
        }
    }
    for (table, chain) in rules::chains(bridge) {
        run_quietly("iptables", &["-w", "-t", table, "-F", &chain]);
        run_quietly("iptables", &["-w", "-t", table, "-X", &chain]);
    }
    run_quietly("ip", &["link", "del", bridge]);
}

#[derive(Debug)]
pub struct Out {
    pub cmd: String,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: Output, cmd: String) -> Out {
        Out {
            cmd,
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Assert success; return stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.status, 0,
            "`{}` failed:\nstdout: {}\nstderr: {}",
            self.cmd, self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Assert failure; return stderr.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert_ne!(
            self.status, 0,
            "`{}` should have failed:\nstdout: {}",
            self.cmd, self.stdout
        );
        &self.stderr
    }
}

fn with_stdin(mut cmd: Command, input: &[u8], name: String) -> Out {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn CLI");
    // Write from a thread: a CLI that answers before reading everything
    // must not deadlock the test on a full pipe.
    let mut stdin = child.stdin.take().expect("stdin pipe");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("CLI output");
    let _ = writer.join();
    Out::from(out, name)
}

/// Poll `f` until it gives a value, or panic after `patience` naming what
/// was awaited.
#[track_caller]
pub fn eventually<T>(what: &str, patience: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {patience:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Cluster {
    pub name: String,
    pub net: u8,
    pub root: tempfile::TempDir,
    pub managers: Vec<Agent>,
    pub workers: Vec<Agent>,
    want_managers: usize,
    want_workers: usize,
    /// Agents run their tasks here (each in its own namespace), with the
    /// busybox image preloaded. Dropped after the agents (field order).
    pub containerd: Option<std::sync::Arc<containerd::Daemon>>,
    image: Option<PathBuf>,
}

impl Drop for Cluster {
    /// Stop the agents, then undo what their tasks left mounted under the
    /// cluster's dir (secrets tmpfs: containers outlive their agent by
    /// design), deepest first, so that the dir itself can go.
    fn drop(&mut self) {
        self.managers.clear();
        self.workers.clear();
        let mut mounts = containerd::mounts_under(self.root.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            run_quietly("umount", &["-l", &m]);
        }
    }
}

impl Cluster {
    pub fn new(name: &str) -> Cluster {
        let net = next_net();
        let root = tempfile::Builder::new()
            .prefix(&format!("apiary-{name}-"))
            .tempdir()
            .expect("tempdir");
        Cluster {
            name: name.into(),
            net,
            root,
            managers: vec![],
            workers: vec![],
            want_managers: 1,
            want_workers: 0,
            containerd: None,
            image: None,
        }
    }

    pub fn managers(mut self, n: usize) -> Self {
        self.want_managers = n;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.want_workers = n;
        self
    }

    /// Run tasks as real containers in `daemon`, with a busybox image
    /// (`busybox:latest`, built from Debian's busybox-static) preloaded on
    /// every node.
    pub fn containerd(mut self, daemon: std::sync::Arc<containerd::Daemon>) -> Self {
        let tar = self.root.path().join("busybox.tar");
        image::busybox_oci_tar(&tar, "busybox:latest");
        self.image = Some(tar);
        self.containerd = Some(daemon);
        self
    }

    /// A started agent in no swarm yet, at 127.<net>.0.<host>.
    pub fn agent(&self, name: &str, host: u8) -> Agent {
        self.agent_with(name, host, &[])
    }

    /// Like [`Cluster::agent`], but the agent runs as `<prefix...> agent ...`
    /// (e.g. another architecture's binary under qemu-user). An empty
    /// prefix runs the binary under test.
    pub fn agent_with(&self, name: &str, host: u8, prefix: &[&str]) -> Agent {
        self.make_agent(name, host, prefix, true)
    }

    /// A started agent in no swarm yet, in the network namespace `netns`
    /// (the test's; entered with `nsenter`, which, unlike `ip netns exec`,
    /// keeps the host's /sys — as a container or a unit with
    /// NetworkNamespacePath= does), with the default task bridge and
    /// subnet: a machine of its own, but for the host-wide /run/netns.
    pub fn agent_in_netns(&self, name: &str, netns: &Netns) -> Agent {
        let net = format!("--net=/run/netns/{}", netns.name);
        self.make_agent(name, 1, &["nsenter", &net, APIARY], false)
    }

    fn make_agent(&self, name: &str, host: u8, prefix: &[&str], own_bridge: bool) -> Agent {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("agent dir");
        let mut a = Agent {
            name: name.into(),
            ip: format!("127.{}.0.{}", self.net, host),
            socket: dir.join("apiary.sock"),
            dir,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            extra: Vec::new(),
            bridge: None,
            env: Vec::new(),
            child: None,
        };
        if let (Some(d), Some(tar)) = (&self.containerd, &self.image) {
            let images = a.data_dir().join("images");
            std::fs::create_dir_all(&images).expect("images dir");
            std::fs::copy(tar, images.join("busybox.tar")).expect("copy the busybox image");
            a.extra = vec![
                "--containerd".into(),
                d.socket().display().to_string(),
                "--containerd-namespace".into(),
                d.namespace_for(&format!("{}-{name}", self.name)),
            ];
            if !own_bridge {
                a.start();
                return a;
            }
            // Agents share the host: each gets a bridge and subnet of its
            // own, and publishes host-mode ports on its own loopback
            // address only (as a real node would on its own machine).
            let bridge = format!("apb{}x{host}", self.net);
            let subnet = format!("10.{}.{host}.0/24", self.net);
            a.extra.extend([
                "--bridge-name".into(),
                bridge.clone(),
                "--bridge-subnet".into(),
                subnet.clone(),
                "--publish-addr".into(),
                a.ip.clone(),
            ]);
            a.bridge = Some((bridge, subnet));
        }
        a.start();
        a
    }

    /// Start the agents and build the swarm as the seed chapter does:
    /// init on mgr1, join workers with the worker token, managers with the
    /// manager token.
    pub fn start(mut self) -> Self {
        let mgr1 = self.agent("mgr1", 1);
        let addr = mgr1.addr();
        mgr1.init_swarm(&[]).ok();
        let token = |role: &str| {
            mgr1.apiary(&["swarm", "join-token", "-q", role])
                .ok()
                .trim()
                .to_string()
        };
        let (wtoken, mtoken) = (token("worker"), token("manager"));
        self.managers.push(mgr1);
        for i in 0..self.want_workers {
            let w = self.agent(&format!("wrk{}", i + 1), 10 + i as u8);
            w.join_swarm(&wtoken, &addr).ok();
            self.workers.push(w);
        }
        for i in 1..self.want_managers {
            let m = self.agent(&format!("mgr{}", i + 1), 1 + i as u8);
            m.join_swarm(&mtoken, &addr).ok();
            self.managers.push(m);
        }
        let total = self.want_managers + self.want_workers;
        let m = &self.managers[0];
        eventually("every node Ready", PATIENCE, || {
            let nodes = m.nodes_json()?;
            let ready = nodes
                .iter()
                .filter(|n| n["Status"]["State"] == "ready")
                .count();
            (ready == total).then_some(())
        });
        self
    }

    pub fn all(&self) -> impl Iterator<Item = &Agent> {
        self.managers.iter().chain(self.workers.iter())
    }

    pub fn by_name(&self, name: &str) -> &Agent {
        self.all()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// Dump every agent's log: called by tests on failure paths.
    pub fn logs(&self) -> String {
        self.all()
            .map(|a| format!("===== {} =====\n{}", a.name, a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Agent {
    /// `node ls --format json` as parsed JSON objects, or None if the call failed.
    pub fn nodes_json(&self) -> Option<Vec<serde_json::Value>> {
        let ls = self.apiary(&["node", "ls", "-q"]);
        if ls.status != 0 {
            return None;
        }
        let ids: Vec<&str> = ls.stdout.split_whitespace().collect();
        if ids.is_empty() {
            return Some(vec![]);
        }
        let mut args = vec!["node", "inspect"];
        args.extend(ids);
        let out = self.apiary(&args);
        if out.status != 0 {
            return None;
        }
        serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).ok()
    }
}

/// A network namespace of the test's own, with its loopback up; deleted
/// on drop (with whatever links are left in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let ns = Netns { name: name.into() };
        run_quietly("ip", &["netns", "del", name]);
        assert!(
            run_quietly("ip", &["netns", "add", name]),
            "ip netns add {name}"
        );
        assert!(
            run_quietly("ip", &["-n", name, "link", "set", "lo", "up"]),
            "lo up in {name}"
        );
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quietly("ip", &["netns", "del", &self.name]);
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// `(node hostname, current state)` of a service's tasks that should run.
pub fn wanted(m: &Agent, service: &str) -> Vec<(String, String)> {
    let out = m.docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}|{{.CurrentState}}",
    ]);
    if out.status != 0 {
        return Vec::new();
    }
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

/// Hostnames of the nodes running the service's tasks, once exactly `n`
/// tasks are wanted and all of them run.
pub fn running_on(c: &Cluster, m: &Agent, service: &str, n: usize) -> Vec<String> {
    let what = format!("{n} running tasks of {service}");
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(&what, PATIENCE, || {
            let w = wanted(m, service);
            (w.len() == n && w.iter().all(|(_, s)| s.starts_with("Running")))
                .then(|| w.into_iter().map(|(n, _)| n).collect::<Vec<_>>())
        })
    }));
    match found {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "{}\n{}",
                c.managers[0]
                    .docker(&["service", "ps", "--no-trunc", service])
                    .stdout,
                c.logs()
            );
            std::panic::resume_unwind(e)
        }
    }
}
