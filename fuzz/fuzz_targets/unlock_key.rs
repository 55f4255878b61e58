//! `UnlockKey::parse` on any text: never panics, and a key it accepts prints
//! back as the (trimmed, unpadded) input and parses to the same key.
#![no_main]

use apiary::pki::UnlockKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    match UnlockKey::parse(&input) {
        Ok(key) => {
            let printed = key.to_string();
            // Canonical unpadded base64 (trailing '=' is tolerated on input).
            assert_eq!(
                printed,
                input.trim().trim_end_matches('='),
                "a parsed key prints differently"
            );
            let again = UnlockKey::parse(&printed).expect("a printed key parses");
            assert!(again == key, "a printed key parses to another key");
        }
        Err(e) => drop(e.to_string()),
    }
});
