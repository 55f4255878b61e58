//! The Engine API handlers: each one parses the request, makes one or two
//! control calls, and renders Docker's JSON.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bollard_stubs::models as m;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use super::models::{self, Filters, InitBody, JoinBody, NodeSpecBody};
use super::{API_VERSION, MIN_API_VERSION};
use crate::control::{Control, InitRequest, JoinRequest, LocalNodeState, SwarmInfo, SwarmUpdate};
use crate::store::ClusterSpec;

type Ctl<C> = State<Arc<C>>;

/// Create bodies may exceed axum's 2 MB default: a config just over its
/// 1000 KiB limit is ~1.4 MB of base64, and a little over that must still
/// reach the node to be refused with Swarm's size message, not a bare 413.
const OBJECT_BODY_LIMIT: usize = 4 << 20;
/// Image tarballs for `image load` (held in memory while imported: edge
/// images are small; bigger ones belong in the images directory).
const IMAGE_BODY_LIMIT: usize = 1 << 30;

pub fn router<C: Control>(control: Arc<C>) -> Router {
    Router::new()
        .route("/_ping", get(ping::<C>).head(ping::<C>))
        .route("/version", get(version::<C>))
        .route("/info", get(info::<C>))
        .route("/swarm", get(swarm_inspect::<C>))
        .route("/swarm/init", post(swarm_init::<C>))
        .route("/swarm/join", post(swarm_join::<C>))
        .route("/swarm/leave", post(swarm_leave::<C>))
        .route("/swarm/update", post(swarm_update::<C>))
        .route("/swarm/unlockkey", get(swarm_unlock_key::<C>))
        .route("/swarm/unlock", post(swarm_unlock::<C>))
        .route("/nodes", get(nodes_list::<C>))
        .route(
            "/nodes/{id}",
            get(node_inspect::<C>).delete(node_remove::<C>),
        )
        .route("/nodes/{id}/update", post(node_update::<C>))
        .route("/secrets", get(secrets_list::<C>))
        .route(
            "/secrets/create",
            post(secret_create::<C>).layer(DefaultBodyLimit::max(OBJECT_BODY_LIMIT)),
        )
        .route(
            "/secrets/{id}",
            get(secret_inspect::<C>).delete(secret_remove::<C>),
        )
        .route("/secrets/{id}/update", post(secret_update::<C>))
        .route("/configs", get(configs_list::<C>))
        .route(
            "/configs/create",
            post(config_create::<C>).layer(DefaultBodyLimit::max(OBJECT_BODY_LIMIT)),
        )
        .route(
            "/configs/{id}",
            get(config_inspect::<C>).delete(config_remove::<C>),
        )
        .route(
            "/configs/{id}/update",
            post(config_update::<C>).layer(DefaultBodyLimit::max(OBJECT_BODY_LIMIT)),
        )
        .route("/networks", get(super::networks::networks_list::<C>))
        .route(
            "/networks/create",
            post(super::networks::network_create::<C>),
        )
        .route(
            "/networks/prune",
            post(super::networks::networks_prune::<C>),
        )
        .route(
            "/networks/{id}",
            get(super::networks::network_inspect::<C>).delete(super::networks::network_remove::<C>),
        )
        .route("/events", get(super::events::events::<C>))
        .route("/services", get(super::services::services_list::<C>))
        .route(
            "/services/create",
            post(super::services::service_create::<C>),
        )
        .route(
            "/services/{id}",
            get(super::services::service_inspect::<C>).delete(super::services::service_remove::<C>),
        )
        .route(
            "/services/{id}/update",
            post(super::services::service_update::<C>),
        )
        .route(
            "/services/{id}/logs",
            get(super::services::service_logs::<C>),
        )
        .route(
            "/images/load",
            post(super::images::images_load::<C>).layer(DefaultBodyLimit::max(IMAGE_BODY_LIMIT)),
        )
        .route("/images/json", get(super::images::images_list::<C>))
        .route("/images/create", post(super::images::images_create::<C>))
        .route("/images/{*name}", get(super::images::image_inspect::<C>))
        .route(
            "/distribution/{*name}",
            get(super::images::distribution::<C>),
        )
        .route("/auth", post(super::images::auth::<C>))
        .route("/tasks", get(super::services::tasks_list::<C>))
        .route("/tasks/{id}", get(super::services::task_inspect::<C>))
        .route("/tasks/{id}/logs", get(super::services::task_logs::<C>))
        .fallback(|| async { ApiError::not_found("page not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(control)
}

/// Query parameters; a malformed query string is the caller's error.
pub(super) fn query(uri: &Uri) -> ApiResult<HashMap<String, String>> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}

/// Docker's lenient boolean query values (`httputils.BoolValue`).
pub(super) fn bool_param(q: &HashMap<String, String>, key: &str) -> bool {
    let v = q
        .get(key)
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    !matches!(v.as_str(), "" | "0" | "no" | "false" | "none")
}

pub(super) fn version_param(q: &HashMap<String, String>, what: &str) -> ApiResult<u64> {
    let raw = q.get("version").map(String::as_str).unwrap_or("");
    raw.trim()
        .parse::<u64>()
        .map_err(|e| ApiError::bad_request(format!("invalid {what} version '{raw}': {e}")))
}

/// Decodes a JSON body; errors name the field at fault.
pub(super) fn json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty: a JSON object is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body: field {path}: {inner}"))
        }
    })
}

/// The `Swarm` header of `/_ping`, as the docker CLI reads it.
pub fn swarm_status(info: &SwarmInfo) -> &'static str {
    match info.state {
        LocalNodeState::Active if info.is_manager => "active/manager",
        LocalNodeState::Active => "active/worker",
        other => other.as_str(),
    }
}

async fn ping<C: Control>(State(c): Ctl<C>, method: Method) -> Response {
    let info = c.swarm_info().await;
    let mut h = HeaderMap::new();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert("Swarm", HeaderValue::from_static(swarm_status(&info)));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if method == Method::HEAD {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return (h, "").into_response();
    }
    (h, "OK").into_response()
}

/// Docker names architectures as Go does.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "armv7l" | "armv6l" | "arm" => "arm",
        "i686" | "i386" | "x86" => "386",
        other => other,
    }
}

async fn version<C: Control>(State(c): Ctl<C>) -> Json<m::SystemVersion> {
    let h = c.host_info();
    let ver = env!("CARGO_PKG_VERSION").to_string();
    let details: HashMap<String, String> = [
        ("ApiVersion", API_VERSION),
        ("MinAPIVersion", MIN_API_VERSION),
        ("Os", h.os.as_str()),
        ("Arch", go_arch(&h.architecture)),
        ("KernelVersion", h.kernel_version.as_str()),
        ("Experimental", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Json(m::SystemVersion {
        platform: Some(m::SystemVersionPlatform {
            name: "apiary".into(),
        }),
        components: Some(vec![m::SystemVersionComponents {
            name: "Engine".into(),
            version: ver.clone(),
            details: Some(details),
        }]),
        version: Some(ver),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        os: Some(h.os.clone()),
        arch: Some(go_arch(&h.architecture).to_string()),
        kernel_version: Some(h.kernel_version.clone()),
        experimental: Some(false),
        ..Default::default()
    })
}

fn local_state_to_api(s: LocalNodeState) -> m::LocalNodeState {
    match s {
        LocalNodeState::Inactive => m::LocalNodeState::INACTIVE,
        LocalNodeState::Pending => m::LocalNodeState::PENDING,
        LocalNodeState::Active => m::LocalNodeState::ACTIVE,
        LocalNodeState::Error => m::LocalNodeState::ERROR,
        LocalNodeState::Locked => m::LocalNodeState::LOCKED,
    }
}

pub fn swarm_info_to_api(s: &SwarmInfo) -> m::SwarmInfo {
    let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m::SwarmInfo {
        node_id: Some(s.node_id.as_ref().map(|i| i.0.clone()).unwrap_or_default()),
        node_addr: Some(s.node_addr.clone()),
        local_node_state: Some(local_state_to_api(s.state)),
        control_available: Some(s.is_manager),
        error: Some(s.error.clone()),
        remote_managers: (!s.remote_managers.is_empty()).then(|| {
            s.remote_managers
                .iter()
                .map(|r| m::PeerNode {
                    node_id: Some(r.node_id.0.clone()),
                    addr: Some(r.addr.clone()),
                })
                .collect()
        }),
        nodes: s.nodes.map(to_i64),
        managers: s.managers.map(to_i64),
        cluster: s.cluster.as_ref().map(models::cluster_info_to_api),
    }
}

async fn info<C: Control>(State(c): Ctl<C>) -> Json<m::SystemInfo> {
    let h = c.host_info();
    let s = c.swarm_info().await;
    Json(m::SystemInfo {
        name: Some(h.hostname.clone()),
        ncpu: Some(h.ncpu),
        mem_total: Some(h.mem_total),
        os_type: Some(h.os.clone()),
        architecture: Some(h.architecture.clone()),
        kernel_version: Some(h.kernel_version.clone()),
        server_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        docker_root_dir: Some(h.data_dir.clone()),
        experimental_build: Some(false),
        swarm: Some(swarm_info_to_api(&s)),
        warnings: Some(s.warnings.clone()),
        ..Default::default()
    })
}

async fn swarm_inspect<C: Control>(State(c): Ctl<C>) -> ApiResult<Json<m::Swarm>> {
    let v = c.swarm_inspect().await?;
    Ok(Json(models::swarm_to_api(&v)))
}

async fn swarm_init<C: Control>(State(c): Ctl<C>, body: Bytes) -> ApiResult<Json<String>> {
    let body: InitBody = if body.iter().all(u8::is_ascii_whitespace) {
        InitBody::default()
    } else {
        json_body(&body)?
    };
    let b = &body.base;
    let listen = b
        .listen_addr
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(models::DEFAULT_LISTEN_ADDR);
    let listen_addr = models::parse_addr("ListenAddr", listen, models::DEFAULT_SWARM_PORT)?;
    let advertise_addr = match b.advertise_addr.as_deref().filter(|s| !s.is_empty()) {
        Some(a) => Some(models::parse_addr("AdvertiseAddr", a, listen_addr.port())?),
        None => None,
    };
    let mut spec = match &b.spec {
        Some(s) => models::merge_spec(&ClusterSpec::default(), s)?,
        None => ClusterSpec::default(),
    };
    if body.auto_lock_managers == Some(true) {
        spec.autolock = true;
    }
    let addr_pool = crate::store::AddrPool {
        pools: b.default_addr_pool.clone().unwrap_or_default(),
        subnet_size: match b.subnet_size {
            None | Some(0) => 0,
            Some(n) => u8::try_from(n)
                .ok()
                .filter(|n| (8..=29).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("SubnetSize {n}: use a mask length from 8 to 29"))
                })?,
        },
        data_path_port: match b.data_path_port {
            None | Some(0) => 0,
            Some(p) => u16::try_from(p).map_err(|_| {
                ApiError::bad_request(format!("DataPathPort {p}: use a port from 1024 to 49151"))
            })?,
        },
    };
    addr_pool.validate().map_err(ApiError::bad_request)?;
    let req = InitRequest {
        listen_addr,
        advertise_addr,
        force_new_cluster: b.force_new_cluster.unwrap_or(false),
        availability: models::parse_availability(body.availability.as_deref())?,
        spec,
        addr_pool,
    };
    let id = c.swarm_init(req).await?;
    Ok(Json(id.0))
}

async fn swarm_join<C: Control>(State(c): Ctl<C>, body: Bytes) -> ApiResult<StatusCode> {
    let body: JoinBody = json_body(&body)?;
    let b = &body.base;
    let listen = b
        .listen_addr
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(models::DEFAULT_LISTEN_ADDR);
    let listen_addr = models::parse_addr("ListenAddr", listen, models::DEFAULT_SWARM_PORT)?;
    let advertise_addr = match b.advertise_addr.as_deref().filter(|s| !s.is_empty()) {
        Some(a) => Some(models::parse_addr("AdvertiseAddr", a, listen_addr.port())?),
        None => None,
    };
    let remote_addrs = b
        .remote_addrs
        .iter()
        .flatten()
        .map(|a| models::normalize_remote_addr(a))
        .collect::<ApiResult<Vec<_>>>()?;
    if remote_addrs.is_empty() {
        return Err(ApiError::bad_request(
            "at least 1 RemoteAddr is required to join",
        ));
    }
    let token = b.join_token.clone().unwrap_or_default();
    if token.trim().is_empty() {
        return Err(ApiError::bad_request(
            "JoinToken is required to join a swarm",
        ));
    }
    let req = JoinRequest {
        listen_addr,
        advertise_addr,
        remote_addrs,
        token: token.trim().to_string(),
        availability: models::parse_availability(body.availability.as_deref())?,
    };
    c.swarm_join(req).await?;
    Ok(StatusCode::OK)
}

async fn swarm_leave<C: Control>(State(c): Ctl<C>, uri: Uri) -> ApiResult<StatusCode> {
    let q = query(&uri)?;
    c.swarm_leave(bool_param(&q, "force")).await?;
    Ok(StatusCode::OK)
}

async fn swarm_update<C: Control>(
    State(c): Ctl<C>,
    uri: Uri,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let q = query(&uri)?;
    let version = version_param(&q, "swarm")?;
    let spec: m::SwarmSpec = json_body(&body)?;
    let current = c.swarm_inspect().await?;
    let spec = models::merge_spec(&current.cluster.spec, &spec)?;
    c.swarm_update(SwarmUpdate {
        version,
        spec,
        rotate_worker_token: bool_param(&q, "rotateWorkerToken"),
        rotate_manager_token: bool_param(&q, "rotateManagerToken"),
        rotate_unlock_key: bool_param(&q, "rotateManagerUnlockKey"),
    })
    .await?;
    Ok(StatusCode::OK)
}

async fn swarm_unlock_key<C: Control>(State(c): Ctl<C>) -> ApiResult<Json<m::UnlockKeyResponse>> {
    // Like Docker: a manager without autolock answers an empty key.
    let key = c.unlock_key().await?;
    Ok(Json(m::UnlockKeyResponse {
        unlock_key: Some(key.unwrap_or_default()),
    }))
}

async fn swarm_unlock<C: Control>(State(c): Ctl<C>, body: Bytes) -> ApiResult<StatusCode> {
    if c.swarm_info().await.state != LocalNodeState::Locked {
        return Err(ApiError::new(StatusCode::CONFLICT, "swarm is not locked!"));
    }
    let req: m::SwarmUnlockRequest = json_body(&body)?;
    c.swarm_unlock(req.unlock_key.as_deref().unwrap_or_default())
        .await?;
    Ok(StatusCode::OK)
}

async fn nodes_list<C: Control>(
    State(c): Ctl<C>,
    uri: Uri,
) -> ApiResult<Json<Vec<models::NodeOut>>> {
    let q = query(&uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    filters.validate_node_filters()?;
    let nodes = c.nodes().await?;
    Ok(Json(
        nodes
            .iter()
            .filter(|n| filters.matches_node(n))
            .map(models::node_out)
            .collect(),
    ))
}

async fn node_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<Json<models::NodeOut>> {
    let v = c.node(&id).await?;
    Ok(Json(models::node_out(&v)))
}

async fn node_update<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let q = query(&uri)?;
    let version = version_param(&q, "node")?;
    let body: NodeSpecBody = json_body(&body)?;
    let current = c.node(&id).await?;
    let spec = models::merge_node_spec(&current.node.spec, &body)?;
    c.node_update(&current.node.id.0, version, spec).await?;
    Ok(StatusCode::OK)
}

async fn node_remove<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<StatusCode> {
    let q = query(&uri)?;
    c.node_remove(&id, bool_param(&q, "force")).await?;
    Ok(StatusCode::OK)
}

/// `{"ID": "..."}`, as Docker answers `secrets/create` and `configs/create`.
fn created(id: String) -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::CREATED, Json(serde_json::json!({ "ID": id })))
}

fn object_filters(uri: &Uri) -> ApiResult<Filters> {
    let q = query(uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    filters.validate_object_filters()?;
    Ok(filters)
}

async fn secrets_list<C: Control>(State(c): Ctl<C>, uri: Uri) -> ApiResult<Json<Vec<m::Secret>>> {
    let filters = object_filters(&uri)?;
    let secrets = c.secrets().await?;
    Ok(Json(
        secrets
            .iter()
            .filter(|s| filters.matches_object(&s.id.0, &s.spec.name, &s.spec.labels))
            .map(models::secret_to_api)
            .collect(),
    ))
}

async fn secret_create<C: Control>(
    State(c): Ctl<C>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let spec: m::SecretSpec = json_body(&body)?;
    let id = c
        .secret_create(models::secret_spec_from_api(&spec)?)
        .await?;
    Ok(created(id.0))
}

async fn secret_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<Json<m::Secret>> {
    let s = c.secret(&id).await?;
    Ok(Json(models::secret_to_api(&s)))
}

async fn secret_update<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let q = query(&uri)?;
    let version = version_param(&q, "secret")?;
    let spec: m::SecretSpec = json_body(&body)?;
    c.secret_update(&id, version, models::secret_spec_from_api(&spec)?)
        .await?;
    Ok(StatusCode::OK)
}

async fn secret_remove<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.secret_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn configs_list<C: Control>(State(c): Ctl<C>, uri: Uri) -> ApiResult<Json<Vec<m::Config>>> {
    let filters = object_filters(&uri)?;
    let configs = c.configs().await?;
    Ok(Json(
        configs
            .iter()
            .filter(|x| filters.matches_object(&x.id.0, &x.spec.name, &x.spec.labels))
            .map(models::config_to_api)
            .collect(),
    ))
}

async fn config_create<C: Control>(
    State(c): Ctl<C>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let spec: m::ConfigSpec = json_body(&body)?;
    let id = c
        .config_create(models::config_spec_from_api(&spec)?)
        .await?;
    Ok(created(id.0))
}

async fn config_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<Json<m::Config>> {
    let x = c.config(&id).await?;
    Ok(Json(models::config_to_api(&x)))
}

async fn config_update<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let q = query(&uri)?;
    let version = version_param(&q, "config")?;
    let spec: m::ConfigSpec = json_body(&body)?;
    c.config_update(&id, version, models::config_spec_from_api(&spec)?)
        .await?;
    Ok(StatusCode::OK)
}

async fn config_remove<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.config_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
