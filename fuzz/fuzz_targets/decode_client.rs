//! `decode_client` on arbitrary frames: the server runs it on every text
//! frame a peer sends, before anything else is known about the peer.
//!
//! Checks, for every input that is UTF-8 (a WebSocket text frame always is):
//!
//! - decoding never panics;
//! - a refused frame's echoed `id` (what the server sends back as `re`) is
//!   a valid request id, so the refusal itself is a valid answer;
//! - a decoded request survives the round trip: `encode` of it decodes back
//!   to an equal request (nothing the server accepted is lost or changed when
//!   a client, the bench or a test builds the same request).

#![no_main]

use chat_proto::validate::is_valid_id;
use chat_proto::{decode_client, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    match decode_client(frame) {
        Ok(request) => {
            if let Some(id) = &request.id {
                assert!(is_valid_id(id), "accepted an invalid id: {id:?}");
            }
            let encoded = encode(&request);
            let decoded = decode_client(&encoded).unwrap_or_else(|err| {
                panic!("re-encoded request {encoded:?} does not decode: {err}")
            });
            assert_eq!(decoded, request, "round trip through {encoded:?}");
        }
        Err(err) => {
            if let Some(id) = &err.id {
                assert!(is_valid_id(id), "echoed an invalid id: {id:?}");
            }
            assert!(!err.reason.is_empty(), "a refusal without a reason");
        }
    }
});
