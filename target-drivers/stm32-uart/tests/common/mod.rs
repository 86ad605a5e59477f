//! Shared test helpers: an in-process link and a deterministic image generator.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::time::Duration;

use flashgate_serial::{SerialDevice, SerialError, Transport};

/// A host-side transport wired straight to a device: every write is fed to the device at
/// once, its answer queued; a read that finds too few bytes fails with `Timeout` at once
/// (the device has nothing more to say until it is sent something).
#[derive(Debug)]
pub struct Link<D: SerialDevice> {
    pub device: D,
    rx: VecDeque<u8>,
    /// Simulated time the device reported.
    pub elapsed: Duration,
    pub resets: u32,
}

impl<D: SerialDevice> Link<D> {
    pub fn new(device: D) -> Self {
        Link {
            device,
            rx: VecDeque::new(),
            elapsed: Duration::ZERO,
            resets: 0,
        }
    }
}

impl<D: SerialDevice> Transport for Link<D> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        let (reply, took) = self.device.feed(bytes);
        self.elapsed += took;
        self.rx.extend(reply);
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        if self.rx.len() < buf.len() {
            self.rx.clear();
            return Err(SerialError::Timeout(timeout));
        }
        for b in buf.iter_mut() {
            *b = self.rx.pop_front().unwrap();
        }
        Ok(())
    }

    fn clear_input(&mut self) -> Result<(), SerialError> {
        self.rx.clear();
        Ok(())
    }

    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        self.resets += 1;
        self.rx.clear();
        self.device.reset_link();
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift), so images are reproducible.
pub fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid P-256 scalar for tests.
pub fn scalar(seed: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = 0x1F;
    for (i, b) in s.iter_mut().enumerate().skip(1) {
        *b = seed.wrapping_add(i as u8).wrapping_mul(37);
    }
    assert!(flashgate_agent::is_valid_scalar(&s));
    s
}
