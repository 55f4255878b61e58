//! Flag values of `service create` / `update` parsed the docker CLI's way:
//! pure functions, so every error message is unit-tested.

use std::collections::HashMap;

use bollard_stubs::models as m;

use crate::cli::opts::parse_duration;

/// `--limit-memory 512m`: go-units `RAMInBytes` (binary multiples, optional
/// `b`/`ib` suffix, fractions allowed).
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid size: '{s}'");
    let t = s.trim();
    let num_len = t
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if num_len == 0 {
        return Err(bad());
    }
    let value: f64 = t[..num_len].parse().map_err(|_| bad())?;
    let unit = t[num_len..].trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// `--limit-cpu 0.5`: docker's `NanoCPUs` (a decimal, at most 9 fraction
/// digits, stored as billionths of a CPU).
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let bad = || format!("failed to parse {s} as a rational number");
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 && frac[9..].bytes().any(|b| b != b'0') {
        return Err("value is too precise".into());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut frac9 = frac.chars().take(9).collect::<String>();
    while frac9.len() < 9 {
        frac9.push('0');
    }
    let frac: i64 = frac9.parse().map_err(|_| bad())?;
    int.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(|| "value is too large".to_string())
}

/// Duration flags ("5s", "1m30s") in nanoseconds, Go's syntax.
pub fn parse_dur(s: &str) -> Result<i64, String> {
    parse_duration(s)
}

/// `--restart-condition`.
pub fn parse_restart_condition(s: &str) -> Result<m::TaskSpecRestartPolicyConditionEnum, String> {
    match s {
        "none" => Ok(m::TaskSpecRestartPolicyConditionEnum::NONE),
        "on-failure" => Ok(m::TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
        "any" => Ok(m::TaskSpecRestartPolicyConditionEnum::ANY),
        _ => Err(format!(
            "invalid restart condition {s:?}: use none, on-failure or any"
        )),
    }
}

fn protocol(s: &str) -> Result<m::EndpointPortConfigProtocolEnum, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(m::EndpointPortConfigProtocolEnum::TCP),
        "udp" => Ok(m::EndpointPortConfigProtocolEnum::UDP),
        "sctp" => Ok(m::EndpointPortConfigProtocolEnum::SCTP),
        _ => Err(format!(
            "invalid protocol value '{s}': use tcp, udp or sctp"
        )),
    }
}

fn port_number(s: &str, what: &str) -> Result<i64, String> {
    s.parse::<u16>()
        .map(i64::from)
        .map_err(|_| format!("invalid {what} port '{s}': use a number from 0 to 65535"))
}

/// `-p 8080:80[/udp]`, `-p 80` (short form, ingress mode as in docker) or
/// `-p published=8080,target=80,mode=host,protocol=tcp` (long form).
pub fn parse_publish(s: &str) -> Result<m::EndpointPortConfig, String> {
    if s.contains('=') {
        let mut p = m::EndpointPortConfig {
            protocol: Some(m::EndpointPortConfigProtocolEnum::TCP),
            publish_mode: Some(m::EndpointPortConfigPublishModeEnum::INGRESS),
            ..Default::default()
        };
        for field in s.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "published" => p.published_port = Some(port_number(v, "published")?),
                "target" => p.target_port = Some(port_number(v, "target")?),
                "protocol" => p.protocol = Some(protocol(v)?),
                "mode" => {
                    p.publish_mode = Some(match v.to_ascii_lowercase().as_str() {
                        "ingress" => m::EndpointPortConfigPublishModeEnum::INGRESS,
                        "host" => m::EndpointPortConfigPublishModeEnum::HOST,
                        _ => {
                            return Err(format!(
                            "invalid publish mode value ({v}): must be either 'ingress' or 'host'"
                        ))
                        }
                    })
                }
                other => return Err(format!("invalid field key '{other}'")),
            }
        }
        if p.target_port.is_none() {
            return Err(format!("missing mandatory field 'target' in '{s}'"));
        }
        return Ok(p);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((a, b)) => (a, protocol(b)?),
        None => (s, m::EndpointPortConfigProtocolEnum::TCP),
    };
    let (published, target) = match ports.rsplit_once(':') {
        // "ip:published:target" is refused by swarm services, as in docker.
        Some((pubd, _)) if pubd.contains(':') => {
            return Err(format!(
                "hostip is not supported in swarm mode port publishing: '{s}'"
            ))
        }
        Some((pubd, target)) => (
            (!pubd.is_empty())
                .then(|| port_number(pubd, "published"))
                .transpose()?,
            port_number(target, "target")?,
        ),
        None => (None, port_number(ports, "target")?),
    };
    Ok(m::EndpointPortConfig {
        protocol: Some(proto),
        target_port: Some(target),
        published_port: published,
        publish_mode: Some(m::EndpointPortConfigPublishModeEnum::INGRESS),
        name: None,
    })
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(format!("invalid value for {k}: {v}")),
    }
}

/// `--mount type=bind|volume|tmpfs,source=,target=,readonly` (docker's
/// `MountOpt`; `src`/`dst`/`destination`/`ro` aliases included).
pub fn parse_mount(s: &str) -> Result<m::Mount, String> {
    let mut mt = m::Mount {
        typ: Some(m::MountTypeEnum::VOLUME),
        ..Default::default()
    };
    let mut tmpfs_size = None;
    for field in s.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim()),
            None => (field.trim().to_ascii_lowercase(), ""),
        };
        match k.as_str() {
            "type" => {
                mt.typ = Some(match v {
                    "bind" => m::MountTypeEnum::BIND,
                    "volume" => m::MountTypeEnum::VOLUME,
                    "tmpfs" => m::MountTypeEnum::TMPFS,
                    _ => {
                        return Err(format!(
                            "invalid mount type '{v}': use bind, volume or tmpfs"
                        ))
                    }
                })
            }
            "source" | "src" => mt.source = Some(v.to_string()),
            "target" | "dst" | "destination" => mt.target = Some(v.to_string()),
            "readonly" | "ro" => mt.read_only = Some(parse_bool(&k, v)?),
            "tmpfs-size" => tmpfs_size = Some(parse_memory(v)?),
            "" => {}
            other => return Err(format!("unexpected key '{other}' in '{field}'")),
        }
    }
    if mt.target.as_deref().unwrap_or("").is_empty() {
        return Err("target is required".into());
    }
    if mt.typ == Some(m::MountTypeEnum::BIND) && mt.source.as_deref().unwrap_or("").is_empty() {
        return Err("source is required when specifying bind mounts".into());
    }
    if mt.typ == Some(m::MountTypeEnum::TMPFS) {
        if mt.source.as_deref().is_some_and(|x| !x.is_empty()) {
            return Err("source must not be specified for tmpfs mounts".into());
        }
        mt.tmpfs_options = tmpfs_size.map(|size| m::MountTmpfsOptions {
            size_bytes: Some(size),
            ..Default::default()
        });
    }
    Ok(mt)
}

/// A `--secret` / `--config` reference before its name is resolved to an ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub source: String,
    pub target: String,
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

/// `name` or `source=x,target=y,mode=0400,uid=0,gid=0` (docker's
/// `SecretOpt`/`ConfigOpt`; mode is octal, default 0444, target defaults to
/// the source name).
pub fn parse_file_ref(s: &str) -> Result<FileRef, String> {
    let mut r = FileRef {
        source: String::new(),
        target: String::new(),
        uid: "0".into(),
        gid: "0".into(),
        mode: 0o444,
    };
    if !s.contains('=') {
        r.source = s.to_string();
    } else {
        for field in s.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "source" | "src" => r.source = v.to_string(),
                "target" => r.target = v.to_string(),
                "uid" => r.uid = v.to_string(),
                "gid" => r.gid = v.to_string(),
                "mode" => {
                    r.mode = u32::from_str_radix(v, 8)
                        .map_err(|_| format!("invalid mode specified: '{v}' is not octal"))?
                }
                other => return Err(format!("invalid field in secret request: {other}")),
            }
        }
    }
    if r.source.is_empty() {
        return Err("source is required".into());
    }
    if r.target.is_empty() {
        r.target = r.source.clone();
    }
    Ok(r)
}

/// `--placement-pref spread=node.labels.x`.
pub fn parse_placement_pref(s: &str) -> Result<m::TaskSpecPlacementPreferences, String> {
    match s.split_once('=') {
        Some(("spread", d)) if !d.is_empty() => Ok(m::TaskSpecPlacementPreferences {
            spread: Some(m::TaskSpecPlacementSpread {
                spread_descriptor: Some(d.to_string()),
            }),
        }),
        Some((k, _)) if k != "spread" => Err(format!(
            "unsupported placement preference {k} (only spread is supported)"
        )),
        _ => Err(format!(
            "invalid placement preference '{s}': use spread=node.labels.<name>"
        )),
    }
}

/// `--label k=v` / `--container-label k=v` lists as a map (`k` alone means
/// an empty value, as in docker).
pub fn labels(list: &[String]) -> Option<HashMap<String, String>> {
    if list.is_empty() {
        return None;
    }
    Some(
        list.iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    )
}

/// Go's `%g` of a CPU count for `inspect --pretty` ("0.5", "2").
pub fn cpus_string(nano: i64) -> String {
    format!("{}", nano as f64 / 1e9)
}

/// `--network NAME` or the long form
/// `--network name=NAME,alias=A[,alias=B][,driver-opt=K=V]`, as the docker
/// CLI takes them.
pub fn parse_network(s: &str) -> Result<m::NetworkAttachmentConfig, String> {
    if !s.contains('=') {
        if s.is_empty() {
            return Err("--network needs a network name".into());
        }
        return Ok(m::NetworkAttachmentConfig {
            target: Some(s.to_string()),
            ..Default::default()
        });
    }
    let mut n = m::NetworkAttachmentConfig::default();
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid field {field:?} in --network: use key=value"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => n.target = Some(v.to_string()),
            "alias" => n.aliases.get_or_insert_with(Vec::new).push(v.to_string()),
            "driver-opt" => {
                let (ok, ov) = v.split_once('=').unwrap_or((v, ""));
                n.driver_opts
                    .get_or_insert_with(Default::default)
                    .insert(ok.to_string(), ov.to_string());
            }
            other => {
                return Err(format!(
                    "invalid field key {other:?} in --network: use name, alias or driver-opt"
                ))
            }
        }
    }
    if n.target.as_deref().is_none_or(str::is_empty) {
        return Err("--network needs name=NETWORK".into());
    }
    Ok(n)
}
