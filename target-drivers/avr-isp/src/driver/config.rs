//! The driver's settings: the part, baud rates, time-outs, lock bytes, pipelining.

use std::time::Duration;

use crate::part::{Part, ATMEGA328P};

/// How the driver talks to the programmer and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvrIspConfig {
    /// The part the job is for: sent to the programmer (`SET_DEVICE`) before the signature
    /// is read. [`identify`](flashgate_target::Target::identify) reports the part it
    /// actually finds.
    pub part: &'static Part,
    /// Baud rate of the programmer's serial port (ArduinoISP: 19200).
    pub baud: u32,
    /// Baud rate of the agent UART (8N1).
    pub agent_baud: u32,
    /// How long to wait for one answer from the programmer.
    pub command_timeout: Duration,
    /// How many `GET_SYNC` tries before the programmer counts as missing.
    pub sync_attempts: u32,
    /// How long each `GET_SYNC` try waits.
    pub sync_timeout: Duration,
    /// Pulse DTR/RTS on connect (resets an Arduino whose auto-reset is enabled).
    pub reset_on_connect: bool,
    /// After that pulse, how long the Arduino's bootloader takes before the sketch runs.
    pub boot_wait: Duration,
    /// How long to wait for the agent's reply (it hashes flash and signs).
    pub agent_timeout: Duration,
    /// After releasing the target's RESET, how long its firmware takes to start.
    pub agent_boot: Duration,
    /// Lock byte written for [`LockLevel::Readout`](flashgate_target::LockLevel::Readout)
    /// (default `0xFC`: LB mode 3, further programming and verification disabled; boot lock
    /// bits untouched). The policy may name another byte, e.g. `0xCC` to lock the boot
    /// section too.
    pub lock_readout: u8,
    /// Lock byte for [`LockLevel::Permanent`](flashgate_target::LockLevel::Permanent);
    /// `None` (default) refuses it, since an AVR's lock bits are always cleared by a chip
    /// erase.
    pub lock_permanent: Option<u8>,
    /// How many `LOAD_ADDRESS`+`READ_PAGE` pairs may be in flight at once (1 = strict
    /// request/reply). Each pair is 9 bytes, so up to 7 fit the sketch's 64-byte receive buffer.
    pub read_pipeline: usize,
    /// Re-read the signature after this many flash pages (and after the last), so that a
    /// target that reset mid-programming (brown-out) is caught in the program stage.
    pub signature_check_pages: u32,
}

impl Default for AvrIspConfig {
    /// ATmega328P at 19200 baud, agent at 115200, 2 s command and 10 s agent time-outs,
    /// readout lock `0xFC`, reads pipelined 4 deep, signature re-checked every 16 pages.
    fn default() -> Self {
        AvrIspConfig {
            part: &ATMEGA328P,
            baud: 19_200,
            agent_baud: 115_200,
            command_timeout: Duration::from_secs(2),
            sync_attempts: 5,
            sync_timeout: Duration::from_millis(500),
            reset_on_connect: false,
            boot_wait: Duration::from_secs(2),
            agent_timeout: Duration::from_secs(10),
            agent_boot: Duration::from_millis(100),
            lock_readout: 0xFC,
            lock_permanent: None,
            read_pipeline: 4,
            signature_check_pages: 16,
        }
    }
}

impl AvrIspConfig {
    /// The default configuration for `part`.
    pub fn for_part(part: &'static Part) -> Self {
        AvrIspConfig {
            part,
            ..AvrIspConfig::default()
        }
    }
}
