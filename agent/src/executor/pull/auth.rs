//! Registry credentials: how clients hand them over, and how a login is
//! checked against a registry.
//!
//! Clients speak Docker's `AuthConfig` JSON: plain in the body of
//! `POST /auth` (`docker login`), base64url-encoded in the
//! `X-Registry-Auth` header of `/images/create`, `/distribution` and (with
//! `--with-registry-auth`) `/services/create|update`. The same JSON is what
//! the apiary CLI sends, built from `~/.docker/config.json`.
//!
//! Credentials never appear in `Debug` output (only the user name does),
//! so a log line or an error cannot leak a password or token.

use std::fmt;

use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{PullError, Reference, Registry, RegistryConfig, DOCKER_HUB};

/// What the registry is called in `docker login` answers and config files
/// when none is named: Docker Hub's legacy index address, as the docker
/// CLI keys its `auths`.
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// Docker's `AuthConfig`, field for field as the docker CLI sends it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    #[serde(default, alias = "Username", skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, alias = "Password", skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// base64 of `user:password` (the form config.json keeps).
    #[serde(default, alias = "Auth", skip_serializing_if = "String::is_empty")]
    pub auth: String,
    #[serde(default, alias = "Email", skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(
        default,
        alias = "ServerAddress",
        skip_serializing_if = "String::is_empty"
    )]
    pub serveraddress: String,
    /// An OAuth2 refresh token from an earlier login.
    #[serde(
        default,
        alias = "IdentityToken",
        skip_serializing_if = "String::is_empty"
    )]
    pub identitytoken: String,
    /// A bearer token to hand to the registry as it is.
    #[serde(
        default,
        alias = "RegistryToken",
        skip_serializing_if = "String::is_empty"
    )]
    pub registrytoken: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("serveraddress", &self.serveraddress)
            .finish_non_exhaustive()
    }
}

/// Credentials a registry can be asked with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and a password (or an access token used as one):
    /// HTTP basic auth, to the registry or to its token server.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (Docker's "identity token"), exchanged at
    /// the token server for an access token.
    IdentityToken(String),
    /// A bearer token sent to the registry as it is.
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Who these credentials are, for messages (never the secret).
    pub fn who(&self) -> String {
        match self {
            Credentials::Basic { username, .. } => format!("user {username}"),
            Credentials::IdentityToken(_) => "the identity token".into(),
            Credentials::RegistryToken(_) => "the registry token".into(),
        }
    }

    /// `Authorization: Basic …` for a user and password.
    pub(super) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }
}

/// Why credentials from a client cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid registry credentials: {0}")]
pub struct AuthError(String);

/// base64url as the docker CLI writes it (padded), read with or without
/// padding.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl AuthConfig {
    /// Decode an `X-Registry-Auth` value (base64url JSON; standard base64
    /// is accepted too). An empty header is no credentials.
    pub fn from_header(value: &str) -> Result<Option<AuthConfig>, AuthError> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        let json = URL_SAFE_LENIENT
            .decode(value)
            .or_else(|_| STANDARD_LENIENT.decode(value))
            .map_err(|e| {
                AuthError(format!(
                    "the X-Registry-Auth header is not base64url JSON ({e})"
                ))
            })?;
        serde_json::from_slice(&json).map(Some).map_err(|e| {
            AuthError(format!(
                "the X-Registry-Auth header is not an AuthConfig JSON object ({e})"
            ))
        })
    }

    /// The `X-Registry-Auth` value for these credentials.
    pub fn to_header(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        general_purpose::URL_SAFE.encode(json)
    }

    /// The credentials in it, if any: a registry token wins over an
    /// identity token, which wins over a user and password (`auth` holds
    /// those when the separate fields are empty).
    pub fn credentials(&self) -> Result<Option<Credentials>, AuthError> {
        if !self.registrytoken.is_empty() {
            return Ok(Some(Credentials::RegistryToken(self.registrytoken.clone())));
        }
        if !self.identitytoken.is_empty() {
            return Ok(Some(Credentials::IdentityToken(self.identitytoken.clone())));
        }
        if !self.username.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            }));
        }
        if self.auth.is_empty() {
            return Ok(None);
        }
        let (username, password) = split_auth(&self.auth)?;
        Ok(Some(Credentials::Basic { username, password }))
    }
}

/// config.json's `auth`: base64 of `user:password`.
pub fn split_auth(auth: &str) -> Result<(String, String), AuthError> {
    let raw = STANDARD_LENIENT
        .decode(auth.trim())
        .map_err(|e| AuthError(format!("\"auth\" is not base64 ({e})")))?;
    let text =
        String::from_utf8(raw).map_err(|_| AuthError("\"auth\" does not decode to text".into()))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| AuthError("\"auth\" does not decode to user:password".into()))?;
    Ok((user.to_string(), password.to_string()))
}

/// config.json's `auth` for a user and password.
pub fn join_auth(username: &str, password: &str) -> String {
    general_purpose::STANDARD.encode(format!("{username}:{password}"))
}

/// A login server as users write it (`127.0.0.1:5000`,
/// `https://reg.example.com/`, `https://index.docker.io/v1/`, nothing) →
/// the registry's name in references (`127.0.0.1:5000`, `docker.io`).
pub fn registry_of_server(server: &str) -> String {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("");
    match host {
        ""
        | "docker.io"
        | "index.docker.io"
        | "registry-1.docker.io"
        | "registry.hub.docker.com" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The registry (or its token server) refused the credentials.
    #[error("{0}")]
    Refused(String),
    /// The server name is not a registry address.
    #[error("{0}")]
    InvalidServer(String),
    /// The registry could not be asked.
    #[error("{0}")]
    Failed(PullError),
}

/// Check `credentials` against `server` as `docker login` does: `GET /v2/`,
/// answering the registry's challenge (basic auth, or a token from its
/// token server asked with basic auth). Ok means the registry let us in.
pub async fn login(
    server: &str,
    credentials: &Credentials,
    cfg: &RegistryConfig,
) -> Result<(), LoginError> {
    let registry = registry_of_server(server);
    // A reference of that registry only to reuse its host checks; the
    // repository stays empty so token requests carry no scope.
    let probe = format!("{registry}/x");
    let r = Reference::parse(&probe).map_err(|_| {
        LoginError::InvalidServer(format!(
            "invalid registry address {server:?}: use host[:port], e.g. registry.example.com or 127.0.0.1:5000"
        ))
    })?;
    let mut reg = Registry::new(&r, cfg, Some(credentials)).map_err(LoginError::Failed)?;
    reg.repository.clear();
    let url = format!("{}/v2/", reg.base);
    match reg.get("/v2/", "").await {
        Ok(_) => Ok(()),
        Err(PullError::Unauthorized { message, .. }) => Err(LoginError::Refused(format!(
            "login attempt to {url} failed with status: 401 Unauthorized: {message}"
        ))),
        Err(PullError::Registry {
            status: status @ (401 | 403),
            message,
            ..
        }) => Err(LoginError::Refused(format!(
            "login attempt to {url} failed with status: {status}: {message}"
        ))),
        Err(e) => Err(LoginError::Failed(e)),
    }
}
