//! The host's client on a real PTY pair, against a device played by this test.

use embedded_io::{Read, Write};
use ember_core::frame::FrameDecoder;
use ember_core::protocol::{
    self, Event, FrameWriter, Hello, MAX_FRAME, PROTOCOL_VERSION, Request, Status,
};
use ember_serial::{Client, ClientError, PtyPair, Tty};
use std::sync::mpsc;
use std::time::Duration;

fn status(replies: u32) -> Event {
    Event::Status(Status {
        session: 0,
        turns: 0,
        context_used: 0,
        context_length: 512,
        replies,
    })
}

/// A device stalls in the middle of a frame (its write timed out) and answers the next request
/// later: the host must get that answer, not a merge of the torn frame and the answer.
#[test]
fn a_frame_the_device_abandoned_halfway_does_not_swallow_the_next_one() {
    let pair = PtyPair::open().unwrap();
    let path = pair.path().to_path_buf();
    let (go, wait) = mpsc::channel::<()>();
    let device = std::thread::spawn(move || {
        let mut line = Tty::open(&path, 115_200).unwrap();
        let mut decoder = FrameDecoder::<MAX_FRAME>::new();
        let mut writer = FrameWriter::new();
        let mut byte = [0u8; 1];
        // Wait for the host's hello, answer it.
        loop {
            line.read_exact(&mut byte).unwrap();
            if let Some(Ok(frame)) = decoder.push(byte[0]) {
                let request: Request = protocol::decode(frame.payload).unwrap();
                assert!(matches!(request, Request::Hello { .. }), "{request:?}");
                break;
            }
        }
        let hello = Event::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            model_name: protocol::truncated("test device"),
            model_hash: [7; 32],
            context_length: 512,
            max_frame: MAX_FRAME as u32,
            slot: None,
            last_flash: None,
            max_baud: 0,
        });
        line.write_all(writer.encode(&hello).unwrap()).unwrap();
        // Half a frame, then nothing: the write that gave up.
        let torn = writer.encode(&status(1)).unwrap().to_vec();
        line.write_all(&torn[..torn.len() / 2]).unwrap();
        line.flush().unwrap();
        // Once the host has waited, a whole frame.
        wait.recv().unwrap();
        line.write_all(writer.encode(&status(2)).unwrap()).unwrap();
        line.flush().unwrap();
        wait.recv().unwrap();
    });

    let mut client = Client::over(pair.into_master().unwrap(), Duration::from_secs(5)).unwrap();
    assert_eq!(client.hello().model_name.as_str(), "test device");
    let quiet = client.recv(Duration::from_millis(300));
    assert!(matches!(quiet, Err(ClientError::Timeout(_))), "{quiet:?}");
    go.send(()).unwrap();
    let event = client.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(event, status(2));
    // The torn frame counts as damaged; the sequence gap it left is seen.
    assert_eq!(client.line_errors(), (1, 1));
    go.send(()).unwrap();
    device.join().unwrap();
}
