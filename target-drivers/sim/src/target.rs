//! The driver for a simulated chip.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flashgate_agent::{Decoder, Message};
use flashgate_target::{
    Capabilities, ChallengeRequest, ChallengeResponse, DeviceInfo, Location, LockLevel,
    LockPermission, LockState, MemoryRegion, Space, Stage, Target, TargetError,
};

use crate::chip::SimChip;
use crate::fault::Fault;
use crate::timing::{page_chunks, us, SimClock, SimTiming};

/// Bytes of a short command on the programming link (opcode and address).
const COMMAND_BYTES: u64 = 4;

/// Driver for one simulated board.
///
/// Every operation costs simulated time according to [`SimTiming`]; with pacing on, real time
/// passes too (the driver sleeps the time off), so a simulated unit takes as long as the real
/// chip would. [`bus_time`](SimTarget::bus_time) is the total computed for this driver.
/// Dropping the driver sleeps off any remainder below the sleep slice.
#[derive(Debug)]
pub struct SimTarget {
    chip: Arc<Mutex<SimChip>>,
    timing: SimTiming,
    clock: SimClock,
    session: Session,
}

/// What the driver knows about the link.
#[derive(Debug, Default)]
struct Session {
    connected: bool,
    agent_checked: bool,
    host: Decoder,
}

impl SimTarget {
    /// A driver for `chip`; `pace` makes real time pass.
    pub fn new(chip: Arc<Mutex<SimChip>>, timing: SimTiming, pace: bool) -> Self {
        SimTarget {
            chip,
            timing,
            clock: SimClock::new(pace),
            session: Session::default(),
        }
    }

    /// The chip, for inspection.
    pub fn chip(&self) -> Arc<Mutex<SimChip>> {
        Arc::clone(&self.chip)
    }

    /// Simulated time of everything this driver did.
    pub fn bus_time(&self) -> Duration {
        self.clock.bus_time()
    }

    /// The timing model in use.
    pub fn timing(&self) -> &SimTiming {
        &self.timing
    }

    /// Sleeps off time still owed (below the sleep slice). Called on drop too.
    pub fn settle(&mut self) {
        self.clock.settle();
    }

    /// Runs one operation: checks the link, fires contact/timeout faults for the stage,
    /// then charges the time the operation took, whether it failed or not.
    fn run<R>(
        &mut self,
        stage: Stage,
        address: Option<u32>,
        f: impl FnOnce(&mut Op<'_>) -> Result<R, TargetError>,
    ) -> Result<R, TargetError> {
        let chip = Arc::clone(&self.chip);
        let mut guard = lock(&chip);
        let mut op = Op {
            chip: &mut guard,
            timing: &self.timing,
            session: &mut self.session,
            ns: 0,
            stage,
        };
        let result = op.prologue(address).and_then(|()| f(&mut op));
        let ns = op.ns;
        guard.bus_ns = guard.bus_ns.saturating_add(ns);
        drop(guard);
        self.clock.charge(ns);
        result
    }
}

impl Drop for SimTarget {
    fn drop(&mut self) {
        self.clock.settle();
    }
}

fn lock(chip: &Mutex<SimChip>) -> MutexGuard<'_, SimChip> {
    // A test that panicked while holding the chip leaves valid state behind; keep going.
    chip.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One operation in progress.
struct Op<'a> {
    chip: &'a mut SimChip,
    timing: &'a SimTiming,
    session: &'a mut Session,
    ns: u64,
    stage: Stage,
}

impl Op<'_> {
    fn prologue(&mut self, address: Option<u32>) -> Result<(), TargetError> {
        let stage = self.stage;
        if stage != Stage::Connect && !self.session.connected {
            return Err(TargetError::Protocol {
                stage,
                detail: "the board is not connected: call connect first (again after contact was lost or the board reset)"
                    .to_owned(),
            });
        }
        // Program faults fire mid-write, see `program`.
        if stage == Stage::Program {
            return Ok(());
        }
        if self.chip.fire(Fault::ContactLost(stage)) {
            return Err(self.contact_lost(address));
        }
        if self.chip.fire(Fault::Timeout(stage)) {
            return Err(self.timeout(address));
        }
        Ok(())
    }

    fn contact_lost(&mut self, address: Option<u32>) -> TargetError {
        self.session.connected = false;
        TargetError::ContactLost {
            stage: self.stage,
            address,
        }
    }

    fn timeout(&mut self, address: Option<u32>) -> TargetError {
        self.ns += us(self.timing.timeout_us);
        TargetError::Timeout {
            stage: self.stage,
            address,
            timeout: Duration::from_micros(u64::from(self.timing.timeout_us)),
        }
    }

    fn transfer(&mut self, bytes: u64) {
        self.ns += self.timing.transfer_ns(bytes);
    }

    fn check_range(&self, address: u32, length: u32) -> Result<(), TargetError> {
        if self.chip.flash.contains(address, length) {
            Ok(())
        } else {
            Err(TargetError::OutOfRange {
                stage: self.stage,
                address,
                length,
            })
        }
    }

    /// Interface access to flash or key store is refused while locked.
    fn check_unlocked(&self, address: Option<u32>) -> Result<(), TargetError> {
        match self.chip.lock {
            LockLevel::None => Ok(()),
            level @ (LockLevel::Readout | LockLevel::Permanent) => {
                Err(TargetError::AlreadyLocked {
                    stage: self.stage,
                    level,
                    address,
                })
            }
        }
    }

    /// Checks a secret location and returns the address to report in errors.
    fn check_location(&self, at: Location, length: usize) -> Result<(), TargetError> {
        let size = self.chip.space_size(at.space);
        if size == 0 {
            return Err(TargetError::InvalidRequest {
                stage: self.stage,
                detail: format!(
                    "the simulated device has no {} space: put secrets in keystore or flash",
                    at.space
                ),
            });
        }
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        if u64::from(at.offset) + u64::from(length) > u64::from(size) {
            return Err(TargetError::InvalidRequest {
                stage: self.stage,
                detail: format!(
                    "{at}+{length} lies outside the {} space of {size} bytes: fix the location in the job",
                    at.space
                ),
            });
        }
        Ok(())
    }

    /// Writes a secret with the storage's semantics and reads it back; charges both.
    fn write_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.ns += match at.space {
            // The key store erases and rewrites every page it touches.
            Space::KeyStore => page_chunks(at.offset, len, self.timing.page_size)
                .map(|(_, n)| {
                    self.timing.transfer_ns(u64::from(n))
                        + us(self.timing.page_erase_us)
                        + us(self.timing.page_write_us)
                })
                .sum(),
            Space::Flash | Space::Eeprom | Space::Otp => self.timing.program_ns(at.offset, len),
        };
        self.chip
            .write_location(at, data)
            .map_err(|()| TargetError::SecretMismatch { location: at })?;
        // Read back over the (still unlocked) interface.
        self.transfer(u64::from(len));
        let mut back = zeroize::Zeroizing::new(vec![0u8; data.len()]);
        self.chip
            .read_location(at, &mut back)
            .map_err(|()| TargetError::SecretMismatch { location: at })?;
        if back.as_slice() != data {
            return Err(TargetError::SecretMismatch { location: at });
        }
        Ok(())
    }

    /// Sends one request frame to the agent and decodes its one reply.
    fn agent_exchange(&mut self, request: &Message, work_ns: u64) -> Result<Message, TargetError> {
        let stage = self.stage;
        let frame = request.encode().map_err(|e| TargetError::InvalidRequest {
            stage,
            detail: e.to_string(),
        })?;
        self.ns += self.timing.agent_ns(frame.len() as u64);
        let reply = self.chip.agent_receive(&frame);
        // Measuring and signing happen only when the agent got as far as answering.
        if reply.get(1) == Some(&flashgate_agent::kind::CHALLENGE_REPLY) {
            self.ns += work_ns;
        }
        self.ns += self.timing.agent_ns(reply.len() as u64);
        self.session.host.reset();
        self.session.host.feed(&reply);
        match self.session.host.next_frame() {
            None => Err(self.timeout(None)),
            Some(Err(e)) => Err(e.at_stage(stage)),
            Some(Ok(f)) => Message::decode(&f).map_err(|e| e.at_stage(stage)),
        }
    }
}

impl Target for SimTarget {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    fn connect(&mut self) -> Result<(), TargetError> {
        self.run(Stage::Connect, None, |op| {
            op.transfer(COMMAND_BYTES);
            op.session.connected = true;
            op.session.agent_checked = false;
            op.chip.reset_agent();
            Ok(())
        })
    }

    fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
        self.run(Stage::Identify, None, |op| {
            let c = &op.chip;
            let info = DeviceInfo {
                device_type: c.device_type.clone(),
                uid: c.uid.clone(),
                signature: c.signature.clone(),
                flash: MemoryRegion {
                    base: c.flash.base,
                    size: c.flash.size,
                    page_size: c.flash.page_size,
                },
                lock: c.lock_state(),
            };
            op.transfer(COMMAND_BYTES + (info.uid.len() + info.signature.len() + 1) as u64);
            Ok(info)
        })
    }

    fn erase(&mut self) -> Result<(), TargetError> {
        self.run(Stage::Erase, None, |op| {
            op.transfer(COMMAND_BYTES);
            if op.chip.lock == LockLevel::Permanent {
                return Err(TargetError::AlreadyLocked {
                    stage: Stage::Erase,
                    level: LockLevel::Permanent,
                    address: None,
                });
            }
            op.ns += us(op.timing.chip_erase_us);
            op.chip.chip_erase();
            Ok(())
        })
    }

    fn blank_check(&mut self, address: u32, length: u32) -> Result<(), TargetError> {
        self.run(Stage::BlankCheck, Some(address), |op| {
            op.check_range(address, length)?;
            op.check_unlocked(Some(address))?;
            // Read back over the link, like a chip without an on-chip blank check.
            op.transfer(u64::from(length));
            match op.chip.flash.first_non_blank(address, length) {
                Some((address, found)) => Err(TargetError::NotBlank { address, found }),
                None => Ok(()),
            }
        })
    }

    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.run(Stage::Program, Some(address), |op| {
            op.check_range(address, length)?;
            op.check_unlocked(Some(address))?;
            let chunks: Vec<(u32, u32)> =
                page_chunks(address - op.chip.flash.base, length, op.timing.page_size).collect();
            // Faults strike in the middle of the write, so earlier pages are already programmed.
            let fault_at = chunks.len() / 2;
            let mut done = 0usize;
            for (i, (offset, n)) in chunks.into_iter().enumerate() {
                let at = op.chip.flash.base + offset;
                let chunk = &data[done..done + n as usize];
                if i == fault_at {
                    if op.chip.fire(Fault::ContactLost(Stage::Program)) {
                        return Err(op.contact_lost(Some(at)));
                    }
                    if op.chip.fire(Fault::Timeout(Stage::Program)) {
                        return Err(op.timeout(Some(at)));
                    }
                    if op.chip.fire(Fault::BrownOut) {
                        let half = chunk.len().div_ceil(2);
                        op.transfer(n.into());
                        op.ns += us(op.timing.page_write_us) / 2;
                        op.chip.flash.program(at, &chunk[..half]);
                        op.session.connected = false;
                        op.chip.reset_agent();
                        return Err(TargetError::BrownOut {
                            stage: Stage::Program,
                            address: Some(at),
                        });
                    }
                }
                op.transfer(n.into());
                op.ns += us(op.timing.page_write_us);
                op.chip.flash.program(at, chunk);
                if i == fault_at && op.chip.has_pending(Fault::BitError) {
                    op.chip.fire(Fault::BitError);
                    let byte = op.chip.rng.below(u64::from(n)) as u32;
                    let bit = op.chip.rng.below(8) as u8;
                    op.chip.flash.flip(at + byte, 1 << bit);
                }
                done += n as usize;
            }
            Ok(())
        })
    }

    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        self.run(Stage::Verify, Some(address), |op| {
            op.check_range(address, length)?;
            op.check_unlocked(Some(address))?;
            op.transfer(u64::from(length));
            op.chip.flash.read(address, buf);
            Ok(())
        })
    }

    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        self.run(Stage::StoreSecret, None, |op| {
            op.check_location(at, data.len())?;
            op.check_unlocked(None)?;
            op.write_secret(at, data)
        })
    }

    fn generate_key(&mut self, at: Location) -> Result<[u8; 65], TargetError> {
        self.run(Stage::Keygen, None, |op| {
            op.check_location(at, 32)?;
            op.check_unlocked(None)?;
            op.transfer(COMMAND_BYTES);
            op.ns += us(op.timing.keygen_us);
            let scalar = op.chip.random_scalar();
            op.write_secret(at, &scalar[..])?;
            let public =
                flashgate_agent::public_key(&scalar).map_err(|e| e.at_stage(Stage::Keygen))?;
            op.transfer(public.len() as u64);
            Ok(public)
        })
    }

    fn challenge(&mut self, request: &ChallengeRequest) -> Result<ChallengeResponse, TargetError> {
        self.run(Stage::Challenge, None, |op| {
            if !op.session.agent_checked {
                let (_, uid) = op
                    .agent_exchange(&Message::Hello, 0)?
                    .into_hello_reply()
                    .map_err(|e| e.at_stage(Stage::Challenge))?;
                if uid != op.chip.uid {
                    return Err(TargetError::Protocol {
                        stage: Stage::Challenge,
                        detail: "the agent reports another UID than the programming interface: check the UART wiring goes to the same board".to_owned(),
                    });
                }
                op.session.agent_checked = true;
            }
            let measured: u64 = request.regions.iter().map(|r| u64::from(r.length)).sum();
            let work = measured * u64::from(op.timing.digest_ns_per_byte) + us(op.timing.sign_us);
            op.agent_exchange(&Message::Challenge(request.clone()), work)?
                .into_challenge_reply()
                .map_err(|e| e.at_stage(Stage::Challenge))
        })
    }

    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        let level = permission.level();
        self.run(Stage::Lock, None, |op| {
            if level == LockLevel::None {
                return Err(TargetError::InvalidRequest {
                    stage: Stage::Lock,
                    detail:
                        "a lock permission for level none locks nothing: allow readout or permanent"
                            .to_owned(),
                });
            }
            op.transfer(COMMAND_BYTES + 1);
            if level < op.chip.lock {
                return Err(TargetError::AlreadyLocked {
                    stage: Stage::Lock,
                    level: op.chip.lock,
                    address: None,
                });
            }
            op.ns += us(op.timing.page_write_us);
            op.chip.lock = level;
            Ok(())
        })
    }

    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        self.run(Stage::LockReadback, None, |op| {
            op.transfer(COMMAND_BYTES + 1);
            Ok(op.chip.lock_state())
        })
    }
}
