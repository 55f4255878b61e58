//! A minimal Engine API client over the agent's unix socket: one HTTP/1
//! connection per request, version negotiated once with `HEAD /_ping`.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::CliError;
use crate::api::{parse_api_version, API_VERSION};

pub const DEFAULT_HOST: &str = "unix:///run/apiary/apiary.sock";

/// A raw answer: status, selected headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

pub struct Client {
    socket: PathBuf,
    /// `/v1.NN` once negotiated.
    prefix: Option<String>,
}

/// `unix:///path`, `unix://path` or a bare path → the socket path.
pub fn socket_path(host: &str) -> Result<PathBuf, CliError> {
    if let Some(p) = host.strip_prefix("unix://") {
        if p.is_empty() {
            return Err(CliError::Client(format!(
                "invalid host {host:?}: empty socket path"
            )));
        }
        return Ok(PathBuf::from(p));
    }
    if host.contains("://") {
        return Err(CliError::Client(format!(
            "unsupported host {host:?}: only unix sockets are supported (unix:///path/to/apiary.sock)"
        )));
    }
    Ok(PathBuf::from(host))
}

impl Client {
    pub fn new(host: &str) -> Result<Client, CliError> {
        Ok(Client {
            socket: socket_path(host)?,
            prefix: None,
        })
    }

    fn connect_error(&self) -> CliError {
        CliError::Connect(format!(
            "Cannot connect to the apiary agent at unix://{}: is `apiary agent` running?",
            self.socket.display()
        ))
    }

    /// Sends one request on a fresh connection; the connection task runs
    /// until the body has been read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<
        (
            hyper::Response<hyper::body::Incoming>,
            tokio::task::JoinHandle<Result<(), hyper::Error>>,
        ),
        CliError,
    > {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|_| self.connect_error())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| self.connect_error())?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "apiary");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Client(format!("building request for {path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CliError::Client(format!("request to the apiary agent failed: {e}")))?;
        Ok((resp, conn))
    }

    /// One request on a fresh connection.
    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, CliError> {
        self.raw_with(method, path, body, &[]).await
    }

    /// One request with extra headers (`X-Registry-Auth`).
    pub(crate) async fn raw_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        let (resp, conn) = self.send(method, path, body, headers).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::Client(format!("reading the agent's answer: {e}")))?
            .to_bytes();
        let _ = conn.await;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// A GET whose body is read as it arrives (`logs -f` prints lines as
    /// they come instead of waiting for the end of the stream).
    pub async fn get_stream(&mut self, path: &str) -> Result<Streaming, CliError> {
        self.stream(Method::GET, path, &[]).await
    }

    /// A request whose answer is read as it arrives (`logs -f`, a pull's
    /// progress); a 4xx/5xx answer is a daemon error.
    pub async fn stream(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Streaming, CliError> {
        self.negotiate().await?;
        let full = format!("{}{}", self.prefix.as_deref().unwrap_or(""), path);
        let (resp, conn) = self.send(method, &full, None, headers).await?;
        let status = resp.status();
        if status.is_client_error() || status.is_server_error() {
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CliError::Client(format!("reading the agent's answer: {e}")))?
                .to_bytes();
            return Err(CliError::Daemon(error_message(&Answer {
                status,
                headers,
                body,
            })));
        }
        Ok(Streaming {
            body: resp.into_body(),
            conn,
        })
    }

    /// Asks the agent which API version it speaks; uses the lower of its and ours.
    pub async fn negotiate(&mut self) -> Result<(), CliError> {
        if self.prefix.is_some() {
            return Ok(());
        }
        let ans = self.raw(Method::HEAD, "/_ping", None).await?;
        let theirs = ans
            .headers
            .get("API-Version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ours = parse_api_version(API_VERSION).unwrap_or((1, 49));
        let version = match theirs.as_deref().and_then(parse_api_version) {
            Some(v) if v < ours => theirs.unwrap_or_else(|| API_VERSION.to_string()),
            _ => API_VERSION.to_string(),
        };
        self.prefix = Some(format!("/v{version}"));
        Ok(())
    }

    /// The `Swarm` header of `/_ping` (e.g. "active/manager").
    pub async fn ping_swarm_status(&mut self) -> Result<String, CliError> {
        let ans = self.raw(Method::HEAD, "/_ping", None).await?;
        Ok(ans
            .headers
            .get("Swarm")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string())
    }

    /// Sends a request under the negotiated prefix; a 4xx/5xx answer is a
    /// daemon error carrying its message.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, CliError> {
        self.call_with(method, path, body, &[]).await
    }

    /// `call` with extra headers.
    pub async fn call_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        self.negotiate().await?;
        let full = format!("{}{}", self.prefix.as_deref().unwrap_or(""), path);
        let ans = self.raw_with(method, &full, body, headers).await?;
        if ans.status.is_client_error() || ans.status.is_server_error() {
            return Err(CliError::Daemon(error_message(&ans)));
        }
        Ok(ans)
    }

    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, CliError> {
        let ans = self.call(Method::GET, path, None).await?;
        decode(&ans.body, path)
    }

    /// GET returning the raw JSON body too (for `inspect`, which prints what
    /// the agent sent, in its order).
    pub async fn get_raw(&mut self, path: &str) -> Result<Bytes, CliError> {
        Ok(self.call(Method::GET, path, None).await?.body)
    }

    pub async fn post<B: Serialize>(&mut self, path: &str, body: &B) -> Result<Answer, CliError> {
        self.post_with(path, body, &[]).await
    }

    /// `post` with extra headers.
    pub async fn post_with<B: Serialize>(
        &mut self,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| CliError::Client(format!("encoding request: {e}")))?;
        self.call_with(Method::POST, path, Some(json), headers)
            .await
    }

    pub async fn post_empty(&mut self, path: &str) -> Result<Answer, CliError> {
        self.call(Method::POST, path, None).await
    }

    pub async fn delete(&mut self, path: &str) -> Result<Answer, CliError> {
        self.call(Method::DELETE, path, None).await
    }

    /// The server's version answer, unprefixed (so it works even when
    /// negotiation would fail).
    pub async fn version_raw(&mut self) -> Result<Answer, CliError> {
        self.call(Method::GET, "/version", None).await
    }
}

pub fn decode<T: DeserializeOwned>(body: &[u8], path: &str) -> Result<T, CliError> {
    serde_json::from_slice(body)
        .map_err(|e| CliError::Client(format!("unexpected answer from the agent for {path}: {e}")))
}

fn error_message(ans: &Answer) -> String {
    #[derive(serde::Deserialize)]
    struct Msg {
        message: String,
    }
    match serde_json::from_slice::<Msg>(&ans.body) {
        Ok(m) => m.message,
        Err(_) => {
            let text = String::from_utf8_lossy(&ans.body).trim().to_string();
            if text.is_empty() {
                format!(
                    "{} {}",
                    ans.status.as_u16(),
                    ans.status.canonical_reason().unwrap_or("")
                )
                .trim()
                .to_string()
            } else {
                text
            }
        }
    }
}

/// Percent-encodes a query value (filters are JSON).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes one path segment (a node name from the command line).
pub fn encode_segment(s: &str) -> String {
    encode_query(s)
}

/// A response body being read chunk by chunk.
pub struct Streaming {
    body: hyper::body::Incoming,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Streaming {
    /// The next chunk of data, or None at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, CliError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(CliError::Client(format!(
                        "the agent's stream broke off: {e}"
                    )))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers carry no data: read on.
                }
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // Stop the connection task when the reader goes away (Ctrl-C on -f).
        self.conn.abort();
    }
}
