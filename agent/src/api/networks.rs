//! `/networks`: swarm-scoped overlay networks, as a manager answers for
//! them (from raft).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use bollard_stubs::models as m;

use super::error::{ApiError, ApiResult};
use super::models::Filters;
use super::routes::{json_body, query};
use crate::control::{Control, ControlError};
use crate::store::{IpamPool, Network, NetworkSpec};

type Ctl<C> = State<Arc<C>>;

/// Where the VXLAN ID shows in `Options`, as Docker shows it.
const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

pub fn network_to_api(n: &Network) -> m::Network {
    let mut options: HashMap<String, String> = n
        .spec
        .options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if n.vni != 0 {
        options.insert(VNI_OPTION.into(), n.vni.to_string());
    }
    let pool = |p: &IpamPool| m::IpamConfig {
        subnet: Some(p.subnet.clone()).filter(|s| !s.is_empty()),
        gateway: Some(p.gateway.clone()).filter(|s| !s.is_empty()),
        ip_range: Some(p.ip_range.clone()).filter(|s| !s.is_empty()),
        auxiliary_addresses: None,
    };
    m::Network {
        name: Some(n.spec.name.clone()),
        id: Some(n.id.0.clone()),
        created: Some(n.created_at.clone()),
        scope: Some("swarm".into()),
        driver: Some(n.spec.driver.clone()),
        enable_ipv4: Some(true),
        enable_ipv6: Some(false),
        ipam: Some(m::Ipam {
            driver: Some("default".into()),
            config: Some(if n.pool.subnet.is_empty() {
                Vec::new()
            } else {
                vec![pool(&n.pool)]
            }),
            options: None,
        }),
        internal: Some(n.spec.internal),
        attachable: Some(n.spec.attachable),
        ingress: Some(n.spec.ingress),
        config_from: Some(m::ConfigReference {
            network: Some(String::new()),
        }),
        config_only: Some(false),
        // Swarm's managers list no local endpoints for a network no local
        // task uses; apiary's tasks do not attach to overlays yet.
        containers: Some(HashMap::new()),
        options: Some(options),
        labels: Some(
            n.spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        peers: None,
    }
}

/// `POST /networks/create` as Docker decodes it, for a swarm network.
pub fn network_spec_from_api(r: &m::NetworkCreateRequest) -> ApiResult<NetworkSpec> {
    let name = r.name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("network name is required: give Name"));
    }
    if r.config_only == Some(true)
        || r.config_from
            .as_ref()
            .is_some_and(|c| c.network.as_deref().is_some_and(|n| !n.is_empty()))
    {
        return Err(ApiError::bad_request(
            "config-only networks (--config-only, --config-from) are not supported",
        ));
    }
    if r.enable_ipv6 == Some(true) {
        return Err(ApiError::bad_request(
            "IPv6 overlay networks are not supported: drop --ipv6",
        ));
    }
    if let Some(s) = r
        .scope
        .as_deref()
        .filter(|s| !s.is_empty() && *s != "swarm")
    {
        return Err(ApiError::bad_request(format!(
            "scope {s:?} is not available: apiary's networks are swarm-scoped (drop --scope)"
        )));
    }
    let driver = r
        .driver
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "bridge".into());
    let ipam: Vec<IpamPool> = r
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .into_iter()
        .flatten()
        .map(|c| IpamPool {
            subnet: c.subnet.clone().unwrap_or_default(),
            gateway: c.gateway.clone().unwrap_or_default(),
            ip_range: c.ip_range.clone().unwrap_or_default(),
        })
        .collect();
    if let Some(d) = r
        .ipam
        .as_ref()
        .and_then(|i| i.driver.as_deref())
        .filter(|d| !d.is_empty() && *d != "default")
    {
        return Err(ApiError::bad_request(format!(
            "IPAM driver {d:?} is not available: use the default one"
        )));
    }
    let labels: BTreeMap<String, String> = r
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let options: BTreeMap<String, String> = r
        .options
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(NetworkSpec {
        name: name.to_string(),
        labels,
        driver,
        options,
        ipam,
        attachable: r.attachable.unwrap_or(false),
        internal: r.internal.unwrap_or(false),
        ingress: r.ingress.unwrap_or(false),
    })
}

/// Docker's `GET /networks` filters: driver, id, name, label, scope, type
/// (custom|builtin), dangling. `name` and `id` match anywhere in the value
/// (Docker compiles them as unanchored regular expressions; plain
/// substrings cover what the CLI sends).
fn check_filters(f: &Filters) -> ApiResult<()> {
    const ACCEPTED: [&str; 7] = ["dangling", "driver", "id", "label", "name", "scope", "type"];
    for k in f.0.keys() {
        if !ACCEPTED.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    for t in f.0.get("type").into_iter().flatten() {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    Ok(())
}

fn matches(f: &Filters, n: &Network, in_use: bool) -> bool {
    let any = |key: &str, ok: &dyn Fn(&str) -> bool| {
        f.0.get(key)
            .is_none_or(|vals| vals.is_empty() || vals.iter().any(|v| ok(v)))
    };
    let label = |want: &str| match want.split_once('=') {
        Some((k, v)) => n.spec.labels.get(k).is_some_and(|have| have == v),
        None => n.spec.labels.contains_key(want),
    };
    any("driver", &|d| d == n.spec.driver)
        && any("id", &|p| n.id.0.contains(p))
        && any("name", &|p| n.spec.name.contains(p))
        && any("scope", &|s| s == "swarm")
        // The ingress network is made by the swarm: Docker counts it custom.
        && any("type", &|t| t == "custom")
        && any("dangling", &|d| (d == "true" || d == "1") != in_use)
        && f.0.get("label").into_iter().flatten().all(|l| label(l))
}

pub async fn networks_list<C: Control>(
    State(c): Ctl<C>,
    uri: Uri,
) -> ApiResult<Json<Vec<m::Network>>> {
    let q = query(&uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    check_filters(&filters)?;
    let dangling = filters.0.contains_key("dangling");
    let mut list = Vec::new();
    for n in c.networks().await? {
        let in_use = dangling && is_in_use(&*c, &n).await;
        if matches(&filters, &n, in_use) {
            list.push(network_to_api(&n));
        }
    }
    Ok(Json(list))
}

/// Used by a service: removing it is refused (the dry run of prune and
/// `dangling`).
async fn is_in_use<C: Control>(c: &C, n: &Network) -> bool {
    n.spec.ingress || c.network_users(&n.id.0).await.is_ok_and(|u| !u.is_empty())
}

pub async fn network_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<Json<m::Network>> {
    let n = c.network(&id).await?;
    Ok(Json(network_to_api(&n)))
}

pub async fn network_create<C: Control>(
    State(c): Ctl<C>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<m::NetworkCreateResponse>)> {
    let req: m::NetworkCreateRequest = json_body(&body)?;
    let spec = network_spec_from_api(&req)?;
    if spec.driver != "overlay" {
        return Err(ApiError::bad_request(format!(
            "network driver {:?} is not available: apiary's networks span the swarm; use -d overlay",
            spec.driver
        )));
    }
    let id = c.network_create(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(m::NetworkCreateResponse {
            id: id.0,
            warning: String::new(),
        }),
    ))
}

pub async fn network_remove<C: Control>(
    State(c): Ctl<C>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.network_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /networks/prune`: every network no service uses, but the ingress
/// network (as Docker's).
pub async fn networks_prune<C: Control>(
    State(c): Ctl<C>,
    uri: Uri,
) -> ApiResult<Json<m::NetworkPruneResponse>> {
    let q = query(&uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    for k in filters.0.keys() {
        if k != "label" {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let mut deleted = Vec::new();
    for n in c.networks().await? {
        if n.spec.ingress || !matches(&filters, &n, false) {
            continue;
        }
        match c.network_remove(&n.id.0).await {
            Ok(()) => deleted.push(n.spec.name.clone()),
            // In use: kept, as Docker keeps it.
            Err(ControlError::FailedPrecondition(_)) | Err(ControlError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(m::NetworkPruneResponse {
        networks_deleted: Some(deleted),
    }))
}
