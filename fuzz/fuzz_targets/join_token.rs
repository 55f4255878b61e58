//! `JoinToken::parse` on any text: never panics, and a token it accepts
//! prints back as the (trimmed) input and parses to the same token.
#![no_main]

use apiary::pki::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    match JoinToken::parse(&input) {
        Ok(token) => {
            let printed = token.to_string();
            // The format is canonical: fixed widths, lowercase base 36.
            assert_eq!(printed, input.trim(), "a parsed token prints differently");
            let again = JoinToken::parse(&printed).expect("a printed token parses");
            assert!(again == token, "a printed token parses to another token");
        }
        // The message is shown to users: building it must not panic either.
        Err(e) => drop(e.to_string()),
    }
});
