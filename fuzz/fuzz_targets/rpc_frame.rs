//! The cluster RPC wire: length-prefixed frames, the response status byte,
//! and the JSON messages inside. Never panics; a prefix that decodes encodes
//! back to itself; a message that decodes encodes to something that decodes.
//!
//! The transport reads frames from a quinn `RecvStream`, which cannot be
//! built from bytes, so this drives the decoder's pure steps
//! (`frame::decode_len`, `transport::parse_response`) over the input as if
//! it were the stream: frame after frame until the bytes run out.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use apiary::rpc::{decode, encode, Reply, Request};
use apiary::transport::frame::{decode_len, encode_len, REQUEST_LIMIT, RESPONSE_LIMIT};
use apiary::transport::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The whole input as one message, so JSON seeds work without a prefix.
    message::<Request>(data);
    message::<Reply>(data);

    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 4242));
    let mut rest = data;
    while let Some((prefix, tail)) = rest.split_first_chunk::<4>() {
        rest = tail;
        let request_len = decode_len(*prefix, REQUEST_LIMIT).ok();
        let Ok(len) = decode_len(*prefix, RESPONSE_LIMIT) else {
            assert!(request_len.is_none(), "the request limit is the smaller");
            break;
        };
        assert_eq!(encode_len(len, RESPONSE_LIMIT).ok(), Some(*prefix));
        if let Some(request_len) = request_len {
            assert_eq!(request_len, len);
        }
        // A stream that ends before the announced length is `Truncated`.
        let Some((body, tail)) = rest.split_at_checked(len) else {
            break;
        };
        rest = tail;
        if request_len.is_some() {
            message::<Request>(body);
        }
        if let Ok(payload) = parse_response(body.to_vec(), peer) {
            assert_eq!(payload, body[1..], "the status byte is all that is cut");
            message::<Reply>(&payload);
        }
    }
});

fn message<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) {
    if let Ok(message) = decode::<T>(bytes) {
        let again = encode(&message);
        if let Err(e) = decode::<T>(&again) {
            panic!("a decoded message does not decode once encoded again: {e}");
        }
    }
}
