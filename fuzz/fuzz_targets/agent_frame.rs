//! The agent protocol decoder (`accounting::agent`): the bytes of a stream,
//! cut into reads of fuzzed sizes, go through `FrameDecoder` and every whole
//! frame through `decode_agent`, as the VMM's agent server does.
//!
//! Nothing may panic. The decoder must hold at most one frame's bytes, hand
//! out only bodies of 1..=`MAX_FRAME` bytes, and refuse (for good) a bad
//! length. A message `decode_agent` accepts must pass `validate`, encode
//! again, and decode to the same message. The whole input is also tried as
//! one body, for both directions.
#![no_main]

use accounting::agent::{decode_agent, decode_vmm, encode, FrameDecoder, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_vmm(data);
    if let Ok(m) = decode_agent(data) {
        check(&m);
    }
    // Reads: a size byte, then that many bytes of the stream.
    let mut dec = FrameDecoder::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => {
                    assert!(
                        !body.is_empty() && body.len() <= MAX_FRAME,
                        "body of {} bytes",
                        body.len()
                    );
                    if let Ok(m) = decode_agent(&body) {
                        check(&m);
                    }
                }
                Ok(None) => break,
                // The VMM closes the stream here.
                Err(_) => return,
            }
        }
        assert!(
            dec.pending() < 4 + MAX_FRAME,
            "the decoder holds {} bytes",
            dec.pending()
        );
    }
});

fn check(m: &accounting::agent::AgentMessage) {
    m.validate().expect("decode_agent returned an invalid message");
    let frame = encode(m).expect("an accepted message encodes");
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4);
    let again = decode_agent(&frame[4..]).expect("an encoded message decodes");
    assert_eq!(&again, m, "the message changed on a round trip");
}
