//! `apiary swarm ...`: init, join, join-token, leave, update.

use bollard_stubs::models as m;
use clap::{Args, Subcommand};

use super::client::encode_segment;
use super::opts::{parse_availability, parse_duration};
use super::{CliError, Client, Output};
use crate::api::models::{InitBody, JoinBody, DEFAULT_LISTEN_ADDR};

#[derive(Subcommand, Debug)]
pub enum SwarmCommand {
    /// Initialize a swarm
    Init(InitArgs),
    /// Join a swarm as a node and/or manager
    Join(JoinArgs),
    /// Manage join tokens
    JoinToken(JoinTokenArgs),
    /// Leave the swarm
    Leave(LeaveArgs),
    /// Update the swarm
    Update(UpdateArgs),
    /// Unlock swarm
    Unlock,
    /// Manage the unlock key
    UnlockKey(UnlockKeyArgs),
    /// Display and rotate the root CA
    Ca(super::ca::CaArgs),
}

#[derive(Args, Debug)]
pub struct UnlockKeyArgs {
    /// Rotate unlock key
    #[arg(long)]
    pub rotate: bool,
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
}

/// Cluster settings shared by `init` and `update`; only the flags given are sent.
#[derive(Args, Debug, Default, Clone)]
pub struct SpecFlags {
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, value_name = "duration", value_parser = parse_duration)]
    pub cert_expiry: Option<i64>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h)
    #[arg(long, value_name = "duration", value_parser = parse_duration)]
    pub dispatcher_heartbeat: Option<i64>,
    /// Task history retention limit
    #[arg(long, value_name = "int", allow_negative_numbers = true)]
    pub task_history_limit: Option<i64>,
    /// Number of log entries between Raft snapshots
    #[arg(long, value_name = "uint")]
    pub snapshot_interval: Option<u64>,
    /// Enable manager autolocking (requiring an unlock key to start a stopped manager)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "bool")]
    pub autolock: Option<bool>,
}

impl SpecFlags {
    /// Lays the given flags over `spec` (Docker's `mergeSwarmSpec`).
    pub fn merge_into(&self, spec: &mut m::SwarmSpec) {
        if let Some(v) = self.task_history_limit {
            spec.orchestration
                .get_or_insert_with(Default::default)
                .task_history_retention_limit = Some(v);
        }
        if let Some(v) = self.dispatcher_heartbeat {
            spec.dispatcher
                .get_or_insert_with(Default::default)
                .heartbeat_period = Some(v);
        }
        if let Some(v) = self.cert_expiry {
            spec.ca_config
                .get_or_insert_with(Default::default)
                .node_cert_expiry = Some(v);
        }
        if let Some(v) = self.autolock {
            spec.encryption_config
                .get_or_insert_with(Default::default)
                .auto_lock_managers = Some(v);
        }
        if let Some(v) = self.snapshot_interval {
            spec.raft
                .get_or_insert_with(Default::default)
                .snapshot_interval = Some(v);
        }
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Advertised address (format: "<ip>[:port]")
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip>[:port]")
    #[arg(long, default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, value_parser = parse_availability)]
    pub availability: Option<String>,
    /// Force create a new cluster from current state
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Default address pool in CIDR format (repeatable; default 10.0.0.0/8)
    #[arg(long = "default-addr-pool", value_name = "ipNetSlice")]
    pub default_addr_pool: Vec<String>,
    /// Default address pool subnet mask length (default 24)
    #[arg(long = "default-addr-pool-mask-length", value_name = "uint32")]
    pub default_addr_pool_mask_length: Option<u32>,
    /// Port number to use for data path traffic (1024 - 49151; default 4789)
    #[arg(long = "data-path-port", value_name = "uint32")]
    pub data_path_port: Option<u32>,
    #[command(flatten)]
    pub spec: SpecFlags,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long, required = true)]
    pub token: String,
    /// Advertised address (format: "<ip>[:port]")
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip>[:port]")
    #[arg(long, default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, value_parser = parse_availability)]
    pub availability: Option<String>,
    /// Address of a manager (HOST:PORT)
    #[arg(value_name = "HOST:PORT")]
    pub remote: String,
}

#[derive(Args, Debug)]
pub struct JoinTokenArgs {
    /// Rotate join token
    #[arg(long)]
    pub rotate: bool,
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
    /// worker or manager
    #[arg(value_name = "worker|manager")]
    pub role: String,
}

#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub spec: SpecFlags,
}

pub async fn run(c: &mut Client, cmd: SwarmCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        SwarmCommand::Init(a) => init(c, a, out).await,
        SwarmCommand::Join(a) => join(c, a, out).await,
        SwarmCommand::JoinToken(a) => join_token(c, a, out).await,
        SwarmCommand::Leave(a) => leave(c, a, out).await,
        SwarmCommand::Update(a) => update(c, a, out).await,
        SwarmCommand::Unlock => unlock(c).await,
        SwarmCommand::UnlockKey(a) => unlock_key(c, a, out).await,
        SwarmCommand::Ca(a) => super::ca::run(c, a, out).await,
    }
}

/// Read the key from the terminal (prompting) or from standard input.
fn read_unlock_key() -> Result<String, CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Enter unlock key: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Client(format!("cannot read the unlock key: {e}")))?;
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(CliError::Client(
            "no unlock key given: type it, or pipe it on standard input".into(),
        ));
    }
    Ok(key)
}

async fn unlock(c: &mut Client) -> Result<(), CliError> {
    let info: m::SystemInfo = c.get("/info").await?;
    let state = info
        .swarm
        .and_then(|s| s.local_node_state)
        .map(|s| s.to_string())
        .unwrap_or_default();
    match state.as_str() {
        "inactive" => return Err(CliError::Client("This node is not part of a swarm".into())),
        "locked" => {}
        _ => return Err(CliError::Client("swarm is not locked".into())),
    }
    let key = read_unlock_key()?;
    let body = m::SwarmUnlockRequest {
        unlock_key: Some(key),
    };
    c.post("/swarm/unlock", &body).await?;
    Ok(())
}

async fn unlock_key(c: &mut Client, a: UnlockKeyArgs, out: &mut Output) -> Result<(), CliError> {
    if a.rotate {
        let sw: m::Swarm = c.get("/swarm").await?;
        let version = sw.version.and_then(|v| v.index).unwrap_or(0);
        let spec = sw.spec.unwrap_or_default();
        let locked = spec
            .encryption_config
            .as_ref()
            .and_then(|e| e.auto_lock_managers)
            .unwrap_or(false);
        if !locked {
            return Err(CliError::Client(
                "cannot rotate because autolock is not turned on".into(),
            ));
        }
        c.post(
            &format!("/swarm/update?version={version}&rotateWorkerToken=false&rotateManagerToken=false&rotateManagerUnlockKey=true"),
            &spec,
        )
        .await?;
        if !a.quiet {
            out.print("Successfully rotated manager unlock key.\n\n");
        }
    }
    let key: m::UnlockKeyResponse = c.get("/swarm/unlockkey").await?;
    let key = key.unlock_key.unwrap_or_default();
    if key.is_empty() {
        return Err(CliError::Client("no unlock key is set".into()));
    }
    if a.quiet {
        out.println(key);
    } else {
        print_unlock_command(out, &key);
    }
    Ok(())
}

async fn init(c: &mut Client, a: InitArgs, out: &mut Output) -> Result<(), CliError> {
    let mut spec = m::SwarmSpec::default();
    a.spec.merge_into(&mut spec);
    let autolock = a.spec.autolock.unwrap_or(false);
    let body = InitBody {
        base: m::SwarmInitRequest {
            listen_addr: Some(a.listen_addr),
            advertise_addr: Some(a.advertise_addr.unwrap_or_default()),
            force_new_cluster: Some(a.force_new_cluster),
            spec: Some(spec),
            default_addr_pool: Some(a.default_addr_pool).filter(|p| !p.is_empty()),
            subnet_size: a.default_addr_pool_mask_length,
            data_path_port: a.data_path_port,
            ..Default::default()
        },
        availability: a.availability,
        auto_lock_managers: Some(autolock),
    };
    let ans = c.post("/swarm/init", &body).await?;
    let node_id: String = super::client::decode(&ans.body, "/swarm/init")?;
    out.print(format!(
        "Swarm initialized: current node ({node_id}) is now a manager.\n\n"
    ));
    print_join_command(c, &node_id, true, false, out).await?;
    out.print("To add a manager to this swarm, run 'apiary swarm join-token manager' and follow the instructions.\n\n");
    if autolock {
        let key: m::UnlockKeyResponse = c.get("/swarm/unlockkey").await?;
        print_unlock_command(out, key.unlock_key.as_deref().unwrap_or(""));
    }
    Ok(())
}

fn print_unlock_command(out: &mut Output, key: &str) {
    if !key.is_empty() {
        out.print(format!(
            "To unlock a swarm manager after it restarts, run the `apiary swarm unlock`\n\
             command and provide the following key:\n\n    {key}\n\n\
             Remember to store this key in a password manager, since without it you\n\
             will not be able to restart the manager.\n"
        ));
    }
}

/// Docker's `printJoinCommand`: the address is the manager's raft address.
async fn print_join_command(
    c: &mut Client,
    node_id: &str,
    worker: bool,
    manager: bool,
    out: &mut Output,
) -> Result<(), CliError> {
    let node: m::Node = c
        .get(&format!("/nodes/{}", encode_segment(node_id)))
        .await?;
    let sw: m::Swarm = c.get("/swarm").await?;
    let Some(ms) = node.manager_status else {
        return Ok(());
    };
    let addr = ms.addr.unwrap_or_default();
    let tokens = sw.join_tokens.unwrap_or_default();
    if worker {
        out.print(format!(
            "To add a worker to this swarm, run the following command:\n\n    apiary swarm join --token {} {addr}\n\n",
            tokens.worker.unwrap_or_default()
        ));
    }
    if manager {
        out.print(format!(
            "To add a manager to this swarm, run the following command:\n\n    apiary swarm join --token {} {addr}\n\n",
            tokens.manager.unwrap_or_default()
        ));
    }
    Ok(())
}

async fn join(c: &mut Client, a: JoinArgs, out: &mut Output) -> Result<(), CliError> {
    let body = JoinBody {
        base: m::SwarmJoinRequest {
            listen_addr: Some(a.listen_addr),
            advertise_addr: Some(a.advertise_addr.unwrap_or_default()),
            remote_addrs: Some(vec![a.remote]),
            join_token: Some(a.token),
            ..Default::default()
        },
        availability: a.availability,
    };
    c.post("/swarm/join", &body).await?;
    let info: m::SystemInfo = c.get("/info").await?;
    let manager = info
        .swarm
        .and_then(|s| s.control_available)
        .unwrap_or(false);
    out.println(if manager {
        "This node joined a swarm as a manager."
    } else {
        "This node joined a swarm as a worker."
    });
    Ok(())
}

async fn join_token(c: &mut Client, a: JoinTokenArgs, out: &mut Output) -> Result<(), CliError> {
    let worker = a.role == "worker";
    let manager = a.role == "manager";
    if !worker && !manager {
        return Err(CliError::Client(format!("unknown role {}", a.role)));
    }
    if a.rotate {
        let sw: m::Swarm = c.get("/swarm").await?;
        let version = sw.version.and_then(|v| v.index).unwrap_or(0);
        let path = format!(
            "/swarm/update?version={version}&rotateWorkerToken={worker}&rotateManagerToken={manager}&rotateManagerUnlockKey=false"
        );
        c.post(&path, &sw.spec.unwrap_or_default()).await?;
        if !a.quiet {
            out.print(format!("Successfully rotated {} join token.\n\n", a.role));
        }
    }
    let sw: m::Swarm = c.get("/swarm").await?;
    let tokens = sw.join_tokens.unwrap_or_default();
    if a.quiet {
        let t = if worker {
            tokens.worker
        } else {
            tokens.manager
        };
        out.println(t.unwrap_or_default());
        return Ok(());
    }
    let info: m::SystemInfo = c.get("/info").await?;
    let node_id = info.swarm.and_then(|s| s.node_id).unwrap_or_default();
    print_join_command(c, &node_id, worker, manager, out).await
}

async fn leave(c: &mut Client, a: LeaveArgs, out: &mut Output) -> Result<(), CliError> {
    let path = if a.force {
        "/swarm/leave?force=1"
    } else {
        "/swarm/leave"
    };
    c.post_empty(path).await?;
    out.println("Node left the swarm.");
    Ok(())
}

async fn update(c: &mut Client, a: UpdateArgs, out: &mut Output) -> Result<(), CliError> {
    let sw: m::Swarm = c.get("/swarm").await?;
    let version = sw.version.and_then(|v| v.index).unwrap_or(0);
    let mut spec = sw.spec.unwrap_or_default();
    let was_locked = spec
        .encryption_config
        .as_ref()
        .and_then(|e| e.auto_lock_managers)
        .unwrap_or(false);
    a.spec.merge_into(&mut spec);
    let now_locked = spec
        .encryption_config
        .as_ref()
        .and_then(|e| e.auto_lock_managers)
        .unwrap_or(false);
    c.post(&format!("/swarm/update?version={version}"), &spec)
        .await?;
    out.println("Swarm updated.");
    if now_locked && !was_locked {
        let key: m::UnlockKeyResponse = c.get("/swarm/unlockkey").await?;
        print_unlock_command(out, key.unlock_key.as_deref().unwrap_or(""));
    }
    Ok(())
}
