//! Container logs: the on-disk format written by the log driver
//! (`logdriver`), reading it back for `service logs` / `task logs`, and
//! Docker's multiplexed stream framing.
//!
//! One JSON object per line: `{"t":"<RFC3339Nano>","s":"stdout","l":"text"}`.
//! A log is the current file `<id>.log` plus rotated `<id>.log.1` (newer) …
//! `<id>.log.N` (oldest); readers go oldest first.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A log file is rotated when it reaches this size (Docker's json-file
/// default is unlimited; 10 MiB × 3 keeps an SD card from filling up).
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept per container: the current one and this many minus one
/// rotated ones.
pub const MAX_FILES: usize = 3;
/// Longer lines are split, as Docker does (16 KiB), so one runaway line
/// cannot make the driver buffer without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Stream byte in Docker's multiplexed framing.
    fn mux_byte(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// One line of a container's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: OffsetDateTime,
    pub stream: Stream,
    /// The text without its trailing newline.
    pub line: String,
}

#[derive(Serialize, Deserialize)]
struct Record<'a> {
    t: String,
    s: Stream,
    #[serde(borrow)]
    l: std::borrow::Cow<'a, str>,
}

impl LogLine {
    /// The JSON line written to the log file (with its `\n`).
    pub fn encode(&self) -> Vec<u8> {
        let rec = Record {
            t: self
                .time
                .format(&Rfc3339)
                .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z")),
            s: self.stream,
            l: std::borrow::Cow::Borrowed(&self.line),
        };
        // Serializing a struct of strings cannot fail.
        let mut out = serde_json::to_vec(&rec).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parse one line of a log file; None for a torn or foreign line (the
    /// last line of a file being written may be incomplete).
    pub fn decode(line: &[u8]) -> Option<LogLine> {
        let rec: Record = serde_json::from_slice(line).ok()?;
        Some(LogLine {
            time: OffsetDateTime::parse(&rec.t, &Rfc3339).ok()?,
            stream: rec.s,
            line: rec.l.into_owned(),
        })
    }

    /// As `docker logs` prints it: with `timestamps`, the RFC 3339 time and
    /// a space first; always ends with a newline.
    pub fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.line.len() + 40);
        if timestamps {
            if let Ok(t) = self.time.format(&Rfc3339) {
                out.extend_from_slice(t.as_bytes());
                out.push(b' ');
            }
        }
        out.extend_from_slice(self.line.as_bytes());
        out.push(b'\n');
        out
    }
}

/// One frame of Docker's multiplexed stream (what `docker logs` reads from
/// a container without a TTY): stream byte, three zero bytes, big-endian
/// u32 payload length, payload.
pub fn mux_frame(stream: Stream, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.push(stream.mux_byte());
    out.extend_from_slice(&[0, 0, 0]);
    // Payloads are single log lines (≤ 16 KiB + timestamp), far below u32.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Split a multiplexed stream back into frames (used by tests and clients).
/// Returns the frames and the number of bytes consumed (an incomplete frame
/// at the end is left for the next read).
pub fn mux_decode(buf: &[u8]) -> (Vec<(Stream, Vec<u8>)>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 8 {
        let stream = match buf[at] {
            2 => Stream::Stderr,
            _ => Stream::Stdout,
        };
        let len = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]) as usize;
        if buf.len() < at + 8 + len {
            break;
        }
        frames.push((stream, buf[at + 8..at + 8 + len].to_vec()));
        at += 8 + len;
    }
    (frames, at)
}

/// Which lines to return.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Only the last N lines (after filtering).
    pub tail: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Kept for the caller's rendering (`LogLine::render`).
    pub timestamps: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            tail: None,
            since: None,
            timestamps: false,
            stdout: true,
            stderr: true,
        }
    }
}

impl LogOptions {
    fn wants(&self, l: &LogLine) -> bool {
        let stream_ok = match l.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        stream_ok && self.since.is_none_or(|s| l.time >= s)
    }
}

/// `<path>.<n>`: the n-th rotated file (1 = most recent).
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of one log, oldest first (rotated ones, then the current one).
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..MAX_FILES + 8)
        .map(|n| rotated(path, n))
        .filter(|p| p.exists())
        .collect();
    out.reverse();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// Every line of the log (including rotated files) that `opts` selects.
/// A missing log is empty, not an error: a task that never wrote a byte
/// may have no file yet.
pub fn read(path: &Path, opts: &LogOptions) -> Vec<LogLine> {
    let mut out: std::collections::VecDeque<LogLine> = Default::default();
    for f in files(path) {
        let Ok(file) = File::open(&f) else { continue };
        for raw in BufReader::new(file).split(b'\n') {
            let Ok(raw) = raw else { break };
            let Some(line) = LogLine::decode(&raw) else {
                continue;
            };
            if !opts.wants(&line) {
                continue;
            }
            out.push_back(line);
            // Keep memory bounded by the tail while reading 30 MiB of logs.
            if let Some(t) = opts.tail {
                while out.len() > t {
                    out.pop_front();
                }
            }
        }
    }
    out.into()
}

/// How often `follow` looks for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `read`, then every new line as it is written, on a channel. Polls the
/// file (cheap, and survives rotation: a file that shrank or was replaced
/// is reopened from its start). Stops when the receiver is dropped.
pub fn follow(path: PathBuf, opts: LogOptions) -> tokio::sync::mpsc::Receiver<LogLine> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    std::thread::spawn(move || {
        // The rotated files whole, then the current file up to exactly the
        // byte where polling resumes: nothing written meanwhile is lost or
        // sent twice.
        let mut ino = inode(&path);
        let mut pending: Vec<u8> = Vec::new();
        let mut backlog: std::collections::VecDeque<LogLine> = Default::default();
        let keep = |l: LogLine, backlog: &mut std::collections::VecDeque<LogLine>| {
            if opts.wants(&l) {
                backlog.push_back(l);
                if let Some(t) = opts.tail {
                    while backlog.len() > t {
                        backlog.pop_front();
                    }
                }
            }
        };
        for f in files(&path).into_iter().filter(|f| f != &path) {
            let mut torn = Vec::new();
            if let Some((lines, _)) = read_from(&f, 0, &mut torn) {
                lines.into_iter().for_each(|l| keep(l, &mut backlog));
            }
        }
        let mut pos = 0;
        if let Some((lines, n)) = read_from(&path, 0, &mut pending) {
            pos = n;
            lines.into_iter().for_each(|l| keep(l, &mut backlog));
        }
        for l in backlog {
            if tx.blocking_send(l).is_err() {
                return;
            }
        }
        loop {
            if tx.is_closed() {
                return;
            }
            std::thread::sleep(FOLLOW_POLL);
            let now_ino = inode(&path);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if now_ino != ino || len < pos {
                // Rotated: the lines written to the old file after our last
                // read are in `<path>.1`; read its tail from `pos` first.
                if let Some((old, _)) = read_from(&rotated(&path, 1), pos, &mut pending) {
                    for l in old.into_iter().filter(|l| opts.wants(l)) {
                        if tx.blocking_send(l).is_err() {
                            return;
                        }
                    }
                }
                pending.clear();
                ino = now_ino;
                pos = 0;
            }
            if let Some((lines, n)) = read_from(&path, pos, &mut pending) {
                pos += n;
                for l in lines.into_iter().filter(|l| opts.wants(l)) {
                    if tx.blocking_send(l).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Whole lines from `pos` to the end of `path`, and how many bytes were
/// read; a torn last line stays in `pending` until its newline arrives.
fn read_from(path: &Path, pos: u64, pending: &mut Vec<u8>) -> Option<(Vec<LogLine>, u64)> {
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(pos)).ok()?;
    let mut buf = Vec::new();
    io::Read::read_to_end(&mut f, &mut buf).ok()?;
    // Only complete lines advance: keep the tail for the next poll.
    let mut out = Vec::new();
    pending.extend_from_slice(&buf);
    while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=nl).collect();
        if let Some(l) = LogLine::decode(&line[..line.len() - 1]) {
            out.push(l);
        }
    }
    Some((out, buf.len() as u64))
}

/// Appends encoded lines to a log file and rotates it by size. Used by the
/// log driver; kept here, beside the reader, so both agree on the names.
pub struct RotatingWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: usize,
}

impl RotatingWriter {
    pub fn open(path: &Path, max_bytes: u64, max_files: usize) -> io::Result<RotatingWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            max_files: max_files.max(1),
        })
    }

    /// Write one encoded record (never split across files).
    pub fn write_record(&mut self, rec: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + rec.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        // Shift .N-1 → .N … .1 → .2, current → .1; the oldest falls off.
        if self.max_files == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let last = self.max_files - 1;
        let _ = std::fs::remove_file(rotated(&self.path, last));
        for n in (1..last).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
