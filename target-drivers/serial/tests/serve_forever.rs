//! `serve_forever` serves until SIGTERM and hands the device back.
//! (Alone in its test binary: it sends SIGTERM to its own process, which the server catches.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use flashgate_serial::pty::{serve_forever, PtyOptions};
use flashgate_serial::{LineConfig, SerialDevice, SerialPortTransport, Transport};

#[derive(Default)]
struct Count(usize);
impl SerialDevice for Count {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        self.0 += input.len();
        (input.to_vec(), Duration::from_millis(1))
    }
}

#[test]
fn serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyTEST");
    let options = PtyOptions {
        link: Some(link.clone()),
        ..PtyOptions::default()
    };
    let server = std::thread::spawn(move || serve_forever(Count::default(), options));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::symlink_metadata(&link).is_err() {
        assert!(Instant::now() < deadline, "no pty link appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut port = SerialPortTransport::open(&link, LineConfig::n81(115_200)).unwrap();
    port.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    port.read_exact(&mut b, Duration::from_secs(5)).unwrap();
    assert_eq!(&b, b"hello");
    drop(port);
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(
            Instant::now() < deadline,
            "serve_forever did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let device = server.join().unwrap().unwrap();
    assert_eq!(device.0, 5);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link left behind"
    );
}
