//! A serial link whose device side is the fuzz input: every host write is
//! answered with a chunk of the input (a length byte, then that many bytes;
//! `0xFF` announces a two-byte big-endian length), queued like a real port's
//! receive buffer. A read that asks for more than is queued times out at once
//! and drops what was there, as `flashgate_serial::Loopback` does. Nothing
//! sleeps. Every write, read, time-out, clear and reset is logged per port,
//! and every queued byte remembers the operation it was sent in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flashgate_serial::{SerialError, Transport};

/// More reads than any operation on a small image needs: beyond this the
/// driver is reading without end.
const MAX_READS: usize = 100_000;
/// The longest reply chunk (a 256-byte page and its framing fit many times).
const MAX_CHUNK: usize = 4096;

/// One thing that happened on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The host wrote these bytes.
    Write(Vec<u8>),
    /// The host read these bytes; each was queued in operation `.1[i]`.
    Read(Vec<u8>, Vec<u32>),
    /// A read timed out (what was queued is gone).
    Timeout,
    /// The host discarded its input.
    Clear,
    /// The host pulsed the reset lines.
    Reset,
}

#[derive(Debug, Default)]
struct Port {
    pending: VecDeque<(u8, u32)>,
    log: Vec<Event>,
}

#[derive(Debug, Default)]
struct Script {
    input: Vec<u8>,
    at: usize,
    op: u32,
    reads: usize,
    ports: Vec<Port>,
}

impl Script {
    fn byte(&mut self) -> Option<u8> {
        let b = self.input.get(self.at).copied();
        self.at += usize::from(b.is_some());
        b
    }

    fn chunk(&mut self) -> Vec<u8> {
        let n = match self.byte() {
            None => 0,
            Some(0xFF) => {
                let hi = self.byte().unwrap_or(0);
                let lo = self.byte().unwrap_or(0);
                usize::from(u16::from_be_bytes([hi, lo])).min(MAX_CHUNK)
            }
            Some(n) => usize::from(n),
        };
        let end = (self.at + n).min(self.input.len());
        let out = self.input[self.at..end].to_vec();
        self.at = end;
        out
    }
}

/// The shared device side of all ports.
#[derive(Debug, Clone, Default)]
pub struct Device(Arc<Mutex<Script>>);

impl Device {
    /// A device answering with `input`, with `ports` ports.
    pub fn new(input: &[u8], ports: usize) -> Self {
        let script = Script {
            input: input.to_vec(),
            ports: (0..ports).map(|_| Port::default()).collect(),
            ..Script::default()
        };
        Device(Arc::new(Mutex::new(script)))
    }

    fn lock(&self) -> MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport for port `port`.
    pub fn link(&self, port: usize) -> Link {
        Link {
            device: self.clone(),
            port,
        }
    }

    /// Starts operation number `op`: bytes queued from now on carry it.
    pub fn begin(&self, op: u32) {
        self.lock().op = op;
    }

    /// How many events port `port` has logged so far.
    pub fn mark(&self, port: usize) -> usize {
        self.lock().ports[port].log.len()
    }

    /// Events of port `port` from `from` on.
    pub fn events(&self, port: usize, from: usize) -> Vec<Event> {
        self.lock().ports[port].log[from..].to_vec()
    }

    /// A byte of the input outside any reply (operation choices).
    pub fn take(&self) -> Option<u8> {
        self.lock().byte()
    }
}

/// One port of the [`Device`].
#[derive(Debug)]
pub struct Link {
    device: Device,
    port: usize,
}

impl Transport for Link {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        let mut s = self.device.lock();
        let reply = s.chunk();
        let op = s.op;
        let port = &mut s.ports[self.port];
        port.log.push(Event::Write(bytes.to_vec()));
        port.pending.extend(reply.into_iter().map(|b| (b, op)));
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        let mut s = self.device.lock();
        s.reads += 1;
        assert!(s.reads <= MAX_READS, "the driver reads without end");
        let port = &mut s.ports[self.port];
        if port.pending.len() < buf.len() {
            port.pending.clear();
            port.log.push(Event::Timeout);
            return Err(SerialError::Timeout(timeout));
        }
        let mut ops = Vec::with_capacity(buf.len());
        for b in buf.iter_mut() {
            let (byte, op) = port.pending.pop_front().unwrap_or_default();
            *b = byte;
            ops.push(op);
        }
        port.log.push(Event::Read(buf.to_vec(), ops));
        Ok(())
    }

    fn clear_input(&mut self) -> Result<(), SerialError> {
        let mut s = self.device.lock();
        let port = &mut s.ports[self.port];
        port.pending.clear();
        port.log.push(Event::Clear);
        Ok(())
    }

    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        let mut s = self.device.lock();
        let port = &mut s.ports[self.port];
        port.pending.clear();
        port.log.push(Event::Reset);
        Ok(())
    }

    fn wait(&mut self, _duration: Duration) {}

    fn name(&self) -> String {
        format!("fuzz port {}", self.port)
    }
}

/// Checks that the agent replies read in `events` are each some garbage
/// without a start byte, then exactly one CRC-valid frame of the type the
/// request asks for (Hello → HelloReply, Challenge → ChallengeReply,
/// EnterBootloader → EnterBootloaderReply).
pub fn check_agent_replies(events: &[Event]) {
    use flashgate_agent::{kind, Decoder, Message, SOF};
    let mut request: Option<u8> = None;
    let mut reply: Vec<u8> = Vec::new();
    let finish = |request: Option<u8>, reply: &[u8]| {
        let Some(req) = request else {
            return;
        };
        let expected = match req {
            kind::HELLO => kind::HELLO_REPLY,
            kind::CHALLENGE => kind::CHALLENGE_REPLY,
            kind::ENTER_BOOTLOADER => kind::ENTER_BOOTLOADER_REPLY,
            _ => return,
        };
        let start = reply.iter().position(|&b| b == SOF).unwrap_or(reply.len());
        let mut d = Decoder::new();
        d.feed(&reply[start..]);
        let frame = d.next_frame();
        assert!(
            matches!(&frame, Some(Ok(f)) if f.kind == expected && Message::decode(f).is_ok()),
            "an agent request succeeded on a reply that is not a valid 0x{expected:02x} frame: {reply:02x?}"
        );
        assert_eq!(
            d.buffered(),
            0,
            "the accepted agent reply has trailing bytes"
        );
    };
    for e in events {
        match e {
            Event::Write(w) => {
                finish(request, &reply);
                request = w.get(1).copied();
                reply.clear();
            }
            Event::Read(r, _) => reply.extend_from_slice(r),
            Event::Clear | Event::Reset => {
                finish(request, &reply);
                request = None;
                reply.clear();
            }
            Event::Timeout => reply.clear(),
        }
    }
    finish(request, &reply);
}
