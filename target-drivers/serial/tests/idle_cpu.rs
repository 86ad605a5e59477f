//! An idle pty server must not spin: neither before any host opened the port, nor after a
//! host closed it (hang-up), nor while a host holds it open without writing.
//! (Alone in its test binary, so the process's CPU time is the server's.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_serial::{LineConfig, SerialDevice, SerialPortTransport, Transport};

struct Echo;
impl SerialDevice for Echo {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        (input.to_vec(), Duration::ZERO)
    }
}

/// CPU time (user + system) of this process so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn idle_for(d: Duration) -> Duration {
    let before = cpu();
    std::thread::sleep(d);
    let used = cpu() - before;
    eprintln!("CPU over {d:?}: {used:?}");
    used
}

#[test]
fn idle_server_does_not_spin() {
    let server = PtyServer::spawn(Echo, PtyOptions::fast()).unwrap();
    // Never opened.
    let used = idle_for(Duration::from_secs(1));
    assert!(used < Duration::from_millis(150), "never opened: {used:?}");
    // Open, use, close: hang-up.
    {
        let mut port = SerialPortTransport::open(server.path(), LineConfig::n81(19_200)).unwrap();
        port.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        port.read_exact(&mut b, Duration::from_secs(5)).unwrap();
        assert_eq!(&b, b"ping");
        // Held open but silent: blocked in poll.
        let used = idle_for(Duration::from_secs(1));
        assert!(used < Duration::from_millis(150), "open and idle: {used:?}");
    }
    let used = idle_for(Duration::from_secs(1));
    assert!(used < Duration::from_millis(150), "after hang-up: {used:?}");
    server.stop().unwrap();
}
