//! Fuzzes request decoding: any frame text must decode or fail with a reply
//! that can be encoded, never panic, and echo a valid id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmaster::protocol::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Request::decode(text) {
        Ok(req) => {
            // A decoded request re-encodes and decodes to itself.
            let again = Request::decode(&req.encode()).expect("re-decode");
            assert_eq!(again.cmd, req.cmd);
            assert_eq!(again.args, req.args);
        }
        Err(e) => {
            assert!(e.id.is_null() || e.id.is_number() || e.id.is_string());
            let reply = Reply::err(e.id, e.code, e.message);
            let encoded = reply.encode();
            assert!(serde_json::from_str::<serde_json::Value>(&encoded).is_ok());
        }
    }
});
