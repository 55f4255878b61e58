//! The OCI runtime spec of a container, built from a `ContainerSpec` and
//! the image config the way Docker does it. Pure: the I/O (reading the
//! image's /etc/passwd, making the secrets tmpfs) happens in `containerd`.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{ContainerSpec, ExecError, ExecResult, MountKind};

/// CFS period for CPU limits (Docker's default: 100 ms).
pub const CPU_PERIOD: i64 = 100_000;

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Kernel interfaces a container must not see (Docker's list).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the executor resolved before building the spec.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    /// `/apiary/<namespace>/<id>`.
    pub cgroups_path: String,
    /// (host file on the secrets tmpfs, target in the container).
    pub files: Vec<(PathBuf, String)>,
    /// Where named volumes live on the host.
    pub volumes_dir: PathBuf,
}

/// The process's argv, Docker's way: `command` replaces the image's
/// entrypoint (and then drops its cmd); `args` replaces the image's cmd.
pub fn process_args(spec: &ContainerSpec, image: &Value) -> ExecResult<Vec<String>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cfg = &image["config"];
    let (entrypoint, image_cmd) = if spec.command.is_empty() {
        (strings(&cfg["Entrypoint"]), strings(&cfg["Cmd"]))
    } else {
        (spec.command.clone(), vec![])
    };
    let cmd = if spec.args.is_empty() {
        image_cmd
    } else {
        spec.args.clone()
    };
    let mut args = entrypoint;
    args.extend(cmd);
    if args.is_empty() {
        return Err(ExecError::InvalidSpec(format!(
            "image {} has no command and the task gives none",
            spec.image
        )));
    }
    Ok(args)
}

/// The image's env with the task's on top (same key: the task wins, in
/// the image's position).
pub fn merge_env(image: &Value, task: &[String]) -> Vec<String> {
    let mut out: Vec<String> = image["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for e in task {
        let key = e.split('=').next().unwrap_or(e);
        match out
            .iter_mut()
            .find(|o| o.split('=').next().unwrap_or(o) == key)
        {
            Some(o) => o.clone_from(e),
            None => out.push(e.clone()),
        }
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    out
}

/// The user the container runs as: the task's, else the image's, else
/// root. `None` = root.
pub fn effective_user(spec: &ContainerSpec, image: &Value) -> Option<String> {
    spec.user.clone().filter(|u| !u.is_empty()).or_else(|| {
        image["config"]["User"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(String::from)
    })
}

/// `uid[:gid]` or `name[:group]` → numeric IDs, names looked up in the
/// image's /etc/passwd and /etc/group (None if the image has none).
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> ExecResult<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // passwd: name:x:uid:gid:gecos:home:shell
    let passwd_entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32)> {
        passwd?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && pred(&f) {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        // A numeric uid need not exist in the image; its group is the
        // passwd one if there is an entry, else 0 (Docker does the same).
        Ok(uid) => (
            uid,
            passwd_entry(&|f| f[2] == u).map(|(_, g)| g).unwrap_or(0),
        ),
        Err(_) => passwd_entry(&|f| f[0] == u).ok_or_else(|| {
            ExecError::InvalidSpec(format!(
                "unable to find user {u}: no matching entries in the image's /etc/passwd"
            ))
        })?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                })
                .ok_or_else(|| {
                    ExecError::InvalidSpec(format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    ))
                })?,
        };
    }
    Ok((uid, gid))
}

/// Signal names (`SIGTERM`, `TERM`) or numbers → Linux signal numbers.
pub fn parse_signal(s: &str) -> ExecResult<u32> {
    let name = s.trim().to_ascii_uppercase();
    if let Ok(n) = name.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => {
            return Err(ExecError::InvalidSpec(format!(
                "invalid stop signal {s:?}: use a name like SIGTERM or a number"
            )))
        }
    };
    Ok(n)
}

/// Volume names become directories: keep them to one safe path component.
pub fn check_volume_name(name: &str) -> ExecResult<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ExecError::InvalidSpec(format!(
            "invalid volume name {name:?}: use letters, digits, '_', '-' and '.'"
        )))
    }
}

fn check_target(t: &str) -> ExecResult<()> {
    if !t.starts_with('/') || t.split('/').any(|c| c == "..") {
        return Err(ExecError::InvalidSpec(format!(
            "mount target {t:?} must be an absolute path without '..'"
        )));
    }
    Ok(())
}

/// The OCI runtime spec (JSON) for runc.
pub fn build(spec: &ContainerSpec, image: &Value, r: &Resolved) -> ExecResult<Value> {
    let args = process_args(spec, image)?;
    let env = merge_env(image, &spec.env);
    let cwd = spec
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| {
            image["config"]["WorkingDir"]
                .as_str()
                .filter(|w| !w.is_empty())
                .map(String::from)
        })
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(ExecError::InvalidSpec(format!(
            "working directory {cwd:?} must be an absolute path"
        )));
    }
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| spec.id.chars().take(12).collect());

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &spec.mounts {
        check_target(&m.target)?;
        let ro = if m.read_only { "ro" } else { "rw" };
        let v = match m.kind {
            MountKind::Bind => {
                if !m.source.starts_with('/') {
                    return Err(ExecError::InvalidSpec(format!(
                        "bind mount source {:?} must be an absolute host path",
                        m.source
                    )));
                }
                json!({"destination": m.target, "type": "bind", "source": m.source,
                       "options": ["rbind", ro]})
            }
            MountKind::Volume => {
                check_volume_name(&m.source)?;
                let src = r.volumes_dir.join(&m.source);
                json!({"destination": m.target, "type": "bind", "source": src,
                       "options": ["rbind", ro]})
            }
            MountKind::Tmpfs => {
                let mut opts = vec!["nosuid".to_string(), "nodev".into(), ro.into()];
                if let Some(s) = m.tmpfs_size {
                    opts.push(format!("size={s}"));
                }
                json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                       "options": opts})
            }
        };
        mounts.push(v);
    }
    for (src, target) in &r.files {
        check_target(target)?;
        mounts.push(json!({"destination": target, "type": "bind", "source": src,
                           "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    // No network namespace entry = the host's network (Docker's
    // `--network host`); otherwise join the one the worker made.
    if let Some(ns) = &spec.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }

    let mut resources = json!({
        // Deny all devices; runc adds the standard ones (null, zero, …).
        "devices": [{"allow": false, "access": "rwm"}],
    });
    if let Some(limit) = spec.memory_limit.filter(|l| *l > 0) {
        resources["memory"] = json!({"limit": limit});
    }
    if let Some(n) = spec.nano_cpus.filter(|n| *n > 0) {
        // 1e9 nano CPUs = one full period per period.
        let quota = (n as i128 * CPU_PERIOD as i128 / 1_000_000_000) as i64;
        resources["cpu"] = json!({"quota": quota.max(1000), "period": CPU_PERIOD});
    }

    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": r.uid, "gid": r.gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
            },
            // No rlimits: inherited from containerd, like Docker's default
            // (raising them above the daemon's hard limit fails).
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": r.cgroups_path,
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }))
}

#[cfg(test)]
mod tests;
