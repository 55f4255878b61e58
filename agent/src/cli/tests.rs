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
