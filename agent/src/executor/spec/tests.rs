use super::*;
use crate::executor::{FileMount, Mount};
use serde_json::json;

fn image() -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "LANG=C"],
            "Entrypoint": ["/entry"],
            "Cmd": ["serve", "--port", "80"],
            "WorkingDir": "/srv",
            "User": "app",
        },
    })
}

fn spec() -> ContainerSpec {
    ContainerSpec {
        id: "0123456789abcdef0123".into(),
        image: "app:1".into(),
        ..Default::default()
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1001:\nstaff:x:50:\n";

#[test]
fn args_follow_dockers_override_rules() {
    let img = image();
    assert_eq!(
        process_args(&spec(), &img).expect("args"),
        ["/entry", "serve", "--port", "80"]
    );
    let s = ContainerSpec {
        args: vec!["other".into()],
        ..spec()
    };
    assert_eq!(process_args(&s, &img).expect("args"), ["/entry", "other"]);
    // A new entrypoint drops the image's cmd.
    let s = ContainerSpec {
        command: vec!["sh".into()],
        ..spec()
    };
    assert_eq!(process_args(&s, &img).expect("args"), ["sh"]);
    let s = ContainerSpec {
        command: vec!["sh".into()],
        args: vec!["-c".into(), "x".into()],
        ..spec()
    };
    assert_eq!(process_args(&s, &img).expect("args"), ["sh", "-c", "x"]);
    let empty = json!({"config": {}});
    assert!(matches!(
        process_args(&spec(), &empty),
        Err(ExecError::InvalidSpec(_))
    ));
}

#[test]
fn env_merges_task_over_image() {
    let env = merge_env(&image(), &["LANG=fr".into(), "NEW=1".into()]);
    assert_eq!(env, ["PATH=/usr/bin:/bin", "LANG=fr", "NEW=1"]);
    let env = merge_env(&json!({}), &[]);
    assert!(env[0].starts_with("PATH=/usr/local/sbin"));
}

#[test]
fn users_resolve_by_number_or_name() {
    assert_eq!(resolve_user("0", None, None).expect("root"), (0, 0));
    assert_eq!(
        resolve_user("1000", Some(PASSWD), None).expect("uid"),
        (1000, 1001)
    );
    assert_eq!(
        resolve_user("4242", Some(PASSWD), None).expect("unknown uid"),
        (4242, 0)
    );
    assert_eq!(
        resolve_user("app", Some(PASSWD), Some(GROUP)).expect("name"),
        (1000, 1001)
    );
    assert_eq!(
        resolve_user("app:staff", Some(PASSWD), Some(GROUP)).expect("group"),
        (1000, 50)
    );
    assert_eq!(resolve_user("7:8", None, None).expect("numbers"), (7, 8));
    match resolve_user("ghost", Some(PASSWD), None) {
        Err(ExecError::InvalidSpec(m)) => assert!(m.contains("ghost")),
        other => panic!("{other:?}"),
    }
    assert!(resolve_user("app", None, None).is_err());
    assert!(resolve_user("app:nogroup", Some(PASSWD), Some(GROUP)).is_err());
}

#[test]
fn signals_by_name_or_number() {
    assert_eq!(parse_signal("SIGTERM").expect("term"), 15);
    assert_eq!(parse_signal("quit").expect("quit"), 3);
    assert_eq!(parse_signal("9").expect("nine"), 9);
    assert!(parse_signal("SIGNOPE").is_err());
    assert!(parse_signal("0").is_err());
}

#[test]
fn spec_has_process_mounts_namespaces_and_limits() {
    let s = ContainerSpec {
        env: vec!["A=b".into()],
        workdir: Some("/tmp".into()),
        memory_limit: Some(64 << 20),
        nano_cpus: Some(1_500_000_000),
        netns: Some("/run/netns/apiary-x".into()),
        mounts: vec![
            Mount {
                kind: MountKind::Bind,
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
                tmpfs_size: None,
            },
            Mount {
                kind: MountKind::Volume,
                source: "vol1".into(),
                target: "/v".into(),
                read_only: false,
                tmpfs_size: None,
            },
            Mount {
                kind: MountKind::Tmpfs,
                source: String::new(),
                target: "/scratch".into(),
                read_only: false,
                tmpfs_size: Some(1 << 20),
            },
        ],
        files: vec![FileMount {
            target: "/run/secrets/x".into(),
            data: vec![],
            mode: 0o400,
        }],
        ..spec()
    };
    let r = Resolved {
        uid: 1000,
        gid: 1001,
        cgroups_path: "/apiary/ns/id".into(),
        files: vec![("/state/secrets/id/f0".into(), "/run/secrets/x".into())],
        volumes_dir: "/state/volumes".into(),
    };
    let v = build(&s, &image(), &r).expect("spec");
    assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 1001}));
    assert_eq!(v["process"]["cwd"], "/tmp");
    assert_eq!(v["hostname"], "0123456789ab");
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["linux"]["cgroupsPath"], "/apiary/ns/id");
    assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(
        v["linux"]["resources"]["cpu"],
        json!({"quota": 150000, "period": 100000})
    );
    let ns: Vec<&Value> = v["linux"]["namespaces"]
        .as_array()
        .expect("ns")
        .iter()
        .collect();
    assert!(ns.contains(&&json!({"type": "network", "path": "/run/netns/apiary-x"})));
    let dests: Vec<&str> = v["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["destination"].as_str())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/data",
        "/v",
        "/scratch",
        "/run/secrets/x",
    ] {
        assert!(dests.contains(&d), "{d} missing from {dests:?}");
    }
    let m = |d: &str| {
        v["mounts"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["destination"] == d))
            .cloned()
            .expect("mount")
    };
    assert_eq!(m("/v")["source"], "/state/volumes/vol1");
    assert_eq!(m("/data")["options"], json!(["rbind", "ro"]));
    assert!(m("/run/secrets/x")["options"]
        .as_array()
        .expect("opts")
        .contains(&json!("ro")));
    assert!(m("/scratch")["options"]
        .as_array()
        .expect("opts")
        .contains(&json!("size=1048576")));
}

#[test]
fn host_network_omits_the_network_namespace() {
    let v = build(&spec(), &image(), &Resolved::default()).expect("spec");
    let ns = v["linux"]["namespaces"].as_array().expect("ns");
    assert!(ns.iter().all(|n| n["type"] != "network"));
    assert!(v["linux"]["resources"].get("memory").is_none());
    assert_eq!(v["process"]["cwd"], "/srv");
}

#[test]
fn bad_mounts_and_volume_names_are_invalid() {
    let bad = |m: Mount| {
        build(
            &ContainerSpec {
                mounts: vec![m],
                ..spec()
            },
            &image(),
            &Resolved::default(),
        )
    };
    assert!(bad(Mount {
        kind: MountKind::Bind,
        source: "rel".into(),
        target: "/x".into(),
        read_only: false,
        tmpfs_size: None
    })
    .is_err());
    assert!(bad(Mount {
        kind: MountKind::Volume,
        source: "../etc".into(),
        target: "/x".into(),
        read_only: false,
        tmpfs_size: None
    })
    .is_err());
    assert!(bad(Mount {
        kind: MountKind::Tmpfs,
        source: String::new(),
        target: "x/../y".into(),
        read_only: false,
        tmpfs_size: None
    })
    .is_err());
}
