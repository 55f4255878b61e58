//! Base 36 for big-endian unsigned numbers of a fixed byte width.
//!
//! Swarm prints node IDs, join secrets and the CA digest in base 36 (Go's
//! `big.Int.Text(36)`), zero-padded to a fixed width. No bignum crate is
//! needed for numbers this small: schoolbook division and multiplication
//! by 36 over the bytes is enough.

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base36Error {
    /// Not a lowercase base-36 digit, at this character index.
    InvalidChar { index: usize, ch: char },
    /// The value does not fit in the requested number of bytes.
    Overflow,
}

/// Encodes `bytes` (big-endian) in base 36, left-padded with '0' to at
/// least `width` digits.
pub(crate) fn encode(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            // cur < 36 * 256, so the quotient fits in a byte.
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(DIGITS[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// Decodes lowercase base 36 into an `N`-byte big-endian number. Leading
/// zeros are allowed; values of `N * 8` bits or more are an overflow.
pub(crate) fn decode<const N: usize>(s: &str) -> Result<[u8; N], Base36Error> {
    let mut out = [0u8; N];
    for (index, ch) in s.chars().enumerate() {
        let digit = match ch {
            '0'..='9' => ch as u32 - '0' as u32,
            'a'..='z' => ch as u32 - 'a' as u32 + 10,
            _ => return Err(Base36Error::InvalidChar { index, ch }),
        };
        let mut carry = digit;
        for b in out.iter_mut().rev() {
            let cur = u32::from(*b) * 36 + carry;
            *b = (cur & 0xff) as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return Err(Base36Error::Overflow);
        }
    }
    Ok(out)
}
