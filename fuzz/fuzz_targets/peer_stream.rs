#![no_main]
//! Arbitrary bytes from a peer socket, in arbitrary pieces: frames or an error, never a panic;
//! whatever decodes re-encodes to the same bytes, and chunks reassemble (within their bound) into
//! a frame or an error.
use keel_codec::peer::{FrameReader, PeerFrame, Reassembly};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(1 << 20);
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    reader.push(&data[..split]);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = reader.next_frame() {
        frames.push(frame);
    }
    reader.push(&data[split..]);
    while let Ok(Some(frame)) = reader.next_frame() {
        frames.push(frame);
    }
    let mut reassembly = Reassembly::new(64 << 10);
    for frame in &frames {
        if let PeerFrame::Chunk { last, bytes } = frame {
            if let Ok(Some(whole)) = reassembly.push(*last, bytes) {
                assert!(!matches!(whole, PeerFrame::Chunk { .. }), "a chunk never reassembles into a chunk");
            }
        }
    }
    for frame in frames {
        let bytes = frame.encode();
        let mut again = FrameReader::new(1 << 20);
        again.push(&bytes);
        assert_eq!(again.next_frame().ok().flatten(), Some(frame));
    }
});
