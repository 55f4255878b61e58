//! Translation between the control seam's types and Docker's JSON models
//! (`bollard-stubs`), plus the parsing of addresses, filters and specs the
//! Engine API accepts.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use bollard_stubs::models as m;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use crate::control::{NodeView, SwarmView};
use crate::store::{
    Availability, Cluster, ClusterSpec, NodeSpec, NodeState, Reachability, Role, NANOS_PER_SEC,
};
use crate::store::{Config, ConfigSpec, Secret, SecretSpec};

/// The swarm port Docker uses when an address has none.
pub const DEFAULT_SWARM_PORT: u16 = 2377;
/// What `swarm init`/`join` listen on when the request names nothing.
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:2377";
/// Swarmkit refuses shorter certificate lifetimes: renewals would never settle.
pub const MIN_CERT_EXPIRY_NS: i64 = 3600 * NANOS_PER_SEC;

fn labels_to_api(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn labels_from_api(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub fn role_to_api(role: Role) -> m::NodeSpecRoleEnum {
    match role {
        Role::Worker => m::NodeSpecRoleEnum::WORKER,
        Role::Manager => m::NodeSpecRoleEnum::MANAGER,
    }
}

pub fn availability_to_api(a: Availability) -> m::NodeSpecAvailabilityEnum {
    match a {
        Availability::Active => m::NodeSpecAvailabilityEnum::ACTIVE,
        Availability::Pause => m::NodeSpecAvailabilityEnum::PAUSE,
        Availability::Drain => m::NodeSpecAvailabilityEnum::DRAIN,
    }
}

fn state_to_api(s: NodeState) -> m::NodeState {
    match s {
        NodeState::Unknown => m::NodeState::UNKNOWN,
        NodeState::Down => m::NodeState::DOWN,
        NodeState::Ready => m::NodeState::READY,
        NodeState::Disconnected => m::NodeState::DISCONNECTED,
    }
}

fn reachability_to_api(r: Reachability) -> m::Reachability {
    match r {
        Reachability::Unknown => m::Reachability::UNKNOWN,
        Reachability::Unreachable => m::Reachability::UNREACHABLE,
        Reachability::Reachable => m::Reachability::REACHABLE,
    }
}

/// A node as `GET /nodes` shows it.
pub fn node_to_api(view: &NodeView) -> m::Node {
    let n = &view.node;
    let d = &n.description;
    m::Node {
        id: Some(n.id.0.clone()),
        version: Some(m::ObjectVersion {
            index: Some(n.version),
        }),
        created_at: non_empty(&n.created_at),
        updated_at: non_empty(&n.updated_at),
        spec: Some(m::NodeSpec {
            name: non_empty(&n.spec.name),
            labels: Some(labels_to_api(&n.spec.labels)),
            role: Some(role_to_api(n.spec.role)),
            availability: Some(availability_to_api(n.spec.availability)),
        }),
        description: Some(m::NodeDescription {
            hostname: Some(d.hostname.clone()),
            platform: Some(m::Platform {
                architecture: Some(d.platform.architecture.clone()),
                os: Some(d.platform.os.clone()),
            }),
            resources: Some(m::ResourceObject {
                nano_cpus: Some(d.nano_cpus),
                memory_bytes: Some(d.memory_bytes),
                generic_resources: None,
            }),
            engine: Some(m::EngineDescription {
                engine_version: Some(d.engine_version.clone()),
                labels: None,
                plugins: None,
            }),
            tls_info: view.tls.as_ref().map(|t| m::TlsInfo {
                trust_root: Some(t.trust_root.clone()),
                cert_issuer_subject: Some(t.issuer_subject.clone()),
                cert_issuer_public_key: Some(t.issuer_public_key.clone()),
            }),
        }),
        status: Some(m::NodeStatus {
            state: Some(state_to_api(n.status.state)),
            message: non_empty(&n.status.message),
            addr: Some(n.status.addr.clone()),
        }),
        manager_status: n.manager_status.as_ref().map(|ms| m::ManagerStatus {
            leader: Some(view.leader),
            reachability: Some(reachability_to_api(ms.reachability)),
            addr: Some(ms.addr.clone()),
        }),
    }
}

/// A node as the Engine API answers it: Docker's model plus the expiry of
/// the node's certificate, which Docker does not show (clients that do not
/// know the field ignore it).
#[derive(Debug, Serialize)]
pub struct NodeOut {
    #[serde(flatten)]
    pub node: m::Node,
    #[serde(rename = "CertExpiry", skip_serializing_if = "Option::is_none")]
    pub cert_expiry: Option<String>,
}

pub fn node_out(view: &NodeView) -> NodeOut {
    NodeOut {
        node: node_to_api(view),
        cert_expiry: non_empty(&view.node.cert_expiry),
    }
}

/// The cluster settings as Docker's `SwarmSpec`.
pub fn spec_to_api(s: &ClusterSpec) -> m::SwarmSpec {
    m::SwarmSpec {
        name: Some(s.name.clone()),
        labels: Some(labels_to_api(&s.labels)),
        orchestration: Some(m::SwarmSpecOrchestration {
            task_history_retention_limit: Some(s.task_history_limit),
        }),
        raft: Some(m::SwarmSpecRaft {
            snapshot_interval: Some(s.snapshot_interval),
            ..Default::default()
        }),
        dispatcher: Some(m::SwarmSpecDispatcher {
            heartbeat_period: Some(s.dispatcher_heartbeat_ns),
        }),
        ca_config: Some(m::SwarmSpecCaConfig {
            node_cert_expiry: Some(s.cert_expiry_ns),
            force_rotate: Some(s.ca_force_rotate),
            ..Default::default()
        }),
        encryption_config: Some(m::SwarmSpecEncryptionConfig {
            auto_lock_managers: Some(s.autolock),
        }),
        task_defaults: Some(m::SwarmSpecTaskDefaults::default()),
    }
}

fn trust_root(c: &Cluster) -> Option<m::TlsInfo> {
    // Only certificates: the keys never leave the store. The trust root is
    // the bundle nodes are given (both roots during a rotation), so that
    // the docker CLI's `swarm ca --rotate` sees nodes converge on it.
    let tls = crate::manager::ca::node_tls(c).ok();
    Some(m::TlsInfo {
        trust_root: Some(crate::manager::ca::trust_bundle(c)),
        cert_issuer_subject: tls.as_ref().map(|t| t.issuer_subject.clone()),
        cert_issuer_public_key: tls.map(|t| t.issuer_public_key),
    })
}

/// `/info`'s Swarm.Cluster.
pub fn cluster_info_to_api(c: &Cluster) -> m::ClusterInfo {
    m::ClusterInfo {
        id: Some(c.id.clone()),
        version: Some(m::ObjectVersion {
            index: Some(c.version),
        }),
        created_at: non_empty(&c.created_at),
        updated_at: non_empty(&c.updated_at),
        spec: Some(spec_to_api(&c.spec)),
        tls_info: trust_root(c),
        root_rotation_in_progress: Some(c.rotation.is_some()),
        default_addr_pool: Some(c.addr_pool.effective_pools()),
        subnet_size: Some(u32::from(c.addr_pool.effective_subnet_size())),
        data_path_port: Some(u32::from(c.addr_pool.effective_data_path_port())),
    }
}

/// `GET /swarm`.
pub fn swarm_to_api(v: &SwarmView) -> m::Swarm {
    let c = &v.cluster;
    m::Swarm {
        id: Some(c.id.clone()),
        version: Some(m::ObjectVersion {
            index: Some(c.version),
        }),
        created_at: non_empty(&c.created_at),
        updated_at: non_empty(&c.updated_at),
        spec: Some(spec_to_api(&c.spec)),
        tls_info: trust_root(c),
        root_rotation_in_progress: Some(c.rotation.is_some()),
        join_tokens: Some(m::JoinTokens {
            worker: Some(v.worker_token.clone()),
            manager: Some(v.manager_token.clone()),
        }),
        default_addr_pool: Some(c.addr_pool.effective_pools()),
        subnet_size: Some(u32::from(c.addr_pool.effective_subnet_size())),
        data_path_port: Some(u32::from(c.addr_pool.effective_data_path_port())),
    }
}

/// Lays the fields a client sent over `base`. Absent fields keep their
/// value; so do zero durations and a zero snapshot interval, which Docker's
/// CLI sends for "not set" (`swarm init` without flags).
pub fn merge_spec(base: &ClusterSpec, api: &m::SwarmSpec) -> ApiResult<ClusterSpec> {
    let mut s = base.clone();
    if let Some(name) = api.name.as_deref().filter(|n| !n.is_empty()) {
        s.name = name.to_string();
    }
    if let Some(labels) = &api.labels {
        s.labels = labels_from_api(labels);
    }
    if let Some(limit) = api
        .orchestration
        .as_ref()
        .and_then(|o| o.task_history_retention_limit)
    {
        s.task_history_limit = limit;
    }
    if let Some(si) = api
        .raft
        .as_ref()
        .and_then(|r| r.snapshot_interval)
        .filter(|v| *v > 0)
    {
        s.snapshot_interval = si;
    }
    if let Some(hb) = api
        .dispatcher
        .as_ref()
        .and_then(|d| d.heartbeat_period)
        .filter(|v| *v != 0)
    {
        if hb < 0 {
            return Err(ApiError::bad_request(format!(
                "invalid Dispatcher.HeartbeatPeriod {hb}: must be positive"
            )));
        }
        s.dispatcher_heartbeat_ns = hb;
    }
    if let Some(exp) = api
        .ca_config
        .as_ref()
        .and_then(|c| c.node_cert_expiry)
        .filter(|v| *v != 0)
    {
        if exp < MIN_CERT_EXPIRY_NS {
            return Err(ApiError::bad_request(
                "minimum certificate expiry time is 1h0m0s",
            ));
        }
        s.cert_expiry_ns = exp;
    }
    if let Some(fr) = api.ca_config.as_ref().and_then(|c| c.force_rotate) {
        s.ca_force_rotate = fr;
    }
    if api.ca_config.as_ref().is_some_and(|c| {
        c.signing_ca_cert.as_deref().is_some_and(|v| !v.is_empty())
            || c.signing_ca_key.as_deref().is_some_and(|v| !v.is_empty())
            || c.external_cas.as_ref().is_some_and(|v| !v.is_empty())
    }) {
        return Err(ApiError::bad_request(
            "apiary generates its root CAs itself: rotate with `swarm ca --rotate` and no --ca-cert, --ca-key or --external-ca",
        ));
    }
    if let Some(al) = api
        .encryption_config
        .as_ref()
        .and_then(|e| e.auto_lock_managers)
    {
        s.autolock = al;
    }
    Ok(s)
}

/// `POST /swarm/init` body: Docker's `InitRequest` carries two fields the
/// generated model lacks.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct InitBody {
    #[serde(flatten)]
    pub base: m::SwarmInitRequest,
    #[serde(
        rename = "Availability",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub availability: Option<String>,
    #[serde(
        rename = "AutoLockManagers",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_lock_managers: Option<bool>,
}

/// `POST /swarm/join` body (Docker's `JoinRequest` has `Availability`).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct JoinBody {
    #[serde(flatten)]
    pub base: m::SwarmJoinRequest,
    #[serde(
        rename = "Availability",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub availability: Option<String>,
}

/// `POST /nodes/{id}/update` body. Role and availability stay strings here
/// so a bad value gets Docker's message instead of a serde one.
#[derive(Debug, Default, Deserialize)]
pub struct NodeSpecBody {
    #[serde(rename = "Name")]
    pub name: Option<String>,
    #[serde(rename = "Labels")]
    pub labels: Option<HashMap<String, String>>,
    #[serde(rename = "Role")]
    pub role: Option<String>,
    #[serde(rename = "Availability")]
    pub availability: Option<String>,
}

pub fn parse_role(s: &str) -> ApiResult<Role> {
    match s.to_ascii_lowercase().as_str() {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        _ => Err(ApiError::bad_request(format!("invalid Role: {s:?}"))),
    }
}

/// Empty means the default (active), as in Docker.
pub fn parse_availability(s: Option<&str>) -> ApiResult<Availability> {
    match s {
        None | Some("") => Ok(Availability::Active),
        Some(s) => Availability::parse(s)
            .ok_or_else(|| ApiError::bad_request(format!("invalid Availability: {s:?}"))),
    }
}

/// Lays a node update over the current spec; absent fields keep their value.
pub fn merge_node_spec(base: &NodeSpec, body: &NodeSpecBody) -> ApiResult<NodeSpec> {
    let mut s = base.clone();
    if let Some(name) = &body.name {
        s.name = name.clone();
    }
    if let Some(labels) = &body.labels {
        s.labels = labels_from_api(labels);
    }
    if let Some(role) = body.role.as_deref() {
        s.role = parse_role(role)?;
    }
    if let Some(a) = body.availability.as_deref() {
        s.availability = parse_availability(Some(a))?;
    }
    Ok(s)
}

/// Parses a listen or advertise address: `ip`, `ip:port`, `[v6]:port`.
/// A missing port becomes `default_port`. Interface and host names are
/// refused: the node would have to guess which address to use.
pub fn parse_addr(field: &str, s: &str, default_port: u16) -> ApiResult<SocketAddr> {
    let s = s.trim();
    let s = s.strip_prefix("tcp://").unwrap_or(s);
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    // "ip:" with an empty port takes the default too.
    if let Some(host) = s.strip_suffix(':') {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, default_port));
        }
    }
    let hint = if !s.is_empty() && !s.contains([':', '.']) {
        " (interface names are not supported: give the interface's IP address)"
    } else {
        ""
    };
    Err(ApiError::bad_request(format!(
        "invalid {field} {s:?}: expected an IP address with an optional port, like 192.168.1.10 or 192.168.1.10:{DEFAULT_SWARM_PORT}{hint}"
    )))
}

/// A manager address to join: `host[:port]` (host names allowed, they are
/// resolved when dialling). Adds the default port when missing.
pub fn normalize_remote_addr(s: &str) -> ApiResult<String> {
    let s = s.trim();
    let s = s.strip_prefix("tcp://").unwrap_or(s);
    if s.is_empty() {
        return Err(ApiError::bad_request(
            "invalid empty address in RemoteAddrs",
        ));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa.to_string());
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_SWARM_PORT).to_string());
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            let ok_port = port.parse::<u16>().is_ok_and(|p| p > 0);
            if host.is_empty() || !ok_port || host.contains(':') {
                return Err(ApiError::bad_request(format!(
                    "invalid remote address {s:?}: expected host:port"
                )));
            }
            Ok(s.to_string())
        }
        None => Ok(format!("{s}:{DEFAULT_SWARM_PORT}")),
    }
}

/// Docker's list filters: `{"role":{"manager":true}}` or the older
/// `{"role":["manager"]}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>) -> ApiResult<Filters> {
        let mut out = BTreeMap::new();
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(Filters(out));
        };
        let bad = |e: String| ApiError::bad_request(format!("invalid filters {raw:?}: {e}"));
        let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        for (k, vals) in obj {
            let list: Vec<String> = match vals {
                serde_json::Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(v, _)| v.clone())
                    .collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => {
                    return Err(bad(format!(
                        "the values of {k:?} must be an object or a list"
                    )))
                }
            };
            out.insert(k.clone(), list);
        }
        Ok(Filters(out))
    }

    fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Checks keys and values as Docker does for `GET /nodes`.
    pub fn validate_node_filters(&self) -> ApiResult<()> {
        const ACCEPTED: [&str; 6] = ["id", "label", "membership", "name", "node.label", "role"];
        for k in self.0.keys() {
            if !ACCEPTED.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
            }
        }
        for r in self.get("role") {
            if !r.is_empty() && !["worker", "manager"].contains(&r.to_ascii_lowercase().as_str()) {
                return Err(ApiError::bad_request(format!("Invalid role filter: '{r}'")));
            }
        }
        for m in self.get("membership") {
            if !m.is_empty() && !["accepted", "pending"].contains(&m.to_ascii_lowercase().as_str())
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid membership filter: '{m}'"
                )));
            }
        }
        Ok(())
    }

    /// Whether a node passes every filter (values of one key are OR-ed).
    pub fn matches_node(&self, v: &NodeView) -> bool {
        let n = &v.node;
        let any = |key: &str, f: &dyn Fn(&str) -> bool| {
            let vals = self.get(key);
            vals.is_empty() || vals.iter().any(|x| f(x))
        };
        let name = if n.spec.name.is_empty() {
            &n.description.hostname
        } else {
            &n.spec.name
        };
        let label_match = |labels: &BTreeMap<String, String>, want: &str| match want.split_once('=')
        {
            Some((k, val)) => labels.get(k).is_some_and(|have| have == val),
            None => labels.contains_key(want),
        };
        let no_engine_labels = BTreeMap::new();
        any("id", &|p| n.id.0.starts_with(p))
            && any("name", &|p| name.starts_with(p))
            && any("role", &|r| r.eq_ignore_ascii_case(n.role.as_str()))
            // Every node in the store has been accepted into the swarm.
            && any("membership", &|m| m.eq_ignore_ascii_case("accepted"))
            && self.get("node.label").iter().all(|l| label_match(&n.spec.labels, l))
            // `label` is about engine labels, which apiary nodes do not have.
            && self.get("label").iter().all(|l| label_match(&no_engine_labels, l))
    }
}

/// A secret as the API shows it: never with `Data` (Docker omits it too).
pub fn secret_to_api(s: &Secret) -> m::Secret {
    m::Secret {
        id: Some(s.id.0.clone()),
        version: Some(m::ObjectVersion {
            index: Some(s.version),
        }),
        created_at: non_empty(&s.created_at),
        updated_at: non_empty(&s.updated_at),
        spec: Some(m::SecretSpec {
            name: Some(s.spec.name.clone()),
            labels: Some(labels_to_api(&s.spec.labels)),
            data: None,
            driver: None,
            templating: None,
        }),
    }
}

/// A config as the API shows it: with `Data` (base64), as Docker does.
pub fn config_to_api(c: &Config) -> m::Config {
    use base64::Engine;
    m::Config {
        id: Some(c.id.0.clone()),
        version: Some(m::ObjectVersion {
            index: Some(c.version),
        }),
        created_at: non_empty(&c.created_at),
        updated_at: non_empty(&c.updated_at),
        spec: Some(m::ConfigSpec {
            name: Some(c.spec.name.clone()),
            labels: Some(labels_to_api(&c.spec.labels)),
            data: Some(base64::engine::general_purpose::STANDARD.encode(&c.spec.data)),
            templating: None,
        }),
    }
}

/// `Data` as Go encodes `[]byte` (standard base64); URL-safe is accepted too.
fn decode_data(kind: &str, data: Option<&str>) -> ApiResult<Vec<u8>> {
    use base64::Engine;
    let Some(text) = data.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(Vec::new());
    };
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("invalid {kind} Data: it must be base64-encoded"))
        })
}

fn refuse_driver(kind: &str, field: &str, driver: Option<&m::Driver>) -> ApiResult<()> {
    match driver {
        Some(d) if !d.name.is_empty() => Err(ApiError::bad_request(format!(
            "{kind} {field} {:?} is not supported by apiary: store the data in the {kind} itself",
            d.name
        ))),
        _ => Ok(()),
    }
}

/// `POST /secrets/create` and `/secrets/{id}/update` bodies.
pub fn secret_spec_from_api(spec: &m::SecretSpec) -> ApiResult<SecretSpec> {
    refuse_driver("secret", "driver", spec.driver.as_ref())?;
    refuse_driver("secret", "templating driver", spec.templating.as_ref())?;
    Ok(SecretSpec {
        name: spec.name.clone().unwrap_or_default(),
        labels: spec
            .labels
            .as_ref()
            .map(labels_from_api)
            .unwrap_or_default(),
        data: decode_data("secret", spec.data.as_deref())?,
    })
}

/// `POST /configs/create` and `/configs/{id}/update` bodies.
pub fn config_spec_from_api(spec: &m::ConfigSpec) -> ApiResult<ConfigSpec> {
    refuse_driver("config", "templating driver", spec.templating.as_ref())?;
    Ok(ConfigSpec {
        name: spec.name.clone().unwrap_or_default(),
        labels: spec
            .labels
            .as_ref()
            .map(labels_from_api)
            .unwrap_or_default(),
        data: decode_data("config", spec.data.as_deref())?,
    })
}

impl Filters {
    /// Checks keys as Docker does for `GET /secrets` and `GET /configs`.
    pub fn validate_object_filters(&self) -> ApiResult<()> {
        const ACCEPTED: [&str; 4] = ["id", "label", "name", "names"];
        for k in self.0.keys() {
            if !ACCEPTED.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
            }
        }
        Ok(())
    }

    /// Refuse a filter the endpoint does not know (Docker's 400).
    pub fn validate(&self, accepted: &[&str]) -> ApiResult<()> {
        for k in self.0.keys() {
            if !accepted.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "invalid filter '{k}': use {}",
                    accepted.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Every `label` filter (a key, or key=value) holds for `labels`.
    pub fn labels_match<'a>(&self, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.get("label").iter().all(|l| match l.split_once('=') {
            Some((k, v)) => labels(k) == Some(v),
            None => labels(l).is_some(),
        })
    }

    /// Swarm's secret and config filters: `id` and `name` are prefixes,
    /// `names` exact names, `label` a key or key=value.
    pub fn matches_object(&self, id: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let any = |key: &str, f: &dyn Fn(&str) -> bool| {
            let vals = self.get(key);
            vals.is_empty() || vals.iter().any(|x| f(x))
        };
        any("id", &|p| id.starts_with(p))
            && any("name", &|p| name.starts_with(p))
            && any("names", &|n| name == n)
            && self.get("label").iter().all(|l| match l.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
                None => labels.contains_key(l.as_str()),
            })
    }
}

#[cfg(test)]
mod tests;
