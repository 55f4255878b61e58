//! `apiary swarm ca [--rotate] [-q] [-d]`: show the root CA, or rotate it
//! and follow the nodes as they move to the new one (Docker's `swarm ca`).

use std::io::Write;
use std::time::Duration;

use bollard_stubs::models as m;
use clap::Args;

use super::{CliError, Client, Output};

/// How often progress is polled while a rotation runs (Docker's 200 ms).
const POLL: Duration = Duration::from_millis(200);

#[derive(Args, Debug)]
pub struct CaArgs {
    /// Rotate the swarm CA: every node gets a certificate from a new root
    #[arg(long)]
    pub rotate: bool,
    /// Exit immediately instead of waiting for the root rotation to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
}

fn tls_of(sw: &m::Swarm) -> m::TlsInfo {
    sw.tls_info.clone().unwrap_or_default()
}

pub async fn run(c: &mut Client, a: CaArgs, out: &mut Output) -> Result<(), CliError> {
    let sw: m::Swarm = c.get("/swarm").await?;
    if !a.rotate {
        if a.detach || a.quiet {
            return Err(CliError::Client(
                "`--detach` and `--quiet` only make sense with `--rotate`".into(),
            ));
        }
        return print_trust_root(&sw, out);
    }
    let version = sw.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    let mut spec = sw.spec.clone().unwrap_or_default();
    let ca = spec.ca_config.get_or_insert_with(Default::default);
    ca.force_rotate = Some(ca.force_rotate.unwrap_or(0).wrapping_add(1));
    c.post(&format!("/swarm/update?version={version}"), &spec)
        .await?;
    if a.detach {
        return Ok(());
    }
    let mut last_line = String::new();
    loop {
        let sw: m::Swarm = c.get("/swarm").await?;
        let nodes: Vec<m::Node> = c.get("/nodes").await?;
        let want = tls_of(&sw);
        let in_progress = sw.root_rotation_in_progress.unwrap_or(false);
        // Down nodes are not waited for (they come back with a join token),
        // so they are not counted either.
        let live: Vec<&m::Node> = nodes
            .iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.state) != Some(m::NodeState::DOWN))
            .collect();
        let node_tls = |n: &m::Node| {
            n.description
                .as_ref()
                .and_then(|d| d.tls_info.clone())
                .unwrap_or_default()
        };
        let certs = live
            .iter()
            .filter(|n| node_tls(n).cert_issuer_public_key == want.cert_issuer_public_key)
            .count();
        let roots = live
            .iter()
            .filter(|n| !in_progress && node_tls(n).trust_root == want.trust_root)
            .count();
        let total = live.len();
        if !a.quiet {
            let line = format!(
                "rotation in progress: {certs}/{total} nodes hold a certificate from the new root CA, {roots}/{total} trust only the new root"
            );
            if line != last_line {
                // Live progress; the final root goes through `out`.
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
                last_line = line;
            }
        }
        if !in_progress && certs == total && roots == total {
            if a.quiet {
                return Ok(());
            }
            return print_trust_root(&sw, out);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn print_trust_root(sw: &m::Swarm, out: &mut Output) -> Result<(), CliError> {
    let root = tls_of(sw).trust_root.unwrap_or_default();
    if root.trim().is_empty() {
        return Err(CliError::Client("No CA information available".into()));
    }
    out.println(root.trim());
    Ok(())
}

/// The TLS part of `node inspect --pretty` (Docker's layout), plus the
/// certificate's expiry, which Docker does not show.
pub fn pretty_tls(n: &m::Node, cert_expiry: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(tls) = n.description.as_ref().and_then(|d| d.tls_info.as_ref()) {
        s.push_str("\nTLS Info:\n TrustRoot:\n");
        s.push_str(tls.trust_root.as_deref().unwrap_or("").trim_end());
        s.push_str(&format!(
            "\n\n Issuer Subject:\t{}\n Issuer Public Key:\t{}",
            tls.cert_issuer_subject.as_deref().unwrap_or(""),
            tls.cert_issuer_public_key.as_deref().unwrap_or("")
        ));
    }
    if let Some(e) = cert_expiry.filter(|e| !e.is_empty()) {
        // Under "TLS Info" when there is one, else on its own.
        let indent = if s.is_empty() { "" } else { " " };
        s.push_str(&format!("\n{indent}Certificate Expiry:\t{e}"));
    }
    s
}
