//! The snapshot blob: the snapshot's meta and every state machine row.
//!
//! Length-prefixed rather than one JSON document so that row values (already
//! JSON) are stored as they are, not as arrays of numbers:
//!
//! ```text
//! MAGIC
//! u64 LE length, meta JSON (openraft's SnapshotMeta)
//! u64 LE row count
//! per row: u64 LE length, key (UTF-8); u64 LE length, value
//! ```

use super::SnapshotMeta;

const MAGIC: &[u8] = b"apiary-snapshot-1\n";

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an apiary snapshot (bad magic)")]
    Magic,
    #[error("snapshot ends early, in {0}")]
    Truncated(&'static str),
    #[error("snapshot has {0} bytes after its last row")]
    Trailing(usize),
    #[error("snapshot meta does not decode: {0}")]
    Meta(#[source] serde_json::Error),
    #[error("snapshot row key is not UTF-8")]
    Key(#[source] std::string::FromUtf8Error),
    #[error("cannot encode the snapshot meta: {0}")]
    EncodeMeta(#[source] serde_json::Error),
}

pub fn encode(meta: &SnapshotMeta, rows: &[(String, Vec<u8>)]) -> Result<Vec<u8>, FormatError> {
    let meta = serde_json::to_vec(meta).map_err(FormatError::EncodeMeta)?;
    let size = MAGIC.len()
        + 16
        + meta.len()
        + rows
            .iter()
            .map(|(k, v)| 16 + k.len() + v.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    put(&mut out, &meta);
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for (k, v) in rows {
        put(&mut out, k.as_bytes());
        put(&mut out, v);
    }
    Ok(out)
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

pub struct Decoded {
    pub meta: SnapshotMeta,
    pub rows: Vec<(String, Vec<u8>)>,
}

pub fn decode(blob: &[u8]) -> Result<Decoded, FormatError> {
    let mut r = Reader { rest: blob };
    if r.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(FormatError::Magic);
    }
    let meta = serde_json::from_slice(r.chunk("meta")?).map_err(FormatError::Meta)?;
    let count = r.u64("row count")?;
    // Never trust a count from the blob for an allocation.
    let mut rows = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let key = String::from_utf8(r.chunk("row key")?.to_vec()).map_err(FormatError::Key)?;
        let value = r.chunk("row value")?.to_vec();
        rows.push((key, value));
    }
    if !r.rest.is_empty() {
        return Err(FormatError::Trailing(r.rest.len()));
    }
    Ok(Decoded { meta, rows })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        if self.rest.len() < n {
            return Err(FormatError::Truncated(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }
    fn chunk(&mut self, what: &'static str) -> Result<&'a [u8], FormatError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| FormatError::Truncated(what))?;
        self.take(len, what)
    }
}
