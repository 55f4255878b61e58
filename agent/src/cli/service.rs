//! `apiary service ...`: create, inspect, logs, ls, ps, rm, scale, update
//! (docker's `service` commands), plus the task listing `node ps` shares.

mod health;
mod logs;
mod progress;
pub(crate) mod rollout;
pub(crate) mod spec;
pub(crate) mod tasks;

use std::collections::HashMap;
use std::io::Write;

use bollard_stubs::models as m;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{decode, encode_query, encode_segment};
use super::node::filters_json;
use super::table::{bytes_size, indent_json, natural_cmp, render_template, tabwrite};
use super::{CliError, Client, Output};
use spec::{
    parse_cpus, parse_dur, parse_file_ref, parse_memory, parse_mount, parse_placement_pref,
    parse_publish, parse_restart_condition, FileRef,
};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// Display detailed information on one or more services
    Inspect(InspectArgs),
    /// Fetch the logs of a service or task
    Logs(LogsArgs),
    /// List services
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services
    Ps(PsArgs),
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Scale one or multiple replicated services
    Scale(ScaleArgs),
    /// Revert changes to a service's configuration
    Rollback(RollbackArgs),
    /// Update a service
    Update(Box<UpdateArgs>),
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Service mode ("replicated", "global", "replicated-job" or "global-job")
    #[arg(long, default_value = "replicated")]
    pub mode: String,
    /// Number of job tasks to run concurrently (default: --replicas)
    #[arg(long = "max-concurrent")]
    pub max_concurrent: Option<u64>,
    /// Publish a port as a node port
    #[arg(short = 'p', long, value_parser = parse_publish)]
    pub publish: Vec<m::EndpointPortConfig>,
    /// Endpoint mode (vip or dnsrr)
    #[arg(long = "endpoint-mode", value_parser = parse_endpoint_mode)]
    pub endpoint_mode: Option<m::EndpointSpecModeEnum>,
    /// Set environment variables
    #[arg(short = 'e', long)]
    pub env: Vec<String>,
    /// Placement constraints
    #[arg(long)]
    pub constraint: Vec<String>,
    /// Add a placement preference
    #[arg(long = "placement-pref", value_parser = parse_placement_pref)]
    pub placement_pref: Vec<m::TaskSpecPlacementPreferences>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long = "replicas-max-per-node")]
    pub replicas_max_per_node: Option<u64>,
    /// Limit CPUs
    #[arg(long = "limit-cpu", value_parser = parse_cpus)]
    pub limit_cpu: Option<i64>,
    /// Limit Memory
    #[arg(long = "limit-memory", value_parser = parse_memory)]
    pub limit_memory: Option<i64>,
    /// Reserve CPUs
    #[arg(long = "reserve-cpu", value_parser = parse_cpus)]
    pub reserve_cpu: Option<i64>,
    /// Reserve Memory
    #[arg(long = "reserve-memory", value_parser = parse_memory)]
    pub reserve_memory: Option<i64>,
    /// Restart when condition is met ("none", "on-failure", "any")
    #[arg(long = "restart-condition", value_parser = parse_restart_condition)]
    pub restart_condition: Option<m::TaskSpecRestartPolicyConditionEnum>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long = "restart-delay", value_parser = parse_dur)]
    pub restart_delay: Option<i64>,
    /// Maximum number of restarts before giving up
    #[arg(long = "restart-max-attempts")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long = "restart-window", value_parser = parse_dur)]
    pub restart_window: Option<i64>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long = "stop-grace-period", value_parser = parse_dur)]
    pub stop_grace_period: Option<i64>,
    /// Signal to stop the container
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Service labels
    #[arg(short = 'l', long)]
    pub label: Vec<String>,
    /// Container labels
    #[arg(long = "container-label")]
    pub container_label: Vec<String>,
    /// Specify secrets to expose to the service
    #[arg(long, value_parser = parse_file_ref)]
    pub secret: Vec<FileRef>,
    /// Specify configurations to expose to the service
    #[arg(long, value_parser = parse_file_ref)]
    pub config: Vec<FileRef>,
    /// Attach a filesystem mount to the service
    #[arg(long, value_parser = parse_mount)]
    pub mount: Vec<m::Mount>,
    /// Network attachments (NAME, or name=NAME,alias=A)
    #[arg(long, value_parser = spec::parse_network)]
    pub network: Vec<m::NetworkAttachmentConfig>,
    #[command(flatten)]
    pub rollout: rollout::RolloutFlags,
    #[command(flatten)]
    pub health: health::HealthFlags,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not query the registry to resolve image digest (accepted; apiary never does)
    #[arg(long = "no-resolve-image")]
    pub no_resolve_image: bool,
    /// Send registry authentication details (from `apiary login`) to swarm agents
    #[arg(long = "with-registry-auth")]
    pub with_registry_auth: bool,
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (docker sets them as the container's Args)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Format output: "json" or a template like "{{.Spec.Name}}"
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m")
    #[arg(long)]
    pub since: Option<String>,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Do not neatly format logs
    #[arg(long)]
    pub raw: bool,
    /// Do not include task IDs in output
    #[arg(long = "no-task-ids")]
    pub no_task_ids: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Do not map IDs to names in output (accepted; names are always shown)
    #[arg(long = "no-resolve")]
    pub no_resolve: bool,
    /// Show extra details provided to logs (accepted; always asked for)
    #[arg(long)]
    pub details: bool,
    #[arg(value_name = "SERVICE|TASK")]
    pub target: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output: "table", "json", or a template like "{{.Name}}"
    #[arg(long)]
    pub format: Option<String>,
    /// Filter output based on conditions provided (id, name, mode, label)
    #[arg(short, long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Do not map IDs to names (accepted; names are always shown)
    #[arg(long = "no-resolve")]
    pub no_resolve: bool,
    /// Filter output based on conditions provided (desired-state, id, name, node)
    #[arg(short, long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
    /// Pretty-print tasks using a Go template
    #[arg(long)]
    pub format: Option<String>,
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

/// `node ps`'s flags (the same as `service ps`, nodes instead of services).
#[derive(Args, Debug)]
pub struct NodePsArgs {
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Do not map IDs to names (accepted; names are always shown)
    #[arg(long = "no-resolve")]
    pub no_resolve: bool,
    /// Filter output based on conditions provided (desired-state, id, name)
    #[arg(short, long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
    /// Pretty-print tasks using a Go template
    #[arg(long)]
    pub format: Option<String>,
    /// Nodes ("self" is this node, the default)
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    #[arg(value_name = "SERVICE=REPLICAS", required = true)]
    pub scales: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Service image tag
    #[arg(long)]
    pub image: Option<String>,
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Number of job tasks to run concurrently
    #[arg(long = "max-concurrent")]
    pub max_concurrent: Option<u64>,
    /// Add or update an environment variable
    #[arg(long = "env-add")]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    /// Add a network
    #[arg(long = "network-add", value_parser = spec::parse_network)]
    pub network_add: Vec<m::NetworkAttachmentConfig>,
    /// Remove a network
    #[arg(long = "network-rm")]
    pub network_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long = "publish-add", value_parser = parse_publish)]
    pub publish_add: Vec<m::EndpointPortConfig>,
    /// Remove a published port by its target port (PORT[/PROTOCOL])
    #[arg(long = "publish-rm")]
    pub publish_rm: Vec<String>,
    /// Endpoint mode (vip or dnsrr)
    #[arg(long = "endpoint-mode", value_parser = parse_endpoint_mode)]
    pub endpoint_mode: Option<m::EndpointSpecModeEnum>,
    #[command(flatten)]
    pub rollout: rollout::RolloutFlags,
    #[command(flatten)]
    pub health: health::HealthFlags,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    /// Rollback to previous specification
    #[arg(long)]
    pub rollback: bool,
    /// Send registry authentication details (from `apiary login`) to swarm agents
    #[arg(long = "with-registry-auth")]
    pub with_registry_auth: bool,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

pub async fn run(c: &mut Client, cmd: ServiceCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        ServiceCommand::Create(a) => create(c, *a, out).await,
        ServiceCommand::Inspect(a) => inspect(c, a, out).await,
        ServiceCommand::Logs(a) => service_logs(c, a).await,
        ServiceCommand::Ls(a) => ls(c, a, out).await,
        ServiceCommand::Ps(a) => ps(c, a, out).await,
        ServiceCommand::Rm(a) => rm(c, a, out).await,
        ServiceCommand::Scale(a) => scale(c, a, out).await,
        ServiceCommand::Rollback(a) => rollback(c, a, out).await,
        ServiceCommand::Update(a) => update(c, *a, out).await,
    }
}

fn finish(mut errs: Vec<CliError>) -> Result<(), CliError> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => Err(CliError::Many(errs)),
    }
}

/// Resolves `--secret`/`--config` names to IDs like the docker CLI
/// (GET /secrets/{name}, /configs/{name}).
async fn resolve_ref(c: &mut Client, kind: &str, r: &FileRef) -> Result<String, CliError> {
    #[derive(serde::Deserialize)]
    struct Obj {
        #[serde(rename = "ID")]
        id: String,
    }
    let path = format!("/{kind}s/{}", encode_segment(&r.source));
    match c.get::<Obj>(&path).await {
        Ok(o) => Ok(o.id),
        Err(CliError::Daemon(_)) => Err(CliError::Daemon(format!(
            "{kind} not found: {} (create it first with `apiary {kind} create {} FILE`)",
            r.source, r.source
        ))),
        Err(e) => Err(e),
    }
}

/// `busybox` → `busybox:latest`, as the docker CLI normalises images before
/// sending them (digests and explicit tags are kept).
pub fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The spec `service create` sends, before secrets and configs are resolved.
pub fn build_spec(a: &CreateArgs) -> Result<m::ServiceSpec, CliError> {
    let mode = match a.mode.as_str() {
        "replicated" => m::ServiceSpecMode {
            replicated: Some(m::ServiceSpecModeReplicated {
                replicas: Some(a.replicas.unwrap_or(1) as i64),
            }),
            ..Default::default()
        },
        "global" => {
            if a.replicas.is_some() {
                return Err(CliError::Client(
                    "replicas can only be used with replicated or replicated-job mode".into(),
                ));
            }
            m::ServiceSpecMode {
                global: Some(HashMap::new()),
                ..Default::default()
            }
        }
        "replicated-job" => {
            // As the docker CLI: --replicas is the total, and at most that
            // many at once unless --max-concurrent says otherwise.
            let total = a.replicas.unwrap_or(1) as i64;
            m::ServiceSpecMode {
                replicated_job: Some(m::ServiceSpecModeReplicatedJob {
                    max_concurrent: Some(a.max_concurrent.map_or(total, |c| c as i64)),
                    total_completions: Some(total),
                }),
                ..Default::default()
            }
        }
        "global-job" => {
            if a.replicas.is_some() {
                return Err(CliError::Client(
                    "replicas can only be used with replicated or replicated-job mode".into(),
                ));
            }
            m::ServiceSpecMode {
                global_job: Some(HashMap::new()),
                ..Default::default()
            }
        }
        other => {
            return Err(CliError::Client(format!(
            "invalid service mode {other:?}: use replicated, global, replicated-job or global-job"
        )))
        }
    };
    if a.max_concurrent.is_some() && a.mode != "replicated-job" {
        return Err(CliError::Client(
            "max-concurrent can only be used with replicated-job mode".into(),
        ));
    }
    let container = m::TaskSpecContainerSpec {
        image: Some(with_default_tag(&a.image)),
        args: (!a.args.is_empty()).then(|| a.args.clone()),
        env: (!a.env.is_empty()).then(|| a.env.clone()),
        labels: spec::labels(&a.container_label),
        dir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        stop_signal: a.stop_signal.clone(),
        stop_grace_period: a.stop_grace_period,
        mounts: (!a.mount.is_empty()).then(|| a.mount.clone()),
        health_check: a.health.for_create()?,
        ..Default::default()
    };
    let resources = (a.limit_cpu.is_some()
        || a.limit_memory.is_some()
        || a.reserve_cpu.is_some()
        || a.reserve_memory.is_some())
    .then(|| m::TaskSpecResources {
        limits: (a.limit_cpu.is_some() || a.limit_memory.is_some()).then_some(m::Limit {
            nano_cpus: a.limit_cpu,
            memory_bytes: a.limit_memory,
            pids: None,
        }),
        reservations: (a.reserve_cpu.is_some() || a.reserve_memory.is_some()).then_some(
            m::ResourceObject {
                nano_cpus: a.reserve_cpu,
                memory_bytes: a.reserve_memory,
                generic_resources: None,
            },
        ),
    });
    let restart = (a.restart_condition.is_some()
        || a.restart_delay.is_some()
        || a.restart_max_attempts.is_some()
        || a.restart_window.is_some())
    .then(|| m::TaskSpecRestartPolicy {
        condition: a.restart_condition,
        delay: a.restart_delay,
        max_attempts: a.restart_max_attempts.map(|x| x as i64),
        window: a.restart_window,
    });
    let placement = (!a.constraint.is_empty()
        || !a.placement_pref.is_empty()
        || a.replicas_max_per_node.is_some())
    .then(|| m::TaskSpecPlacement {
        constraints: (!a.constraint.is_empty()).then(|| a.constraint.clone()),
        preferences: (!a.placement_pref.is_empty()).then(|| a.placement_pref.clone()),
        max_replicas: a.replicas_max_per_node.map(|x| x as i64),
        platforms: None,
    });
    let mut spec = m::ServiceSpec {
        name: a.name.clone(),
        labels: spec::labels(&a.label),
        task_template: Some(m::TaskSpec {
            container_spec: Some(container),
            resources,
            restart_policy: restart,
            placement,
            networks: (!a.network.is_empty()).then(|| a.network.clone()),
            ..Default::default()
        }),
        mode: Some(mode),
        endpoint_spec: (!a.publish.is_empty() || a.endpoint_mode.is_some()).then(|| {
            m::EndpointSpec {
                mode: a.endpoint_mode,
                ports: (!a.publish.is_empty()).then(|| a.publish.clone()),
            }
        }),
        ..Default::default()
    };
    a.rollout.apply(&mut spec);
    Ok(spec)
}

async fn create(c: &mut Client, a: CreateArgs, out: &mut Output) -> Result<(), CliError> {
    let mut spec = build_spec(&a)?;
    let mut secrets = Vec::new();
    for r in &a.secret {
        let id = resolve_ref(c, "secret", r).await?;
        secrets.push(m::TaskSpecContainerSpecSecrets {
            file: Some(m::TaskSpecContainerSpecFile {
                name: Some(r.target.clone()),
                uid: Some(r.uid.clone()),
                gid: Some(r.gid.clone()),
                mode: Some(r.mode),
            }),
            secret_id: Some(id),
            secret_name: Some(r.source.clone()),
        });
    }
    let mut configs = Vec::new();
    for r in &a.config {
        let id = resolve_ref(c, "config", r).await?;
        configs.push(m::TaskSpecContainerSpecConfigs {
            file: Some(m::TaskSpecContainerSpecFile1 {
                name: Some(r.target.clone()),
                uid: Some(r.uid.clone()),
                gid: Some(r.gid.clone()),
                mode: Some(r.mode),
            }),
            runtime: None,
            config_id: Some(id),
            config_name: Some(r.source.clone()),
        });
    }
    if let Some(cs) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
    {
        cs.secrets = (!secrets.is_empty()).then_some(secrets);
        cs.configs = (!configs.is_empty()).then_some(configs);
    }
    let headers = if a.with_registry_auth {
        super::login::registry_auth_header(&a.image)?
    } else {
        Vec::new()
    };
    let ans = c.post_with("/services/create", &spec, &headers).await?;
    let created: m::ServiceCreateResponse = decode(&ans.body, "/services/create")?;
    let id = created.id.unwrap_or_default();
    for w in created.warnings.unwrap_or_default() {
        out.eprintln(w);
    }
    out.println(&id);
    if !a.detach && !a.quiet {
        out.flush();
        progress::wait(c, &id).await?;
    }
    Ok(())
}

async fn get_service(c: &mut Client, name: &str) -> Result<m::Service, CliError> {
    c.get(&format!("/services/{}", encode_segment(name))).await
}

async fn inspect(c: &mut Client, a: InspectArgs, out: &mut Output) -> Result<(), CliError> {
    let mut raws = Vec::new();
    let mut errs = Vec::new();
    for s in &a.services {
        match c.get_raw(&format!("/services/{}", encode_segment(s))).await {
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
            let items: Vec<String> = raws
                .iter()
                .map(|r| String::from_utf8_lossy(r).to_string())
                .collect();
            out.println(indent_json(format!("[{}]", items.join(",")).as_bytes()));
        }
        "pretty" => {
            for raw in &raws {
                let svc: m::Service = decode(raw, "/services")?;
                // Docker's template starts and ends with a blank line.
                out.println(pretty_service(&svc));
            }
        }
        "json" => {
            for raw in &raws {
                let v: serde_json::Value = decode(raw, "/services")?;
                out.println(v.to_string());
            }
        }
        tmpl => {
            for raw in &raws {
                let v: serde_json::Value = decode(raw, "/services")?;
                out.println(render_template(tmpl, &v).map_err(CliError::Client)?);
            }
        }
    }
    finish(errs)
}

/// `service inspect --pretty`, after the docker CLI's template (literal tabs).
pub fn pretty_service(s: &m::Service) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task_template.clone().unwrap_or_default();
    let cs = task.container_spec.clone().unwrap_or_default();
    let mut o = String::new();
    o.push_str(&format!("\nID:\t\t{}\n", s.id.as_deref().unwrap_or("")));
    o.push_str(&format!(
        "Name:\t\t{}\n",
        spec.name.as_deref().unwrap_or("")
    ));
    let mut labels: Vec<_> = spec
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.sort();
    if !labels.is_empty() {
        o.push_str("Labels:\n");
        for (k, v) in labels {
            if v.is_empty() {
                o.push_str(&format!(" {k}\n"));
            } else {
                o.push_str(&format!(" {k}={v}\n"));
            }
        }
    }
    let mode = spec.mode.clone().unwrap_or_default();
    if mode.global.is_some() {
        o.push_str("Service Mode:\tGlobal\n");
    } else if mode.global_job.is_some() {
        o.push_str("Service Mode:\tGlobal Job\n");
    } else if let Some(j) = &mode.replicated_job {
        o.push_str("Service Mode:\tReplicated Job\n");
        if let Some(c) = j.max_concurrent {
            o.push_str(&format!(" Max Concurrent:\t{c}\n"));
        }
        if let Some(t) = j.total_completions {
            o.push_str(&format!(" Total Completions:\t{t}\n"));
        }
    } else {
        o.push_str("Service Mode:\tReplicated\n");
        if let Some(r) = mode.replicated.and_then(|r| r.replicas) {
            o.push_str(&format!(" Replicas:\t{r}\n"));
        }
    }
    if let Some(u) = &s.update_status {
        o.push_str("UpdateStatus:\n");
        o.push_str(&format!(
            " State:\t\t{}\n",
            u.state.map(|x| x.to_string()).unwrap_or_default()
        ));
        if let Some(started) = u.started_at.as_deref() {
            o.push_str(&format!(" Started:\t{}\n", super::objects::ago(started)));
        }
        if u.state == Some(m::ServiceUpdateStatusStateEnum::COMPLETED) {
            if let Some(done) = u.completed_at.as_deref() {
                o.push_str(&format!(" Completed:\t{}\n", super::objects::ago(done)));
            }
        }
        o.push_str(&format!(
            " Message:\t{}\n",
            u.message.as_deref().unwrap_or_default()
        ));
    }
    o.push_str("Placement:\n");
    let placement = task.placement.clone().unwrap_or_default();
    if let Some(cons) = placement.constraints.filter(|c| !c.is_empty()) {
        o.push_str(&format!(" Constraints:\t[{}]\n", cons.join(" ")));
    }
    if let Some(prefs) = placement.preferences.filter(|p| !p.is_empty()) {
        let p: Vec<String> = prefs
            .iter()
            .filter_map(|p| p.spread.as_ref()?.spread_descriptor.clone())
            .map(|d| format!("{{Spread={d}}}"))
            .collect();
        o.push_str(&format!(" Preferences:   [{}]\n", p.join(" ")));
    }
    if let Some(mx) = placement.max_replicas.filter(|x| *x > 0) {
        o.push_str(&format!(" Max Replicas Per Node:   {mx}\n"));
    }
    if let Some(u) = &spec.update_config {
        o.push_str("UpdateConfig:\n");
        o.push_str(&format!(" Parallelism:\t{}\n", u.parallelism.unwrap_or(0)));
        if let Some(d) = u.delay.filter(|d| *d > 0) {
            o.push_str(&format!(" Delay:\t\t{}\n", super::opts::format_duration(d)));
        }
        o.push_str(&format!(
            " On failure:\t{}\n",
            u.failure_action
                .map(|x| x.to_string())
                .unwrap_or_else(|| "pause".into())
        ));
        if let Some(mo) = u.monitor.filter(|d| *d > 0) {
            o.push_str(&format!(
                " Monitoring Period: {}\n",
                super::opts::format_duration(mo)
            ));
        }
        o.push_str(&format!(
            " Max failure ratio: {}\n",
            u.max_failure_ratio.unwrap_or(0.0)
        ));
        o.push_str(&format!(
            " Update order:      {}\n",
            u.order
                .map(|x| x.to_string())
                .unwrap_or_else(|| "stop-first".into())
        ));
    }
    if let Some(r) = &spec.rollback_config {
        o.push_str("RollbackConfig:\n");
        o.push_str(&format!(" Parallelism:\t{}\n", r.parallelism.unwrap_or(0)));
        if let Some(d) = r.delay.filter(|d| *d > 0) {
            o.push_str(&format!(" Delay:\t\t{}\n", super::opts::format_duration(d)));
        }
        o.push_str(&format!(
            " On failure:\t{}\n",
            r.failure_action
                .map(|x| x.to_string())
                .unwrap_or_else(|| "pause".into())
        ));
        if let Some(mo) = r.monitor.filter(|d| *d > 0) {
            o.push_str(&format!(
                " Monitoring Period: {}\n",
                super::opts::format_duration(mo)
            ));
        }
        o.push_str(&format!(
            " Max failure ratio: {}\n",
            r.max_failure_ratio.unwrap_or(0.0)
        ));
        o.push_str(&format!(
            " Rollback order:    {}\n",
            r.order
                .map(|x| x.to_string())
                .unwrap_or_else(|| "stop-first".into())
        ));
    }
    o.push_str("ContainerSpec:\n");
    o.push_str(&format!(
        " Image:\t\t{}\n",
        cs.image.as_deref().unwrap_or("")
    ));
    if let Some(args) = cs.args.as_ref().filter(|a| !a.is_empty()) {
        o.push_str(" Args:\t\t");
        for a in args {
            o.push_str(a);
            o.push(' ');
        }
        o.push('\n');
    }
    if let Some(env) = cs.env.as_ref().filter(|e| !e.is_empty()) {
        o.push_str(" Env:\t\t");
        for e in env {
            o.push_str(e);
            o.push(' ');
        }
        o.push('\n');
    }
    if let Some(init) = cs.init {
        o.push_str(&format!(" Init:\t\t{init}\n"));
    }
    if let Some(d) = cs.dir.as_deref().filter(|d| !d.is_empty()) {
        o.push_str(&format!(" Dir:\t\t{d}\n"));
    }
    if let Some(u) = cs.user.as_deref().filter(|u| !u.is_empty()) {
        o.push_str(&format!(" User: {u}\n"));
    }
    if let Some(mounts) = cs.mounts.as_ref().filter(|m| !m.is_empty()) {
        o.push_str("Mounts:\n");
        for mt in mounts {
            o.push_str(&format!(
                " Target:\t{}\n  Source:\t{}\n  ReadOnly:\t{}\n  Type:\t\t{}\n",
                mt.target.as_deref().unwrap_or(""),
                mt.source.as_deref().unwrap_or(""),
                mt.read_only.unwrap_or(false),
                mt.typ.map(|t| t.to_string()).unwrap_or_default()
            ));
        }
    }
    let res = task.resources.clone().unwrap_or_default();
    let limits = res.limits.clone().unwrap_or_default();
    let reserv = res.reservations.clone().unwrap_or_default();
    let has_limits = limits.nano_cpus.unwrap_or(0) > 0 || limits.memory_bytes.unwrap_or(0) > 0;
    let has_reserv = reserv.nano_cpus.unwrap_or(0) > 0 || reserv.memory_bytes.unwrap_or(0) > 0;
    if has_limits || has_reserv {
        o.push_str("Resources:\n");
        let mut block = |title: &str, cpu: Option<i64>, mem: Option<i64>| {
            o.push_str(&format!(" {title}:\n"));
            if let Some(cpu) = cpu.filter(|x| *x > 0) {
                o.push_str(&format!("  CPU:\t\t{}\n", spec::cpus_string(cpu)));
            }
            if let Some(mem) = mem.filter(|x| *x > 0) {
                o.push_str(&format!("  Memory:\t{}\n", bytes_size(mem as f64)));
            }
        };
        if has_reserv {
            block("Reservations", reserv.nano_cpus, reserv.memory_bytes);
        }
        if has_limits {
            block("Limits", limits.nano_cpus, limits.memory_bytes);
        }
    }
    let ep = spec.endpoint_spec.clone().unwrap_or_default();
    o.push_str(&format!(
        "Endpoint Mode:\t{}\n",
        // As docker: the value in the spec, empty when none was set.
        ep.mode.map(|x| x.to_string()).unwrap_or_default()
    ));
    if let Some(ports) = ep.ports.filter(|p| !p.is_empty()) {
        o.push_str("Ports:\n");
        for p in ports {
            o.push_str(&format!(
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}\n",
                p.published_port.unwrap_or(0),
                p.protocol.map(|x| x.to_string()).unwrap_or_default(),
                p.target_port.unwrap_or(0),
                p.publish_mode.map(|x| x.to_string()).unwrap_or_default()
            ));
        }
    }
    o
}

/// `PORTS` of `service ls`: ingress ports the agent lists in
/// `Endpoint.Ports`, plus host-mode ports from the spec (which docker shows
/// only per task, but a service-level view is more useful here).
pub fn service_ports(s: &m::Service) -> String {
    let mut ports: Vec<m::EndpointPortConfig> = s
        .endpoint
        .as_ref()
        .and_then(|e| e.ports.clone())
        .unwrap_or_default();
    let spec_ports = s
        .spec
        .as_ref()
        .and_then(|sp| sp.endpoint_spec.as_ref())
        .and_then(|e| e.ports.clone())
        .unwrap_or_default();
    for p in spec_ports {
        if p.publish_mode == Some(m::EndpointPortConfigPublishModeEnum::HOST) && !ports.contains(&p)
        {
            ports.push(p);
        }
    }
    ports
        .iter()
        .map(tasks::port_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `service ls` row with docker's field names.
pub fn service_row(s: &m::Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    let mode = spec.mode.clone().unwrap_or_default();
    let st = s.service_status.clone().unwrap_or_default();
    let max = spec
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.max_replicas)
        .unwrap_or(0);
    let mut replicas = format!(
        "{}/{}",
        st.running_tasks.unwrap_or(0),
        st.desired_tasks.unwrap_or(0)
    );
    let (running, desired, completed) = (
        st.running_tasks.unwrap_or(0),
        st.desired_tasks.unwrap_or(0),
        st.completed_tasks.unwrap_or(0),
    );
    // Docker's: a job shows its progress as a whole instead of the per
    // node maximum.
    if let Some(j) = &mode.replicated_job {
        let total = j.total_completions.unwrap_or(0);
        replicas = format!("{running}/{desired} ({completed}/{total} completed)");
    } else if mode.global_job.is_some() {
        let total = desired + completed;
        replicas = format!("{running}/{desired} ({completed}/{total} completed)");
    } else if max > 0 {
        replicas.push_str(&format!(" (max {max} per node)"));
    }
    let mode_name = if mode.replicated_job.is_some() {
        "replicated job"
    } else if mode.global_job.is_some() {
        "global job"
    } else if mode.global.is_some() {
        "global"
    } else {
        "replicated"
    };
    let image = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let id = s.id.clone().unwrap_or_default();
    json!({
        "ID": tasks::trunc_id(&id),
        "Name": spec.name.unwrap_or_default(),
        "Mode": mode_name,
        "Replicas": replicas,
        "Image": tasks::display_image(&image),
        "Ports": service_ports(s),
    })
}

/// Docker's default `service ls` table.
pub fn render_service_table(rows: &[serde_json::Value]) -> String {
    let mut t = String::from("ID\tNAME\tMODE\tREPLICAS\tIMAGE\tPORTS\n");
    let f = |r: &serde_json::Value, k: &str| {
        r.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    for r in rows {
        t.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            f(r, "ID"),
            f(r, "Name"),
            f(r, "Mode"),
            f(r, "Replicas"),
            f(r, "Image"),
            f(r, "Ports"),
        ));
    }
    tabwrite(&t)
}

async fn ls(c: &mut Client, a: LsArgs, out: &mut Output) -> Result<(), CliError> {
    let mut path = "/services?status=1".to_string();
    if !a.filter.is_empty() {
        path.push_str(&format!(
            "&filters={}",
            encode_query(&filters_json(&a.filter)?)
        ));
    }
    let mut services: Vec<m::Service> = c.get(&path).await?;
    let name = |s: &m::Service| {
        s.spec
            .as_ref()
            .and_then(|sp| sp.name.clone())
            .unwrap_or_default()
    };
    services.sort_by(|x, y| natural_cmp(&name(x), &name(y)));
    let rows: Vec<serde_json::Value> = services.iter().map(service_row).collect();
    match a.format.as_deref().unwrap_or("") {
        "" | "table" if a.quiet => {
            // `-q` prints full IDs, as docker does.
            for s in &services {
                out.println(s.id.as_deref().unwrap_or(""));
            }
        }
        "" | "table" => out.print(render_service_table(&rows)),
        "json" => {
            for r in &rows {
                out.println(r.to_string());
            }
        }
        other => {
            let headers = json!({"ID": "ID", "Name": "NAME", "Mode": "MODE",
                "Replicas": "REPLICAS", "Image": "IMAGE", "Ports": "PORTS"});
            out.print(tasks::render_rows(other, &headers, &rows)?);
        }
    }
    Ok(())
}

/// Service ID → name, for task names.
async fn service_names(c: &mut Client) -> Result<HashMap<String, String>, CliError> {
    let services: Vec<m::Service> = c.get("/services").await?;
    Ok(services
        .into_iter()
        .filter_map(|s| Some((s.id?, s.spec?.name?)))
        .collect())
}

/// Node ID → hostname, for the NODE column.
async fn node_names(c: &mut Client) -> Result<HashMap<String, String>, CliError> {
    let nodes: Vec<m::Node> = c.get("/nodes").await?;
    Ok(nodes
        .into_iter()
        .filter_map(|n| Some((n.id?, n.description?.hostname?)))
        .collect())
}

/// Lists tasks matching `filters` plus the user's `--filter`s and prints them.
#[allow(clippy::too_many_arguments)]
async fn print_tasks(
    c: &mut Client,
    key: &str,
    ids: &[String],
    user_filters: &[String],
    quiet: bool,
    no_trunc: bool,
    format: Option<&str>,
    out: &mut Output,
) -> Result<(), CliError> {
    let mut filters: serde_json::Value =
        serde_json::from_str(&filters_json(user_filters)?).unwrap_or_else(|_| json!({}));
    let mut wanted = serde_json::Map::new();
    for id in ids {
        wanted.insert(id.clone(), json!(true));
    }
    filters[key] = serde_json::Value::Object(wanted);
    let tasks: Vec<m::Task> = c
        .get(&format!(
            "/tasks?filters={}",
            encode_query(&filters.to_string())
        ))
        .await?;
    let services = service_names(c).await?;
    let nodes = node_names(c).await?;
    let view = tasks::PsView {
        services: &services,
        nodes: &nodes,
        now: time::OffsetDateTime::now_utc(),
        trunc: !no_trunc,
    };
    out.print(tasks::render_ps(&tasks, &view, quiet, format)?);
    Ok(())
}

async fn ps(c: &mut Client, a: PsArgs, out: &mut Output) -> Result<(), CliError> {
    let mut ids = Vec::new();
    let mut errs = Vec::new();
    for s in &a.services {
        match get_service(c, s).await {
            Ok(svc) => ids.push(svc.id.unwrap_or_default()),
            Err(CliError::Daemon(_)) => {
                errs.push(CliError::Daemon(format!("no such service: {s}")))
            }
            Err(e) => return Err(e),
        }
    }
    if !errs.is_empty() {
        return finish(errs);
    }
    print_tasks(
        c,
        "service",
        &ids,
        &a.filter,
        a.quiet,
        a.no_trunc,
        a.format.as_deref(),
        out,
    )
    .await
}

/// `node ps [NODE...]`: the tasks on those nodes (default this node).
pub async fn node_ps(c: &mut Client, a: NodePsArgs, out: &mut Output) -> Result<(), CliError> {
    let names = if a.nodes.is_empty() {
        vec!["self".to_string()]
    } else {
        a.nodes.clone()
    };
    let mut ids = Vec::new();
    for n in &names {
        let id = if n == "self" {
            let info: m::SystemInfo = c.get("/info").await?;
            info.swarm
                .and_then(|s| s.node_id)
                .filter(|x| !x.is_empty())
                .ok_or_else(|| {
                    CliError::Client(
                        "this node is not part of a swarm: name a node (apiary node ls)".into(),
                    )
                })?
        } else {
            let node: m::Node = c.get(&format!("/nodes/{}", encode_segment(n))).await?;
            node.id.unwrap_or_else(|| n.clone())
        };
        ids.push(id);
    }
    print_tasks(
        c,
        "node",
        &ids,
        &a.filter,
        a.quiet,
        a.no_trunc,
        a.format.as_deref(),
        out,
    )
    .await
}

async fn rm(c: &mut Client, a: RmArgs, out: &mut Output) -> Result<(), CliError> {
    let mut errs = Vec::new();
    for s in &a.services {
        match c.delete(&format!("/services/{}", encode_segment(s))).await {
            Ok(_) => out.println(s),
            Err(e) => errs.push(e),
        }
    }
    finish(errs)
}

/// Reads a service, lets `change` edit its spec, writes it back with the
/// version read (the agent refuses a stale version: run the command again).
async fn update_spec(
    c: &mut Client,
    name: &str,
    change: &mut dyn FnMut(&mut m::ServiceSpec) -> Result<(), CliError>,
    with_registry_auth: bool,
) -> Result<String, CliError> {
    let svc = get_service(c, name).await?;
    let id = svc.id.clone().unwrap_or_else(|| name.to_string());
    let version = svc.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    let mut spec = svc.spec.unwrap_or_default();
    change(&mut spec)?;
    // The login of the registry of the image as updated.
    let headers = match spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.as_deref())
    {
        Some(image) if with_registry_auth => super::login::registry_auth_header(image)?,
        _ => Vec::new(),
    };
    let ans = c
        .post_with(
            &format!("/services/{}/update?version={version}", encode_segment(&id)),
            &spec,
            &headers,
        )
        .await?;
    if let Ok(resp) = decode::<m::ServiceUpdateResponse>(&ans.body, "/services/update") {
        for w in resp.warnings.unwrap_or_default() {
            eprintln!("{w}");
        }
    }
    Ok(id)
}

/// Parses `svc=N` arguments like docker (all malformed ones are reported
/// together before anything is changed).
pub fn parse_scales(args: &[String]) -> Result<Vec<(String, String)>, CliError> {
    let mut bad = Vec::new();
    let mut ok = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => ok.push((k.into(), v.into())),
            _ => bad.push(a.as_str()),
        }
    }
    if !bad.is_empty() {
        return Err(CliError::Client(format!(
            "invalid scale specifier '{}'.\nSee 'apiary service scale --help'.\n\nUsage:  apiary service scale SERVICE=REPLICAS [SERVICE=REPLICAS...]",
            bad.join("', '")
        )));
    }
    Ok(ok)
}

async fn scale(c: &mut Client, a: ScaleArgs, out: &mut Output) -> Result<(), CliError> {
    let scales = parse_scales(&a.scales)?;
    let mut errs = Vec::new();
    let mut done = Vec::new();
    for (name, value) in scales {
        let replicas: u64 = match value.parse() {
            Ok(n) => n,
            Err(e) => {
                errs.push(CliError::Client(format!(
                    "{name}: invalid replicas value {value}: strconv.ParseUint: parsing {value:?}: {}",
                    if value.starts_with('-') || value.chars().any(|c| !c.is_ascii_digit()) {
                        "invalid syntax".to_string()
                    } else {
                        e.to_string()
                    }
                )));
                continue;
            }
        };
        let mut change = |spec: &mut m::ServiceSpec| -> Result<(), CliError> {
            set_replicas(spec, replicas, "scale")
        };
        match update_spec(c, &name, &mut change, false).await {
            Ok(id) => {
                out.println(format!("{name} scaled to {replicas}"));
                done.push(id);
            }
            Err(CliError::Client(m)) | Err(CliError::Daemon(m)) => {
                errs.push(CliError::Client(format!("{name}: {m}")))
            }
            Err(e) => errs.push(e),
        }
    }
    if !a.detach {
        for id in &done {
            out.flush();
            progress::wait(c, id).await?;
        }
    }
    finish(errs)
}

/// `--replicas N` / `scale S=N`: a replicated service's replicas, a
/// replicated job's total completions (as the docker CLI).
fn set_replicas(spec: &mut m::ServiceSpec, n: u64, what: &str) -> Result<(), CliError> {
    let mode = spec.mode.get_or_insert_with(Default::default);
    if let Some(r) = mode.replicated.as_mut() {
        r.replicas = Some(n as i64);
    } else if let Some(j) = mode.replicated_job.as_mut() {
        j.total_completions = Some(n as i64);
    } else {
        return Err(CliError::Client(format!(
            "{what} can only be used with replicated or replicated-job mode"
        )));
    }
    Ok(())
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// `service update`'s changes to a spec (pure, so it is tested without an agent).
pub fn apply_update(a: &UpdateArgs, spec: &mut m::ServiceSpec) -> Result<(), CliError> {
    if let Some(r) = a.replicas {
        set_replicas(spec, r, "replicas")?;
    }
    if let Some(c) = a.max_concurrent {
        match spec.mode.as_mut().and_then(|md| md.replicated_job.as_mut()) {
            Some(j) => j.max_concurrent = Some(c as i64),
            None => {
                return Err(CliError::Client(
                    "max-concurrent can only be used with replicated-job mode".into(),
                ))
            }
        }
    }
    let task = spec.task_template.get_or_insert_with(Default::default);
    let cs = task.container_spec.get_or_insert_with(Default::default);
    if let Some(img) = &a.image {
        cs.image = Some(with_default_tag(img));
    }
    if !a.env_add.is_empty() || !a.env_rm.is_empty() {
        let mut env = cs.env.clone().unwrap_or_default();
        env.retain(|e| !a.env_rm.iter().any(|k| env_key(e) == env_key(k)));
        for add in &a.env_add {
            env.retain(|e| env_key(e) != env_key(add));
            env.push(add.clone());
        }
        cs.env = (!env.is_empty()).then_some(env);
    }
    if !a.constraint_add.is_empty() || !a.constraint_rm.is_empty() {
        let placement = task.placement.get_or_insert_with(Default::default);
        let mut cons = placement.constraints.clone().unwrap_or_default();
        cons.retain(|c| !a.constraint_rm.contains(c));
        for add in &a.constraint_add {
            if !cons.contains(add) {
                cons.push(add.clone());
            }
        }
        placement.constraints = (!cons.is_empty()).then_some(cons);
    }
    if !a.network_add.is_empty() || !a.network_rm.is_empty() {
        let mut nets = task.networks.clone().unwrap_or_default();
        nets.retain(|n| {
            !a.network_rm
                .iter()
                .any(|r| n.target.as_deref() == Some(r.as_str()))
        });
        for add in &a.network_add {
            if nets.iter().any(|n| n.target == add.target) {
                return Err(CliError::Client(format!(
                    "service is already attached to network {}",
                    add.target.as_deref().unwrap_or_default()
                )));
            }
            nets.push(add.clone());
        }
        task.networks = (!nets.is_empty()).then_some(nets);
    }
    if a.force {
        // Docker bumps ForceUpdate so every task is replaced even without
        // another change.
        task.force_update = Some(task.force_update.unwrap_or(0) + 1);
    }
    if !a.publish_add.is_empty() || !a.publish_rm.is_empty() || a.endpoint_mode.is_some() {
        let ep = spec.endpoint_spec.get_or_insert_with(Default::default);
        let mut ports = ep.ports.clone().unwrap_or_default();
        let proto = |p: &m::EndpointPortConfig| {
            p.protocol
                .map(|x| x.to_string())
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| "tcp".into())
        };
        for r in &a.publish_rm {
            let (target, pr) = parse_target(r)?;
            ports.retain(|p| !(p.target_port == Some(target) && proto(p) == pr));
        }
        for add in &a.publish_add {
            ports.retain(|p| !(p.target_port == add.target_port && proto(p) == proto(add)));
            ports.push(add.clone());
        }
        ep.ports = (!ports.is_empty()).then_some(ports);
        if a.endpoint_mode.is_some() {
            ep.mode = a.endpoint_mode;
        }
    }
    a.rollout.apply(spec);
    a.health.update(
        &mut spec
            .task_template
            .get_or_insert_with(Default::default)
            .container_spec
            .get_or_insert_with(Default::default)
            .health_check,
    )?;
    Ok(())
}

/// `service rollback`, and `service update --rollback`: the agent brings
/// the previous spec back (`?rollback=previous`; the spec sent along is
/// the current one, as docker sends it).
async fn rollback(c: &mut Client, a: RollbackArgs, out: &mut Output) -> Result<(), CliError> {
    let svc = get_service(c, &a.service).await?;
    let id = svc.id.clone().unwrap_or_else(|| a.service.clone());
    let version = svc.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    c.post_with(
        &format!(
            "/services/{}/update?version={version}&rollback=previous",
            encode_segment(&id)
        ),
        &svc.spec.unwrap_or_default(),
        &[],
    )
    .await?;
    out.println(&a.service);
    if !a.detach && !a.quiet {
        out.flush();
        progress::wait(c, &id).await?;
    }
    Ok(())
}

async fn update(c: &mut Client, mut a: UpdateArgs, out: &mut Output) -> Result<(), CliError> {
    if a.rollback {
        // Docker's rule: --rollback says everything.
        let base = m::ServiceSpec {
            task_template: Some(m::TaskSpec {
                container_spec: Some(Default::default()),
                ..Default::default()
            }),
            mode: Some(m::ServiceSpecMode {
                replicated: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut probe = base.clone();
        apply_update(&a, &mut probe)?;
        if probe != base || a.with_registry_auth {
            return Err(CliError::Client(
                "other flags may not be combined with --rollback".into(),
            ));
        }
        let r = RollbackArgs {
            detach: a.detach,
            quiet: a.quiet,
            service: a.service,
        };
        return rollback(c, r, out).await;
    }
    // Services keep their networks by ID: names given are resolved first
    // (the change itself is not async).
    for n in a.network_add.iter_mut() {
        if let Some(t) = n.target.clone() {
            n.target = Some(network_id(c, &t).await?);
        }
    }
    let mut rm = Vec::new();
    for n in &a.network_rm {
        rm.push(network_id(c, n).await?);
    }
    a.network_rm = rm;
    let mut change = |spec: &mut m::ServiceSpec| apply_update(&a, spec);
    let id = update_spec(c, &a.service, &mut change, a.with_registry_auth).await?;
    out.println(&a.service);
    if !a.detach && !a.quiet {
        out.flush();
        progress::wait(c, &id).await?;
    }
    Ok(())
}

/// A network's ID from its name, ID or ID prefix.
async fn network_id(c: &mut Client, name: &str) -> Result<String, CliError> {
    let n: serde_json::Value = c
        .get(&format!("/networks/{}", encode_segment(name)))
        .await?;
    Ok(n["Id"].as_str().unwrap_or(name).to_string())
}

fn parse_endpoint_mode(s: &str) -> Result<m::EndpointSpecModeEnum, String> {
    match s.to_ascii_lowercase().as_str() {
        "vip" => Ok(m::EndpointSpecModeEnum::VIP),
        "dnsrr" => Ok(m::EndpointSpecModeEnum::DNSRR),
        _ => Err(format!("invalid endpoint mode {s:?}: use vip or dnsrr")),
    }
}

/// `--publish-rm 80` / `80/udp`: (target, protocol).
fn parse_target(s: &str) -> Result<(i64, String), CliError> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port = port.parse::<i64>().map_err(|_| {
        CliError::Client(format!(
            "invalid --publish-rm {s:?}: give the target port, like 80 or 53/udp"
        ))
    })?;
    Ok((port, proto.to_ascii_lowercase()))
}

/// Converts `--since 42m` to unix seconds; timestamps pass through.
fn since_param(s: &str) -> String {
    match super::opts::parse_duration(s) {
        Ok(d) if d > 0 => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            let t = now - d as i128;
            format!("{}.{:09}", t / 1_000_000_000, t % 1_000_000_000)
        }
        _ => s.to_string(),
    }
}

/// Caches of what the log prefixes need, filled on first sight.
#[derive(Default)]
struct Names {
    nodes: HashMap<String, String>,
    services: HashMap<String, (String, usize)>,
    slots: HashMap<String, Option<i64>>,
}

impl Names {
    async fn node(&mut self, c: &mut Client, id: &str) -> String {
        if let Some(n) = self.nodes.get(id) {
            return n.clone();
        }
        let name = match c
            .get::<m::Node>(&format!("/nodes/{}", encode_segment(id)))
            .await
        {
            Ok(n) => n.description.and_then(|d| d.hostname).unwrap_or_default(),
            Err(_) => String::new(),
        };
        // An unknown node (removed since) is shown by its ID.
        let name = if name.is_empty() {
            id.to_string()
        } else {
            name
        };
        self.nodes.insert(id.to_string(), name.clone());
        name
    }

    /// Service name and the width of its largest slot number.
    async fn service(&mut self, c: &mut Client, id: &str) -> (String, usize) {
        if let Some(s) = self.services.get(id) {
            return s.clone();
        }
        let v = match get_service(c, id).await {
            Ok(s) => {
                let spec = s.spec.unwrap_or_default();
                let replicas = spec
                    .mode
                    .and_then(|m| m.replicated)
                    .and_then(|r| r.replicas)
                    .unwrap_or(0);
                (
                    spec.name.unwrap_or_else(|| id.to_string()),
                    replicas.to_string().len(),
                )
            }
            Err(_) => (id.to_string(), 0),
        };
        self.services.insert(id.to_string(), v.clone());
        v
    }

    async fn slot(&mut self, c: &mut Client, task_id: &str) -> Option<i64> {
        if let Some(s) = self.slots.get(task_id) {
            return *s;
        }
        let slot = c
            .get::<m::Task>(&format!("/tasks/{}", encode_segment(task_id)))
            .await
            .ok()
            .and_then(|t| t.slot);
        self.slots.insert(task_id.to_string(), slot);
        slot
    }
}

async fn service_logs(c: &mut Client, a: LogsArgs) -> Result<(), CliError> {
    let mut query = format!(
        "stdout=1&stderr=1&details=1&follow={}&timestamps={}&tail={}",
        u8::from(a.follow),
        u8::from(a.timestamps),
        encode_query(&a.tail)
    );
    if let Some(s) = &a.since {
        query.push_str(&format!("&since={}", encode_query(&since_param(s))));
    }
    let target = encode_segment(&a.target);
    let mut stream = match c.get_raw(&format!("/services/{target}")).await {
        Ok(_) => {
            c.get_stream(&format!("/services/{target}/logs?{query}"))
                .await?
        }
        Err(CliError::Daemon(_)) => match c.get_raw(&format!("/tasks/{target}")).await {
            Ok(_) => {
                c.get_stream(&format!("/tasks/{target}/logs?{query}"))
                    .await?
            }
            Err(CliError::Daemon(_)) => {
                return Err(CliError::Daemon(format!(
                    "no such task or service: {} (see apiary service ls / apiary service ps)",
                    a.target
                )))
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let mut demux = logs::Demux::default();
    let mut names = Names::default();
    while let Some(chunk) = stream.chunk().await? {
        demux.push(&chunk);
        while let Some(frame) = demux.next_frame().map_err(CliError::Client)? {
            let payload = String::from_utf8_lossy(&frame.payload);
            let payload = payload.strip_suffix('\n').unwrap_or(&payload);
            let line = logs::parse_payload(payload, a.timestamps).map_err(CliError::Client)?;
            let (svc, width) = names.service(c, &line.service_id).await;
            let node = names.node(c, &line.node_id).await;
            let slot = names.slot(c, &line.task_id).await;
            let prefix = logs::Prefix {
                service_name: &svc,
                slot,
                width,
                node_name: &node,
                no_task_ids: a.no_task_ids,
                no_trunc: a.no_trunc,
            };
            let text = logs::format_line(&line, &prefix, a.raw);
            // Written at once so `-f` shows each line as it arrives.
            let r = if frame.stream == 2 {
                writeln!(std::io::stderr().lock(), "{text}")
            } else {
                let mut o = std::io::stdout().lock();
                writeln!(o, "{text}").and_then(|_| o.flush())
            };
            if r.is_err() {
                // The reader went away (e.g. `| head`): stop quietly.
                return Ok(());
            }
        }
    }
    if demux.leftover() > 0 {
        return Err(CliError::Client(
            "the log stream ended in the middle of a line: the agent may have stopped".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod logs_for_tests {
    pub use super::logs::*;
}

#[cfg(test)]
pub(crate) mod progress_for_tests {
    pub use super::progress::*;
}
