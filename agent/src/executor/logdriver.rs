//! The hidden `apiary __log-driver <file>` mode: containerd's "binary" log
//! driver for a task's stdout and stderr.
//!
//! The runc shim (not the agent) starts it for each task from the task's
//! `binary://` stdio URI, so a container's logs keep flowing while the agent
//! restarts. Protocol (containerd 1.6 `pkg/process/io.go`, `NewBinaryIO`):
//! the shim passes the URI's query as `key value` arguments, the task's
//! stdout pipe as fd 3, stderr as fd 4, and the write end of a "ready" pipe
//! as fd 5; it blocks reading that pipe until it gets a byte or EOF. On task
//! delete it closes the pipes and sends SIGTERM.
//!
//! Plain threads, no async runtime: two readers, one writer, a few KiB each.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use time::OffsetDateTime;

use super::logs::{LogLine, RotatingWriter, Stream, MAX_FILES, MAX_FILE_BYTES, MAX_LINE_BYTES};

/// The argv[1] that selects this mode.
pub const ARG: &str = "__log-driver";

/// Run the driver until both pipes reach EOF. Returns the exit code.
pub fn run(path: &Path) -> i32 {
    match drive(path) {
        Ok(()) => 0,
        Err(e) => {
            // The shim logs our stderr; say which file and what failed.
            eprintln!("apiary log driver for {}: {e}", path.display());
            1
        }
    }
}

/// An inherited descriptor, opened through /proc so no unsafe code is
/// needed: for a pipe this opens the same pipe.
fn inherited(fd: u32, write: bool) -> io::Result<std::fs::File> {
    let p = PathBuf::from(format!("/proc/self/fd/{fd}"));
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("open inherited fd {fd}: {e}")))
}

fn drive(path: &Path) -> io::Result<()> {
    let mut writer = RotatingWriter::open(path, MAX_FILE_BYTES, MAX_FILES)
        .map_err(|e| io::Error::new(e.kind(), format!("open log {}: {e}", path.display())))?;
    let stdout = inherited(3, false)?;
    let stderr = inherited(4, false)?;
    // Tell the shim we are ready: one byte on the ready pipe (it reads one
    // byte or EOF). Our copy of fd 5 stays open, which the shim ignores.
    match inherited(5, true) {
        Ok(mut ready) => {
            let _ = ready.write_all(b"r");
        }
        Err(e) => eprintln!("apiary log driver: no ready pipe: {e}"),
    }

    // Bounded: a slow disk makes the readers (and so the container's
    // writes) wait rather than the driver's memory grow.
    let (tx, rx) = mpsc::sync_channel::<LogLine>(64);
    let readers: Vec<_> = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)]
        .into_iter()
        .map(|(f, s)| {
            let tx = tx.clone();
            std::thread::spawn(move || pump(f, s, &tx))
        })
        .collect();
    drop(tx);
    let mut result = Ok(());
    for line in rx {
        if let Err(e) = writer.write_record(&line.encode()) {
            // Keep draining so the container never blocks on a full pipe.
            if result.is_ok() {
                result = Err(io::Error::new(
                    e.kind(),
                    format!("write {}: {e}", path.display()),
                ));
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
    result
}

/// Read one stream, split it into lines (at most `MAX_LINE_BYTES` each) and
/// hand them to the writer.
fn pump(f: std::fs::File, stream: Stream, tx: &mpsc::SyncSender<LogLine>) {
    let mut r = BufReader::with_capacity(8 * 1024, f);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = match (&mut r)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut line = &buf[..n];
        if let Some(stripped) = line.strip_suffix(b"\n") {
            line = stripped;
        }
        let l = LogLine {
            time: OffsetDateTime::now_utc(),
            stream,
            line: String::from_utf8_lossy(line).into_owned(),
        };
        if tx.send(l).is_err() {
            return;
        }
    }
}
