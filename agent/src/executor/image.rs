//! Images without a registry: import OCI image-layout and `docker save`
//! tarballs into containerd's content store, record them as images, and
//! unpack their layers into overlayfs snapshots.
//!
//! Everything goes through containerd's gRPC services (Content, Images,
//! Snapshots, Diff, Leases); nothing is unpacked by the agent itself.
//! Content GC: blobs are kept alive by the image record through the
//! `containerd.io/gc.ref.*` labels containerd's own importer sets (index →
//! manifests, manifest → config and layers, config → top snapshot), and by
//! a lease while the import runs.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, Info, ListImagesRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Status};
use containerd_client::types::{Descriptor, Mount as CdMount};
use serde_json::{json, Value};

use super::containerd::Api;
use super::{ExecError, ExecResult};

pub const SNAPSHOTTER: &str = "overlayfs";

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Files of a tarball kept in memory for parsing (manifests, configs,
/// indexes). Bigger ones are only streamed into the content store and read
/// back from there if needed.
const SMALL_FILE: u64 = 256 * 1024;
/// Chunk size for streaming blobs to containerd (gRPC's default message
/// limit is 4 MiB).
const CHUNK: usize = 1024 * 1024;
/// The most a JSON document (manifest, config, index) may weigh.
pub(crate) const MAX_JSON: usize = 8 * 1024 * 1024;

/// An image as `image ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    /// Digest of the image's target (manifest or index), like Docker's.
    pub digest: String,
    /// Bytes of the host platform's manifest, config and layers.
    pub size: i64,
}

// ---------------------------------------------------------------- pure parts

/// Docker's reference normalisation: `busybox` →
/// `docker.io/library/busybox:latest`, `me/app:1` → `docker.io/me/app:1`,
/// `reg:5000/x` → `reg:5000/x:latest`. Digest references keep their digest.
pub fn normalize(reference: &str) -> String {
    let r = reference.trim();
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let (domain, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let rest = if domain == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    // A tag is a `:` after the last `/` (a port lives in the domain).
    let last = rest.rsplit('/').next().unwrap_or(&rest);
    let tagged = last.contains(':');
    match digest {
        Some(d) => format!("{domain}/{rest}@{d}"),
        None if tagged => format!("{domain}/{rest}"),
        None => format!("{domain}/{rest}:latest"),
    }
}

/// The names an image may be stored under: the normalised reference first,
/// then the reference as given (images imported by other tools).
pub fn candidates(reference: &str) -> Vec<String> {
    let n = normalize(reference);
    if n == reference {
        vec![n]
    } else {
        vec![n, reference.to_string()]
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// OCI chain IDs: ChainID(L0) = DiffID(L0); ChainID(Ln) =
/// sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(p) => format!("sha256:{}", sha256_hex(format!("{p} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

/// A platform in Go's names (`GOARCH`), as image indexes use them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            // 32-bit arm agents are built for ARMv7 (armv7-unknown-linux-*).
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }

    /// How well an index entry's `platform` suits this host: None = cannot
    /// run here; higher is better (an exact variant beats an older one).
    pub fn score(&self, candidate: Option<&Value>) -> Option<u32> {
        let Some(c) = candidate else {
            // An entry without a platform: acceptable, least preferred.
            return Some(0);
        };
        let os = c["os"].as_str().unwrap_or("");
        let arch = c["architecture"].as_str().unwrap_or("");
        let variant = c["variant"].as_str().unwrap_or("");
        if os != self.os || arch != self.architecture {
            return None;
        }
        let mine = self.variant.as_deref().unwrap_or("");
        match self.architecture.as_str() {
            "arm64" => match variant {
                "" | "v8" => Some(2),
                _ => None,
            },
            "arm" => {
                // An ARMv7 host runs v7, v6 and v5 binaries; an ARMv6 host
                // runs v6 and v5.
                let level = |v: &str| v.trim_start_matches('v').parse::<u32>().ok();
                let host = level(mine).unwrap_or(7);
                match level(variant) {
                    Some(l) if l <= host => Some(l + 1),
                    Some(_) => None,
                    None => Some(1),
                }
            }
            _ => Some(1),
        }
    }

    /// `os/arch[/variant]` as `--platform` takes it (Docker's aliases for
    /// the architecture are accepted: x86_64, aarch64, armhf, …).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let bad = || {
            format!(
                "invalid platform {s:?}: use os/arch[/variant], e.g. linux/amd64, linux/arm64 or linux/arm/v7"
            )
        };
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let os = parts[0].to_ascii_lowercase();
        let (architecture, default_variant) = match parts[1].to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_string(), None),
            "aarch64" | "arm64" => ("arm64".to_string(), None),
            "armhf" | "armel" | "arm" => ("arm".to_string(), None),
            "armv7" | "armv7l" => ("arm".to_string(), Some("v7")),
            "armv6" | "armv6l" => ("arm".to_string(), Some("v6")),
            "i386" | "i686" | "386" => ("386".to_string(), None),
            other => (other.to_string(), None),
        };
        let variant = parts
            .get(2)
            .map(|v| v.to_ascii_lowercase())
            .or(default_variant.map(String::from));
        Ok(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// This platform's JSON, as index entries and image configs write it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            v["variant"] = Value::from(variant.as_str());
        }
        v
    }

    /// Whether a host of this platform runs `other`'s binaries.
    pub fn runs(&self, other: &Platform) -> bool {
        self.score(Some(&other.to_json())).is_some()
    }

    /// The index entry to run here: the best-scoring manifest.
    pub fn select<'a>(&self, index: &'a Value) -> Option<&'a Value> {
        index["manifests"]
            .as_array()?
            .iter()
            .filter_map(|m| self.score(m.get("platform")).map(|s| (s, m)))
            // First of the best: `max_by_key` would keep the last.
            .fold(None, |best: Option<(u32, &Value)>, (s, m)| match best {
                Some((b, _)) if b >= s => best,
                _ => Some((s, m)),
            })
            .map(|(_, m)| m)
    }
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// The manifest `docker save` does not write: a Docker schema 2 manifest
/// over the saved config and (uncompressed) layer tars.
pub fn docker_manifest(config: &Desc, layers: &[Desc]) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": {"mediaType": MT_DOCKER_CONFIG, "digest": config.digest, "size": config.size},
        "layers": layers.iter().map(|l| json!({
            "mediaType": MT_DOCKER_LAYER, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).unwrap_or_default()
}

/// The name an OCI index entry is imported under: containerd's own
/// annotation, else the OCI ref name if it is a whole reference (a bare
/// tag like `latest` names nothing by itself).
pub fn entry_name(entry: &Value) -> Option<String> {
    let ann = &entry["annotations"];
    if let Some(n) = ann["io.containerd.image.name"].as_str() {
        return Some(normalize(n));
    }
    let r = ann["org.opencontainers.image.ref.name"].as_str()?;
    (r.contains('/') || r.contains(':')).then(|| normalize(r))
}

/// A content descriptor (digest `sha256:<hex>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Desc {
    pub(crate) fn from_json(v: &Value) -> Option<Desc> {
        Some(Desc {
            media_type: v["mediaType"].as_str().unwrap_or("").to_string(),
            digest: v["digest"].as_str()?.to_string(),
            size: v["size"].as_i64()?,
        })
    }

    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

// ------------------------------------------------------------- containerd IO

fn status_err(op: &str, what: &str, s: Status) -> ExecError {
    ExecError::Runtime(format!("containerd {op} {what}: {}", s.message()))
}

/// Read a whole blob (Content.Read is a stream: read it to the end).
pub(crate) async fn read_blob(api: &Api, digest: &str, limit: usize) -> ExecResult<Vec<u8>> {
    let mut s = api
        .content()
        .read(api.req(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|e| status_err("read content", digest, e))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s
        .message()
        .await
        .map_err(|e| status_err("read content", digest, e))?
    {
        out.extend_from_slice(&m.data);
        if out.len() > limit {
            return Err(ExecError::Image(format!(
                "blob {digest} is larger than {limit} bytes: not an image document"
            )));
        }
    }
    Ok(out)
}

async fn read_json(api: &Api, digest: &str) -> ExecResult<Value> {
    let b = read_blob(api, digest, MAX_JSON).await?;
    serde_json::from_slice(&b)
        .map_err(|e| ExecError::Image(format!("blob {digest} is not valid JSON: {e}")))
}

/// Streams one blob into the content store (Content.Write), digesting it
/// on the way; the digest is checked by containerd at commit.
pub(crate) struct BlobWriter {
    reference: String,
    tx: Option<tokio::sync::mpsc::Sender<WriteContentRequest>>,
    task: tokio::task::JoinHandle<Result<(), Status>>,
    digest: ring::digest::Context,
    offset: i64,
}

impl BlobWriter {
    pub(crate) fn begin(api: &Api) -> BlobWriter {
        // A unique ref: containerd locks a ref while it is being written.
        let reference = format!("apiary-load-{:016x}", rand::random::<u64>());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut client = api.content();
        let req = api.req(stream);
        let task = tokio::spawn(async move {
            // One answer per request; read them all so the server never
            // blocks on a full window.
            let mut answers = client.write(req).await?.into_inner();
            while answers.message().await?.is_some() {}
            Ok(())
        });
        BlobWriter {
            reference,
            tx: Some(tx),
            task,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            offset: 0,
        }
    }

    pub(crate) async fn write(&mut self, data: Vec<u8>) {
        self.digest.update(&data);
        let len = data.len() as i64;
        let msg = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            total: 0,
            expected: String::new(),
            offset: self.offset,
            data,
            labels: HashMap::new(),
        };
        self.offset += len;
        if let Some(tx) = &self.tx {
            if tx.send(msg).await.is_err() {
                // The call failed; its error comes out of `commit`. Keep
                // digesting so the tar stream stays in step.
                self.tx = None;
            }
        }
    }

    /// Digest and size of what was written so far: a pull checks them
    /// against the descriptor before committing.
    pub(crate) fn written(&self) -> (String, i64) {
        let digest = format!("sha256:{}", hex(self.digest.clone().finish().as_ref()));
        (digest, self.offset)
    }

    /// Commit; `expected` (from a file name like blobs/sha256/<hex>) must
    /// match what was written. Returns the blob's digest and size.
    pub(crate) async fn commit(
        mut self,
        expected: Option<&str>,
        what: &str,
    ) -> ExecResult<(String, i64)> {
        let digest = format!("sha256:{}", hex(self.digest.clone().finish().as_ref()));
        if let Some(e) = expected {
            if e != digest {
                return Err(ExecError::Image(format!(
                    "{what}: content digest is {digest}, but its name says {e}: the tarball is corrupt"
                )));
            }
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx
                .send(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    r#ref: self.reference.clone(),
                    total: self.offset,
                    expected: digest.clone(),
                    offset: self.offset,
                    data: Vec::new(),
                    labels: HashMap::new(),
                })
                .await;
        }
        match (&mut self.task).await {
            Ok(Ok(())) => Ok((digest, self.offset)),
            // Already there (an earlier import): nothing to do.
            Ok(Err(s)) if s.code() == Code::AlreadyExists => Ok((digest, self.offset)),
            Ok(Err(s)) => Err(status_err("write content", what, s)),
            Err(e) => Err(ExecError::Runtime(format!(
                "containerd write content {what}: {e}"
            ))),
        }
    }
}

/// Write a small in-memory blob.
pub(crate) async fn write_bytes(api: &Api, data: Vec<u8>, what: &str) -> ExecResult<(String, i64)> {
    let mut w = BlobWriter::begin(api);
    w.write(data).await;
    w.commit(None, what).await
}

/// Add labels to a blob (Content.Update with a field mask naming them).
async fn label_blob(api: &Api, digest: &str, labels: HashMap<String, String>) -> ExecResult<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    api.content()
        .update(api.req(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
        .map_err(|e| status_err("label content", digest, e))?;
    Ok(())
}

/// Create or replace the image record `name` → `target`.
pub(crate) async fn put_image(api: &Api, name: &str, target: &Desc) -> ExecResult<()> {
    let image = Image {
        name: name.to_string(),
        target: Some(target.to_proto()),
        ..Default::default()
    };
    match api
        .images()
        .create(api.req(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => api
            .images()
            .update(api.req(UpdateImageRequest {
                image: Some(image),
                update_mask: None,
                source_date_epoch: None,
            }))
            .await
            .map(|_| ())
            .map_err(|e| status_err("update image", name, e)),
        Err(s) => Err(status_err("create image", name, s)),
    }
}

/// What `prepare` needs of an image: the host platform's manifest, its
/// config and the top layer's chain ID.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub name: String,
    pub target: Desc,
    pub manifest: Desc,
    pub layers: Vec<Desc>,
    pub config_digest: String,
    pub config_size: i64,
    pub config: Value,
    pub chain_ids: Vec<String>,
}

impl Resolved {
    pub fn top_chain(&self) -> Option<&str> {
        self.chain_ids.last().map(String::as_str)
    }
}

/// Find an image record by any of `candidates(reference)`.
pub(crate) async fn lookup(api: &Api, reference: &str) -> ExecResult<Option<(String, Desc)>> {
    for name in candidates(reference) {
        match api
            .images()
            .get(api.req(GetImageRequest { name: name.clone() }))
            .await
        {
            Ok(r) => {
                let t = r.into_inner().image.and_then(|i| i.target);
                if let Some(t) = t {
                    return Ok(Some((
                        name,
                        Desc {
                            media_type: t.media_type,
                            digest: t.digest,
                            size: t.size,
                        },
                    )));
                }
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status_err("get image", &name, s)),
        }
    }
    Ok(None)
}

/// Follow an image's target to the host platform's manifest and config.
/// With `label`, also label index and manifest for containerd's GC (done
/// at import; `prepare` only reads, so it writes nothing to containerd's
/// database).
pub(crate) async fn resolve(
    api: &Api,
    name: &str,
    target: &Desc,
    label: bool,
) -> ExecResult<Resolved> {
    resolve_for(api, name, target, label, &Platform::host()).await
}

/// `resolve` for a given platform (`image pull --platform`).
pub(crate) async fn resolve_for(
    api: &Api,
    name: &str,
    target: &Desc,
    label: bool,
    host: &Platform,
) -> ExecResult<Resolved> {
    let mut manifest_desc = target.clone();
    let mut doc = read_json(api, &target.digest).await?;
    let mt = doc["mediaType"]
        .as_str()
        .unwrap_or(&target.media_type)
        .to_string();
    if is_index(&mt) || (doc.get("manifests").is_some() && doc.get("layers").is_none()) {
        let labels = doc["manifests"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        Some((
                            format!("containerd.io/gc.ref.content.m.{i}"),
                            m["digest"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if label {
            label_blob(api, &target.digest, labels).await?;
        }
        let entry = host.select(&doc).ok_or_else(|| {
            ExecError::Image(format!(
                "image {name} has no variant for the platform {}/{}{}",
                host.os,
                host.architecture,
                host.variant
                    .as_deref()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default()
            ))
        })?;
        manifest_desc = Desc::from_json(entry)
            .ok_or_else(|| ExecError::Image(format!("image {name}: bad index entry {entry}")))?;
        doc = read_json(api, &manifest_desc.digest).await?;
    }
    let config = Desc::from_json(&doc["config"])
        .ok_or_else(|| ExecError::Image(format!("image {name}: manifest has no config")))?;
    let layers: Vec<Desc> = doc["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(Desc::from_json).collect())
        .unwrap_or_default();
    let mut labels: HashMap<String, String> = HashMap::new();
    labels.insert(
        "containerd.io/gc.ref.content.config".into(),
        config.digest.clone(),
    );
    for (i, l) in layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    if label {
        label_blob(api, &manifest_desc.digest, labels).await?;
    }
    let cfg = read_json(api, &config.digest).await?;
    if let Some(arch) = cfg["architecture"].as_str() {
        if host.score(Some(&cfg)).is_none() {
            return Err(ExecError::Image(format!(
                "image {name} is for {}/{arch}, not {}/{}",
                cfg["os"].as_str().unwrap_or("?"),
                host.os,
                host.architecture
            )));
        }
    }
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(ExecError::Image(format!(
            "image {name}: config lists {} layers, manifest {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    Ok(Resolved {
        name: name.to_string(),
        target: target.clone(),
        manifest: manifest_desc,
        layers,
        config_digest: config.digest,
        config_size: config.size,
        config: cfg,
        chain_ids: chain_ids(&diff_ids),
    })
}

async fn snapshot_exists(api: &Api, key: &str) -> ExecResult<bool> {
    match api
        .snapshots()
        .stat(api.req(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(status_err("stat snapshot", key, s)),
    }
}

/// Unpack every layer not unpacked yet: Prepare (parent = previous chain
/// ID) → Diff.Apply → Commit under the layer's chain ID. Then label the
/// config with the top snapshot so GC keeps it while the image exists
/// (if anything was unpacked, or `label` asks for it anyway).
pub(crate) async fn unpack(api: &Api, img: &Resolved, label: bool) -> ExecResult<()> {
    let mut parent = String::new();
    let mut unpacked = false;
    // A snapshot with children cannot be removed, so when the top layer's
    // is here every parent is too: one call for an unpacked image (every
    // task start) instead of one per layer.
    let whole = match img.top_chain() {
        Some(top) => snapshot_exists(api, top).await?,
        None => true,
    };
    let missing = if whole { 0 } else { img.layers.len() };
    for (layer, chain) in img.layers.iter().zip(&img.chain_ids).take(missing) {
        if !snapshot_exists(api, chain).await? {
            let key = format!("apiary-extract-{:016x}-{chain}", rand::random::<u64>());
            let mounts = api
                .snapshots()
                .prepare(api.req(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                }))
                .await
                .map_err(|e| status_err("prepare snapshot", chain, e))?
                .into_inner()
                .mounts;
            unpacked = true;
            let applied = apply_and_commit(api, layer, chain, &key, mounts).await;
            if let Err(e) = applied {
                let _ = remove_snapshot(api, &key).await;
                return Err(ExecError::Image(format!(
                    "image {}: unpacking layer {}: {e}",
                    img.name, layer.digest
                )));
            }
        }
        parent = chain.clone();
    }
    if let Some(top) = img.top_chain().filter(|_| label || unpacked) {
        let mut labels = HashMap::new();
        labels.insert(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            top.to_string(),
        );
        label_blob(api, &img.config_digest, labels).await?;
    }
    Ok(())
}

async fn apply_and_commit(
    api: &Api,
    layer: &Desc,
    chain: &str,
    key: &str,
    mounts: Vec<CdMount>,
) -> ExecResult<()> {
    api.diff()
        .apply(api.req(ApplyRequest {
            diff: Some(layer.to_proto()),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        }))
        .await
        .map_err(|e| status_err("apply layer", &layer.digest, e))?;
    match api
        .snapshots()
        .commit(api.req(CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: chain.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        // Someone unpacked the same layer meanwhile: theirs is as good.
        Err(s) if s.code() == Code::AlreadyExists => {
            let _ = remove_snapshot(api, key).await;
            Ok(())
        }
        Err(s) => Err(status_err("commit snapshot", chain, s)),
    }
}

pub(crate) async fn remove_snapshot(api: &Api, key: &str) -> ExecResult<()> {
    match api
        .snapshots()
        .remove(api.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(status_err("remove snapshot", key, s)),
    }
}

// ----------------------------------------------------------------- import

/// What the tar-reading thread hands to the async side.
enum Item {
    Start { path: String, size: u64 },
    Chunk(Vec<u8>),
    End,
    Link { path: String, target: String },
    Failed(String),
}

fn clean(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

/// Read the tarball on a plain thread (the `tar` crate is blocking) and
/// send its files in chunks; bounded so a layer is never held whole.
fn spawn_reader(reader: impl Read + Send + 'static) -> tokio::sync::mpsc::Receiver<Item> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
    std::thread::spawn(move || {
        let fail = |tx: &tokio::sync::mpsc::Sender<Item>, e: String| {
            let _ = tx.blocking_send(Item::Failed(e));
        };
        let mut ar = tar::Archive::new(reader);
        let entries = match ar.entries() {
            Ok(e) => e,
            Err(e) => return fail(&tx, format!("not a tar archive: {e}")),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => return fail(&tx, format!("reading the tar archive: {e}")),
            };
            let path = match entry.path() {
                Ok(p) => clean(&p.to_string_lossy()),
                Err(e) => return fail(&tx, format!("bad path in the tar archive: {e}")),
            };
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = match entry.link_name() {
                    Ok(Some(t)) => t.to_string_lossy().into_owned(),
                    _ => continue,
                };
                // Symlinks are relative to their directory; hard links to
                // the archive root.
                let target = if kind.is_symlink() {
                    let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
                    resolve_rel(dir, &target)
                } else {
                    clean(&target)
                };
                if tx.blocking_send(Item::Link { path, target }).is_err() {
                    return;
                }
                continue;
            }
            if !(kind.is_file() || kind.is_contiguous()) {
                continue;
            }
            let size = entry.header().size().unwrap_or(0);
            if tx
                .blocking_send(Item::Start {
                    path: path.clone(),
                    size,
                })
                .is_err()
            {
                return;
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                // Fill whole chunks: fewer, larger gRPC messages.
                while filled < CHUNK {
                    match entry.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return fail(&tx, format!("reading {path} from the archive: {e}"))
                        }
                    }
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                if tx.blocking_send(Item::Chunk(buf)).is_err() {
                    return;
                }
                if filled < CHUNK {
                    break;
                }
            }
            if tx.blocking_send(Item::End).is_err() {
                return;
            }
        }
    });
    rx
}

/// `dir/../x` → `x`, lexically.
fn resolve_rel(dir: &Path, target: &str) -> String {
    let mut parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for c in Path::new(target).components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            std::path::Component::RootDir => parts.clear(),
            _ => {}
        }
    }
    parts.join("/")
}

/// Files of the tarball that describe it rather than being content.
fn is_meta(path: &str) -> bool {
    matches!(
        path,
        "index.json" | "oci-layout" | "manifest.json" | "repositories"
    )
}

/// Import an image tarball (OCI image layout or `docker save`) into
/// containerd, unpack it for this platform, and return the image names.
pub async fn load(
    channel: &Channel,
    namespace: &str,
    reader: impl Read + Send + 'static,
) -> ExecResult<Vec<String>> {
    let base = Api::new(channel.clone(), namespace)?;
    // A lease keeps everything written from GC until the image records
    // and labels hold it (containerd collects unreferenced content).
    let lease = base.create_lease().await?;
    let api = base.with_lease(&lease);
    let result = load_with(&api, reader).await;
    base.delete_lease(&lease).await;
    result
}

async fn load_with(api: &Api, reader: impl Read + Send + 'static) -> ExecResult<Vec<String>> {
    let mut rx = spawn_reader(reader);
    let mut blobs: HashMap<String, (String, i64)> = HashMap::new();
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, Option<BlobWriter>, Option<Vec<u8>>)> = None;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Failed(e) => return Err(ExecError::Image(format!("image tarball: {e}"))),
            Item::Link { path, target } => {
                links.insert(path, target);
            }
            Item::Start { path, size } => {
                let writer = (!is_meta(&path)).then(|| BlobWriter::begin(api));
                let keep = (size <= SMALL_FILE).then(|| Vec::with_capacity(size as usize));
                current = Some((path, writer, keep));
            }
            Item::Chunk(data) => {
                if let Some((_, w, keep)) = current.as_mut() {
                    if let Some(k) = keep {
                        k.extend_from_slice(&data);
                    }
                    if let Some(w) = w {
                        w.write(data).await;
                    }
                }
            }
            Item::End => {
                if let Some((path, w, keep)) = current.take() {
                    if let Some(w) = w {
                        let expected = path
                            .strip_prefix("blobs/sha256/")
                            .map(|h| format!("sha256:{h}"));
                        let d = w.commit(expected.as_deref(), &path).await?;
                        blobs.insert(path.clone(), d);
                    }
                    if let Some(k) = keep {
                        small.insert(path, k);
                    }
                }
            }
        }
    }
    let tarball = Tarball {
        blobs,
        small,
        links,
    };
    let images = if tarball.small.contains_key("index.json") {
        match tarball.oci_images() {
            Ok(i) => i,
            // docker save ≥ 25 writes an OCI layout and names its images in
            // manifest.json.
            Err(_) if tarball.small.contains_key("manifest.json") => {
                tarball.docker_images(api).await?
            }
            Err(e) => return Err(e),
        }
    } else if tarball.small.contains_key("manifest.json") {
        tarball.docker_images(api).await?
    } else {
        return Err(ExecError::Image(
            "image tarball has neither index.json (OCI layout) nor manifest.json (docker save)"
                .into(),
        ));
    };
    let mut names = Vec::new();
    for (name, target) in images {
        put_image(api, &name, &target).await?;
        match resolve(api, &name, &target, true).await {
            Ok(img) => unpack(api, &img, true).await?,
            // Another platform's image is kept (it may be re-exported) but
            // cannot be unpacked here.
            Err(ExecError::Image(e)) if e.contains("platform") || e.contains(", not ") => {
                tracing::warn!("loaded {name} without unpacking: {e}");
            }
            Err(e) => return Err(e),
        }
        names.push(name);
    }
    Ok(names)
}

struct Tarball {
    /// path → (digest, size) of every content file.
    blobs: HashMap<String, (String, i64)>,
    small: HashMap<String, Vec<u8>>,
    links: HashMap<String, String>,
}

impl Tarball {
    fn json(&self, path: &str) -> ExecResult<Value> {
        let b = self
            .small
            .get(path)
            .ok_or_else(|| ExecError::Image(format!("image tarball: {path} missing or too big")))?;
        serde_json::from_slice(b)
            .map_err(|e| ExecError::Image(format!("image tarball: {path} is not valid JSON: {e}")))
    }

    fn blob(&self, path: &str) -> ExecResult<(String, i64)> {
        let mut p = clean(path);
        // Follow links (docker save links repeated layers), a few hops.
        for _ in 0..8 {
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        self.blobs
            .get(&p)
            .cloned()
            .ok_or_else(|| ExecError::Image(format!("image tarball: {path} is missing")))
    }

    /// OCI layout: every named entry of index.json is an image.
    fn oci_images(&self) -> ExecResult<Vec<(String, Desc)>> {
        let index = self.json("index.json")?;
        let mut out = Vec::new();
        for e in index["manifests"].as_array().into_iter().flatten() {
            let Some(name) = entry_name(e) else { continue };
            let d = Desc::from_json(e)
                .ok_or_else(|| ExecError::Image(format!("index.json: bad entry {e}")))?;
            out.push((name, d));
        }
        if out.is_empty() {
            return Err(ExecError::Image(
                "image tarball: index.json names no image (no org.opencontainers.image.ref.name annotation)"
                    .into(),
            ));
        }
        Ok(out)
    }

    /// docker save: manifest.json lists config, layers and tags; write the
    /// manifest Docker never saved.
    async fn docker_images(&self, api: &Api) -> ExecResult<Vec<(String, Desc)>> {
        let manifest = self.json("manifest.json")?;
        let mut out = Vec::new();
        for m in manifest.as_array().into_iter().flatten() {
            let config_path = m["Config"]
                .as_str()
                .ok_or_else(|| ExecError::Image("manifest.json: entry without Config".into()))?;
            let (cd, cs) = self.blob(config_path)?;
            let config = Desc {
                media_type: MT_DOCKER_CONFIG.into(),
                digest: cd,
                size: cs,
            };
            let mut layers = Vec::new();
            for l in m["Layers"].as_array().into_iter().flatten() {
                let p = l.as_str().unwrap_or("");
                let (d, s) = self.blob(p)?;
                layers.push(Desc {
                    media_type: MT_DOCKER_LAYER.into(),
                    digest: d,
                    size: s,
                });
            }
            let body = docker_manifest(&config, &layers);
            let (md, ms) = write_bytes(api, body, "synthesized manifest").await?;
            let target = Desc {
                media_type: MT_DOCKER_MANIFEST.into(),
                digest: md,
                size: ms,
            };
            for tag in m["RepoTags"].as_array().into_iter().flatten() {
                if let Some(t) = tag.as_str() {
                    out.push((normalize(t), target.clone()));
                }
            }
        }
        if out.is_empty() {
            return Err(ExecError::Image(
                "image tarball: manifest.json has no RepoTags; tag the image before `docker save`"
                    .into(),
            ));
        }
        Ok(out)
    }
}

/// Every image in the namespace.
pub async fn list(channel: &Channel, namespace: &str) -> ExecResult<Vec<ImageInfo>> {
    let api = Api::new(channel.clone(), namespace)?;
    let images = api
        .images()
        .list(api.req(ListImagesRequest { filters: vec![] }))
        .await
        .map_err(|e| status_err("list images", "", e))?
        .into_inner()
        .images;
    let mut out = Vec::new();
    for i in images {
        let Some(t) = i.target else { continue };
        let target = Desc {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
        };
        let size = match resolve(&api, &i.name, &target, false).await {
            Ok(r) => r.manifest.size + r.config_size + r.layers.iter().map(|l| l.size).sum::<i64>(),
            Err(_) => target.size,
        };
        out.push(ImageInfo {
            name: i.name,
            digest: target.digest,
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Import every `*.tar` in `dir` (air-gapped nodes: images shipped beside
/// the agent). A bad tarball is logged and skipped; a missing directory is
/// nothing to load.
pub async fn preload_dir(
    channel: &Channel,
    namespace: &str,
    dir: &Path,
) -> ExecResult<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(ExecError::Image(format!(
                "reading image directory {}: {e}",
                dir.display()
            )))
        }
    };
    let mut tars: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    tars.sort();
    let mut names = Vec::new();
    for t in tars {
        let f = match std::fs::File::open(&t) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot open image tarball {}: {e}", t.display());
                continue;
            }
        };
        match load(channel, namespace, std::io::BufReader::new(f)).await {
            Ok(n) => {
                tracing::info!("loaded {} from {}", n.join(", "), t.display());
                names.extend(n);
            }
            Err(e) => tracing::warn!("cannot load image tarball {}: {e}", t.display()),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
