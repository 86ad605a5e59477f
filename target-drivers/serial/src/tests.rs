#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pty::{PtyOptions, PtyServer};
use crate::*;

/// Answers every byte with the byte plus one, taking 10 µs per byte; counts link resets.
#[derive(Debug, Default)]
struct Plus1 {
    resets: Arc<AtomicU32>,
    idle: Duration,
    fed: usize,
}

impl SerialDevice for Plus1 {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        self.fed += input.len();
        (
            input.iter().map(|b| b.wrapping_add(1)).collect(),
            Duration::from_micros(10 * input.len() as u64),
        )
    }
    fn reset_link(&mut self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
    fn idle(&mut self, d: Duration) {
        self.idle += d;
    }
}

#[test]
fn wire_time_rounds_up() {
    assert_eq!(LineConfig::n81(19_200).wire_time(0), Duration::ZERO);
    // 10 bits at 19200 baud = 520.833 µs, rounded up to the ns.
    assert_eq!(
        LineConfig::n81(19_200).wire_time(1),
        Duration::from_nanos(520_834)
    );
    assert_eq!(
        LineConfig::e81(115_200).wire_time(3),
        Duration::from_nanos(286_459)
    );
    assert_eq!(wire_time(100, 0, 10), Duration::ZERO);
}

#[test]
fn loopback_accounts_time_and_times_out() {
    let mut link = Loopback::instant(Plus1::default());
    link.write_all(&[1, 2, 3]).unwrap();
    let mut buf = [0u8; 3];
    link.read_exact(&mut buf, Duration::from_millis(100))
        .unwrap();
    assert_eq!(buf, [2, 3, 4]);
    assert_eq!(link.elapsed(), Duration::from_micros(30));
    // Nothing more comes: the whole time-out is charged, and the device is told.
    let e = link
        .read_exact(&mut buf[..1], Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(e, SerialError::Timeout(d) if d == Duration::from_millis(100)));
    assert_eq!(link.elapsed(), Duration::from_micros(100_030));
    link.wait(Duration::from_millis(5));
    assert_eq!(link.elapsed(), Duration::from_micros(105_030));
    assert_eq!(link.device().idle, Duration::from_millis(105));
    // A short read consumes what was there.
    link.write_all(&[9]).unwrap();
    assert!(link.read_exact(&mut buf[..2], Duration::ZERO).is_err());
    assert_eq!(link.pending(), 0);
    link.write_all(&[9, 9]).unwrap();
    link.clear_input().unwrap();
    assert_eq!(link.pending(), 0);
    assert_eq!(link.name(), "loopback");
    link.pulse_reset().unwrap();
    assert_eq!(link.device().resets.load(Ordering::SeqCst), 1);
    assert_eq!(link.into_inner().fed, 6);
}

#[test]
fn loopback_link_faults_count_reply_bytes() {
    let mut link = Loopback::instant(Plus1::default()).named("isp");
    link.write_all(&[0, 0]).unwrap();
    link.clear_input().unwrap();
    // Indices count from the next reply byte.
    link.drop_reply_byte(1);
    link.corrupt_reply_byte(2, 0x80);
    link.write_all(&[10, 20, 30, 40]).unwrap();
    let mut buf = [0u8; 3];
    link.read_exact(&mut buf, Duration::ZERO).unwrap();
    assert_eq!(buf, [11, 31 ^ 0x80, 41]);
    // Fired once only.
    link.write_all(&[1, 2, 3]).unwrap();
    link.read_exact(&mut buf, Duration::ZERO).unwrap();
    assert_eq!(buf, [2, 3, 4]);
    assert_eq!(link.name(), "isp");
}

#[test]
fn paced_loopback_takes_real_time() {
    struct Slow;
    impl SerialDevice for Slow {
        fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
            (input.to_vec(), Duration::from_micros(300))
        }
    }
    let start = Instant::now();
    let mut link = Loopback::new(Slow, true);
    for _ in 0..100 {
        link.write_all(&[1]).unwrap();
    }
    link.settle();
    let real = start.elapsed();
    assert_eq!(link.elapsed(), Duration::from_millis(30));
    assert!(real >= Duration::from_millis(30), "{real:?}");
    assert!(real < Duration::from_millis(300), "{real:?}");
}

#[test]
fn pacer_credits_oversleep() {
    let mut p = Pacer::new(true);
    let start = Instant::now();
    for _ in 0..20 {
        p.charge(Duration::from_micros(1500));
    }
    p.settle();
    let real = start.elapsed();
    assert_eq!(p.total(), Duration::from_millis(30));
    assert!(real >= Duration::from_millis(30) && real < Duration::from_millis(200));
    let mut off = Pacer::new(false);
    let start = Instant::now();
    off.charge(Duration::from_secs(100));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(!off.is_paced());
}

fn echo_pair(options: PtyOptions) -> (PtyServer<Plus1>, Arc<AtomicU32>) {
    let dev = Plus1::default();
    let resets = Arc::clone(&dev.resets);
    (PtyServer::spawn(dev, options).unwrap(), resets)
}

#[test]
fn pty_server_serves_and_survives_reopen() {
    let (server, resets) = echo_pair(PtyOptions::fast());
    let path = server.path().to_path_buf();
    assert!(path.starts_with("/dev/pts"));
    assert!(is_pty_path(&path));
    assert!(server.is_running());
    for round in 0..3u8 {
        let mut port = SerialPortTransport::open(&path, LineConfig::e81(115_200)).unwrap();
        assert!(port.is_pty() && port.parity_dropped());
        port.write_all(&[round, 0x7f, 0xff, 0x0a, 0x0d, 0x03])
            .unwrap();
        let mut buf = [0u8; 6];
        port.read_exact(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(buf, [round + 1, 0x80, 0x00, 0x0b, 0x0e, 0x04]);
        // Nothing unasked arrives.
        let e = port
            .read_exact(&mut buf[..1], Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(e, SerialError::Timeout(_)));
        port.pulse_reset().unwrap();
        drop(port);
        // Let the server notice the hang-up.
        std::thread::sleep(Duration::from_millis(30));
    }
    // One reset per open and one per close.
    assert!(resets.load(Ordering::SeqCst) >= 5, "{resets:?}");
    let dev = server.stop().unwrap();
    assert_eq!(dev.fed, 18);
}

#[test]
fn pty_server_sleeps_reported_time_and_stops_mid_wait() {
    struct Slow;
    impl SerialDevice for Slow {
        fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
            let d = if input.contains(&0xEE) {
                Duration::from_secs(60)
            } else {
                Duration::from_millis(80)
            };
            (input.to_vec(), d)
        }
    }
    let server = PtyServer::spawn(Slow, PtyOptions::default()).unwrap();
    let mut port = SerialPortTransport::open(server.path(), LineConfig::n81(19_200)).unwrap();
    let start = Instant::now();
    port.write_all(&[1]).unwrap();
    let mut b = [0u8; 1];
    port.read_exact(&mut b, Duration::from_secs(5)).unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(80), "{took:?}");
    // A long wait in progress does not hold up stop().
    port.write_all(&[0xEE]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    server.stop().unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn pty_link_is_made_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttySIM");
    let options = PtyOptions {
        link: Some(link.clone()),
        ..PtyOptions::fast()
    };
    let (server, _) = echo_pair(options);
    assert_eq!(std::fs::read_link(&link).unwrap(), server.path());
    let mut port = SerialPortTransport::open(&link, LineConfig::n81(9600)).unwrap();
    assert!(port.is_pty() && !port.parity_dropped());
    port.write_all(b"A").unwrap();
    let mut b = [0u8; 1];
    port.read_exact(&mut b, Duration::from_secs(5)).unwrap();
    assert_eq!(&b, b"B");
    drop(port);
    drop(server);
    assert!(std::fs::symlink_metadata(&link).is_err());
    // A regular file in the way is refused.
    std::fs::write(&link, b"x").unwrap();
    let e = PtyServer::spawn(
        Plus1::default(),
        PtyOptions {
            link: Some(link),
            ..PtyOptions::fast()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a symbolic link"), "{e}");
}

#[test]
fn open_missing_port_names_it() {
    let e = SerialPortTransport::open("/dev/does-not-exist-flashgate", LineConfig::n81(19_200))
        .unwrap_err();
    match &e {
        SerialError::Open { port, .. } => assert_eq!(port, "/dev/does-not-exist-flashgate"),
        other => panic!("{other}"),
    }
    assert!(e
        .to_string()
        .contains("check that the programmer is plugged in"));
}
