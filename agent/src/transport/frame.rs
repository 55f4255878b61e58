//! One length-prefixed frame per direction of a bi-stream.
//!
//! Request:  `u32 big-endian length` + request bytes.
//! Response: `u32 big-endian length` + status byte ([`STATUS_OK`] or [`STATUS_ERR`]) + payload
//! (the handler's bytes, or its UTF-8 error message). The length counts the status byte, so a
//! payload may be up to [`MAX_FRAME`] bytes in both directions.

use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};

use super::MAX_FRAME;

pub(super) const STATUS_OK: u8 = 0;
pub(super) const STATUS_ERR: u8 = 1;

/// Largest frame body a request may carry.
pub const REQUEST_LIMIT: usize = MAX_FRAME;
/// Largest frame body a response may carry: status byte + a payload of up to [`MAX_FRAME`].
pub const RESPONSE_LIMIT: usize = MAX_FRAME + 1;

/// Buffers grow as bytes arrive instead of trusting the peer's length: a cert-less join
/// client must not make us allocate 64 MiB by sending four bytes.
const INITIAL_BUFFER: usize = 64 << 10;

#[derive(Debug)]
pub enum FrameError {
    TooLarge(u64),
    /// The stream ended before the announced length (or before the length itself).
    Truncated,
    Read(ReadError),
    Write(WriteError),
}

impl From<ReadError> for FrameError {
    fn from(e: ReadError) -> Self {
        FrameError::Read(e)
    }
}

impl From<WriteError> for FrameError {
    fn from(e: WriteError) -> Self {
        FrameError::Write(e)
    }
}

/// The 4-byte prefix for a body of `len` bytes, or `TooLarge` beyond `limit`.
pub fn encode_len(len: usize, limit: usize) -> Result<[u8; 4], FrameError> {
    if len > limit {
        return Err(FrameError::TooLarge(len as u64));
    }
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge(len as u64))?;
    Ok(len.to_be_bytes())
}

/// The body length announced by a prefix, or `TooLarge` beyond `limit`.
pub fn decode_len(prefix: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(len) if len <= limit => Ok(len),
        _ => Err(FrameError::TooLarge(u64::from(len))),
    }
}

/// Write one frame whose body is the concatenation of `parts`.
pub(super) async fn write_frame(
    send: &mut SendStream,
    parts: &[&[u8]],
    limit: usize,
) -> Result<(), FrameError> {
    let len = parts.iter().map(|p| p.len()).sum();
    let prefix = encode_len(len, limit)?;
    send.write_all(&prefix).await?;
    for part in parts {
        send.write_all(part).await?;
    }
    Ok(())
}

/// Read one frame body of at most `limit` bytes.
pub(super) async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(_) => FrameError::Truncated,
        ReadExactError::ReadError(e) => FrameError::Read(e),
    })?;
    let len = decode_len(prefix, limit)?;
    let mut body = Vec::with_capacity(len.min(INITIAL_BUFFER));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(FrameError::Truncated),
        }
    }
    Ok(body)
}
