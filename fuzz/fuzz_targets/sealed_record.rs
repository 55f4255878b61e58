//! Encryption at rest: opening a sealed record and reading the key file
//! (`raft-dek.json`) never panic, whatever is on disk.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use apiary::pki::UnlockKey;
use apiary::seal::{KeyFile, Sealer};
use libfuzzer_sys::fuzz_target;

/// The key the seeds in `fuzz/corpus/sealed_record/` were sealed with.
const KEY: [u8; 32] = [7; 32];
/// The previous unlock key of the locked key-file seed.
const OLD_KEY: [u8; 32] = [8; 32];
const PLACE: &str = "log/1";

static SEALER: LazyLock<Sealer> = LazyLock::new(|| Sealer::new(KEY));

fuzz_target!(|data: &[u8]| {
    // Only a seed sealed with KEY at PLACE opens (forging one means breaking
    // ChaCha20-Poly1305); what opens must seal and open again unchanged.
    if let Ok(plain) = SEALER.open(PLACE, data) {
        let sealed = SEALER.seal(PLACE, &plain).expect("sealing works");
        assert_eq!(SEALER.open(PLACE, &sealed).ok(), Some(plain));
        assert!(
            SEALER.open("log/2", data).is_err(),
            "a record opened at another place"
        );
    }

    let path = Path::new("/fuzz/raft-dek.json");
    if let Ok(file) = serde_json::from_slice::<KeyFile>(data) {
        let text = serde_json::to_vec(&file).expect("a key file serializes");
        let again: KeyFile = serde_json::from_slice(&text).expect("a saved key file loads");
        assert_eq!(again, file);
        let _ = file.plain_dek(path);
        // Current and previous key, both sides of `previous.until`.
        for key in [KEY, OLD_KEY] {
            for now in [0, u64::MAX] {
                if let Err(e) = file.unlock(path, &UnlockKey(key), now) {
                    drop(e.to_string());
                }
            }
        }
    }
});
