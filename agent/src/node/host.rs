//! Facts about the host this agent runs on.

use crate::control::HostInfo;
use crate::store::{NodeDescription, Platform};

use super::NodeConfig;

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Total memory from /proc/meminfo, in bytes.
fn mem_total() -> i64 {
    let Some(text) = read_trimmed("/proc/meminfo") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn host_info(cfg: &NodeConfig) -> HostInfo {
    let hostname = cfg
        .hostname
        .clone()
        .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|| "localhost".into());
    HostInfo {
        hostname,
        os: std::env::consts::OS.to_string(),
        // Docker reports the kernel's names (x86_64, aarch64), as Rust does.
        architecture: std::env::consts::ARCH.to_string(),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        ncpu: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
        mem_total: mem_total(),
        data_dir: cfg.data_dir.display().to_string(),
    }
}

pub fn description(h: &HostInfo) -> NodeDescription {
    NodeDescription {
        hostname: h.hostname.clone(),
        platform: Platform {
            os: h.os.clone(),
            architecture: h.architecture.clone(),
        },
        nano_cpus: h.ncpu * 1_000_000_000,
        memory_bytes: h.mem_total,
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
