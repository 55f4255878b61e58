//! `apiary image ...`: load and ls (this node's images; like `docker load`
//! and `docker image ls`, they are per node, not per swarm).

use std::io::Read;

use clap::{Args, Subcommand};
use hyper::Method;

use super::{table, CliError, Client, Output};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Load an image from a tar archive (OCI layout or `docker save`) or STDIN
    Load(LoadArgs),
    /// List this node's images
    #[command(visible_alias = "list")]
    Ls(LsArgs),
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
    }
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
