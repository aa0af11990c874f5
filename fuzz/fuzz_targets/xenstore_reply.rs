//! The xenstore reply parser on arbitrary bytes from xenstored: the stream decoder, every
//! reply type, and watch events. Nothing may panic and no payload may exceed the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen::abi::xs_wire::{XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use xen::xenstore::{Decoder, Reply, WatchEvent};

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the stream is cut, as a ring delivers it in pieces.
    let Some((&cut, stream)) = data.split_first() else { return };
    let cut = usize::from(cut).min(stream.len());
    let mut decoder = Decoder::new();
    for piece in [&stream[..cut], &stream[cut..]] {
        decoder.push(piece);
        while let Ok(Some(msg)) = decoder.next_message() {
            assert!(msg.payload.len() <= XENSTORE_PAYLOAD_MAX);
            for t in XsdSockmsgType::ALL {
                let _ = Reply::parse(t, &msg);
            }
            let _ = WatchEvent::parse(&msg.payload);
        }
    }
});
