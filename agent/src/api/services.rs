//! Engine API for services, tasks and their logs.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bollard_stubs::models as m;

use super::error::{ApiError, ApiResult};
use super::images::service_registry_auth;
use super::models::Filters;
use super::routes::{bool_param, json_body, query, version_param};
use crate::control::{
    Control, LogLine, LogsOptions, LogsTarget, ServiceView, TaskFilter, TaskView,
};

type Ctl<C> = State<Arc<C>>;

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub fn service_to_api(v: &ServiceView, with_status: bool) -> m::Service {
    let s = &v.service;
    m::Service {
        id: Some(s.id.0.clone()),
        version: Some(m::ObjectVersion {
            index: Some(s.version),
        }),
        created_at: non_empty(&s.created_at),
        updated_at: non_empty(&s.updated_at),
        spec: Some(s.spec.clone()),
        endpoint: Some(m::ServiceEndpoint {
            spec: Some(s.spec.endpoint_spec.clone().unwrap_or_default()),
            // Ports as published (an ingress port left out gets one from
            // 30000-32767 here); host-mode ports also show in each task's
            // PortStatus.
            ports: (!s.endpoint.ports.is_empty()).then(|| s.endpoint.ports.clone()),
            virtual_ips: (!v.vips.is_empty()).then(|| {
                v.vips
                    .iter()
                    .map(|(net, addr)| m::ServiceEndpointVirtualIps {
                        network_id: Some(net.clone()),
                        addr: Some(addr.clone()),
                    })
                    .collect()
            }),
        }),
        update_status: s.update_status.as_ref().map(|u| m::ServiceUpdateStatus {
            state: serde_json::from_value(serde_json::Value::String(u.state.as_str().into())).ok(),
            started_at: non_empty(&u.started_at),
            completed_at: u.completed_at.clone(),
            message: Some(u.message.clone()),
        }),
        service_status: with_status.then_some(m::ServiceServiceStatus {
            running_tasks: Some(v.running),
            desired_tasks: Some(v.desired),
            completed_tasks: Some(v.completed),
        }),
        // Each update of a job is a run of it: the spec version numbers
        // the runs, the last update (or the creation) started this one.
        job_status: s.job().map(|_| m::ServiceJobStatus {
            job_iteration: Some(m::ObjectVersion {
                index: Some(s.spec_version),
            }),
            last_execution: non_empty(&s.updated_at).or_else(|| non_empty(&s.created_at)),
        }),
    }
}

fn state_to_api(s: crate::store::TaskState) -> Option<m::TaskState> {
    serde_json::from_value(serde_json::Value::String(s.as_str().to_string())).ok()
}

/// A task as the Engine API shows it: bollard's model lacks
/// `NetworksAttachments`, which `docker inspect` of a task has.
#[derive(serde::Serialize)]
pub struct ApiTask {
    #[serde(flatten)]
    pub task: m::Task,
    #[serde(rename = "NetworksAttachments", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<serde_json::Value>,
}

pub fn task_with_networks(v: &TaskView) -> ApiTask {
    ApiTask {
        task: task_to_api(v),
        networks: v
            .networks
            .iter()
            .map(|(n, addr)| {
                // Swarm's network object (not the Engine's network list
                // entry), as in Docker's task inspect.
                serde_json::json!({
                    "Network": {
                        "ID": n.id.0,
                        "Version": {"Index": n.version},
                        "CreatedAt": n.created_at,
                        "UpdatedAt": n.updated_at,
                        "Spec": {
                            "Name": n.spec.name,
                            "Labels": n.spec.labels,
                            "DriverConfiguration": {"Name": n.spec.driver},
                            "Ingress": n.spec.ingress,
                            "Attachable": n.spec.attachable,
                            "Internal": n.spec.internal,
                            "Scope": "swarm",
                        },
                        "DriverState": {
                            "Name": n.spec.driver,
                            "Options": {"com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string()},
                        },
                        "IPAMOptions": {
                            "Driver": {"Name": "default"},
                            "Configs": [{"Subnet": n.pool.subnet, "Gateway": n.pool.gateway}],
                        },
                    },
                    "Addresses": [addr],
                })
            })
            .collect(),
    }
}

pub fn task_to_api(v: &TaskView) -> m::Task {
    let t = &v.task;
    // The ports the worker reports as published; a worker that reports
    // none (an older build) is taken at the service's word.
    let host_ports: Vec<m::EndpointPortConfig> = if t.status.ports.is_empty() {
        t.ports
            .iter()
            .filter(|p| p.publish_mode == Some(m::EndpointPortConfigPublishModeEnum::HOST))
            .cloned()
            .collect()
    } else {
        t.status
            .ports
            .iter()
            .map(|p| m::EndpointPortConfig {
                name: None,
                protocol: serde_json::from_value(serde_json::Value::String(p.protocol.clone()))
                    .ok(),
                target_port: Some(i64::from(p.target)),
                published_port: Some(i64::from(p.published)),
                publish_mode: Some(m::EndpointPortConfigPublishModeEnum::HOST),
            })
            .collect()
    };
    m::Task {
        id: Some(t.id.0.clone()),
        version: Some(m::ObjectVersion {
            index: Some(t.version),
        }),
        created_at: non_empty(&t.created_at),
        updated_at: non_empty(&t.updated_at),
        name: None,
        labels: Some(Default::default()),
        spec: Some(m::TaskSpec::clone(&t.spec)),
        service_id: Some(t.service_id.0.clone()),
        slot: (t.slot > 0).then_some(t.slot as i64),
        node_id: t.node_id.as_ref().map(|n| n.0.clone()),
        assigned_generic_resources: None,
        status: Some(m::TaskStatus {
            timestamp: non_empty(&t.status.timestamp),
            state: state_to_api(t.status.state),
            message: Some(t.status.message.clone()),
            err: t.status.err.clone(),
            container_status: Some(m::ContainerStatus {
                container_id: t.status.container_id.clone(),
                pid: t.status.pid,
                exit_code: t.status.exit_code,
            }),
            port_status: Some(m::PortStatus {
                ports: (t.status.state == crate::store::TaskState::Running
                    && !host_ports.is_empty())
                .then_some(host_ports),
            }),
        }),
        desired_state: if v.job && t.desired_state == crate::store::TaskState::Running {
            Some(m::TaskState::COMPLETE)
        } else {
            state_to_api(t.desired_state)
        },
        job_iteration: v.job.then_some(m::ObjectVersion {
            index: Some(t.spec_version),
        }),
    }
}

pub async fn services_list<C: Control>(
    State(c): Ctl<C>,
    uri: Uri,
) -> ApiResult<Json<Vec<m::Service>>> {
    let q = query(&uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    filters.validate(&["id", "label", "mode", "name"])?;
    let with_status = bool_param(&q, "status");
    let ids = filters.0.get("id").cloned().unwrap_or_default();
    let names = filters.0.get("name").cloned().unwrap_or_default();
    let modes = filters.0.get("mode").cloned().unwrap_or_default();
    let services = c.services().await?;
    Ok(Json(
        services
            .iter()
            .filter(|v| {
                ids.is_empty() || ids.iter().any(|i| v.service.id.0.starts_with(i.as_str()))
            })
            .filter(|v| {
                names.is_empty()
                    || names
                        .iter()
                        .any(|n| v.service.name().starts_with(n.as_str()))
            })
            .filter(|v| {
                modes.is_empty()
                    || modes
                        .iter()
                        .any(|mo| mo.as_str() == crate::store::mode_of(&v.service.spec))
            })
            .filter(|v| {
                let labels = v.service.spec.labels.as_ref();
                filters.labels_match(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
            })
            .map(|v| service_to_api(v, with_status))
            .collect(),
    ))
}

/// A service spec from a request body. Go decodes JSON keys without regard
/// to case and the docker CLI writes the health check as `Healthcheck` (its
/// Go field) where the API's schema, and so our types, say `HealthCheck`:
/// without this a `docker service create --health-cmd` lost its check.
fn spec_body(body: &Bytes) -> ApiResult<m::ServiceSpec> {
    let mut v: serde_json::Value = json_body(body)?;
    if let Some(cs) = v
        .pointer_mut("/TaskTemplate/ContainerSpec")
        .and_then(serde_json::Value::as_object_mut)
    {
        if let Some(h) = cs.remove("Healthcheck") {
            cs.entry("HealthCheck").or_insert(h);
        }
    }
    let bytes = serde_json::to_vec(&v)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    json_body(&Bytes::from(bytes))
}

pub async fn service_create<C: Control>(
    State(c): Ctl<C>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<m::ServiceCreateResponse>)> {
    let spec = spec_body(&body)?;
    let auth = service_registry_auth(&headers)?;
    let id = c.service_create(spec, auth).await?;
    Ok((
        StatusCode::CREATED,
        Json(m::ServiceCreateResponse {
            id: Some(id.0),
            warnings: None,
        }),
    ))
}

pub async fn service_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Json<m::Service>> {
    let _ = query(&uri)?;
    let v = c.service(&id).await?;
    Ok(Json(service_to_api(&v, true)))
}

pub async fn service_update<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<m::ServiceUpdateResponse>> {
    let q = query(&uri)?;
    let version = version_param(&q, "service")?;
    let spec = spec_body(&body)?;
    // Without new credentials the service keeps its own (Docker's
    // `registryAuthFrom=spec`; apiary keeps no previous ones to roll back to).
    let auth = service_registry_auth(&headers)?;
    match q.get("rollback").map(String::as_str) {
        // Docker sends the current spec along and ignores it.
        Some("previous") => c.service_rollback(&id, version).await?,
        None | Some("") => c.service_update(&id, version, spec, auth).await?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid rollback value {other:?}: the only one is \"previous\""
            )))
        }
    }
    Ok(Json(m::ServiceUpdateResponse { warnings: None }))
}

pub async fn service_remove<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.service_remove(&id).await?;
    Ok(StatusCode::OK)
}

pub async fn tasks_list<C: Control>(State(c): Ctl<C>, uri: Uri) -> ApiResult<Json<Vec<ApiTask>>> {
    let q = query(&uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    for key in filters.0.keys() {
        if !matches!(
            key.as_str(),
            "service" | "node" | "desired-state" | "id" | "name" | "label" | "_up-to-date"
        ) {
            return Err(ApiError::bad_request(format!(
                "invalid filter '{key}': use service, node, desired-state, id, name or label"
            )));
        }
    }
    let get = |k: &str| filters.0.get(k).cloned().unwrap_or_default();
    let f = TaskFilter {
        service: get("service"),
        node: get("node"),
        desired_state: get("desired-state"),
        id: get("id"),
        name: get("name"),
        up_to_date: !get("_up-to-date").is_empty(),
    };
    let mut tasks = c.tasks(f).await?;
    // A task's labels are its service's (`docker stack ps` filters tasks
    // by the stack's label).
    if filters.0.contains_key("label") {
        let services = c.services().await?;
        let labels: std::collections::HashMap<&str, &std::collections::HashMap<String, String>> =
            services
                .iter()
                .filter_map(|s| Some((s.service.id.0.as_str(), s.service.spec.labels.as_ref()?)))
                .collect();
        tasks.retain(|t| {
            let l = labels.get(t.task.service_id.0.as_str());
            filters.labels_match(|k| l.and_then(|l| l.get(k)).map(String::as_str))
        });
    }
    Ok(Json(tasks.iter().map(task_with_networks).collect()))
}

pub async fn task_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiTask>> {
    let v = c.task(&id).await?;
    Ok(Json(task_with_networks(&v)))
}

pub async fn service_logs<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    logs(c, LogsTarget::Service(id), &uri).await
}

pub async fn task_logs<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    logs(c, LogsTarget::Task(id), &uri).await
}

async fn logs<C: Control>(c: Arc<C>, target: LogsTarget, uri: &Uri) -> ApiResult<Response> {
    let q = query(uri)?;
    let stdout = bool_param(&q, "stdout");
    let stderr = bool_param(&q, "stderr");
    if !stdout && !stderr {
        return Err(ApiError::bad_request(
            "you must choose at least one stream (stdout=1 or stderr=1)",
        ));
    }
    let tail = match q.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("invalid tail value {n:?}: use a number or \"all\""))
        })?),
    };
    let since = match q.get("since").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(s) => Some(unix_or_rfc3339(s)?),
    };
    let opts = LogsOptions {
        follow: bool_param(&q, "follow"),
        tail,
        since,
        stdout,
        stderr,
    };
    let timestamps = bool_param(&q, "timestamps");
    let details = bool_param(&q, "details");
    let rx = c.logs(target, opts).await?;
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        let line = rx.recv().await?;
        let frame = frame(&line, timestamps, details);
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), rx))
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.docker.multiplexed-stream",
        )],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Docker's `since`: unix seconds (with optional fraction) or RFC 3339.
fn unix_or_rfc3339(s: &str) -> ApiResult<String> {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return Ok(s.to_string());
    }
    let secs: f64 = s.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid since value {s:?}: use unix seconds or an RFC 3339 time"
        ))
    })?;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128)
        .map_err(|e| ApiError::bad_request(format!("invalid since value {s:?}: {e}")))?;
    Ok(t.format(&Rfc3339).unwrap_or_default())
}

/// One line in Docker's multiplexed stream: an 8-byte header (stream, three
/// zero bytes, big-endian length) then `[timestamp ][details ]line`. The
/// docker CLI's `service logs` asks for details and reads the task and node
/// from them.
pub fn frame(l: &LogLine, timestamps: bool, details: bool) -> Vec<u8> {
    let mut payload = String::new();
    if timestamps {
        payload.push_str(&l.timestamp);
        payload.push(' ');
    }
    if details {
        payload.push_str(&format!(
            "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
            l.node_id, l.task.task.service_id, l.task.task.id
        ));
    }
    payload.push_str(&l.line);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(if l.stream == 2 { 2 } else { 1 });
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}
