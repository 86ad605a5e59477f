//! An in-process link wired straight to a simulated device.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{Pacer, SerialDevice, SerialError, Transport};

/// A protocol-blind fault on the reply stream, counted in reply bytes from when it was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkFault {
    /// The reply byte at this index (0 = the next byte the device sends) never arrives.
    Drop { at: u64 },
    /// The reply byte at this index arrives XORed with `mask`.
    Corrupt { at: u64, mask: u8 },
}

/// A [`Transport`] wired to a [`SerialDevice`] in the same process.
///
/// Every write is fed to the device at once and its reply queued for reading. Time is
/// simulated: the durations the device reports, the time-outs the host waits through and
/// the pauses it asks for ([`Transport::wait`]) add up in [`elapsed`](Loopback::elapsed).
/// With pacing on, real time passes too (slept off in slices of at least 1 ms), so a
/// benchmark over a loopback takes as long as the real link would.
///
/// A read that asks for more bytes than the device sent fails with
/// [`SerialError::Timeout`] after charging the whole time-out (the device will not send
/// anything unasked); the bytes that were there are consumed, as a real port would.
///
/// Link faults ([`drop_reply_byte`](Loopback::drop_reply_byte),
/// [`corrupt_reply_byte`](Loopback::corrupt_reply_byte)) are counted over the reply byte
/// stream; protocol-aware faults belong in the simulators.
#[derive(Debug)]
pub struct Loopback<D: SerialDevice> {
    device: D,
    pending: VecDeque<u8>,
    pacer: Pacer,
    /// Reply bytes produced so far (before faults).
    sent: u64,
    faults: Vec<LinkFault>,
    name: String,
}

impl<D: SerialDevice> Loopback<D> {
    /// A loopback to `device`; `paced` makes real time pass along with simulated time.
    pub fn new(device: D, paced: bool) -> Self {
        Loopback {
            device,
            pending: VecDeque::new(),
            pacer: Pacer::new(paced),
            sent: 0,
            faults: Vec::new(),
            name: "loopback".to_owned(),
        }
    }

    /// An unpaced loopback (no real time passes).
    pub fn instant(device: D) -> Self {
        Loopback::new(device, false)
    }

    /// Sets the name used in messages (default `loopback`).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Simulated time of everything on this link so far.
    pub fn elapsed(&self) -> Duration {
        self.pacer.total()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (e.g. to arm a fault).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Gives the device back (after sleeping off any time still owed).
    pub fn into_inner(mut self) -> D {
        self.pacer.settle();
        self.device
    }

    /// Bytes the device sent that were not read yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops the `n`-th reply byte from now on (0 = the next one the device sends).
    pub fn drop_reply_byte(&mut self, n: u64) {
        self.faults.push(LinkFault::Drop { at: self.sent + n });
    }

    /// XORs the `n`-th reply byte from now on with `mask` (0 = the next one).
    pub fn corrupt_reply_byte(&mut self, n: u64, mask: u8) {
        self.faults.push(LinkFault::Corrupt {
            at: self.sent + n,
            mask,
        });
    }

    /// Sleeps off simulated time still owed (below the 1 ms sleep slice).
    pub fn settle(&mut self) {
        self.pacer.settle();
    }

    fn deliver(&mut self, reply: Vec<u8>) {
        for byte in reply {
            let index = self.sent;
            self.sent += 1;
            let mut out = Some(byte);
            for f in &self.faults {
                match *f {
                    LinkFault::Drop { at } if at == index => out = None,
                    LinkFault::Corrupt { at, mask } if at == index => {
                        out = out.map(|b| b ^ mask);
                    }
                    // Armed for a later byte.
                    LinkFault::Drop { .. } | LinkFault::Corrupt { .. } => {}
                }
            }
            self.faults.retain(|f| match *f {
                LinkFault::Drop { at } | LinkFault::Corrupt { at, .. } => at > index,
            });
            if let Some(b) = out {
                self.pending.push_back(b);
            }
        }
    }
}

impl<D: SerialDevice> Transport for Loopback<D> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        let (reply, took) = self.device.feed(bytes);
        self.pacer.charge(took);
        self.deliver(reply);
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        if self.pending.len() < buf.len() {
            // Nothing more will come: the device only answers what it is sent.
            self.pending.clear();
            self.device.idle(timeout);
            self.pacer.charge(timeout);
            return Err(SerialError::Timeout(timeout));
        }
        for b in buf.iter_mut() {
            *b = self.pending.pop_front().unwrap_or_default();
        }
        Ok(())
    }

    fn clear_input(&mut self) -> Result<(), SerialError> {
        self.pending.clear();
        Ok(())
    }

    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        self.pending.clear();
        self.device.reset_link();
        Ok(())
    }

    fn wait(&mut self, duration: Duration) {
        self.device.idle(duration);
        self.pacer.charge(duration);
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
