//! Engine API for this node's images and for registries: load, list, pull
//! (`POST /images/create`, streaming Docker's JSON progress messages),
//! `GET /distribution/{name}/json` (what the docker CLI asks before
//! `service create` to pin the image's digest) and `POST /auth`
//! (`docker login`).
//!
//! Credentials arrive as Docker's `X-Registry-Auth` header; they are
//! decoded here, checked, and never logged or echoed back.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::{ApiError, ApiResult};
use super::routes::{json_body, query};
use crate::control::{Control, ControlError, ControlResult, ImagePull};
use crate::executor::image::Platform;
use crate::executor::pull::{familiar, AuthConfig, Progress, Pulled, Reference};
use crate::store::RegistryAuth;

type Ctl<C> = State<Arc<C>>;

/// Docker's header for registry credentials.
const REGISTRY_AUTH: &str = "X-Registry-Auth";

/// `POST /images/load` (`docker load`): the body is the tarball; the answer
/// is Docker's JSON message stream.
pub async fn images_load<C: Control>(State(c): Ctl<C>, body: Bytes) -> ApiResult<Response> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send an image tarball (apiary image load -i FILE)",
        ));
    }
    let names = c.image_load(body.to_vec()).await?;
    let mut out = String::new();
    for n in names {
        out.push_str(&json!({ "stream": format!("Loaded image: {n}\n") }).to_string());
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// `GET /images/json` (`docker image ls`).
pub async fn images_list<C: Control>(State(c): Ctl<C>) -> ApiResult<Json<Vec<Value>>> {
    let images = c.images().await?;
    Ok(Json(
        images
            .iter()
            .map(|i| {
                json!({
                    "Id": i.digest,
                    "ParentId": "",
                    "RepoTags": [familiar(&i.name)],
                    "RepoDigests": [],
                    "Created": 0,
                    "Size": i.size,
                    "SharedSize": -1,
                    "Labels": {},
                    "Containers": -1,
                })
            })
            .collect(),
    ))
}

/// `GET /images/{name}/json` (`docker image inspect`, the SDKs'
/// `images.get`): by name (as `docker pull` names it), full digest or ID
/// prefix. Partial: the image's own config (Cmd, Env, …) and layer list
/// are not read from the content store yet, so `Config` is empty and
/// `RootFS` has no layers; the platform is the node's, which is the one
/// apiary unpacks.
pub async fn image_inspect<C: Control>(
    State(c): Ctl<C>,
    Path(rest): Path<String>,
) -> ApiResult<Json<Value>> {
    let Some(name) = rest.strip_suffix("/json").filter(|n| !n.is_empty()) else {
        return Err(ApiError::not_found("page not found"));
    };
    let images = c.images().await?;
    let full = crate::executor::image::normalize(name);
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    let by_id = |i: &&crate::executor::image::ImageInfo| {
        hex.len() >= 4
            && hex.chars().all(|ch| ch.is_ascii_hexdigit())
            && i.digest
                .strip_prefix("sha256:")
                .unwrap_or(&i.digest)
                .starts_with(hex)
    };
    let found = images
        .iter()
        .find(|i| i.name == full)
        .or_else(|| images.iter().find(by_id))
        .ok_or_else(|| ApiError::not_found(format!("No such image: {name}")))?;
    let tags: Vec<String> = images
        .iter()
        .filter(|i| i.digest == found.digest && !i.name.contains('@'))
        .map(|i| familiar(&i.name))
        .collect();
    let host = Platform::host();
    Ok(Json(json!({
        "Id": found.digest,
        "RepoTags": tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": "",
        "DockerVersion": "",
        "Author": "",
        "Config": {},
        "Architecture": host.architecture,
        "Variant": host.variant,
        "Os": host.os,
        "Size": found.size,
        "RootFS": { "Type": "layers" },
        "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
    })))
}

/// The client's `X-Registry-Auth`, decoded; a malformed one is refused
/// (pulling anonymously instead would fail later with a misleading
/// "unauthorized").
fn auth_header(headers: &HeaderMap) -> ApiResult<Option<AuthConfig>> {
    let Some(v) = headers.get(REGISTRY_AUTH) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| {
        ApiError::bad_request(format!("the {REGISTRY_AUTH} header is not ASCII base64url"))
    })?;
    AuthConfig::from_header(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Credentials for a service (`--with-registry-auth`), as the store keeps
/// them: re-encoded from what was decoded, None when the header carries no
/// credentials.
pub(super) fn service_registry_auth(headers: &HeaderMap) -> ApiResult<Option<RegistryAuth>> {
    let Some(auth) = auth_header(headers)? else {
        return Ok(None);
    };
    let creds = auth
        .credentials()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(creds.map(|_| RegistryAuth(auth.to_header())))
}

/// `fromImage` and `tag` as the docker CLI splits a reference
/// (`fromImage=docker.io/library/busybox&tag=latest`, or a digest as tag).
fn join_tag(from: &str, tag: Option<&str>) -> String {
    match tag.filter(|t| !t.is_empty()) {
        None => from.to_string(),
        Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
    }
}

/// `POST /images/create?fromImage=…&tag=…&platform=…` (`docker pull`): the
/// answer streams Docker's JSON messages, one per line. A pull that fails
/// before any progress is an HTTP error, as Docker answers it; a failure
/// later is the stream's last message (`errorDetail`).
pub async fn images_create<C: Control>(
    State(c): Ctl<C>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = query(&uri)?;
    let given = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if given("fromSrc").is_some() {
        return Err(ApiError::bad_request(
            "importing a root filesystem (fromSrc, `docker import`) is not supported: load an image tarball with `apiary image load` or `docker load`",
        ));
    }
    let from = given("fromImage")
        .ok_or_else(|| ApiError::bad_request("fromImage is missing: name the image to pull"))?;
    let reference = join_tag(from, given("tag"));
    let r = Reference::parse(&reference).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let platform = given("platform")
        .map(Platform::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let req = ImagePull {
        reference: reference.clone(),
        platform,
        auth: auth_header(&headers)?,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut pull = Pulling(tokio::spawn(async move { c.image_pull(req, tx).await }));
    let mut messages = PullMessages::new(&r);
    // The first event, or the end of a pull that failed at once (the
    // channel closes as it ends: then only its result tells).
    let mut finished = None;
    let first = tokio::select! {
        biased;
        Some(ev) = rx.recv() => Some(ev),
        done = &mut pull.0 => {
            let result = joined(done);
            if let Err(e) = result {
                return Err(e.into());
            }
            finished = Some(result);
            None
        }
    };
    let queue: std::collections::VecDeque<Value> =
        first.iter().flat_map(|p| messages.on(p)).collect();
    let state = Streaming {
        rx,
        pull,
        finished,
        messages,
        queue,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(v) = st.queue.pop_front() {
                let mut line = v.to_string();
                line.push('\n');
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(p) => st.queue.extend(st.messages.on(&p)),
                // The pull is over (its sender is gone): how did it end?
                None => {
                    let result = match st.finished.take() {
                        Some(r) => r,
                        None => joined((&mut st.pull.0).await),
                    };
                    st.queue.extend(st.messages.finish(&result));
                    st.done = true;
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A pull in progress, stopped if the client goes away (the answer's body,
/// which owns it, is dropped), as `docker pull` stops on Ctrl-C.
struct Pulling(tokio::task::JoinHandle<ControlResult<Pulled>>);

impl Drop for Pulling {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pull task's result; a panic or abort is an internal error.
fn joined(r: Result<ControlResult<Pulled>, tokio::task::JoinError>) -> ControlResult<Pulled> {
    r.unwrap_or_else(|e| Err(ControlError::Internal(format!("the pull stopped: {e}"))))
}

/// What the body of `/images/create` streams from.
struct Streaming {
    rx: mpsc::UnboundedReceiver<Progress>,
    pull: Pulling,
    /// The pull's result, if it came before the stream started.
    finished: Option<ControlResult<Pulled>>,
    messages: PullMessages,
    queue: std::collections::VecDeque<Value>,
    done: bool,
}

/// Docker's 12-character layer ID.
fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// Turns pull progress into Docker's JSON messages, in Docker's words:
/// `Pulling from`, `Pulling fs layer`, `Downloading` with
/// `progressDetail`, `Download complete`, `Already exists`, `Pull
/// complete`, then `Digest:` and `Status:`. Pure, so the stream's shape is
/// tested without a registry.
pub struct PullMessages {
    /// The tag (or digest) being pulled: the ID of the first line.
    tag: String,
    repository: String,
    /// Layers fetched (not already here): they complete once unpacked.
    fetched: Vec<String>,
    digest: Option<String>,
}

impl PullMessages {
    pub fn new(r: &Reference) -> PullMessages {
        PullMessages {
            tag: r.manifest_ref().to_string(),
            repository: r.repository.clone(),
            fetched: Vec::new(),
            digest: None,
        }
    }

    fn layer(status: &str, digest: &str) -> Value {
        json!({"status": status, "progressDetail": {}, "id": short(digest)})
    }

    pub fn on(&mut self, p: &Progress) -> Vec<Value> {
        match p {
            Progress::Resolved { digest, layers, .. } => {
                self.digest = Some(digest.clone());
                let mut out = vec![json!({
                    "status": format!("Pulling from {}", self.repository),
                    "id": self.tag,
                })];
                out.extend(
                    layers
                        .iter()
                        .map(|(d, _)| Self::layer("Pulling fs layer", d)),
                );
                out
            }
            Progress::LayerExists { digest } => vec![Self::layer("Already exists", digest)],
            Progress::Layer {
                digest,
                done,
                total,
            } => vec![json!({
                "status": "Downloading",
                "progressDetail": {"current": done, "total": total},
                "id": short(digest),
            })],
            Progress::LayerDone { digest } => {
                self.fetched.push(digest.clone());
                vec![Self::layer("Download complete", digest)]
            }
            Progress::Done { .. } => self
                .fetched
                .iter()
                .map(|d| Self::layer("Pull complete", d))
                .collect(),
        }
    }

    /// The last lines: the digest and what happened, or the error.
    pub fn finish(&self, result: &ControlResult<Pulled>) -> Vec<Value> {
        match result {
            Ok(p) => {
                let name = familiar(&p.name);
                let status = if p.updated {
                    format!("Status: Downloaded newer image for {name}")
                } else {
                    format!("Status: Image is up to date for {name}")
                };
                let mut out = Vec::new();
                if let Some(d) = &self.digest {
                    out.push(json!({ "status": format!("Digest: {d}") }));
                }
                out.push(json!({ "status": status }));
                out
            }
            Err(e) => {
                let m = e.to_string();
                vec![json!({"errorDetail": {"message": m}, "error": m})]
            }
        }
    }
}

/// `GET /distribution/{name}/json` (the name may hold slashes and a
/// registry's port): the descriptor the reference resolves to and the
/// platforms it has images for, as Docker answers it.
pub async fn distribution<C: Control>(
    State(c): Ctl<C>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let name = rest
        .strip_suffix("/json")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::not_found("page not found"))?;
    Reference::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let d = c.distribution(name, auth_header(&headers)?).await?;
    let platforms: Vec<Value> = d.platforms.iter().map(Platform::to_json).collect();
    Ok(Json(json!({
        "Descriptor": {
            "mediaType": d.descriptor.media_type,
            "digest": d.descriptor.digest,
            "size": d.descriptor.size,
        },
        "Platforms": platforms,
    })))
}

/// `POST /auth` (`docker login`): check the credentials against their
/// registry. The agent keeps nothing; the client stores them.
pub async fn auth<C: Control>(State(c): Ctl<C>, body: Bytes) -> ApiResult<Json<Value>> {
    let auth: AuthConfig = json_body(&body)?;
    c.registry_login(auth).await?;
    Ok(Json(
        json!({"Status": "Login Succeeded", "IdentityToken": ""}),
    ))
}
