//! `apiary image ...`: load, ls and pull (this node's images; like
//! `docker load`, `docker image ls` and `docker pull`, they are per node,
//! not per swarm).

use std::io::{IsTerminal, Read, Write};

use clap::{Args, Subcommand};
use hyper::Method;

use super::client::encode_query;
use super::jsonmessage::Display;
use super::{table, CliError, Client, Output};
use crate::executor::pull::{familiar, Reference};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Load an image from a tar archive (OCI layout or `docker save`) or STDIN
    Load(LoadArgs),
    /// List this node's images
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Download an image from a registry into this node
    Pull(PullArgs),
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Pull the image for this platform (os/arch[/variant]) instead of the node's
    #[arg(long)]
    pub platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG|@DIGEST]
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short = 'i', long = "input")]
    pub input: Option<String>,
    /// Suppress the load output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(c: &mut Client, cmd: ImageCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        ImageCommand::Load(a) => load(c, a, out).await,
        ImageCommand::Ls(a) => ls(c, a, out).await,
        ImageCommand::Pull(a) => pull(c, a, out).await,
    }
}

/// `docker pull`: the agent pulls into this node's containerd and streams
/// Docker's progress messages, shown as the docker CLI shows them; the
/// stored login of the image's registry (`apiary login`) goes along.
pub async fn pull(c: &mut Client, a: PullArgs, out: &mut Output) -> Result<(), CliError> {
    let headers = super::login::registry_auth_header(&a.name)?;
    let tty = std::io::stdout().is_terminal();
    pull_to(c, a, &headers, &mut std::io::stdout(), tty, out).await
}

/// `pull`, drawing the progress on `screen` (a terminal when `tty`).
pub async fn pull_to(
    c: &mut Client,
    a: PullArgs,
    headers: &[(&str, String)],
    screen: &mut dyn Write,
    tty: bool,
    out: &mut Output,
) -> Result<(), CliError> {
    let r = Reference::parse(&a.name).map_err(|e| CliError::Client(e.to_string()))?;
    // As the docker CLI splits it: the name, and the tag or digest.
    let from = format!("{}/{}", r.registry, r.repository);
    let mut path = format!(
        "/images/create?fromImage={}&tag={}",
        encode_query(&from),
        encode_query(r.manifest_ref())
    );
    if let Some(p) = &a.platform {
        path.push_str(&format!("&platform={}", encode_query(p)));
    }
    let mut body = c.stream(Method::POST, &path, headers).await?;
    let mut display = Display::new(tty);
    let mut pending = Vec::new();
    let mut result = Ok(());
    while let Some(chunk) = body.chunk().await? {
        pending.extend_from_slice(&chunk);
        // Whole lines only: a message may arrive in pieces.
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            match display.show(&msg) {
                Ok(text) if !a.quiet => {
                    let _ = screen.write_all(text.as_bytes());
                    let _ = screen.flush();
                }
                Ok(_) => {}
                Err(e) => result = Err(e),
            }
        }
    }
    result?;
    out.println(familiar(&r.to_string()));
    Ok(())
}

async fn load(c: &mut Client, a: LoadArgs, out: &mut Output) -> Result<(), CliError> {
    let data = match a.input.as_deref() {
        Some(path) if path != "-" => {
            std::fs::read(path).map_err(|e| CliError::Client(format!("cannot read {path}: {e}")))?
        }
        _ => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                return Err(CliError::Client(
                    "requested load from stdin, but stdin is empty: use -i FILE or pipe a tarball"
                        .into(),
                ));
            }
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Client(format!("reading stdin: {e}")))?;
            buf
        }
    };
    let ans = c
        .call(Method::POST, "/images/load?quiet=1", Some(data))
        .await?;
    if a.quiet {
        return Ok(());
    }
    for line in String::from_utf8_lossy(&ans.body).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(s) = v["stream"].as_str() {
            out.print(s);
        }
    }
    Ok(())
}

async fn ls(c: &mut Client, a: LsArgs, out: &mut Output) -> Result<(), CliError> {
    let images: Vec<serde_json::Value> = c.get("/images/json").await?;
    if a.quiet {
        for i in &images {
            out.println(short_id(i["Id"].as_str().unwrap_or("")));
        }
        return Ok(());
    }
    let mut text = String::from("REPOSITORY\tTAG\tIMAGE ID\tSIZE\n");
    for i in &images {
        let tag = i["RepoTags"][0].as_str().unwrap_or("<none>:<none>");
        let (repo, tag) = tag.rsplit_once(':').unwrap_or((tag, "<none>"));
        text.push_str(&format!(
            "{repo}\t{tag}\t{}\t{}\n",
            short_id(i["Id"].as_str().unwrap_or("")),
            table::bytes_size(i["Size"].as_f64().unwrap_or(0.0))
        ));
    }
    out.print(table::tabwrite(&text));
    Ok(())
}

fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}
