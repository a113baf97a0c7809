//! Every decoder of outside bytes, on arbitrary input: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::member::Message;
use shoal_core::node::{PREFIX_LEN, Prefix};
use shoal_core::wire::Header;

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let _ = Message::decode(data);
    let _ = Prefix::parse(data);
    if data.len() >= PREFIX_LEN {
        let _ = shoal_core::node::decode_request(&data[PREFIX_LEN..]);
        let _ = shoal_core::node::decode_response(&data[PREFIX_LEN..]);
    }
    let _ = shoal_core::link::frame::Frame::parse(data);
    if let Some(frames) = shoal_core::link::frame::unpack(data) {
        for frame in frames.flatten() {
            let _ = shoal_core::link::frame::Frame::parse(frame);
        }
    }
});
