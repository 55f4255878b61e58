//! The `apiary` command-line client: one more client of the agent's Engine
//! API, with the docker CLI's commands, flags and output (with `apiary` in
//! place of `docker`). One file per command group.

mod ca;
pub mod client;
mod config;
mod image;
mod info;
mod jsonmessage;
mod login;
mod network;
mod node;
mod objects;
pub mod opts;
mod secret;
pub(crate) mod service;
mod swarm;
pub mod table;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

pub use client::{Client, DEFAULT_HOST};
pub use config::ConfigCommand;
pub use image::ImageCommand;
pub use info::{InfoArgs, VersionArgs};
pub use network::NetworkCommand;
pub use node::NodeCommand;
pub use secret::SecretCommand;
pub use service::ServiceCommand;
pub use swarm::SwarmCommand;

/// The client commands (`main` flattens them next to `agent`).
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Manage swarm
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage swarm services
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage swarm secrets
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage swarm configs
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage swarm networks
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage this node's images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Download an image from a registry into this node (apiary image pull)
    Pull(image::PullArgs),
    /// Log in to a registry (the login is kept in ~/.docker/config.json, as docker keeps it)
    Login(login::LoginArgs),
    /// Log out from a registry
    Logout(login::LogoutArgs),
    /// Display system-wide information
    Info(InfoArgs),
    /// Show the apiary version information
    Version(VersionArgs),
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The agent answered with an error message.
    Daemon(String),
    /// The socket is missing or refused the connection (message is complete).
    Connect(String),
    /// Anything decided on this side (bad flag value, bad answer).
    Client(String),
    /// Several failures (e.g. `node rm a b`), one per line.
    Many(Vec<CliError>),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Daemon(m) => write!(f, "Error response from daemon: {m}"),
            CliError::Connect(m) => f.write_str(m),
            CliError::Client(m) => write!(f, "error: {m}"),
            CliError::Many(errs) => {
                let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for CliError {}

/// What a command prints: stdout text, plus warnings for stderr.
#[derive(Debug, Default)]
pub struct Output {
    pub out: String,
    pub err: String,
}

impl Output {
    pub fn print(&mut self, s: impl AsRef<str>) {
        self.out.push_str(s.as_ref());
    }
    pub fn println(&mut self, s: impl AsRef<str>) {
        self.out.push_str(s.as_ref());
        self.out.push('\n');
    }
    pub fn eprintln(&mut self, s: impl AsRef<str>) {
        self.err.push_str(s.as_ref());
        self.err.push('\n');
    }
    /// Write what the command printed so far to the terminal now, before
    /// output that goes straight there (progress, prompts), so the order
    /// is the one the user expects.
    pub fn flush(&mut self) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(self.out.as_bytes());
        let _ = stdout.flush();
        self.out.clear();
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(self.err.as_bytes());
        self.err.clear();
    }
}

/// The host to talk to: the flag, then `APIARY_HOST`, then the default socket.
pub fn resolve_host(host: Option<String>) -> String {
    host.filter(|h| !h.is_empty())
        .or_else(|| std::env::var("APIARY_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_HOST.to_string())
}

/// Runs one command against a client, writing what it prints into `out`.
pub async fn execute(client: &mut Client, cmd: Command, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        Command::Swarm(c) => swarm::run(client, c, out).await,
        Command::Node(c) => node::run(client, c, out).await,
        Command::Service(c) => service::run(client, c, out).await,
        Command::Secret(c) => secret::run(client, c, out).await,
        Command::Config(c) => config::run(client, c, out).await,
        Command::Network(c) => network::run(client, c, out).await,
        Command::Image(c) => image::run(client, c, out).await,
        Command::Pull(a) => image::pull(client, a, out).await,
        Command::Login(a) => login::login(client, a, out).await,
        Command::Logout(a) => login::logout(a, out),
        Command::Info(a) => info::run_info(client, a, out).await,
        Command::Version(a) => info::run_version(client, a, out).await,
    }
}

/// Run one CLI command against the agent at `host` (None = APIARY_HOST env or
/// "unix:///run/apiary/apiary.sock"; "unix:///path" and a bare path both
/// work). Returns the process exit code; errors go to stderr.
pub async fn run(host: Option<String>, cmd: Command) -> ExitCode {
    let host = resolve_host(host);
    let mut out = Output::default();
    let result = match Client::new(&host) {
        Ok(mut client) => execute(&mut client, cmd, &mut out).await,
        Err(e) => Err(e),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.out.as_bytes());
    let _ = stdout.flush();
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(out.err.as_bytes());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(stderr, "{e}");
            ExitCode::FAILURE
        }
    }
}
