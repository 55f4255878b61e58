//! `apiary node ...`: ls, inspect, promote, demote, update, rm.

use std::collections::{BTreeMap, HashMap};

use bollard_stubs::models as m;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{decode, encode_query, encode_segment};
use super::opts::parse_availability;
use super::table::{bytes_size, natural_cmp, pretty, pretty_time, render_template, tabwrite};
use super::{CliError, Client, Output};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
    /// Promote one or more nodes to manager in the swarm
    Promote(NodesArgs),
    /// Demote one or more nodes from manager in the swarm
    Demote(NodesArgs),
    /// Update a node
    Update(UpdateArgs),
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// List tasks running on one or more nodes, defaults to current node
    Ps(super::service::NodePsArgs),
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output: "table", "json", or a template like "{{.ID}}\t{{.Hostname}}"
    #[arg(long)]
    pub format: Option<String>,
    /// Filter output based on conditions provided (e.g. role=manager)
    #[arg(short, long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Format output: "json" or a template like "{{.Status.Addr}}"
    #[arg(short, long)]
    pub format: Option<String>,
    /// Node ID or name ("self" is this node)
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, value_parser = parse_availability)]
    pub availability: Option<String>,
    /// Add or update a node label ("key=value")
    #[arg(long = "label-add", value_name = "list")]
    pub label_add: Vec<String>,
    /// Remove a node label if exists
    #[arg(long = "label-rm", value_name = "list")]
    pub label_rm: Vec<String>,
    /// Role of the node ("worker", "manager")
    #[arg(long)]
    pub role: Option<String>,
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force remove a node from the swarm
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

pub async fn run(c: &mut Client, cmd: NodeCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Ls(a) => ls(c, a, out).await,
        NodeCommand::Inspect(a) => inspect(c, a, out).await,
        NodeCommand::Promote(a) => set_role(c, a.nodes, "manager", out).await,
        NodeCommand::Demote(a) => set_role(c, a.nodes, "worker", out).await,
        NodeCommand::Update(a) => update(c, a, out).await,
        NodeCommand::Rm(a) => rm(c, a, out).await,
        NodeCommand::Ps(a) => super::service::node_ps(c, a, out).await,
    }
}

/// `-f key=value` flags as Docker's filters JSON (`{"key":{"value":true}}`).
pub fn filters_json(filters: &[String]) -> Result<String, CliError> {
    let mut map: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else {
            return Err(CliError::Client(format!(
                "bad format of filter (expected name=value): {f}"
            )));
        };
        map.entry(k.trim().to_ascii_lowercase())
            .or_default()
            .insert(v.trim().to_string(), true);
    }
    serde_json::to_string(&map).map_err(|e| CliError::Client(e.to_string()))
}

/// One `node ls` row with Docker's field names (also the `--format json` object).
pub fn node_row(n: &m::Node, self_id: &str) -> serde_json::Value {
    let id = n.id.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let spec = n.spec.clone().unwrap_or_default();
    let status = n
        .status
        .as_ref()
        .and_then(|s| s.state)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let availability = spec.availability.map(|a| a.to_string()).unwrap_or_default();
    let manager_status = match &n.manager_status {
        Some(ms) if ms.leader == Some(true) => "Leader".to_string(),
        Some(ms) => ms.reachability.map(|r| r.to_string()).unwrap_or_default(),
        None => String::new(),
    };
    json!({
        "Availability": pretty(&availability),
        "EngineVersion": desc.engine.and_then(|e| e.engine_version).unwrap_or_default(),
        "Hostname": desc.hostname.unwrap_or_default(),
        "ID": id,
        "ManagerStatus": pretty(&manager_status),
        "Self": !self_id.is_empty() && id == self_id,
        "Status": pretty(&status),
        "TLSStatus": "Unknown",
    })
}

fn field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Docker's default `node ls` table.
pub fn render_node_table(rows: &[serde_json::Value]) -> String {
    let mut t =
        String::from("ID  \tHOSTNAME\tSTATUS\tAVAILABILITY\tMANAGER STATUS\tENGINE VERSION\n");
    for r in rows {
        let star = if r.get("Self").and_then(|s| s.as_bool()) == Some(true) {
            "*"
        } else {
            " "
        };
        t.push_str(&format!(
            "{} {}\t{}\t{}\t{}\t{}\t{}\n",
            field(r, "ID"),
            star,
            field(r, "Hostname"),
            field(r, "Status"),
            field(r, "Availability"),
            field(r, "ManagerStatus"),
            field(r, "EngineVersion"),
        ));
    }
    tabwrite(&t)
}

/// Renders rows with a user template; `table ...` templates get a header
/// row of the field names in upper case, like Docker's.
fn render_custom(format: &str, rows: &[serde_json::Value]) -> Result<String, CliError> {
    let headers = json!({
        "ID": "ID", "Self": "", "Hostname": "HOSTNAME", "Status": "STATUS",
        "Availability": "AVAILABILITY", "ManagerStatus": "MANAGER STATUS",
        "EngineVersion": "ENGINE VERSION", "TLSStatus": "TLS STATUS",
    });
    super::table::render_rows(format, &headers, rows).map_err(CliError::Client)
}

async fn self_id(c: &mut Client) -> Result<String, CliError> {
    let info: m::SystemInfo = c.get("/info").await?;
    Ok(info.swarm.and_then(|s| s.node_id).unwrap_or_default())
}

async fn ls(c: &mut Client, a: LsArgs, out: &mut Output) -> Result<(), CliError> {
    let mut path = "/nodes".to_string();
    if !a.filter.is_empty() {
        path.push_str(&format!(
            "?filters={}",
            encode_query(&filters_json(&a.filter)?)
        ));
    }
    let mut nodes: Vec<m::Node> = c.get(&path).await?;
    let me = if !nodes.is_empty() && !a.quiet {
        self_id(c).await?
    } else {
        String::new()
    };
    nodes.sort_by(|x, y| {
        let h = |n: &m::Node| {
            n.description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .unwrap_or_default()
        };
        natural_cmp(&h(x), &h(y))
    });
    let rows: Vec<serde_json::Value> = nodes.iter().map(|n| node_row(n, &me)).collect();
    let format = a.format.unwrap_or_default();
    match format.as_str() {
        "" | "table" if a.quiet => {
            for r in &rows {
                out.println(field(r, "ID"));
            }
        }
        "" | "table" => out.print(render_node_table(&rows)),
        "json" => {
            for r in &rows {
                out.println(r.to_string());
            }
        }
        other => out.print(render_custom(other, &rows)?),
    }
    Ok(())
}

/// `self` means this node, as in the docker CLI.
async fn resolve(c: &mut Client, node: &str) -> Result<String, CliError> {
    if node == "self" {
        let id = self_id(c).await?;
        if id.is_empty() {
            return Err(CliError::Client("node ID not found in /info".into()));
        }
        return Ok(id);
    }
    Ok(node.to_string())
}

async fn inspect(c: &mut Client, a: InspectArgs, out: &mut Output) -> Result<(), CliError> {
    let mut raws = Vec::new();
    let mut errs = Vec::new();
    for n in &a.nodes {
        let id = match resolve(c, n).await {
            Ok(id) => id,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        match c.get_raw(&format!("/nodes/{}", encode_segment(&id))).await {
            Ok(raw) => raws.push(raw),
            Err(e) => errs.push(e),
        }
    }
    let format = if a.pretty {
        "pretty".to_string()
    } else {
        a.format.unwrap_or_default()
    };
    match format.as_str() {
        "" => {
            let joined: Vec<&[u8]> = raws.iter().map(|r| r.as_ref()).collect();
            let array = format!(
                "[{}]",
                joined
                    .iter()
                    .map(|r| String::from_utf8_lossy(r))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            out.println(super::table::indent_json(array.as_bytes()));
        }
        "pretty" => {
            for raw in &raws {
                let node: m::Node = decode(raw, "/nodes")?;
                let extra: serde_json::Value = decode(raw, "/nodes")?;
                let expiry = extra.get("CertExpiry").and_then(|v| v.as_str());
                out.println(format!(
                    "{}{}",
                    pretty_node(&node),
                    super::ca::pretty_tls(&node, expiry)
                ));
            }
        }
        "json" => {
            for raw in &raws {
                let v: serde_json::Value = decode(raw, "/nodes")?;
                out.println(v.to_string());
            }
        }
        tmpl => {
            for raw in &raws {
                let v: serde_json::Value = decode(raw, "/nodes")?;
                out.println(render_template(tmpl, &v).map_err(CliError::Client)?);
            }
        }
    }
    finish(errs)
}

fn finish(mut errs: Vec<CliError>) -> Result<(), CliError> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => Err(CliError::Many(errs)),
    }
}

fn sorted_labels(l: &Option<HashMap<String, String>>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = l.clone().unwrap_or_default().into_iter().collect();
    v.sort();
    v
}

/// `node inspect --pretty`, with the docker CLI's literal tabs.
pub fn pretty_node(n: &m::Node) -> String {
    let spec = n.spec.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let mut s = format!("ID:\t\t\t{}\n", n.id.as_deref().unwrap_or(""));
    if let Some(name) = spec.name.as_deref().filter(|x| !x.is_empty()) {
        s.push_str(&format!("Name:\t\t\t{name}\n"));
    }
    let labels = sorted_labels(&spec.labels);
    if !labels.is_empty() {
        s.push_str("Labels:\n");
        for (k, v) in labels {
            if v.is_empty() {
                s.push_str(&format!(" - {k}\n"));
            } else {
                s.push_str(&format!(" - {k}={v}\n"));
            }
        }
    }
    s.push_str(&format!(
        "Hostname:              \t{}\n",
        desc.hostname.as_deref().unwrap_or("")
    ));
    s.push_str(&format!(
        "Joined at:             \t{}\n",
        pretty_time(n.created_at.as_deref().unwrap_or(""))
    ));
    s.push_str("Status:\n");
    s.push_str(&format!(
        " State:\t\t\t{}\n",
        pretty(&status.state.map(|x| x.to_string()).unwrap_or_default())
    ));
    if let Some(msg) = status.message.as_deref().filter(|x| !x.is_empty()) {
        s.push_str(&format!(" Message:              \t{}\n", pretty(msg)));
    }
    s.push_str(&format!(
        " Availability:         \t{}\n",
        pretty(&spec.availability.map(|x| x.to_string()).unwrap_or_default())
    ));
    if let Some(addr) = status.addr.as_deref().filter(|x| !x.is_empty()) {
        s.push_str(&format!(" Address:\t\t{addr}\n"));
    }
    if let Some(ms) = &n.manager_status {
        s.push_str("Manager Status:\n");
        s.push_str(&format!(
            " Address:\t\t{}\n",
            ms.addr.as_deref().unwrap_or("")
        ));
        s.push_str(&format!(
            " Raft Status:\t\t{}\n",
            pretty(&ms.reachability.map(|x| x.to_string()).unwrap_or_default())
        ));
        s.push_str(if ms.leader == Some(true) {
            " Leader:\t\tYes\n"
        } else {
            " Leader:\t\tNo\n"
        });
    }
    let platform = desc.platform.clone().unwrap_or_default();
    s.push_str("Platform:\n");
    s.push_str(&format!(
        " Operating System:\t{}\n",
        platform.os.as_deref().unwrap_or("")
    ));
    s.push_str(&format!(
        " Architecture:\t\t{}\n",
        platform.architecture.as_deref().unwrap_or("")
    ));
    let res = desc.resources.clone().unwrap_or_default();
    let cpus = res.nano_cpus.unwrap_or(0) / 1_000_000_000;
    let mem = match res.memory_bytes.unwrap_or(0) {
        0 => String::new(),
        b => bytes_size(b as f64),
    };
    s.push_str("Resources:\n");
    s.push_str(&format!(" CPUs:\t\t\t{cpus}\n"));
    s.push_str(&format!(" Memory:\t\t{mem}\n"));
    let engine = desc.engine.clone().unwrap_or_default();
    s.push_str(&format!(
        "Engine Version:\t\t{}",
        engine.engine_version.as_deref().unwrap_or("")
    ));
    s
}

/// Docker's `updateNodes`: read the node, change its spec, write it back
/// with the version read.
async fn update_node(
    c: &mut Client,
    node: &str,
    change: &dyn Fn(&mut m::Node, &mut Output) -> Result<bool, CliError>,
    out: &mut Output,
) -> Result<bool, CliError> {
    let id = resolve(c, node).await?;
    let mut n: m::Node = c.get(&format!("/nodes/{}", encode_segment(&id))).await?;
    if !change(&mut n, out)? {
        return Ok(false);
    }
    let version = n.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    let nid = n.id.clone().unwrap_or(id);
    c.post(
        &format!("/nodes/{}/update?version={version}", encode_segment(&nid)),
        &n.spec.unwrap_or_default(),
    )
    .await?;
    Ok(true)
}

async fn set_role(
    c: &mut Client,
    nodes: Vec<String>,
    role: &str,
    out: &mut Output,
) -> Result<(), CliError> {
    let want = if role == "manager" {
        m::NodeSpecRoleEnum::MANAGER
    } else {
        m::NodeSpecRoleEnum::WORKER
    };
    for node in &nodes {
        let change = |n: &mut m::Node, out: &mut Output| -> Result<bool, CliError> {
            let spec = n.spec.get_or_insert_with(Default::default);
            if spec.role == Some(want) {
                out.println(format!(
                    "Node {} is already a {role}.",
                    n.id.as_deref().unwrap_or("")
                ));
                return Ok(false);
            }
            spec.role = Some(want);
            Ok(true)
        };
        if update_node(c, node, &change, out).await? {
            if role == "manager" {
                out.println(format!("Node {node} promoted to a manager in the swarm."));
            } else {
                out.println(format!("Manager {node} demoted in the swarm."));
            }
        }
    }
    Ok(())
}

async fn update(c: &mut Client, a: UpdateArgs, out: &mut Output) -> Result<(), CliError> {
    let role = match a.role.as_deref() {
        None => None,
        Some(r) => Some(match r.to_ascii_lowercase().as_str() {
            "worker" => m::NodeSpecRoleEnum::WORKER,
            "manager" => m::NodeSpecRoleEnum::MANAGER,
            _ => {
                return Err(CliError::Client(format!(
                    "invalid role {r:?}, only worker and manager are supported"
                )))
            }
        }),
    };
    let availability = match a.availability.as_deref() {
        None => None,
        Some(x) => Some(x.parse::<m::NodeSpecAvailabilityEnum>().map_err(|_| {
            CliError::Client(format!(
                "invalid availability {x:?}, only active, pause and drain are supported"
            ))
        })?),
    };
    let change = |n: &mut m::Node, _out: &mut Output| -> Result<bool, CliError> {
        let spec = n.spec.get_or_insert_with(Default::default);
        if let Some(r) = role {
            spec.role = Some(r);
        }
        if let Some(av) = availability {
            spec.availability = Some(av);
        }
        let labels = spec.labels.get_or_insert_with(HashMap::new);
        for l in &a.label_add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            labels.insert(k.to_string(), v.to_string());
        }
        for k in &a.label_rm {
            if labels.remove(k).is_none() {
                return Err(CliError::Client(format!(
                    "key {k} doesn't exist in node's labels"
                )));
            }
        }
        Ok(true)
    };
    update_node(c, &a.node, &change, out).await?;
    out.println(&a.node);
    Ok(())
}

async fn rm(c: &mut Client, a: RmArgs, out: &mut Output) -> Result<(), CliError> {
    let mut errs = Vec::new();
    for n in &a.nodes {
        let q = if a.force { "?force=1" } else { "" };
        match c.delete(&format!("/nodes/{}{q}", encode_segment(n))).await {
            Ok(_) => out.println(n),
            Err(e) => errs.push(e),
        }
    }
    finish(errs)
}
