//! Pulling images from a registry (Docker Registry HTTP API v2 / OCI
//! distribution), client-side: containerd 1.6 has no Transfer service.
//!
//! The manifest (and, for an index, the host platform's manifest), the
//! config and the layers are streamed into containerd's content store with
//! their digests checked, then the image is recorded and unpacked with the
//! same code as a tarball import (`image::put_image`, `resolve`, `unpack`).
//!
//! The HTTP client is hand-written over hyper (already in the graph for the
//! CLI) with tokio-rustls on the ring provider: a registry pull needs GET,
//! HEAD-less manifests, bearer tokens and redirects, which is a few hundred
//! lines, where `oci-client` would bring reqwest, its own TLS stack options,
//! jwt and chrono into a binary meant for small boards.
//!
//! Transport: plain HTTP for registries on loopback (127.0.0.0/8, ::1,
//! `localhost`, as Docker does) and for those named with the agent's
//! `--insecure-registry`; HTTPS otherwise, verified against the Mozilla
//! roots compiled in (`webpki-roots`: a static agent has no system store).
//! Authentication: anonymous unless credentials are given (`auth`: a user
//! and password, or tokens, as Docker's `AuthConfig` carries them). A
//! registry that answers 401 with `WWW-Authenticate: Bearer realm=…` gets
//! the token dance (the token server asked with basic auth when there are
//! credentials); one that asks for `Basic` gets basic auth. Credentials go
//! only to the registry and its token server, never to the storage blobs
//! are redirected to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::InfoRequest;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Code;
use futures::future::BoxFuture;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::containerd::Api;
use super::image::{
    self, is_index, BlobWriter, Desc, Platform, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX,
    MT_OCI_MANIFEST,
};
use super::ExecError;

pub mod auth;
pub use auth::{AuthConfig, Credentials};

/// Docker Hub's name in references, and where its API really answers.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The most a manifest or index may weigh (the distribution spec's servers
/// refuse bigger ones at 4 MiB).
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// An image config is JSON too; generous, they carry history.
const MAX_CONFIG: usize = image::MAX_JSON;
/// A token answer is a small JSON document.
const MAX_TOKEN: usize = 64 * 1024;
/// How much of a non-JSON error body is quoted back to the user.
const MAX_ERROR_QUOTE: usize = 200;
/// Connecting (TCP + TLS) to a registry: a black-holed address fails here
/// instead of hanging the task in Preparing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for response headers, and for each piece of a body: a stalled
/// transfer fails, a slow but moving one over a thin link does not.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Blob GETs are redirected to storage (S3, a CDN); a loop is a bug.
const MAX_REDIRECTS: usize = 5;
/// Layers fetched at once, like Docker's default `max-concurrent-downloads`.
const CONCURRENT_LAYERS: usize = 3;
/// Who asks a token server for a refresh-token grant.
const TOKEN_CLIENT_ID: &str = "apiary";
/// Blob bytes sent to containerd per Content.Write message (below gRPC's
/// 4 MiB limit; fewer, larger messages).
const CHUNK: usize = 1024 * 1024;

// ------------------------------------------------------------------ errors

/// Why a pull failed. Displayed after `pull <reference>: ` in the task's
/// ERROR column, so each names the registry and its own words.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid reference format: {0}")]
    InvalidReference(String),
    /// TCP, TLS or HTTP failed before the registry could answer.
    #[error("cannot reach registry {registry}: {reason}")]
    Connect { registry: String, reason: String },
    /// The registry answered with an error; `message` is its reason
    /// (`manifest unknown`, `unauthorized: …`).
    #[error("{message} from registry {registry}")]
    Registry {
        registry: String,
        status: u16,
        message: String,
    },
    /// The registry wants credentials, or refused the ones given;
    /// `advice` says what to do about it.
    #[error("{message} from registry {registry}: {advice}")]
    Unauthorized {
        registry: String,
        message: String,
        advice: String,
    },
    /// The registry answered something that is not a usable image.
    #[error("registry {registry}: {detail}")]
    Protocol { registry: String, detail: String },
    /// containerd failed while storing or unpacking.
    #[error("{0}")]
    Store(ExecError),
}

impl PullError {
    /// The executor's error for `prepare`: a registry problem is an image
    /// problem (shown in ERROR), a containerd failure stays a runtime one.
    pub fn into_exec(self, reference: &str) -> ExecError {
        match self {
            PullError::Store(ExecError::Runtime(m)) => {
                ExecError::Runtime(format!("pull {reference}: {m}"))
            }
            PullError::Store(e) => ExecError::Image(format!("pull {reference}: {e}")),
            // An air-gapped node cannot pull: say how images get there.
            e @ PullError::Connect { .. } => ExecError::Image(format!(
                "pull {reference}: {e}; without a registry, load the image with \
                 `apiary image load -i <image.tar>` or put the tarball in the agent's images directory"
            )),
            e => ExecError::Image(format!("pull {reference}: {e}")),
        }
    }

    /// Worth trying again later (network trouble, registry overloaded) as
    /// opposed to a wrong reference or a missing tag.
    pub fn is_retriable(&self) -> bool {
        match self {
            PullError::Connect { .. } => true,
            PullError::Registry { status, .. } => *status == 429 || *status >= 500,
            PullError::Store(ExecError::Runtime(_)) => true,
            _ => false,
        }
    }
}

impl From<ExecError> for PullError {
    fn from(e: ExecError) -> Self {
        PullError::Store(e)
    }
}

type PullResult<T> = Result<T, PullError>;

// --------------------------------------------------------------- references

/// A parsed image reference: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `localhost`.
    pub registry: String,
    /// `library/busybox`, `me/app`.
    pub repository: String,
    /// None only when a digest is given without a tag.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Docker's grammar (distribution/reference), with its normalisation.
    pub fn parse(s: &str) -> PullResult<Reference> {
        let bad = |why: &str| PullError::InvalidReference(format!("{s:?}: {why}"));
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("only sha256 digests are supported"))?;
            if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
            }
        }
        // The tag is a ':' after the last '/' (a port's ':' is before it).
        let slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(bad(
                    "a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, r))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), r.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) if !registry.ends_with(']') => (h, Some(p)),
            _ => (registry.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && (host.starts_with('[') && host.ends_with(']')
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')));
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
        if !host_ok || !port_ok {
            return Err(bad("a registry is host[:port]"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.starts_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
                    && c.ends_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
                    && c.chars().all(|x| {
                        x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, '.' | '_' | '-')
                    })
            })
        {
            return Err(bad(
                "repository names are lowercase letters, digits and separators (. _ -)",
            ));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest: digest.map(String::from),
        })
    }

    /// What to ask the manifests endpoint for: the digest wins over a tag
    /// (a pinned reference must not follow a moved tag).
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host and port the API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

/// The image record's name: the same as `image::normalize` (what
/// `prepare` looks up).
impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Docker's short form of a name (`FamiliarString`):
/// `docker.io/library/busybox:latest` → `busybox:latest`,
/// `docker.io/me/app` → `me/app`; other registries' names stay whole.
pub fn familiar(name: &str) -> String {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
        .to_string()
}

// ------------------------------------------------------------ configuration

/// How this agent reaches registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `host` or `host:port` reached over plain HTTP (the agent's
    /// `--insecure-registry`); loopback always is.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    /// Plain HTTP for this `host[:port]`?
    pub fn is_insecure(&self, host_port: &str) -> bool {
        let host = split_host(host_port);
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback
            || self
                .insecure
                .iter()
                .any(|i| i == host_port || (!i.contains(':') && i == host))
    }
}

/// `host:port` → `host`; `[::1]:5000` → `[::1]`.
fn split_host(host_port: &str) -> &str {
    if host_port.starts_with('[') {
        return host_port
            .find(']')
            .map(|i| &host_port[..=i])
            .unwrap_or(host_port);
    }
    host_port
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host_port)
}

// -------------------------------------------------------------------- auth

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names lowercased; values unquoted.
    pub params: HashMap<String, String>,
}

/// Parse `Bearer realm="https://auth.docker.io/token",service="x",scope="a:b:pull,push"`
/// (quoted values may hold commas and escaped quotes).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if !key.is_empty() {
            params.insert(key, value);
        }
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The token endpoint's URL for a bearer challenge (`scope` defaults to
/// pulling `repository`; a login, with no repository, asks for no scope).
pub fn token_url(ch: &Challenge, repository: &str) -> Option<String> {
    let realm = ch.params.get("realm")?;
    let sep = if realm.contains('?') { '&' } else { '?' };
    Some(format!(
        "{realm}{sep}{}",
        token_params(ch, repository).join("&")
    ))
}

/// `service=…&scope=…` of a token request, percent-encoded.
fn token_params(ch: &Challenge, repository: &str) -> Vec<String> {
    let mut q = Vec::new();
    if let Some(s) = ch.params.get("service") {
        q.push(format!("service={}", percent(s)));
    }
    let scope = ch
        .params
        .get("scope")
        .cloned()
        .or_else(|| (!repository.is_empty()).then(|| format!("repository:{repository}:pull")));
    if let Some(scope) = scope {
        q.push(format!("scope={}", percent(&scope)));
    }
    q
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The registry's own words from an error answer: the `errors[].message`
/// of the distribution spec (with `code` when there is no message), else
/// the start of the body, else the HTTP status.
pub fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let msgs: Vec<String> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let m = e["message"].as_str().filter(|m| !m.is_empty());
                let c = e["code"].as_str();
                m.or(c).map(|m| m.to_lowercase())
            })
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
        // Token servers answer `{"details": "..."}` or `{"error": "..."}`.
        for k in ["details", "error", "message"] {
            if let Some(m) = v[k].as_str() {
                return m.to_string();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let reason = status.canonical_reason().unwrap_or("error");
    if text.is_empty() || text.starts_with('<') {
        format!("{} {reason}", status.as_u16())
    } else {
        let quote: String = text.chars().take(MAX_ERROR_QUOTE).collect();
        format!("{} {reason}: {quote}", status.as_u16())
    }
}

// -------------------------------------------------------------------- HTTP

/// One answer, with the connection task that must live while the body is
/// read (aborted when the answer is dropped).
struct Answer {
    resp: Response<Incoming>,
    _conn: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A registry's API with this pull's token. One connection per request:
/// a pull makes a handful, and it keeps the client free of pooling.
struct Registry {
    /// As the user named it, for messages.
    name: String,
    /// `http://host:port` or `https://host`.
    base: String,
    repository: String,
    insecure: RegistryConfig,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
    credentials: Option<Credentials>,
    /// The registry asked for basic auth: send the credentials with
    /// every request to it.
    basic: bool,
}

/// A request body: (content type, bytes).
type Form = (&'static str, String);

impl Registry {
    fn new(
        r: &Reference,
        cfg: &RegistryConfig,
        credentials: Option<&Credentials>,
    ) -> PullResult<Registry> {
        let tls = tls_config().map_err(|e| PullError::Connect {
            registry: r.registry.clone(),
            reason: format!("TLS setup: {e}"),
        })?;
        let scheme = if cfg.is_insecure(r.api_host()) {
            "http"
        } else {
            "https"
        };
        // A registry token is the bearer token itself: no dance.
        let token = match credentials {
            Some(Credentials::RegistryToken(t)) => Some(t.clone()),
            _ => None,
        };
        Ok(Registry {
            name: r.registry.clone(),
            base: format!("{scheme}://{}", r.api_host()),
            repository: r.repository.clone(),
            insecure: cfg.clone(),
            tls,
            token,
            credentials: credentials.cloned(),
            basic: false,
        })
    }

    fn connect_err(&self, reason: impl std::fmt::Display) -> PullError {
        PullError::Connect {
            registry: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> PullError {
        PullError::Protocol {
            registry: self.name.clone(),
            detail: detail.into(),
        }
    }

    /// A 401 that answering the challenge did not get past: the registry's
    /// reason, and what to do about it.
    /// A registry's (or its token server's) refusal: a 401 says how to log
    /// in; anything else carries the status (`retriable` reads it).
    fn refusal(&self, status: StatusCode, message: String) -> PullError {
        if status == StatusCode::UNAUTHORIZED {
            return self.unauthorized(message);
        }
        PullError::Registry {
            registry: self.name.clone(),
            status: status.as_u16(),
            message,
        }
    }

    fn unauthorized(&self, message: String) -> PullError {
        let advice = match &self.credentials {
            None => format!(
                "the image may be private: log in with `apiary login {}` (or `docker login`), \
                 and give services --with-registry-auth",
                self.name
            ),
            Some(c) => format!(
                "the registry refused {}: check them with `apiary login {}`",
                c.who(),
                self.name
            ),
        };
        PullError::Unauthorized {
            registry: self.name.clone(),
            message,
            advice,
        }
    }

    /// One request on a fresh connection.
    async fn send(
        &self,
        method: Method,
        url: &Uri,
        accept: &str,
        auth: Option<&str>,
        form: Option<Form>,
    ) -> PullResult<Answer> {
        let scheme = url.scheme_str().unwrap_or("https");
        let host = url
            .host()
            .ok_or_else(|| self.protocol(format!("URL without a host: {url}")))?;
        let https = scheme == "https";
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        // `[::1]` in a URL, `::1` for connect and SNI.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((bare, port)),
        )
        .await
        .map_err(|_| self.connect_err(format!("connecting to {authority} timed out")))?
        .map_err(|e| self.connect_err(format!("connecting to {authority}: {e}")))?;
        let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::USER_AGENT,
                concat!("apiary/", env!("CARGO_PKG_VERSION")),
            );
        if !accept.is_empty() {
            req = req.header(hyper::header::ACCEPT, accept);
        }
        if let Some(a) = auth {
            req = req.header(hyper::header::AUTHORIZATION, a);
        }
        let body = match form {
            Some((content_type, body)) => {
                req = req.header(hyper::header::CONTENT_TYPE, content_type);
                Bytes::from(body)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| self.protocol(format!("building a request for {url}: {e}")))?;
        let send = async {
            if https {
                let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                    .map_err(|e| self.connect_err(format!("bad TLS name {bare}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.connect_err(format!("TLS with {authority}: {e}")))?;
                self.exchange(TokioIo::new(tls), req).await
            } else {
                self.exchange(TokioIo::new(tcp), req).await
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT + IDLE_TIMEOUT, send)
            .await
            .map_err(|_| self.connect_err(format!("{authority} did not answer in time")))?
    }

    async fn exchange<T>(&self, io: TokioIo<T>, req: Request<Full<Bytes>>) -> PullResult<Answer>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.connect_err(format!("HTTP handshake: {e}")))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            // Its error surfaces through the request or the body.
            let _ = conn.await;
        }));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.connect_err(e))?;
        Ok(Answer { resp, _conn: conn })
    }

    /// What to authorize a request to the registry itself with: its
    /// bearer token, or basic auth once it asked for that.
    fn authorization(&self) -> Option<String> {
        if let Some(t) = &self.token {
            return Some(format!("Bearer {t}"));
        }
        if self.basic {
            return self
                .credentials
                .as_ref()
                .and_then(Credentials::basic_header);
        }
        None
    }

    /// GET a registry path (or an absolute redirect target), answering a
    /// 401's challenge once (bearer token or basic auth) and following
    /// redirects; the answer is successful or turned into the registry's
    /// reason.
    async fn get(&mut self, path: &str, accept: &str) -> PullResult<Answer> {
        let mut url = self.parse_url(&format!("{}{path}", self.base))?;
        // A registry token is all there is to offer.
        let mut tried_auth = matches!(self.credentials, Some(Credentials::RegistryToken(_)));
        let mut hops = 0;
        loop {
            // Credentials go only to the registry itself, never to the
            // storage a blob is redirected to.
            let own = url.authority().map(|a| a.as_str()) == Some(self.authority());
            let auth = if own { self.authorization() } else { None };
            let answer = self
                .send(Method::GET, &url, accept, auth.as_deref(), None)
                .await?;
            let status = answer.resp.status();
            if status.is_redirection() {
                hops += 1;
                let loc = answer
                    .resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| self.protocol(format!("{status} without a Location")))?;
                if hops > MAX_REDIRECTS {
                    return Err(self.protocol(format!("more than {MAX_REDIRECTS} redirects")));
                }
                url = self.resolve_location(&url, loc)?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !tried_auth && own {
                let challenge = answer
                    .resp
                    .headers()
                    .get(hyper::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(parse_challenge);
                match challenge {
                    Some(ch) if ch.scheme == "bearer" => {
                        tried_auth = true;
                        self.token = Some(self.fetch_token(&ch).await?);
                        continue;
                    }
                    Some(ch) if ch.scheme == "basic" && self.basic_credentials() => {
                        tried_auth = true;
                        self.basic = true;
                        continue;
                    }
                    _ => {}
                }
            }
            if !status.is_success() {
                let body = read_all(answer, MAX_ERROR_QUOTE * 64, self)
                    .await
                    .unwrap_or_default();
                return Err(self.refusal(status, error_message(status, &body)));
            }
            return Ok(answer);
        }
    }

    fn basic_credentials(&self) -> bool {
        matches!(self.credentials, Some(Credentials::Basic { .. }))
    }

    fn authority(&self) -> &str {
        self.base
            .split_once("://")
            .map(|(_, a)| a)
            .unwrap_or(&self.base)
    }

    fn parse_url(&self, s: &str) -> PullResult<Uri> {
        s.parse::<Uri>()
            .map_err(|e| self.protocol(format!("bad URL {s:?}: {e}")))
    }

    /// A Location may be absolute or relative to the current URL's host.
    fn resolve_location(&self, current: &Uri, loc: &str) -> PullResult<Uri> {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            return self.parse_url(loc);
        }
        let scheme = current.scheme_str().unwrap_or("https");
        let authority = current.authority().map(|a| a.as_str()).unwrap_or("");
        if loc.starts_with('/') {
            return self.parse_url(&format!("{scheme}://{authority}{loc}"));
        }
        let dir = current
            .path()
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or("");
        self.parse_url(&format!("{scheme}://{authority}{dir}/{loc}"))
    }

    /// A token for pulling this repository (for a login: for no scope):
    /// anonymous, asked with basic auth when there is a user and password,
    /// or an OAuth2 refresh-token grant for an identity token.
    async fn fetch_token(&mut self, ch: &Challenge) -> PullResult<String> {
        let url = token_url(ch, &self.repository)
            .ok_or_else(|| self.protocol("bearer challenge without a realm"))?;
        let uri = self.parse_url(&url)?;
        // The token server is another host: plain HTTP only if it too is
        // loopback or declared insecure, whatever the realm says.
        if uri.scheme_str() == Some("http") {
            let hp = uri.authority().map(|a| a.as_str()).unwrap_or("");
            if !self.insecure.is_insecure(hp) {
                return Err(self.protocol(format!(
                    "token realm {url} is plain HTTP; add --insecure-registry {hp} to allow it"
                )));
            }
        }
        let answer = match &self.credentials {
            Some(Credentials::IdentityToken(refresh)) => {
                // Posted to the realm itself, the parameters in the body.
                let realm = ch.params.get("realm").cloned().unwrap_or_default();
                let realm = self.parse_url(&realm)?;
                let mut form = token_params(ch, &self.repository);
                form.push("grant_type=refresh_token".into());
                form.push(format!("refresh_token={}", percent(refresh)));
                form.push(format!("client_id={TOKEN_CLIENT_ID}"));
                let form = ("application/x-www-form-urlencoded", form.join("&"));
                self.send(Method::POST, &realm, "application/json", None, Some(form))
                    .await?
            }
            c => {
                let basic = c.as_ref().and_then(Credentials::basic_header);
                self.send(
                    Method::GET,
                    &uri,
                    "application/json",
                    basic.as_deref(),
                    None,
                )
                .await?
            }
        };
        let status = answer.resp.status();
        let body = read_all(answer, MAX_TOKEN, self).await?;
        if !status.is_success() {
            let message = format!("token server: {}", error_message(status, &body));
            return Err(self.refusal(status, message));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("token answer is not JSON: {e}")))?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(String::from)
            .ok_or_else(|| self.protocol("token answer without a token"))
    }

    /// GET a manifest or index: (body, media type). The body's digest is
    /// checked against `expected` when given.
    async fn manifest(
        &mut self,
        reference: &str,
        expected: Option<&str>,
    ) -> PullResult<(Vec<u8>, String)> {
        let accept = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let answer = self.get(&path, &accept).await?;
        let header_type = answer
            .resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let registry_digest = answer
            .resp
            .headers()
            .get("docker-content-digest")
            .and_then(|h| h.to_str().ok())
            .map(String::from);
        let body = read_all(answer, MAX_MANIFEST, self).await?;
        let digest = format!("sha256:{}", image::sha256_hex(&body));
        if let Some(e) = expected.or(registry_digest.as_deref()) {
            if e != digest {
                return Err(self.protocol(format!(
                    "manifest {reference} has digest {digest}, expected {e}"
                )));
            }
        }
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("manifest {reference} is not JSON: {e}")))?;
        // The body's own mediaType wins: some registries send a generic
        // Content-Type.
        let mt = doc["mediaType"]
            .as_str()
            .map(String::from)
            .filter(|m| !m.is_empty())
            .unwrap_or(header_type);
        if doc["schemaVersion"].as_i64() == Some(1) {
            return Err(self.protocol(format!(
                "manifest {reference} is Docker schema 1, which is deprecated and not supported"
            )));
        }
        Ok((body, mt))
    }

    /// GET a blob: the answer, its body still to be read.
    async fn blob(&mut self, digest: &str) -> PullResult<Answer> {
        let path = format!("/v2/{}/blobs/{digest}", self.repository);
        self.get(&path, "").await
    }
}

/// rustls on ring with the Mozilla roots, built per pull (cheap next to a
/// pull, and no process-wide provider needs installing first).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The next piece of a body, failing if none comes for `IDLE_TIMEOUT`.
async fn next_chunk(body: &mut Incoming, what: &str) -> Result<Option<Bytes>, String> {
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| format!("{what}: no data for {} s", IDLE_TIMEOUT.as_secs()))?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("{what}: {e}")),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    return Ok(Some(data));
                }
                // Trailers: skip.
            }
        }
    }
}

/// A whole (small) body, refused past `limit`.
async fn read_all(answer: Answer, limit: usize, reg: &Registry) -> PullResult<Vec<u8>> {
    let Answer { resp, _conn } = answer;
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(data) = next_chunk(&mut body, "reading an answer")
        .await
        .map_err(|reason| reg.connect_err(reason))?
    {
        out.extend_from_slice(&data);
        if out.len() > limit {
            return Err(reg.protocol(format!("an answer is larger than {limit} bytes")));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- progress

/// Per-layer progress of a pull, for a CLI to draw bars on a TTY (or
/// print lines otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is known: these layers (digest, size) will be fetched.
    Resolved {
        reference: String,
        digest: String,
        layers: Vec<(String, u64)>,
    },
    /// Already in the content store: nothing to fetch.
    LayerExists { digest: String },
    /// Bytes of a layer received so far.
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    /// Fetched, verified and stored.
    LayerDone { digest: String },
    /// Unpacked and recorded under this name.
    Done { name: String },
}

/// Where progress goes; `&|_| {}` when nobody watches.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

// -------------------------------------------------------------------- pull

/// How to pull: with whose credentials, for which platform.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    pub credentials: Option<Credentials>,
    /// `--platform`: pull this platform's image and record it under the
    /// name (unpacked only if this node can run it). None: this node's.
    pub platform: Option<Platform>,
}

/// What a pull recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The image record's name (as `image::normalize` names it).
    pub name: String,
    /// The record's target: the index, or with `--platform` the chosen
    /// platform's manifest.
    pub digest: String,
    /// False when the name already pointed at this target ("Image is up
    /// to date").
    pub updated: bool,
}

/// Pull `reference` into containerd (namespace `namespace`), unpack it for
/// this platform and record it (under the name `image::normalize` gives,
/// so `prepare` finds it).
pub async fn pull(
    channel: &Channel,
    namespace: &str,
    reference: &str,
    cfg: &RegistryConfig,
    opts: &PullOptions,
    progress: ProgressFn<'_>,
) -> PullResult<Pulled> {
    let r = Reference::parse(reference)?;
    let base = Api::new(channel.clone(), namespace)?;
    // The lease keeps the blobs from GC until the image record and its
    // labels hold them.
    let lease = base.create_lease().await?;
    let api = base.with_lease(&lease);
    let result = pull_with(&api, &r, cfg, opts, progress).await;
    base.delete_lease(&lease).await;
    result
}

/// `linux/amd64` or `linux/arm/v7`, for messages.
fn platform_text(p: &Platform) -> String {
    let variant = p
        .variant
        .as_deref()
        .map(|v| format!("/{v}"))
        .unwrap_or_default();
    format!("{}/{}{variant}", p.os, p.architecture)
}

async fn pull_with(
    api: &Api,
    r: &Reference,
    cfg: &RegistryConfig,
    opts: &PullOptions,
    progress: ProgressFn<'_>,
) -> PullResult<Pulled> {
    let mut reg = Registry::new(r, cfg, opts.credentials.as_ref())?;
    let name = r.to_string();
    let before = image::lookup(api, &name).await?.map(|(_, d)| d.digest);
    let want = opts.platform.clone().unwrap_or_else(Platform::host);
    let (body, mt) = reg.manifest(r.manifest_ref(), r.digest.as_deref()).await?;
    let (mut target, mut doc) = store_json(api, &reg, body, &mt).await?;
    let resolved_digest = target.digest.clone();
    if is_index(&mt) || (doc.get("manifests").is_some() && doc.get("layers").is_none()) {
        let entry = want.select(&doc).ok_or_else(|| {
            let whose = if opts.platform.is_some() {
                "the requested platform"
            } else {
                "this node's platform"
            };
            reg.protocol(format!(
                "{name} has no image for {whose} ({})",
                platform_text(&want)
            ))
        })?;
        let chosen = Desc::from_json(entry)
            .ok_or_else(|| reg.protocol(format!("{name}: bad index entry {entry}")))?;
        let (body, mt) = reg.manifest(&chosen.digest, Some(&chosen.digest)).await?;
        let mt = if mt.is_empty() {
            chosen.media_type.clone()
        } else {
            mt
        };
        let (manifest, d) = store_json(api, &reg, body, &mt).await?;
        doc = d;
        // A chosen platform is recorded by its manifest: the record's
        // index would lead `prepare` to this node's entry instead.
        if opts.platform.is_some() {
            target = manifest;
        }
    }
    let config = Desc::from_json(&doc["config"])
        .ok_or_else(|| reg.protocol(format!("{name}: manifest has no config")))?;
    let layers: Vec<Desc> = doc["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(Desc::from_json).collect())
        .unwrap_or_default();
    progress(Progress::Resolved {
        reference: name.clone(),
        digest: resolved_digest,
        layers: layers
            .iter()
            .map(|l| (l.digest.clone(), l.size.max(0) as u64))
            .collect(),
    });
    if !has_blob(api, &config.digest).await? {
        let answer = reg.blob(&config.digest).await?;
        let body = read_all(answer, MAX_CONFIG, &reg).await?;
        store_blob(api, &reg, &config, Bytes::from(body)).await?;
    }
    // Layers a few at a time; the first failure wins (the others are
    // dropped, their unfinished writes left for containerd's GC).
    // Boxed and collected first: a lazy `map` here makes the future's
    // Send-ness depend on higher-ranked lifetimes rustc cannot prove.
    let fetches: Vec<BoxFuture<'_, PullResult<()>>> = layers
        .iter()
        .map(|l| Box::pin(fetch_layer(api, &reg, l, progress)) as BoxFuture<'_, _>)
        .collect();
    let mut stream = futures::stream::iter(fetches).buffer_unordered(CONCURRENT_LAYERS);
    while let Some(done) = stream.next().await {
        done?;
    }
    // Checked (and labelled for GC) before it is recorded: an image for
    // another platform than asked must not take the name.
    let img = image::resolve_for(api, &name, &target, true, &want).await?;
    image::put_image(api, &name, &target).await?;
    // Layers for another platform are kept, not unpacked: nothing here
    // could run them.
    if Platform::host().runs(&want) {
        image::unpack(api, &img, true).await?;
    }
    progress(Progress::Done { name: name.clone() });
    Ok(Pulled {
        name,
        updated: before.as_deref() != Some(target.digest.as_str()),
        digest: target.digest,
    })
}

/// What a registry holds under a reference (`GET /distribution/{name}/json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distribution {
    /// The manifest or index the reference names.
    pub descriptor: Desc,
    /// The platforms it has images for (an index's entries, or a single
    /// manifest's config).
    pub platforms: Vec<Platform>,
}

/// Ask the registry what `reference` is, without pulling it: the digest a
/// service can be pinned to and the platforms it runs on.
pub async fn inspect(
    reference: &str,
    cfg: &RegistryConfig,
    credentials: Option<&Credentials>,
) -> PullResult<Distribution> {
    let r = Reference::parse(reference)?;
    let mut reg = Registry::new(&r, cfg, credentials)?;
    let (body, mt) = reg.manifest(r.manifest_ref(), r.digest.as_deref()).await?;
    let (descriptor, doc) = describe(&reg, &body, &mt)?;
    let platform_of = |v: &Value| {
        let os = v["os"].as_str().unwrap_or("");
        let architecture = v["architecture"].as_str().unwrap_or("");
        // Attestation manifests (buildkit) say unknown/unknown.
        (!os.is_empty() && os != "unknown" && !architecture.is_empty()).then(|| Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: v["variant"].as_str().map(String::from),
        })
    };
    let platforms = if is_index(&mt) || doc.get("manifests").is_some() {
        doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| platform_of(&m["platform"]))
            .collect()
    } else {
        let config = Desc::from_json(&doc["config"])
            .ok_or_else(|| reg.protocol(format!("{r}: manifest has no config")))?;
        let answer = reg.blob(&config.digest).await?;
        let body = read_all(answer, MAX_CONFIG, &reg).await?;
        let got = format!("sha256:{}", image::sha256_hex(&body));
        if got != config.digest {
            return Err(reg.protocol(format!(
                "config {} arrived with digest {got}",
                config.digest
            )));
        }
        let cfg: Value = serde_json::from_slice(&body)
            .map_err(|e| reg.protocol(format!("config is not JSON: {e}")))?;
        platform_of(&cfg).into_iter().collect()
    };
    Ok(Distribution {
        descriptor,
        platforms,
    })
}

impl Registry {
    /// A copy sharing the token, for one concurrent blob fetch.
    fn fork(&self) -> Registry {
        Registry {
            name: self.name.clone(),
            base: self.base.clone(),
            repository: self.repository.clone(),
            insecure: self.insecure.clone(),
            tls: self.tls.clone(),
            token: self.token.clone(),
            credentials: self.credentials.clone(),
            basic: self.basic,
        }
    }
}

/// Store a manifest or index (already digest-checked) and parse it.
async fn store_json(
    api: &Api,
    reg: &Registry,
    body: Vec<u8>,
    media_type: &str,
) -> PullResult<(Desc, Value)> {
    let (desc, doc) = describe(reg, &body, media_type)?;
    if !has_blob(api, &desc.digest).await? {
        store_blob(api, reg, &desc, Bytes::from(body)).await?;
    }
    Ok((desc, doc))
}

/// A manifest or index body: its descriptor and its parsed JSON.
fn describe(reg: &Registry, body: &[u8], media_type: &str) -> PullResult<(Desc, Value)> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| reg.protocol(format!("manifest is not JSON: {e}")))?;
    let desc = Desc {
        media_type: media_type.to_string(),
        digest: format!("sha256:{}", image::sha256_hex(body)),
        size: body.len() as i64,
    };
    Ok((desc, doc))
}

/// Write a blob held in memory, checking it is what `desc` says.
async fn store_blob(api: &Api, reg: &Registry, desc: &Desc, body: Bytes) -> PullResult<()> {
    let mut w = BlobWriter::begin(api);
    for piece in body.chunks(CHUNK) {
        w.write(piece.to_vec()).await;
    }
    commit_checked(w, reg, desc).await
}

/// Commit a written blob if its digest and size match the descriptor.
async fn commit_checked(w: BlobWriter, reg: &Registry, desc: &Desc) -> PullResult<()> {
    let (digest, size) = w.written();
    if digest != desc.digest {
        return Err(reg.protocol(format!(
            "blob {} arrived with digest {digest}: corrupted in transit or by the registry",
            desc.digest
        )));
    }
    if size != desc.size {
        return Err(reg.protocol(format!(
            "blob {} is {size} bytes, its manifest says {}",
            desc.digest, desc.size
        )));
    }
    w.commit(Some(&desc.digest), &desc.digest).await?;
    Ok(())
}

/// Stream one layer from the registry into the content store.
async fn fetch_layer(
    api: &Api,
    reg: &Registry,
    layer: &Desc,
    progress: ProgressFn<'_>,
) -> PullResult<()> {
    if has_blob(api, &layer.digest).await? {
        progress(Progress::LayerExists {
            digest: layer.digest.clone(),
        });
        return Ok(());
    }
    let mut reg = reg.fork();
    let answer = reg.blob(&layer.digest).await?;
    let total = layer.size.max(0) as u64;
    let Answer { resp, _conn } = answer;
    let mut body = resp.into_body();
    let mut w = BlobWriter::begin(api);
    let mut done: u64 = 0;
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
    let what = format!("downloading {}", layer.digest);
    loop {
        let next = next_chunk(&mut body, &what)
            .await
            .map_err(|reason| reg.connect_err(reason))?;
        let Some(data) = next else { break };
        done += data.len() as u64;
        if done > total {
            return Err(reg.protocol(format!(
                "blob {} is longer than the {total} bytes its manifest says",
                layer.digest
            )));
        }
        pending.extend_from_slice(&data);
        // Gather network pieces (often 16 KiB) into whole chunks: fewer
        // gRPC messages to containerd.
        if pending.len() >= CHUNK {
            w.write(std::mem::replace(&mut pending, Vec::with_capacity(CHUNK)))
                .await;
            progress(Progress::Layer {
                digest: layer.digest.clone(),
                done,
                total,
            });
        }
    }
    if !pending.is_empty() {
        w.write(pending).await;
    }
    progress(Progress::Layer {
        digest: layer.digest.clone(),
        done,
        total,
    });
    commit_checked(w, &reg, layer).await?;
    progress(Progress::LayerDone {
        digest: layer.digest.clone(),
    });
    Ok(())
}

async fn has_blob(api: &Api, digest: &str) -> PullResult<bool> {
    match api
        .content()
        .info(api.req(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(PullError::Store(ExecError::Runtime(format!(
            "containerd content info {digest}: {}",
            s.message()
        )))),
    }
}

#[cfg(test)]
mod tests;
