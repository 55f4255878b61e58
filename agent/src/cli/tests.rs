#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! CLI commands against the API served with a fake control.

use clap::Parser;

use super::*;
use crate::api::tests::{start, Fake, MANAGER_ID, WORKER_ID};

#[derive(Parser, Debug)]
struct TestCli {
    #[command(subcommand)]
    cmd: Command,
}

async fn cli(s: &crate::api::tests::Served, args: &[&str]) -> (Result<(), CliError>, Output) {
    let mut argv = vec!["apiary"];
    argv.extend_from_slice(args);
    let parsed = TestCli::try_parse_from(argv).expect("arguments parse");
    let mut out = Output::default();
    let mut client = s.client();
    let r = execute(&mut client, parsed.cmd, &mut out).await;
    (r, out)
}

#[tokio::test]
async fn node_ls_table_marks_self_and_sorts_by_hostname() {
    let s = start(Fake::new()).await;
    let (r, out) = cli(&s, &["node", "ls"]).await;
    r.unwrap();
    let want = format!(
        "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n\
         {MANAGER_ID} *   node1      Ready     Active         Leader           0.1.0\n\
         {WORKER_ID}     node2      Ready     Active                          0.1.0\n"
    );
    assert_eq!(out.out, want);

    let (_, out) = cli(&s, &["node", "ls", "-q"]).await;
    assert_eq!(out.out, format!("{MANAGER_ID}\n{WORKER_ID}\n"));

    let (_, out) = cli(
        &s,
        &[
            "node",
            "ls",
            "-f",
            "role=manager",
            "--format",
            "{{.Hostname}} {{.Self}}",
        ],
    )
    .await;
    assert_eq!(out.out, "node1 true\n");

    let (_, out) = cli(&s, &["node", "list", "--format", "json"]).await;
    let first: serde_json::Value = serde_json::from_str(out.out.lines().next().unwrap()).unwrap();
    assert_eq!(first["ManagerStatus"], "Leader");
    assert_eq!(first["Status"], "Ready");
}

#[tokio::test]
async fn node_inspect_forms() {
    let s = start(Fake::new()).await;
    let (r, out) = cli(&s, &["node", "inspect", "self"]).await;
    r.unwrap();
    assert!(
        out.out.starts_with("[\n    {\n        \"ID\": \"m1"),
        "{}",
        out.out
    );
    let v: serde_json::Value = serde_json::from_str(&out.out).unwrap();
    assert_eq!(v[0]["ManagerStatus"]["Addr"], "10.0.0.1:2377");

    let (_, out) = cli(&s, &["node", "inspect", "--pretty", "node2"]).await;
    assert!(
        out.out.starts_with(&format!(
            "ID:\t\t\t{WORKER_ID}\nHostname:              \tnode2\n"
        )),
        "{}",
        out.out
    );
    assert!(out.out.contains(" State:\t\t\tReady\n"));
    assert!(out.out.contains(" Memory:\t\t2GiB\n"));
    assert!(!out.out.contains("Manager Status"));

    let (_, out) = cli(
        &s,
        &["node", "inspect", "--format", "{{.Status.Addr}}", "node1"],
    )
    .await;
    assert_eq!(out.out, "10.0.0.1\n");

    let (r, out) = cli(&s, &["node", "inspect", "node1", "ghost"]).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        "Error response from daemon: node ghost not found"
    );
    assert!(out.out.starts_with("[\n"));
}

#[tokio::test]
async fn promote_demote_update_rm() {
    let s = start(Fake::new()).await;
    let (r, out) = cli(&s, &["node", "promote", "node2"]).await;
    r.unwrap();
    assert_eq!(out.out, "Node node2 promoted to a manager in the swarm.\n");
    let (_, out) = cli(&s, &["node", "promote", "node2"]).await;
    assert_eq!(out.out, format!("Node {WORKER_ID} is already a manager.\n"));
    let (_, out) = cli(&s, &["node", "demote", "node2"]).await;
    assert_eq!(out.out, "Manager node2 demoted in the swarm.\n");

    let (r, out) = cli(
        &s,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "zone=a",
            "node2",
        ],
    )
    .await;
    r.unwrap();
    assert_eq!(out.out, "node2\n");
    {
        let st = s.fake.state.lock().unwrap();
        let n = st.nodes.iter().find(|n| n.node.id.0 == WORKER_ID).unwrap();
        assert_eq!(n.node.spec.availability, crate::store::Availability::Drain);
        assert_eq!(
            n.node.spec.labels.get("zone").map(String::as_str),
            Some("a")
        );
    }
    let (r, _) = cli(&s, &["node", "update", "--label-rm", "nope", "node2"]).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        "error: key nope doesn't exist in node's labels"
    );

    let (r, _) = cli(&s, &["node", "rm", "node2"]).await;
    assert!(r.unwrap_err().to_string().contains("is not down"));
    let (r, out) = cli(&s, &["node", "rm", "-f", "node2", "ghost"]).await;
    assert_eq!(out.out, "node2\n");
    assert_eq!(
        r.unwrap_err().to_string(),
        "Error response from daemon: node ghost not found"
    );
}

#[tokio::test]
async fn swarm_commands_print_like_docker() {
    let s = start(Fake::new()).await;
    s.fake.state.lock().unwrap().in_swarm = false;
    let (r, out) = cli(
        &s,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "10.0.0.1",
            "--task-history-limit",
            "3",
        ],
    )
    .await;
    r.unwrap();
    assert_eq!(
        out.out,
        format!(
            "Swarm initialized: current node ({MANAGER_ID}) is now a manager.\n\n\
             To add a worker to this swarm, run the following command:\n\n    \
             apiary swarm join --token SWMTKN-1-worker 10.0.0.1:2377\n\n\
             To add a manager to this swarm, run 'apiary swarm join-token manager' and follow the instructions.\n\n"
        )
    );
    assert_eq!(
        s.fake
            .state
            .lock()
            .unwrap()
            .last_init
            .as_ref()
            .unwrap()
            .spec
            .task_history_limit,
        3
    );

    let (_, out) = cli(&s, &["swarm", "join-token", "manager"]).await;
    assert_eq!(
        out.out,
        "To add a manager to this swarm, run the following command:\n\n    apiary swarm join --token SWMTKN-1-manager 10.0.0.1:2377\n\n"
    );
    let (_, out) = cli(&s, &["swarm", "join-token", "-q", "worker"]).await;
    assert_eq!(out.out, "SWMTKN-1-worker\n");
    let (r, out) = cli(&s, &["swarm", "join-token", "--rotate", "-q", "worker"]).await;
    r.unwrap();
    assert_eq!(out.out, "SWMTKN-1-worker2\n");
    let (r, _) = cli(&s, &["swarm", "join-token", "boss"]).await;
    assert_eq!(r.unwrap_err().to_string(), "error: unknown role boss");

    let (r, out) = cli(
        &s,
        &[
            "swarm",
            "update",
            "--cert-expiry",
            "720h0m0s",
            "--dispatcher-heartbeat",
            "10s",
        ],
    )
    .await;
    r.unwrap();
    assert_eq!(out.out, "Swarm updated.\n");
    {
        let st = s.fake.state.lock().unwrap();
        assert_eq!(st.cluster.spec.cert_expiry_ns, 720 * 3600 * 1_000_000_000);
        assert_eq!(st.cluster.spec.dispatcher_heartbeat_ns, 10_000_000_000);
        assert_eq!(st.cluster.spec.task_history_limit, 3);
    }

    let (r, _) = cli(&s, &["swarm", "leave"]).await;
    assert!(r
        .unwrap_err()
        .to_string()
        .starts_with("Error response from daemon: You are attempting"));
    let (r, out) = cli(&s, &["swarm", "leave", "--force"]).await;
    r.unwrap();
    assert_eq!(out.out, "Node left the swarm.\n");

    let (r, out) = cli(
        &s,
        &[
            "swarm",
            "join",
            "--token",
            "SWMTKN-1-worker",
            "10.0.0.1:2377",
        ],
    )
    .await;
    r.unwrap();
    assert_eq!(out.out, "This node joined a swarm as a worker.\n");

    // A worker asking manager questions gets the daemon's 503 message.
    let (r, _) = cli(&s, &["node", "ls"]).await;
    assert_eq!(
        r.unwrap_err(),
        CliError::Daemon(crate::control::ControlError::NotManager.to_string())
    );
}

#[tokio::test]
async fn info_and_version_render() {
    let s = start(Fake::new()).await;
    let (r, out) = cli(&s, &["info"]).await;
    r.unwrap();
    for want in [
        " Swarm: active\n",
        &format!("  NodeID: {MANAGER_ID}\n"),
        "  Is Manager: true\n",
        "  ClusterID: clusterid\n",
        "  Managers: 1\n",
        "  Nodes: 2\n",
        "   Heartbeat Period: 5 seconds\n",
        "   Expiry Duration: 3 months\n",
        "  Node Address: 10.0.0.1\n",
        "  Manager Addresses:\n   10.0.0.1:2377\n",
        " Total Memory: 2GiB\n",
        " Name: node1\n",
    ] {
        assert!(out.out.contains(want), "missing {want:?} in\n{}", out.out);
    }
    let (r, out) = cli(&s, &["version"]).await;
    r.unwrap();
    assert!(
        out.out
            .contains("  API version:      1.49 (minimum version 1.24)\n"),
        "{}",
        out.out
    );

    s.fake.state.lock().unwrap().in_swarm = false;
    let (_, out) = cli(&s, &["info"]).await;
    assert!(
        out.out
            .contains(" Swarm: inactive\n Kernel Version: 6.1.0\n"),
        "{}",
        out.out
    );
}

#[test]
fn hosts_and_filters() {
    assert_eq!(
        client::socket_path("unix:///run/x.sock").unwrap(),
        std::path::PathBuf::from("/run/x.sock")
    );
    assert_eq!(
        client::socket_path("/tmp/a.sock").unwrap(),
        std::path::PathBuf::from("/tmp/a.sock")
    );
    assert!(client::socket_path("tcp://1.2.3.4:2375").is_err());
    assert_eq!(resolve_host(Some("/x".into())), "/x");
    assert_eq!(
        node::filters_json(&["role=manager".into(), "name=a".into()]).unwrap(),
        r#"{"name":{"a":true},"role":{"manager":true}}"#
    );
    assert!(node::filters_json(&["nope".into()]).is_err());
}

#[tokio::test]
async fn secret_create_ls_inspect_rm_like_docker() {
    let s = start(Fake::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.txt");
    std::fs::write(&file, "hunter2").unwrap();
    let path = file.to_string_lossy().into_owned();
    let (r, out) = cli(
        &s,
        &[
            "secret", "create", "--label", "env=prod", "-l", "team", "web-key", &path,
        ],
    )
    .await;
    r.unwrap();
    let id = out.out.trim().to_string();
    assert_eq!(id.len(), 25, "{}", out.out);
    assert_eq!(
        s.fake
            .state
            .lock()
            .unwrap()
            .objects
            .secrets
            .values()
            .next()
            .unwrap()
            .spec
            .data,
        b"hunter2"
    );

    let (r, out) = cli(&s, &["secret", "ls"]).await;
    r.unwrap();
    let mut lines = out.out.lines();
    let header = lines.next().unwrap();
    // CREATED's width depends on how long ago the fake's timestamps are.
    assert!(
        header.starts_with("ID                          NAME      DRIVER    CREATED   "),
        "{header}"
    );
    assert!(header.ends_with("   UPDATED"), "{header}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!("{id}   web-key             ")),
        "{row}"
    );
    assert!(row.ends_with(" ago"), "{row}");

    let (_, out) = cli(&s, &["secret", "ls", "-q"]).await;
    assert_eq!(out.out, format!("{id}\n"));
    let (_, out) = cli(&s, &["secret", "ls", "--format", "{{.Name}} {{.Labels}}"]).await;
    assert_eq!(out.out, "web-key env=prod,team=\n");
    let (_, out) = cli(&s, &["secret", "ls", "-f", "name=nope"]).await;
    assert_eq!(out.out.lines().count(), 1, "header only: {}", out.out);

    let (r, out) = cli(&s, &["secret", "inspect", "web-key"]).await;
    r.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.out).unwrap();
    assert_eq!(v[0]["ID"], id.as_str());
    assert!(v[0]["Spec"].get("Data").is_none());
    assert!(!out.out.contains("aHVudGVyMg"));

    let (_, out) = cli(&s, &["secret", "inspect", "--pretty", "web-key"]).await;
    assert_eq!(
        out.out,
        format!(
            "ID:              {id}\nName:              web-key\nLabels:\n - env=prod\n - team\nDriver:            \nCreated at:        2024-05-01 10:00:00 +0000 utc\nUpdated at:        2024-05-01 10:00:00 +0000 utc\n"
        )
    );

    let (r, _) = cli(&s, &["secret", "create", "web-key", &path]).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        "Error response from daemon: secret web-key already exists: choose another name, or remove the existing secret first"
    );
    let (r, _) = cli(&s, &["secret", "create", "x", "/nonexistent/file"]).await;
    assert!(r.unwrap_err().to_string().contains("/nonexistent/file"));

    let (r, out) = cli(&s, &["secret", "rm", "web-key", "ghost"]).await;
    assert_eq!(out.out, "web-key\n");
    assert_eq!(
        r.unwrap_err().to_string(),
        "Error response from daemon: secret ghost not found"
    );
    assert!(s.fake.state.lock().unwrap().objects.secrets.is_empty());
}

#[tokio::test]
async fn config_commands_show_the_data() {
    let s = start(Fake::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.conf");
    std::fs::write(&file, "port=80\n").unwrap();
    let (r, out) = cli(&s, &["config", "create", "app", &file.to_string_lossy()]).await;
    r.unwrap();
    let id = out.out.trim().to_string();

    let (_, out) = cli(&s, &["config", "ls"]).await;
    let header = out.out.lines().next().unwrap();
    assert!(
        header.starts_with("ID                          NAME      CREATED   "),
        "{header}"
    );
    assert!(header.ends_with("   UPDATED"), "{header}");

    let (_, out) = cli(&s, &["config", "inspect", "--pretty", &id[..8]]).await;
    assert_eq!(
        out.out,
        format!(
            "ID:\t\t\t{id}\nName:\t\t\tapp\nCreated at:            \t2024-05-01 10:00:00 +0000 utc\nUpdated at:            \t2024-05-01 10:00:00 +0000 utc\nData:\nport=80\n\n"
        )
    );
    let (_, out) = cli(
        &s,
        &["config", "inspect", "--format", "{{.Spec.Data}}", "app"],
    )
    .await;
    assert_eq!(out.out, "cG9ydD04MAo=\n");
    let (r, out) = cli(&s, &["config", "rm", "app"]).await;
    r.unwrap();
    assert_eq!(out.out, "app\n");
}

#[test]
fn create_reads_stdin_for_dash() {
    let mut stdin = std::io::Cursor::new(b"from stdin".to_vec());
    assert_eq!(
        objects::read_data("-", &mut stdin).unwrap(),
        b"from stdin".to_vec()
    );
    assert_eq!(
        objects::labels_map(&["a=b=c".into(), "k".into()]),
        [
            ("a".to_string(), "b=c".to_string()),
            ("k".to_string(), String::new())
        ]
        .into()
    );
}

// ---- services ----

mod services {
    use std::collections::HashMap;

    use bollard_stubs::models as m;

    use super::cli;
    use crate::api::tests::{start, Fake};
    use crate::cli::service::spec::*;
    use crate::cli::service::tasks::{error_cell, render_ps, PsView};
    use crate::cli::service::{render_service_table, service_row};

    #[test]
    fn memory_and_cpus_like_docker() {
        assert_eq!(parse_memory("512m"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("100k"), Ok(102_400));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_memory("1.5k"), Ok(1536));
        assert_eq!(parse_memory("512x"), Err("invalid size: '512x'".into()));
        assert!(parse_memory("m").is_err());
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus(".25"), Ok(250_000_000));
        assert_eq!(
            parse_cpus("abc"),
            Err("failed to parse abc as a rational number".into())
        );
        assert_eq!(
            parse_cpus("0.0000000001"),
            Err("value is too precise".into())
        );
        assert_eq!(parse_dur("1m30s"), Ok(90_000_000_000));
        assert!(parse_dur("5x").is_err());
    }

    #[test]
    fn publish_short_and_long() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(p.published_port, Some(8080));
        assert_eq!(p.target_port, Some(80));
        assert_eq!(
            p.publish_mode,
            Some(m::EndpointPortConfigPublishModeEnum::INGRESS)
        );
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(p.protocol, Some(m::EndpointPortConfigProtocolEnum::UDP));
        let p = parse_publish("published=8080,target=80,mode=host,protocol=tcp").unwrap();
        assert_eq!(
            p.publish_mode,
            Some(m::EndpointPortConfigPublishModeEnum::HOST)
        );
        assert_eq!(p.published_port, Some(8080));
        assert!(parse_publish("published=8080")
            .unwrap_err()
            .contains("target"));
        assert!(parse_publish("x:80")
            .unwrap_err()
            .contains("published port 'x'"));
        assert!(parse_publish("target=80,mode=bridge")
            .unwrap_err()
            .contains("'ingress' or 'host'"));
    }

    #[test]
    fn mounts() {
        let mt = parse_mount("type=bind,source=/a,target=/b,readonly").unwrap();
        assert_eq!(mt.typ, Some(m::MountTypeEnum::BIND));
        assert_eq!(mt.source.as_deref(), Some("/a"));
        assert_eq!(mt.read_only, Some(true));
        let mt = parse_mount("src=data,dst=/data").unwrap();
        assert_eq!(mt.typ, Some(m::MountTypeEnum::VOLUME));
        assert_eq!(
            parse_mount("type=bind,target=/b").unwrap_err(),
            "source is required when specifying bind mounts"
        );
        assert_eq!(parse_mount("source=x").unwrap_err(), "target is required");
        assert!(parse_mount("type=nfs,target=/x").is_err());
        let mt = parse_mount("type=tmpfs,target=/t,tmpfs-size=64m").unwrap();
        assert_eq!(mt.tmpfs_options.and_then(|o| o.size_bytes), Some(64 << 20));
    }

    #[test]
    fn secret_specs() {
        let r = parse_file_ref("db_pass").unwrap();
        assert_eq!(
            r,
            FileRef {
                source: "db_pass".into(),
                target: "db_pass".into(),
                uid: "0".into(),
                gid: "0".into(),
                mode: 0o444
            }
        );
        let r = parse_file_ref("source=a,target=/run/b,mode=0400,uid=10,gid=20").unwrap();
        assert_eq!(
            (r.target.as_str(), r.mode, r.uid.as_str()),
            ("/run/b", 0o400, "10")
        );
        assert!(parse_file_ref("source=a,mode=999")
            .unwrap_err()
            .contains("octal"));
        assert_eq!(
            parse_file_ref("target=x").unwrap_err(),
            "source is required"
        );
    }

    fn service(id: &str, name: &str, global: bool, running: u64, desired: u64) -> m::Service {
        m::Service {
            id: Some(id.into()),
            spec: Some(m::ServiceSpec {
                name: Some(name.into()),
                mode: Some(if global {
                    m::ServiceSpecMode {
                        global: Some(HashMap::new()),
                        ..Default::default()
                    }
                } else {
                    m::ServiceSpecMode {
                        replicated: Some(m::ServiceSpecModeReplicated {
                            replicas: Some(desired as i64),
                        }),
                        ..Default::default()
                    }
                }),
                task_template: Some(m::TaskSpec {
                    container_spec: Some(m::TaskSpecContainerSpec {
                        image: Some("busybox:latest@sha256:abcd".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                endpoint_spec: Some(m::EndpointSpec {
                    mode: None,
                    ports: Some(vec![
                        parse_publish("published=8080,target=80,mode=host").unwrap()
                    ]),
                }),
                ..Default::default()
            }),
            service_status: Some(m::ServiceServiceStatus {
                running_tasks: Some(running),
                desired_tasks: Some(desired),
                completed_tasks: Some(0),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_ls_table() {
        let rows = vec![
            service_row(&service("abcdefghijklmnopqrstuvwxy", "web", false, 2, 3)),
            service_row(&service("zyxwvutsrqponmlkjihgfedcb", "mon", true, 1, 1)),
        ];
        assert_eq!(
            render_service_table(&rows),
            "ID             NAME      MODE         REPLICAS   IMAGE            PORTS\n\
             abcdefghijkl   web       replicated   2/3        busybox:latest   *:8080->80/tcp\n\
             zyxwvutsrqpo   mon       global       1/1        busybox:latest   *:8080->80/tcp\n"
        );
    }

    fn task(id: &str, slot: i64, node: &str, created: &str, state: &str, err: &str) -> m::Task {
        m::Task {
            id: Some(id.into()),
            service_id: Some("svc1".into()),
            slot: (slot > 0).then_some(slot),
            node_id: Some(node.into()),
            created_at: Some(created.into()),
            spec: Some(m::TaskSpec {
                container_spec: Some(m::TaskSpecContainerSpec {
                    image: Some("busybox:latest".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            desired_state: Some(if state == "running" {
                m::TaskState::RUNNING
            } else {
                m::TaskState::SHUTDOWN
            }),
            status: Some(m::TaskStatus {
                timestamp: Some("2026-01-01T00:00:00Z".into()),
                state: Some(state.parse().unwrap()),
                err: (!err.is_empty()).then(|| err.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_ps_table_with_history_rows() {
        let services = HashMap::from([("svc1".to_string(), "web".to_string())]);
        let nodes = HashMap::from([("n1".to_string(), "node1".to_string())]);
        let now = time::OffsetDateTime::parse(
            "2026-01-01T00:00:05Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let view = PsView {
            services: &services,
            nodes: &nodes,
            now,
            trunc: true,
        };
        let tasks = vec![
            task(
                "t10aaaaaaaaaaaaaa",
                10,
                "n1",
                "2026-01-01T00:00:01Z",
                "running",
                "",
            ),
            task(
                "t2oldaaaaaaaaaaaa",
                2,
                "n1",
                "2026-01-01T00:00:00Z",
                "failed",
                "task: non-zero exit (1): something long",
            ),
            task(
                "t2newaaaaaaaaaaaa",
                2,
                "n1",
                "2026-01-01T00:00:02Z",
                "running",
                "",
            ),
        ];
        let out = render_ps(&tasks, &view, false, None).unwrap();
        assert_eq!(
            out,
            "ID             NAME        IMAGE            NODE      DESIRED STATE   CURRENT STATE           ERROR                              PORTS\n\
             t2newaaaaaaa   web.2       busybox:latest   node1     Running         Running 5 seconds ago                                      \n\
             t2oldaaaaaaa    \\_ web.2   busybox:latest   node1     Shutdown        Failed 5 seconds ago    \"task: non-zero exit (1): some…\"   \n\
             t10aaaaaaaaa   web.10      busybox:latest   node1     Running         Running 5 seconds ago                                      \n"
        );
        assert_eq!(
            render_ps(&tasks, &view, true, None).unwrap(),
            "t2newaaaaaaa\nt2oldaaaaaaa\nt10aaaaaaaaa\n"
        );
        assert_eq!(
            render_ps(&tasks, &view, false, Some("{{.Name}} {{.Node}}")).unwrap(),
            "web.2 node1\nweb.2 node1\nweb.10 node1\n"
        );
        // Global tasks are named after their node.
        let g = vec![task("tg", 0, "n1", "2026-01-01T00:00:01Z", "running", "")];
        assert!(render_ps(&g, &view, false, Some("{{.Name}}")).unwrap() == "web.n1\n");
        assert_eq!(error_cell("short", true), "\"short\"");
        assert_eq!(error_cell("", true), "");
        let long = "no suitable node (scheduling constraints not satisfied on 2 nodes)";
        assert_eq!(error_cell(long, false), format!("\"{long}\""));
        assert_eq!(error_cell(long, true), "\"no suitable node (scheduling …\"");
    }

    #[tokio::test]
    async fn create_ls_scale_inspect_rm_against_the_api() {
        let s = start(Fake::new()).await;
        let (r, out) = cli(
            &s,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--replicas",
                "3",
                "--limit-memory",
                "512m",
                "--limit-cpu",
                "0.5",
                "-e",
                "A=1",
                "--constraint",
                "node.role==manager",
                "busybox",
                "sleep",
                "1000",
            ],
        )
        .await;
        r.unwrap();
        let id = out.out.trim().to_string();
        assert!(!id.is_empty());

        let (r, out) = cli(&s, &["service", "ls"]).await;
        r.unwrap();
        assert!(out.out.starts_with("ID "), "{}", out.out);
        assert!(out.out.contains(" web "), "{}", out.out);
        assert!(out.out.contains(" 0/3 "), "{}", out.out);
        let (_, out) = cli(&s, &["service", "ls", "-q"]).await;
        assert_eq!(out.out.trim(), id);

        let (r, out) = cli(&s, &["service", "scale", "-d", "web=5"]).await;
        r.unwrap();
        assert_eq!(out.out, "web scaled to 5\n");
        let (r, _) = cli(&s, &["service", "scale", "-d", "web=x"]).await;
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("invalid replicas value x"));
        let (r, _) = cli(&s, &["service", "scale", "web"]).await;
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("invalid scale specifier 'web'"));

        let (r, out) = cli(&s, &["service", "inspect", "--pretty", "web"]).await;
        r.unwrap();
        assert!(out.out.contains("Name:\t\tweb\n"), "{}", out.out);
        assert!(out.out.contains(" Replicas:\t5\n"), "{}", out.out);
        assert!(out.out.contains("  Memory:\t512MiB\n"), "{}", out.out);
        assert!(out.out.contains("  CPU:\t\t0.5\n"), "{}", out.out);
        assert!(out.out.contains(" Args:\t\tsleep 1000 \n"), "{}", out.out);
        let (_, out) = cli(&s, &["service", "inspect", "web"]).await;
        let v: serde_json::Value = serde_json::from_str(&out.out).unwrap();
        assert_eq!(v[0]["Spec"]["Name"], "web");

        let (r, out) = cli(
            &s,
            &[
                "service",
                "update",
                "-d",
                "--env-add",
                "B=2",
                "--image",
                "busybox:2",
                "web",
            ],
        )
        .await;
        r.unwrap();
        assert_eq!(out.out, "web\n");
        let (_, out) = cli(
            &s,
            &[
                "service",
                "inspect",
                "--format",
                "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
                "web",
            ],
        )
        .await;
        assert_eq!(out.out, "[\"A=1\",\"B=2\"]\n");

        let (r, out) = cli(&s, &["service", "rm", "web", "ghost"]).await;
        assert_eq!(out.out, "web\n");
        assert!(r.unwrap_err().to_string().contains("ghost"));
    }

    #[tokio::test]
    async fn update_and_rollback_configs_and_service_rollback() {
        let s = start(Fake::new()).await;
        let (r, _) = cli(
            &s,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--update-failure-action",
                "rollback",
                "--update-order",
                "start-first",
                "--update-delay",
                "20s",
                "--rollback-parallelism",
                "0",
                "busybox",
            ],
        )
        .await;
        r.unwrap();
        let (_, out) = cli(
            &s,
            &[
                "service",
                "inspect",
                "--format",
                "{{json .Spec.UpdateConfig}}",
                "web",
            ],
        )
        .await;
        // What is not given is Docker's default, as the docker CLI fills it.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out.out).unwrap(),
            serde_json::json!({"Parallelism": 1, "Delay": 20_000_000_000i64,
                "FailureAction": "rollback", "Monitor": 5_000_000_000i64,
                "MaxFailureRatio": 0.0, "Order": "start-first"})
        );
        let bad = <super::TestCli as clap::Parser>::try_parse_from([
            "apiary",
            "service",
            "create",
            "--update-order",
            "sideways",
            "busybox",
        ])
        .unwrap_err();
        assert!(
            bad.to_string()
                .contains("invalid order \"sideways\": use start-first or stop-first"),
            "{bad}"
        );
        let (r, _) = cli(
            &s,
            &[
                "service",
                "update",
                "--rollback",
                "--image",
                "busybox:2",
                "web",
            ],
        )
        .await;
        assert_eq!(
            r.unwrap_err().to_string(),
            "error: other flags may not be combined with --rollback"
        );
        let (r, _) = cli(&s, &["service", "rollback", "-d", "web"]).await;
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("does not have a previous spec"),
            "nothing to roll back to yet"
        );
        let (r, _) = cli(
            &s,
            &["service", "update", "-d", "--image", "busybox:2", "web"],
        )
        .await;
        r.unwrap();
        let (r, out) = cli(&s, &["service", "update", "-d", "--rollback", "web"]).await;
        r.unwrap();
        assert_eq!(out.out, "web\n");
        let (_, out) = cli(&s, &["service", "inspect", "--pretty", "web"]).await;
        assert!(
            out.out.contains(" Image:\t\tbusybox:latest\n"),
            "{}",
            out.out
        );
        assert!(
            out.out
                .contains("UpdateStatus:\n State:\t\trollback_started\n"),
            "{}",
            out.out
        );
        assert!(
            out.out.contains(" Message:\tmanually requested rollback\n"),
            "{}",
            out.out
        );
        assert!(
            out.out.contains(" Delay:\t\t20s\n On failure:\trollback\n"),
            "{}",
            out.out
        );
        assert!(
            out.out.contains("RollbackConfig:\n Parallelism:\t0\n"),
            "{}",
            out.out
        );
    }

    #[test]
    fn log_frames_and_prefixes() {
        use crate::cli::service::logs_for_tests::*;
        let payload = "2026-01-01T00:00:00Z com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,com.docker.swarm.task.id=abcd1234efgh5678 hello world";
        let mut bytes = vec![2, 0, 0, 0];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload.as_bytes());
        let mut d = Demux::default();
        // Split mid-header and mid-payload: frames come out only when whole.
        d.push(&bytes[..5]);
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&bytes[5..20]);
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&bytes[20..]);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.stream, 2);
        assert_eq!(d.leftover(), 0);
        let line = parse_payload(std::str::from_utf8(&f.payload).unwrap(), true).unwrap();
        assert_eq!(line.task_id, "abcd1234efgh5678");
        assert_eq!(line.message, "hello world");
        let mut p = Prefix {
            service_name: "web",
            slot: Some(1),
            width: 2,
            node_name: "node1",
            no_task_ids: false,
            no_trunc: false,
        };
        assert_eq!(
            format_line(&line, &p, false),
            "web.1.abcd1234efgh @node1    | 2026-01-01T00:00:00Z hello world"
        );
        p.no_task_ids = true;
        p.width = 1;
        assert_eq!(
            format_line(&line, &p, false),
            "web.1@node1    | 2026-01-01T00:00:00Z hello world"
        );
        assert_eq!(
            format_line(&line, &p, true),
            "2026-01-01T00:00:00Z hello world"
        );
        let mut bad = Demux::default();
        bad.push(&[9, 0, 0, 0, 0, 0, 0, 0]);
        assert!(bad.next_frame().is_err());
    }

    #[test]
    fn progress_lines() {
        use crate::cli::service::progress_for_tests::*;
        assert_eq!(
            task_line("1/3", "running", ""),
            format!("1/3: running   [{}>] ", "=".repeat(50))
        );
        let svc = service("s", "web", false, 0, 2);
        let tasks = vec![task("a", 1, "n1", "2026-01-01T00:00:01Z", "running", "")];
        let snap = snapshot(&svc, &tasks);
        assert_eq!((snap.running, snap.wanted), (1, 2));
        assert!(
            snap.lines[1].starts_with("2/2: new       [=====>      "),
            "{:?}",
            snap.lines
        );
        assert_eq!(
            task_line("1/1", "pending", "no suitable node (x)\nmore"),
            "1/1: no suitable node (x) "
        );
    }
}

// ------------------------------------------------------- pull and logins

#[tokio::test]
async fn image_pull_prints_one_line_per_layer_event() {
    let s = start(Fake::new()).await;
    let headers = [(
        "X-Registry-Auth",
        crate::executor::pull::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        }
        .to_header(),
    )];
    let args = image::PullArgs {
        platform: None,
        quiet: false,
        name: "reg.test/private:1".into(),
    };
    let mut screen = Vec::new();
    let mut out = Output::default();
    image::pull_to(
        &mut s.client(),
        args,
        &headers,
        &mut screen,
        false,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(screen).unwrap(),
        format!(
            "1: Pulling from private\n\
             bbbbbbbbbbbb: Pulling fs layer\n\
             aaaaaaaaaaaa: Pulling fs layer\n\
             bbbbbbbbbbbb: Already exists\n\
             aaaaaaaaaaaa: Download complete\n\
             aaaaaaaaaaaa: Pull complete\n\
             Digest: {}\n\
             Status: Downloaded newer image for reg.test/private:1\n",
            crate::api::tests::FAKE_DIGEST
        )
    );
    assert_eq!(out.out, "reg.test/private:1\n");
    let req = s.fake.lock().last_pull.clone().unwrap();
    assert_eq!(req.auth.unwrap().username, "u");

    // Without the login, the registry's reason.
    let args = image::PullArgs {
        platform: None,
        quiet: true,
        name: "reg.test/private:1".into(),
    };
    let e = image::pull_to(&mut s.client(), args, &[], &mut Vec::new(), false, &mut out)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Error response from daemon: authentication required from registry reg.test"
    );
    // A failure in the middle of the stream is the command's error.
    let args = image::PullArgs {
        platform: Some("linux/arm64".into()),
        quiet: false,
        name: "reg.test/fail:later".into(),
    };
    let e = image::pull_to(&mut s.client(), args, &[], &mut Vec::new(), true, &mut out)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("connection reset"), "{e}");
    let p = s.fake.lock().last_pull.clone().unwrap().platform.unwrap();
    assert_eq!(p.architecture, "arm64");
}

#[tokio::test]
async fn login_checks_with_the_agent_and_keeps_dockers_config_file() {
    use std::os::unix::fs::PermissionsExt;
    let s = start(Fake::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    // Settings of the docker CLI's own are kept as they are.
    std::fs::write(
        &path,
        r#"{"psFormat":"table {{.ID}}","auths":{"other.io":{"auth":"eDp5"}}}"#,
    )
    .unwrap();
    let args = |password: &str| login::LoginArgs {
        username: Some("u".into()),
        password: Some(password.into()),
        password_stdin: false,
        server: Some("reg.test".into()),
    };
    let mut out = Output::default();
    let e = login::login_at(&mut s.client(), args("wrong"), &path, &mut out)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Error response from daemon: login attempt to http://reg.test/v2/ failed with status: 401 Unauthorized: authentication required"
    );
    assert!(!std::fs::read_to_string(&path).unwrap().contains("reg.test"));

    let mut out = Output::default();
    login::login_at(&mut s.client(), args("right"), &path, &mut out)
        .await
        .unwrap();
    assert_eq!(out.out, "Login Succeeded\n");
    assert!(out.err.contains("--password-stdin"), "{}", out.err);
    assert!(out.err.contains("stored unencrypted"), "{}", out.err);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["psFormat"], "table {{.ID}}");
    assert_eq!(v["auths"]["other.io"]["auth"], "eDp5");
    assert_eq!(
        v["auths"]["reg.test"]["auth"],
        crate::executor::pull::auth::join_auth("u", "right")
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Pulls and --with-registry-auth send it.
    let h = login::registry_auth_header_from(&path, "reg.test/app:1").unwrap();
    assert_eq!(h.len(), 1);
    let a = crate::executor::pull::AuthConfig::from_header(&h[0].1)
        .unwrap()
        .unwrap();
    assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "right"));
    assert!(login::registry_auth_header_from(&path, "busybox")
        .unwrap()
        .is_empty());

    // Logging in again needs nothing typed: the stored login is checked.
    let mut out = Output::default();
    let stored = login::LoginArgs {
        username: None,
        password: None,
        password_stdin: false,
        server: Some("http://reg.test/".into()),
    };
    login::login_at(&mut s.client(), stored, &path, &mut out)
        .await
        .unwrap();
    assert_eq!(
        out.out,
        "Authenticating with existing credentials... [Username: u]\nLogin Succeeded\n"
    );

    let logout = || login::LogoutArgs {
        server: Some("reg.test".into()),
    };
    let mut out = Output::default();
    login::logout_at(logout(), &path, &mut out).unwrap();
    assert_eq!(out.out, "Removing login credentials for reg.test\n");
    assert!(login::registry_auth_header_from(&path, "reg.test/app:1")
        .unwrap()
        .is_empty());
    let mut out = Output::default();
    login::logout_at(logout(), &path, &mut out).unwrap();
    assert_eq!(out.out, "Not logged in to reg.test\n");
}

#[test]
fn docker_config_entries_match_however_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("config.json");
    let hub = crate::executor::pull::auth::join_auth("hubuser", "pw");
    let mut cfg = login::DockerConfig::load(&path).unwrap();
    assert!(cfg.auth_for("docker.io").unwrap().is_none());
    cfg.set_login("https://index.docker.io/v1/", "hubuser", "pw");
    cfg.set_login("https://reg.example.com/", "a", "b");
    cfg.save().unwrap();
    let cfg = login::DockerConfig::load(&path).unwrap();
    let a = cfg.auth_for("docker.io").unwrap().unwrap();
    assert_eq!(a.username, "hubuser");
    assert_eq!(a.serveraddress, "https://index.docker.io/v1/");
    assert_eq!(
        cfg.auth_for("reg.example.com").unwrap().unwrap().password,
        "b"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&hub), "{text}");
    // A login for the same registry written another way replaces it.
    let mut cfg = login::DockerConfig::load(&path).unwrap();
    cfg.set_login("reg.example.com", "c", "d");
    assert_eq!(
        cfg.auth_for("reg.example.com").unwrap().unwrap().username,
        "c"
    );
    assert!(cfg.remove_login("reg.example.com"));
    assert!(!cfg.remove_login("reg.example.com"));
    // A broken entry says where it is.
    std::fs::write(&path, r#"{"auths":{"r.io":{"auth":"!!"}}}"#).unwrap();
    let e = login::DockerConfig::load(&path)
        .unwrap()
        .auth_for("r.io")
        .unwrap_err();
    assert!(e.to_string().contains("log in again"), "{e}");
    std::fs::write(&path, "[").unwrap();
    assert!(login::DockerConfig::load(&path).is_err());
}

#[tokio::test]
async fn job_modes_are_sent_as_the_docker_cli_sends_them() {
    let s = start(Fake::new()).await;
    let mode = |name: &str| {
        let st = s.fake.lock();
        let svc = st
            .objects
            .services
            .values()
            .find(|v| v.name() == name)
            .unwrap()
            .clone();
        serde_json::to_value(svc.spec.mode).unwrap()
    };
    let (r, _) = cli(
        &s,
        &[
            "service",
            "create",
            "--name",
            "batch",
            "--mode",
            "replicated-job",
            "--replicas",
            "3",
            "-d",
            "busybox",
            "true",
        ],
    )
    .await;
    r.unwrap();
    // --max-concurrent defaults to --replicas.
    assert_eq!(
        mode("batch"),
        serde_json::json!({"ReplicatedJob": {"MaxConcurrent": 3, "TotalCompletions": 3}})
    );
    let (r, _) = cli(
        &s,
        &["service", "update", "--max-concurrent", "1", "-d", "batch"],
    )
    .await;
    r.unwrap();
    let (r, _) = cli(&s, &["service", "scale", "-d", "batch=5"]).await;
    r.unwrap();
    assert_eq!(
        mode("batch"),
        serde_json::json!({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 5}})
    );
    let (r, _) = cli(
        &s,
        &[
            "service",
            "create",
            "--name",
            "once",
            "--mode",
            "global-job",
            "--max-concurrent",
            "2",
            "-d",
            "busybox",
            "true",
        ],
    )
    .await;
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("max-concurrent can only be used with replicated-job mode"),
        "{err}"
    );
    let (r, _) = cli(&s, &["service", "create", "--mode", "job", "busybox"]).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("invalid service mode \"job\""), "{err}");
}
