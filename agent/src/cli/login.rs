//! `apiary login` / `apiary logout`, and the credentials the CLI sends with
//! pulls and `--with-registry-auth`.
//!
//! Logins are kept where the docker CLI keeps them — the `auths` of
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`), with
//! the base64 `user:password` in `auth` — so a `docker login` serves
//! `apiary` and the other way round. The agent checks credentials against
//! the registry (`POST /auth`) and keeps none.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Map, Value};

use super::{CliError, Client, Output};
use crate::executor::pull::auth::{
    join_auth, registry_of_server, split_auth, AuthConfig, DOCKER_HUB_SERVER,
};

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password or access token
    #[arg(short, long)]
    pub password: Option<String>,
    /// Take the password or access token from stdin
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// The registry, e.g. registry.example.com or 127.0.0.1:5000 (default: Docker Hub)
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub)
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// The docker CLI's config file, kept whole: `apiary login` changes only
/// its own `auths` entry and leaves every other setting as it was.
pub struct DockerConfig {
    path: PathBuf,
    doc: Map<String, Value>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CliError {
    CliError::Client(format!("cannot {what} {}: {e}", path.display()))
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> Result<PathBuf, CliError> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(d) = non_empty("DOCKER_CONFIG") {
            return Ok(PathBuf::from(d).join("config.json"));
        }
        match non_empty("HOME") {
            Some(h) => Ok(PathBuf::from(h).join(".docker").join("config.json")),
            None => Err(CliError::Client(
                "cannot find the docker config file: set DOCKER_CONFIG or HOME".into(),
            )),
        }
    }

    /// Read the file; a missing one is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig, CliError> {
        let doc = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::Client(format!(
                    "{} is not a JSON object ({e}): fix or remove it",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(io_err("read", path, e)),
        };
        Ok(DockerConfig {
            path: path.to_path_buf(),
            doc,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write it back, readable by its owner only (it holds passwords), by
    /// a rename so a crash never leaves half a file.
    pub fn save(&self) -> Result<(), CliError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err("create", dir, e))?;
        }
        let mut text = serde_json::to_string_pretty(&self.doc)
            .map_err(|e| CliError::Client(format!("encoding the docker config: {e}")))?;
        text.push('\n');
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("write", &tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err("replace", &self.path, e))
    }

    fn auths(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.doc
            .get("auths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
    }

    /// The `auths` key naming `registry` (as references name it:
    /// `docker.io`, `127.0.0.1:5000`), however the entry was written
    /// (`https://host/`, `host`, Docker Hub's index URL).
    fn key_for(&self, registry: &str) -> Option<String> {
        self.auths()
            .find(|(k, _)| registry_of_server(k) == registry)
            .map(|(k, _)| k.clone())
    }

    /// The stored login for `registry`, if any.
    pub fn auth_for(&self, registry: &str) -> Result<Option<AuthConfig>, CliError> {
        let Some(key) = self.key_for(registry) else {
            return Ok(None);
        };
        let entry = self
            .auths()
            .find(|(k, _)| **k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let field = |k: &str| entry[k].as_str().unwrap_or("").to_string();
        let bad = |e: crate::executor::pull::auth::AuthError| {
            CliError::Client(format!(
                "the login for {key} in {}: {e}: log in again",
                self.path.display()
            ))
        };
        let mut a = AuthConfig {
            serveraddress: key.clone(),
            identitytoken: field("identitytoken"),
            registrytoken: field("registrytoken"),
            ..Default::default()
        };
        let auth = field("auth");
        if !auth.is_empty() {
            let (u, p) = split_auth(&auth).map_err(bad)?;
            a.username = u;
            a.password = p;
        }
        if a.credentials().map_err(bad)?.is_none() {
            return Ok(None);
        }
        Ok(Some(a))
    }

    /// Record a login under `server` (replacing any entry for the same
    /// registry, however it was written).
    pub fn set_login(&mut self, server: &str, username: &str, password: &str) {
        self.remove_login(&registry_of_server(server));
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Some(m) = auths.as_object_mut() {
            m.insert(
                server.to_string(),
                serde_json::json!({ "auth": join_auth(username, password) }),
            );
        }
    }

    /// Forget every entry for `registry`; whether there was one.
    pub fn remove_login(&mut self, registry: &str) -> bool {
        let mut removed = false;
        if let Some(m) = self.doc.get_mut("auths").and_then(Value::as_object_mut) {
            let before = m.len();
            m.retain(|k, _| registry_of_server(k) != registry);
            removed = m.len() != before;
        }
        removed
    }

    /// A credential helper the docker CLI would use for `registry` instead
    /// of this file (apiary reads and writes the file only).
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let helpers = self.doc.get("credHelpers").and_then(Value::as_object);
        if let Some(h) = helpers.and_then(|h| {
            h.iter()
                .find(|(k, _)| registry_of_server(k) == registry)
                .and_then(|(_, v)| v.as_str())
        }) {
            return Some(h.to_string());
        }
        self.doc
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
    }
}

/// The `X-Registry-Auth` header for pulling `image`, from the stored login
/// of its registry (none: no header, the agent pulls anonymously).
pub fn registry_auth_header(image: &str) -> Result<Vec<(&'static str, String)>, CliError> {
    registry_auth_header_from(&DockerConfig::default_path()?, image)
}

/// `registry_auth_header` with the logins of the config file at `path`.
pub fn registry_auth_header_from(
    path: &Path,
    image: &str,
) -> Result<Vec<(&'static str, String)>, CliError> {
    let r = crate::executor::pull::Reference::parse(image)
        .map_err(|e| CliError::Client(e.to_string()))?;
    let cfg = DockerConfig::load(path)?;
    Ok(cfg
        .auth_for(&r.registry)?
        .map(|a| vec![("X-Registry-Auth", a.to_header())])
        .unwrap_or_default())
}

/// What the user typed or piped.
fn read_line(prompt: &str, echo: bool) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let _quiet = if echo { None } else { NoEcho::on(&stdin) };
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Client(format!("cannot read from the terminal: {e}")))?;
    if !echo {
        // The Enter the user typed was not echoed either.
        eprintln!();
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Terminal echo off while a password is typed; back on when dropped.
struct NoEcho {
    saved: rustix::termios::Termios,
}

impl NoEcho {
    fn on(stdin: &std::io::Stdin) -> Option<NoEcho> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let saved = tcgetattr(stdin).ok()?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(stdin, OptionalActions::Now, &quiet).ok()?;
        Some(NoEcho { saved })
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        use rustix::termios::{tcsetattr, OptionalActions};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Ask the agent to check `auth` against its registry.
async fn check(c: &mut Client, auth: &AuthConfig) -> Result<String, CliError> {
    let ans = c.post("/auth", auth).await?;
    let v: Value = super::client::decode(&ans.body, "/auth")?;
    Ok(v["Status"]
        .as_str()
        .unwrap_or("Login Succeeded")
        .to_string())
}

pub async fn login(c: &mut Client, a: LoginArgs, out: &mut Output) -> Result<(), CliError> {
    login_at(c, a, &DockerConfig::default_path()?, out).await
}

/// `login`, keeping the login in the config file at `path`.
pub async fn login_at(
    c: &mut Client,
    a: LoginArgs,
    path: &Path,
    out: &mut Output,
) -> Result<(), CliError> {
    let server = a
        .server
        .clone()
        .filter(|s| !s.is_empty() && s != "docker.io")
        .unwrap_or_else(|| DOCKER_HUB_SERVER.to_string());
    let registry = registry_of_server(&server);
    let mut cfg = DockerConfig::load(path)?;
    if a.password.is_some() {
        out.eprintln("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        if a.password_stdin {
            return Err(CliError::Client(
                "--password and --password-stdin are mutually exclusive".into(),
            ));
        }
    }
    let mut password = a.password.clone();
    if a.password_stdin {
        if a.username.is_none() {
            return Err(CliError::Client(
                "Must provide --username with --password-stdin".into(),
            ));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Client(format!("cannot read the password from stdin: {e}")))?;
        password = Some(
            text.trim_end_matches('\n')
                .trim_end_matches('\r')
                .to_string(),
        );
    }
    // Nothing given: try the stored login first, as docker does.
    if a.username.is_none() && password.is_none() {
        if let Some(stored) = cfg.auth_for(&registry)? {
            out.print(format!(
                "Authenticating with existing credentials... [Username: {}]\n",
                stored.username
            ));
            let mut stored = stored;
            stored.serveraddress = server.clone();
            match check(c, &stored).await {
                Ok(status) => {
                    out.println(status);
                    return Ok(());
                }
                Err(e) => out.eprintln(format!("Login did not succeed, error: {e}")),
            }
        }
    }
    let interactive = std::io::stdin().is_terminal();
    let username = match a.username.clone().filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if interactive => {
            out.flush();
            read_line("Username: ", true)?
        }
        None => {
            return Err(CliError::Client(
                "Cannot perform an interactive login from a non TTY device: use -u USER --password-stdin".into(),
            ))
        }
    };
    let password =
        match password {
            Some(p) => p,
            None if interactive => {
                out.flush();
                read_line("Password: ", false)?
            }
            None => return Err(CliError::Client(
                "Cannot perform an interactive login from a non TTY device: use --password-stdin"
                    .into(),
            )),
        };
    if username.is_empty() || password.is_empty() {
        return Err(CliError::Client(
            "a login needs a user name and a password (or access token)".into(),
        ));
    }
    let auth = AuthConfig {
        username: username.clone(),
        password: password.clone(),
        serveraddress: server.clone(),
        ..Default::default()
    };
    let status = check(c, &auth).await?;
    cfg.set_login(&server, &username, &password);
    cfg.save()?;
    out.eprintln(format!(
        "WARNING! Your credentials are stored unencrypted in '{}'.",
        cfg.path().display()
    ));
    if let Some(h) = cfg.helper_for(&registry) {
        out.eprintln(format!(
            "WARNING! The docker CLI here keeps credentials for {registry} in its credential helper \
             \"{h}\", which apiary does not use: docker commands will not see this login."
        ));
    }
    out.println(status);
    Ok(())
}

pub fn logout(a: LogoutArgs, out: &mut Output) -> Result<(), CliError> {
    logout_at(a, &DockerConfig::default_path()?, out)
}

/// `logout` from the config file at `path`.
pub fn logout_at(a: LogoutArgs, path: &Path, out: &mut Output) -> Result<(), CliError> {
    let server = a
        .server
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DOCKER_HUB_SERVER.to_string());
    let registry = registry_of_server(&server);
    let mut cfg = DockerConfig::load(path)?;
    let shown = if registry == registry_of_server("") {
        DOCKER_HUB_SERVER.to_string()
    } else {
        registry.clone()
    };
    if !cfg.remove_login(&registry) {
        out.println(format!("Not logged in to {shown}"));
        return Ok(());
    }
    out.println(format!("Removing login credentials for {shown}"));
    cfg.save()
}
