//! The raft snapshot blob (`raft/storage/snapshot.rs`): decoding never
//! panics, and what decodes encodes to a blob that decodes to the same.
#![no_main]

use apiary::raft::storage::snapshot::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode(data) else {
        return;
    };
    let blob = encode(&decoded.meta, &decoded.rows).expect("a decoded meta encodes");
    let again = decode(&blob).expect("an encoded snapshot decodes");
    assert_eq!(again.meta, decoded.meta);
    assert_eq!(again.rows, decoded.rows);
});
