//! `apiary network ...`: create, ls, inspect, rm, prune (docker's `network`
//! commands, for the swarm's overlay networks).

use std::collections::BTreeMap;
use std::io::BufRead;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{decode, encode_query};
use super::node::filters_json;
use super::objects::{self, labels_map, InspectArgs, Kind, RmArgs};
use super::table::{natural_cmp, render_rows, tabwrite};
use super::{CliError, Client, Output};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network
    Create(CreateArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove all unused networks
    Prune(PruneArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Driver to manage the network (apiary's networks are overlays:
    /// unlike docker's CLI, this is the default)
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR format (default: the next free one of the swarm's pool)
    #[arg(long)]
    pub subnet: Vec<String>,
    /// IPv4 gateway of the subnet
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Allocate task addresses from a sub-range
    #[arg(long = "ip-range")]
    pub ip_range: Vec<String>,
    /// Enable manual container attachment
    #[arg(long)]
    pub attachable: bool,
    /// Restrict external access to the network
    #[arg(long)]
    pub internal: bool,
    /// Create the swarm routing-mesh network
    #[arg(long)]
    pub ingress: bool,
    /// Set driver specific options (e.g. encrypted)
    #[arg(short, long = "opt", value_name = "map")]
    pub opt: Vec<String>,
    /// Set metadata on a network
    #[arg(long = "label", value_name = "list")]
    pub label: Vec<String>,
    /// Control the network's scope (swarm only)
    #[arg(long)]
    pub scope: Option<String>,
    #[arg(value_name = "NETWORK")]
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate the output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Format output: "table", "json", or a template like "{{.ID}}\t{{.Name}}"
    #[arg(long)]
    pub format: Option<String>,
    /// Provide filter values (e.g. "driver=overlay")
    #[arg(short, long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
    /// Provide filter values (e.g. "label=<key>=<value>")
    #[arg(long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
}

pub async fn run(c: &mut Client, cmd: NetworkCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        NetworkCommand::Create(a) => create(c, a, out).await,
        NetworkCommand::Inspect(a) => objects::inspect(c, Kind::Network, a, out).await,
        NetworkCommand::Ls(a) => ls(c, a, out).await,
        NetworkCommand::Prune(a) => prune(c, a, &mut std::io::stdin().lock(), out).await,
        NetworkCommand::Rm(a) => objects::rm(c, Kind::Network, a, out).await,
    }
}

/// The `IPAM.Config` list from the repeated flags, paired as the docker
/// CLI pairs them: each gateway and range belongs to the subnet it falls in.
fn ipam_config(a: &CreateArgs) -> Result<Vec<Value>, CliError> {
    if a.subnet.is_empty() && !(a.gateway.is_empty() && a.ip_range.is_empty()) {
        return Err(CliError::Client(
            "--gateway and --ip-range need --subnet".into(),
        ));
    }
    if a.gateway.len() > a.subnet.len() || a.ip_range.len() > a.subnet.len() {
        return Err(CliError::Client(
            "give at most one --gateway and one --ip-range per --subnet".into(),
        ));
    }
    Ok(a.subnet
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "Subnet": s,
                "Gateway": a.gateway.get(i).cloned().unwrap_or_default(),
                "IPRange": a.ip_range.get(i).cloned().unwrap_or_default(),
            })
        })
        .collect())
}

async fn create(c: &mut Client, a: CreateArgs, out: &mut Output) -> Result<(), CliError> {
    // `--opt k=v`, a bare `k` being an empty value: the labels' rule.
    let options = labels_map(&a.opt);
    let body = json!({
        "Name": a.name,
        "Driver": a.driver,
        "Scope": a.scope.clone().unwrap_or_default(),
        "Attachable": a.attachable,
        "Internal": a.internal,
        "Ingress": a.ingress,
        "IPAM": { "Driver": "default", "Config": ipam_config(&a)?, "Options": {} },
        "Options": options,
        "Labels": labels_map(&a.label),
    });
    let ans = c.post("/networks/create", &body).await?;
    let v: Value = decode(&ans.body, "/networks/create")?;
    out.println(v["Id"].as_str().unwrap_or_default());
    Ok(())
}

fn text(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// One `ls` row with the docker CLI's field names.
fn row(v: &Value, no_trunc: bool) -> Value {
    let id = text(v, "Id");
    let short: String = if no_trunc {
        id
    } else {
        id.chars().take(12).collect()
    };
    let labels: BTreeMap<String, String> = v["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| (k.clone(), x.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let labels: Vec<String> = labels.iter().map(|(k, x)| format!("{k}={x}")).collect();
    json!({
        "ID": short,
        "Name": text(v, "Name"),
        "Driver": text(v, "Driver"),
        "Scope": text(v, "Scope"),
        "IPv4": v["EnableIPv4"].as_bool().unwrap_or(true).to_string(),
        "IPv6": v["EnableIPv6"].as_bool().unwrap_or(false).to_string(),
        "Internal": v["Internal"].as_bool().unwrap_or(false).to_string(),
        "Labels": labels.join(","),
        "CreatedAt": text(v, "Created"),
    })
}

async fn ls(c: &mut Client, a: LsArgs, out: &mut Output) -> Result<(), CliError> {
    let mut path = "/networks".to_string();
    if !a.filter.is_empty() {
        path.push_str(&format!(
            "?filters={}",
            encode_query(&filters_json(&a.filter)?)
        ));
    }
    let mut items: Vec<Value> = c.get(&path).await?;
    items.sort_by(|x, y| natural_cmp(&text(x, "Name"), &text(y, "Name")));
    let rows: Vec<Value> = items.iter().map(|v| row(v, a.no_trunc)).collect();
    let format = a.format.unwrap_or_default();
    match format.as_str() {
        "" | "table" if a.quiet => {
            for r in &rows {
                out.println(text(r, "ID"));
            }
        }
        "" | "table" => {
            let mut t = String::from("NETWORK ID\tNAME\tDRIVER\tSCOPE\n");
            for r in &rows {
                t.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    text(r, "ID"),
                    text(r, "Name"),
                    text(r, "Driver"),
                    text(r, "Scope")
                ));
            }
            out.print(tabwrite(&t));
        }
        "json" => {
            for r in &rows {
                out.println(r.to_string());
            }
        }
        other => {
            let headers = json!({
                "ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                "IPv4": "IPV4", "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS",
                "CreatedAt": "CREATED AT",
            });
            out.print(render_rows(other, &headers, &rows).map_err(CliError::Client)?);
        }
    }
    Ok(())
}

async fn prune(
    c: &mut Client,
    a: PruneArgs,
    stdin: &mut dyn BufRead,
    out: &mut Output,
) -> Result<(), CliError> {
    if !a.force {
        out.print(
            "WARNING! This will remove all custom networks not used by at least one service.\nAre you sure you want to continue? [y/N] ",
        );
        out.flush();
        let mut answer = String::new();
        let _ = stdin.read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
    }
    let mut path = "/networks/prune".to_string();
    if !a.filter.is_empty() {
        path.push_str(&format!(
            "?filters={}",
            encode_query(&filters_json(&a.filter)?)
        ));
    }
    let ans = c.post(&path, &json!({})).await?;
    let v: Value = decode(&ans.body, "/networks/prune")?;
    let deleted: Vec<&str> = v["NetworksDeleted"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !deleted.is_empty() {
        out.println("Deleted Networks:");
        for n in deleted {
            out.println(n);
        }
    }
    Ok(())
}
