//! `apiary info` and `apiary version`.

use bollard_stubs::models as m;
use clap::Args;

use super::client::decode;
use super::table::{bytes_size, human_duration};
use super::{CliError, Client, Output};
use crate::api::API_VERSION;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Format output: "json" or a template like "{{.Swarm.NodeID}}"
    #[arg(short, long)]
    pub format: Option<String>,
}

#[derive(Args, Debug)]
pub struct VersionArgs {}

pub async fn run_info(c: &mut Client, a: InfoArgs, out: &mut Output) -> Result<(), CliError> {
    let raw = c.get_raw("/info").await?;
    match a.format.as_deref() {
        None | Some("") => {}
        Some("json") => {
            let v: serde_json::Value = decode(&raw, "/info")?;
            out.println(v.to_string());
            return Ok(());
        }
        Some(tmpl) => {
            let v: serde_json::Value = decode(&raw, "/info")?;
            out.println(super::table::render_template(tmpl, &v).map_err(CliError::Client)?);
            return Ok(());
        }
    }
    let info: m::SystemInfo = decode(&raw, "/info")?;
    out.print(render_info(&info));
    for w in info.warnings.iter().flatten() {
        if w.starts_with("WARNING") {
            out.eprintln(w);
        } else {
            out.eprintln(format!("WARNING: {w}"));
        }
    }
    Ok(())
}

/// Docker's `info` layout, trimmed to what an apiary agent knows.
pub fn render_info(info: &m::SystemInfo) -> String {
    let mut s = String::new();
    let line = |s: &mut String, t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    line(&mut s, "Client:".into());
    line(
        &mut s,
        format!(" Version:    {}", env!("CARGO_PKG_VERSION")),
    );
    line(&mut s, String::new());
    line(&mut s, "Server:".into());
    line(
        &mut s,
        format!(
            " Server Version: {}",
            info.server_version.as_deref().unwrap_or("")
        ),
    );
    let sw = info.swarm.clone().unwrap_or_default();
    let state = sw
        .local_node_state
        .map(|x| x.to_string())
        .unwrap_or_else(|| "inactive".into());
    line(&mut s, format!(" Swarm: {state}"));
    if state != "inactive" && state != "locked" {
        line(
            &mut s,
            format!("  NodeID: {}", sw.node_id.as_deref().unwrap_or("")),
        );
        if let Some(e) = sw.error.as_deref().filter(|e| !e.is_empty()) {
            line(&mut s, format!("  Error: {e}"));
        }
        let manager = sw.control_available.unwrap_or(false);
        line(&mut s, format!("  Is Manager: {manager}"));
        if let (Some(cl), true) = (&sw.cluster, manager) {
            let spec = cl.spec.clone().unwrap_or_default();
            line(
                &mut s,
                format!("  ClusterID: {}", cl.id.as_deref().unwrap_or("")),
            );
            line(&mut s, format!("  Managers: {}", sw.managers.unwrap_or(0)));
            line(&mut s, format!("  Nodes: {}", sw.nodes.unwrap_or(0)));
            line(&mut s, "  Orchestration:".into());
            let th = spec
                .orchestration
                .and_then(|o| o.task_history_retention_limit)
                .unwrap_or(0);
            line(&mut s, format!("   Task History Retention Limit: {th}"));
            line(&mut s, "  Raft:".into());
            let si = spec.raft.and_then(|r| r.snapshot_interval).unwrap_or(0);
            line(&mut s, format!("   Snapshot Interval: {si}"));
            line(&mut s, "  Dispatcher:".into());
            let hb = spec
                .dispatcher
                .and_then(|d| d.heartbeat_period)
                .unwrap_or(0);
            line(
                &mut s,
                format!("   Heartbeat Period: {}", human_duration(hb)),
            );
            line(&mut s, "  CA Configuration:".into());
            let exp = spec.ca_config.and_then(|c| c.node_cert_expiry).unwrap_or(0);
            line(
                &mut s,
                format!("   Expiry Duration: {}", human_duration(exp)),
            );
            let al = spec
                .encryption_config
                .and_then(|e| e.auto_lock_managers)
                .unwrap_or(false);
            line(&mut s, format!("  Autolock Managers: {al}"));
        }
        line(
            &mut s,
            format!("  Node Address: {}", sw.node_addr.as_deref().unwrap_or("")),
        );
        let mut managers: Vec<String> = sw
            .remote_managers
            .iter()
            .flatten()
            .filter_map(|p| p.addr.clone())
            .collect();
        if !managers.is_empty() {
            managers.sort();
            line(&mut s, "  Manager Addresses:".into());
            for mgr in managers {
                line(&mut s, format!("   {mgr}"));
            }
        }
    }
    line(
        &mut s,
        format!(
            " Kernel Version: {}",
            info.kernel_version.as_deref().unwrap_or("")
        ),
    );
    line(
        &mut s,
        format!(" OSType: {}", info.os_type.as_deref().unwrap_or("")),
    );
    line(
        &mut s,
        format!(
            " Architecture: {}",
            info.architecture.as_deref().unwrap_or("")
        ),
    );
    line(&mut s, format!(" CPUs: {}", info.ncpu.unwrap_or(0)));
    line(
        &mut s,
        format!(
            " Total Memory: {}",
            bytes_size(info.mem_total.unwrap_or(0) as f64)
        ),
    );
    line(
        &mut s,
        format!(" Name: {}", info.name.as_deref().unwrap_or("")),
    );
    line(
        &mut s,
        format!(
            " Apiary Root Dir: {}",
            info.docker_root_dir.as_deref().unwrap_or("")
        ),
    );
    s
}

fn go_os_arch() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

pub async fn run_version(
    c: &mut Client,
    _a: VersionArgs,
    out: &mut Output,
) -> Result<(), CliError> {
    out.println("Client:");
    out.println(format!(" {:<19}{}", "Version:", env!("CARGO_PKG_VERSION")));
    out.println(format!(" {:<19}{}", "API version:", API_VERSION));
    out.println(format!(" {:<19}{}", "OS/Arch:", go_os_arch()));
    let ans = c.version_raw().await?;
    let v: m::SystemVersion = decode(&ans.body, "/version")?;
    out.println("");
    out.println("Server:");
    out.println(" Engine:");
    out.println(format!(
        "  {:<18}{}",
        "Version:",
        v.version.as_deref().unwrap_or("")
    ));
    out.println(format!(
        "  {:<18}{} (minimum version {})",
        "API version:",
        v.api_version.as_deref().unwrap_or(""),
        v.min_api_version.as_deref().unwrap_or("")
    ));
    out.println(format!(
        "  {:<18}{}/{}",
        "OS/Arch:",
        v.os.as_deref().unwrap_or(""),
        v.arch.as_deref().unwrap_or("")
    ));
    out.println(format!(
        "  {:<18}{}",
        "Experimental:",
        v.experimental.unwrap_or(false)
    ));
    Ok(())
}
