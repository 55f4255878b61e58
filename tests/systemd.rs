//! The agent under systemd: `systemd/apiary.service` passes
//! `systemd-analyze verify`, and the agent speaks the notify protocol the
//! unit's `Type=notify` and `WatchdogSec=` rely on (READY=1 with a
//! STATUS= line, WATCHDOG=1 pings, STOPPING=1 on SIGTERM), and logs with
//! journald priorities when its stderr is the journal. The protocol is
//! checked against a notify socket of the test's own, as systemd would
//! listen on one; the whole unit under a real systemd is the image tests'.

mod harness;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Cluster, APIARY};

#[test]
fn the_unit_file_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/apiary.service"
    ))
    .expect("systemd/apiary.service");
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    assert!(
        unit.contains("KillMode=process") && unit.contains("Delegate=yes"),
        "{unit}"
    );
    // verify checks that ExecStart's program exists: point it at the
    // binary under test.
    let unit = unit.replace("ExecStart=/usr/bin/apiary", &format!("ExecStart={APIARY}"));
    let path = dir.path().join("apiary.service");
    std::fs::write(&path, unit).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Units the test machine lacks (containerd.service in a container)
    // are not the unit's fault; anything about apiary.service is.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("apiary.service") && !l.contains("containerd.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{text}");
    assert!(out.status.success(), "systemd-analyze verify:\n{text}");
}

/// Messages the agent sent to the notify socket, until `until` matches one
/// or `patience` runs out.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, until: &str, patience: Duration) {
    let deadline = Instant::now() + patience;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            seen.push(msg);
            if done {
                return;
            }
        }
    }
    panic!("no {until} within {patience:?}; got {seen:?}");
}

#[test]
fn ready_status_watchdog_and_stopping_over_the_notify_protocol() {
    let c = Cluster::new("notify");
    let sock_path = c.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut a = c.agent("solo", 1);
    // Restarted as systemd would start it: with the notify socket, a
    // watchdog, and stderr (its log file) announced as the journal.
    a.kill();
    let log = std::fs::metadata(a.dir.join("agent.log")).expect("log file");
    a.env = vec![
        ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
        ("WATCHDOG_USEC".into(), "1000000".into()),
        (
            "JOURNAL_STREAM".into(),
            format!("{}:{}", log.dev(), log.ino()),
        ),
    ];
    let before = a.log().len();
    a.start();
    let mut seen = Vec::new();
    read_until(&sock, &mut seen, "READY=1", Duration::from_secs(20));
    let ready = seen.last().cloned().unwrap_or_default();
    assert!(
        ready.contains("STATUS=serving") && ready.contains("swarm inactive"),
        "{ready}"
    );
    read_until(&sock, &mut seen, "WATCHDOG=1", Duration::from_secs(5));
    // The status follows the node: after init it says manager.
    a.init_swarm(&[]).ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|m| m.contains("STATUS=swarm active: manager"))
    {
        assert!(Instant::now() < deadline, "no manager status: {seen:?}");
        read_until(&sock, &mut seen, "WATCHDOG=1", Duration::from_secs(5));
    }
    a.stop();
    read_until(&sock, &mut seen, "STOPPING=1", Duration::from_secs(5));
    // Journald priorities, no timestamps or colours.
    let lines = a.log()[before..].to_string();
    let ready_line = lines
        .lines()
        .find(|l| l.contains("apiary agent ready"))
        .unwrap_or_default()
        .to_string();
    assert!(ready_line.starts_with("<6>apiary agent ready"), "{lines}");
    assert!(!lines.contains('\u{1b}'), "no colour codes: {lines}");
}

/// The API socket is `root:apiary`, mode 0660, where the system has an
/// `apiary` group (the package makes it): its members use the CLI without
/// sudo. The test makes the group if it is missing, and removes it after.
#[test]
fn the_socket_belongs_to_the_apiary_group() {
    let had = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("apiary:"));
    if !had {
        let ok = Command::new("groupadd")
            .args(["--system", "apiary"])
            .status()
            .expect("groupadd (passwd)");
        assert!(ok.success(), "groupadd --system apiary");
    }
    let c = Cluster::new("sockgrp");
    let a = c.agent("solo", 1);
    let meta = std::fs::metadata(&a.socket).expect("socket");
    let gid: u32 = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"apiary")).then(|| f[2].parse().ok())?
        })
        .expect("the apiary group's ID");
    drop(a);
    if !had {
        let _ = Command::new("groupdel").arg("apiary").status();
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.gid(), gid, "the socket's group");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "the socket's mode"
    );
}
