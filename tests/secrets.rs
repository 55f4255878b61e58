//! Secrets and configs on real agents: stored in raft, visible from every
//! manager, never shown back (secrets), refused on workers; through the
//! apiary CLI and the real docker CLI.

mod harness;

use harness::{eventually, Agent, Cluster, PATIENCE};
use serde_json::Value;

fn inspect(a: &Agent, kind: &str, name: &str) -> Value {
    let out = a.apiary(&[kind, "inspect", name]);
    let v: Vec<Value> = serde_json::from_str(out.ok()).expect("inspect JSON");
    v.into_iter().next().expect("one object")
}

/// Names in `ls` output (second column).
fn ls_names(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect()
}

#[test]
fn secrets_and_configs_with_the_apiary_cli() {
    let c = Cluster::new("secrets").managers(3).workers(1).start();
    let (mgr1, mgr2, mgr3) = (&c.managers[0], &c.managers[1], &c.managers[2]);
    let file = c.root.path().join("db-password.txt");
    std::fs::write(&file, "hunter2").expect("write secret file");
    let file = file.to_string_lossy().into_owned();

    // From a file on the leader, with labels: the answer is the new ID.
    let id = mgr1
        .apiary(&[
            "secret",
            "create",
            "--label",
            "env=prod",
            "db-password",
            &file,
        ])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 25, "{id}");
    // From stdin on a follower (forwarded to the leader).
    let id2 = mgr2
        .apiary_stdin(&["secret", "create", "api-token", "-"], b"s3cr3t-token")
        .ok()
        .trim()
        .to_string();
    assert_eq!(id2.len(), 25, "{id2}");

    // Both visible on a third manager.
    let out = eventually("mgr3 to list both secrets", PATIENCE, || {
        let o = mgr3.apiary(&["secret", "ls"]);
        (o.status == 0 && o.stdout.lines().count() == 3).then_some(o.stdout)
    });
    let header = out.lines().next().unwrap_or_default();
    for col in ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"] {
        assert!(
            header.contains(col),
            "secret ls header lacks {col}: {header}"
        );
    }
    assert_eq!(ls_names(&out), ["api-token", "db-password"], "{out}");
    assert!(out.contains(&id) && out.contains(&id2), "{out}");
    let q = mgr3.apiary(&["secret", "ls", "-q"]).ok().to_string();
    assert_eq!(q.lines().count(), 2, "{q}");

    // Inspect by name, ID and ID prefix; the data never comes back.
    for key in ["db-password", id.as_str(), &id[..6]] {
        let v = inspect(mgr3, "secret", key);
        assert_eq!(v["ID"], id.as_str());
        assert_eq!(v["Spec"]["Name"], "db-password");
        assert_eq!(v["Spec"]["Labels"]["env"], "prod");
        assert!(v["Spec"].get("Data").is_none(), "{v}");
    }
    let raw = mgr2.apiary(&["secret", "inspect", "db-password", "api-token"]);
    assert!(!raw.ok().contains("hunter2") && !raw.stdout.contains("aHVudGVyMg"));
    let pretty = mgr1
        .apiary(&["secret", "inspect", "--pretty", "db-password"])
        .ok()
        .to_string();
    assert!(
        pretty.starts_with(&format!(
            "ID:              {id}\nName:              db-password\nLabels:\n - env=prod\n"
        )),
        "{pretty}"
    );

    // Clear refusals: name taken, bad name, too big, empty.
    let err = mgr2
        .apiary(&["secret", "create", "db-password", &file])
        .fails()
        .to_string();
    assert!(err.contains("secret db-password already exists"), "{err}");
    let err = mgr1
        .apiary(&["secret", "create", "bad/name", &file])
        .fails()
        .to_string();
    assert!(err.contains("invalid secret name \"bad/name\""), "{err}");
    let big = vec![b'x'; 500 * 1024];
    let err = mgr1
        .apiary_stdin(&["secret", "create", "too-big", "-"], &big)
        .fails()
        .to_string();
    assert!(
        err.contains("secret data must be larger than 0 and less than 500KB"),
        "{err}"
    );
    let err = mgr1
        .apiary_stdin(&["secret", "create", "empty", "-"], b"")
        .fails()
        .to_string();
    assert!(err.contains("larger than 0"), "{err}");

    // Configs: the data is part of inspect.
    let cid = mgr2
        .apiary_stdin(&["config", "create", "app.conf", "-"], b"port=8080\n")
        .ok()
        .trim()
        .to_string();
    let v = eventually("mgr3 to see the config", PATIENCE, || {
        let o = mgr3.apiary(&["config", "inspect", "app.conf"]);
        (o.status == 0).then_some(o.stdout)
    });
    let v: Vec<Value> = serde_json::from_str(&v).expect("config JSON");
    assert_eq!(v[0]["ID"], cid.as_str());
    assert_eq!(v[0]["Spec"]["Data"], "cG9ydD04MDgwCg==");
    let pretty = mgr3
        .apiary(&["config", "inspect", "--pretty", "app.conf"])
        .ok()
        .to_string();
    assert!(pretty.ends_with("Data:\nport=8080\n\n"), "{pretty:?}");
    let out = mgr1.apiary(&["config", "ls"]).ok().to_string();
    assert!(
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["ID", "NAME", "CREATED", "UPDATED"],
        "{out}"
    );
    let err = mgr1
        .apiary_stdin(&["config", "create", "app.conf", "-"], b"x")
        .fails()
        .to_string();
    assert!(err.contains("config app.conf already exists"), "{err}");

    // Workers hold no cluster state.
    let wrk = c.by_name("wrk1");
    for args in [
        vec!["secret", "ls"],
        vec!["secret", "create", "w", file.as_str()],
        vec!["config", "ls"],
    ] {
        let err = wrk.apiary(&args).fails().to_string();
        assert!(
            err.contains("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."),
            "{args:?}: {err}"
        );
    }

    // rm prints the names given and removes them everywhere.
    let out = mgr3
        .apiary(&["secret", "rm", "db-password", &id2])
        .ok()
        .to_string();
    assert_eq!(out, format!("db-password\n{id2}\n"));
    let err = mgr3
        .apiary(&["secret", "rm", "db-password"])
        .fails()
        .to_string();
    assert!(err.contains("secret db-password not found"), "{err}");
    mgr2.apiary(&["config", "rm", "app.conf"]).ok();
    eventually("mgr1 to list nothing", PATIENCE, || {
        let s = mgr1.apiary(&["secret", "ls", "-q"]);
        let c = mgr1.apiary(&["config", "ls", "-q"]);
        (s.status == 0 && c.status == 0 && s.stdout.is_empty() && c.stdout.is_empty()).then_some(())
    });
}

#[test]
fn secrets_and_configs_with_the_docker_cli() {
    let c = Cluster::new("dsecrets").start();
    let m = &c.managers[0];
    let file = c.root.path().join("tls.key");
    std::fs::write(&file, "-----BEGIN KEY-----\n").expect("write");
    let file = file.to_string_lossy().into_owned();

    let id = m
        .docker(&["secret", "create", "--label", "tier=web", "tls-key", &file])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 25, "{id}");
    let id2 = m
        .docker_stdin(&["secret", "create", "from-stdin", "-"], b"abc")
        .ok()
        .trim()
        .to_string();
    let out = m.docker(&["secret", "ls"]).ok().to_string();
    assert_eq!(ls_names(&out), ["from-stdin", "tls-key"], "{out}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"]);
    let out = m
        .docker(&["secret", "ls", "--filter", "label=tier=web", "-q"])
        .ok()
        .to_string();
    assert_eq!(out.trim(), id);

    let v: Vec<Value> =
        serde_json::from_str(m.docker(&["secret", "inspect", "tls-key"]).ok()).expect("JSON");
    assert_eq!(v[0]["ID"], id.as_str());
    assert_eq!(v[0]["Spec"]["Labels"]["tier"], "web");
    assert!(
        v[0]["Spec"].get("Data").is_none() || v[0]["Spec"]["Data"].is_null(),
        "{v:?}"
    );
    let pretty = m
        .docker(&["secret", "inspect", "--pretty", "tls-key"])
        .ok()
        .to_string();
    assert!(pretty.contains("Name:              tls-key"), "{pretty}");

    let err = m
        .docker(&["secret", "create", "tls-key", &file])
        .fails()
        .to_string();
    assert!(err.contains("secret tls-key already exists"), "{err}");
    let err = m
        .docker(&["secret", "create", "_bad", &file])
        .fails()
        .to_string();
    assert!(err.contains("invalid secret name"), "{err}");

    let cid = m
        .docker_stdin(
            &["config", "create", "nginx.conf", "-"],
            b"worker_processes 1;\n",
        )
        .ok()
        .trim()
        .to_string();
    let v: Vec<Value> =
        serde_json::from_str(m.docker(&["config", "inspect", "nginx.conf"]).ok()).expect("JSON");
    assert_eq!(v[0]["ID"], cid.as_str());
    assert_eq!(v[0]["Spec"]["Data"], "d29ya2VyX3Byb2Nlc3NlcyAxOwo=");
    let pretty = m
        .docker(&["config", "inspect", "--pretty", "nginx.conf"])
        .ok()
        .to_string();
    assert!(pretty.contains("Data:\nworker_processes 1;"), "{pretty}");
    let out = m.docker(&["config", "ls"]).ok().to_string();
    assert_eq!(ls_names(&out), ["nginx.conf"], "{out}");

    let out = m
        .docker(&["secret", "rm", "tls-key", &id2])
        .ok()
        .to_string();
    assert_eq!(out, format!("tls-key\n{id2}\n"));
    m.docker(&["config", "rm", &cid]).ok();
    assert_eq!(m.docker(&["secret", "ls", "-q"]).ok(), "");
    assert_eq!(m.docker(&["config", "ls", "-q"]).ok(), "");
}

#[test]
fn secrets_and_configs_survive_force_new_cluster() {
    let c = Cluster::new("fncsecrets").start();
    let m = &c.managers[0];
    let id = m
        .apiary_stdin(&["secret", "create", "keep-me", "-"], b"still here")
        .ok()
        .trim()
        .to_string();
    m.apiary_stdin(&["config", "create", "keep-conf", "-"], b"a=1")
        .ok();
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
    let v = eventually("the secret after --force-new-cluster", PATIENCE, || {
        let o = m.apiary(&["secret", "inspect", "keep-me"]);
        (o.status == 0).then_some(o.stdout)
    });
    let v: Vec<Value> = serde_json::from_str(&v).expect("JSON");
    assert_eq!(v[0]["ID"], id.as_str());
    let v = inspect(m, "config", "keep-conf");
    assert_eq!(v["Spec"]["Data"], "YT0x");
    // The name is still taken in the new log.
    let err = m
        .apiary_stdin(&["secret", "create", "keep-me", "-"], b"x")
        .fails()
        .to_string();
    assert!(err.contains("secret keep-me already exists"), "{err}");
}
