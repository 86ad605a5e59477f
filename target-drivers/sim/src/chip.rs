//! State of one simulated chip: flash, key store, lock, agent, planned faults.

use std::fmt;

use flashgate_agent::{AgentDevice, AgentEndpoint, AgentError};
use flashgate_target::{Location, LockLevel, LockState, Space};
use zeroize::{Zeroize, Zeroizing};

use crate::fault::Fault;
use crate::rng::SimRng;

/// Erased flash and key-store value.
pub(crate) const ERASED: u8 = 0xFF;

/// Option byte values, as on STM32 RDP: 0xAA = unlocked, 0xCC = permanent, anything else = readout.
const RAW_NONE: u8 = 0xAA;
const RAW_READOUT: u8 = 0x00;
const RAW_PERMANENT: u8 = 0xCC;

/// Flash: erases to 0xFF, programming ANDs (can only clear bits). Stored sparsely: a page
/// that was never programmed since the last erase is not allocated.
pub(crate) struct Flash {
    pub(crate) base: u32,
    pub(crate) size: u32,
    pub(crate) page_size: u32,
    pages: Vec<Option<Box<[u8]>>>,
}

impl Flash {
    fn new(base: u32, size: u32, page_size: u32) -> Self {
        let count = size.div_ceil(page_size.max(1)) as usize;
        Flash {
            base,
            size,
            page_size: page_size.max(1),
            pages: (0..count).map(|_| None).collect(),
        }
    }

    /// Whether `[address, address + length)` lies in flash.
    pub(crate) fn contains(&self, address: u32, length: u32) -> bool {
        address >= self.base
            && u64::from(address) + u64::from(length) <= u64::from(self.base) + u64::from(self.size)
    }

    /// Reads at a bus address the caller has range-checked.
    pub(crate) fn read(&self, address: u32, buf: &mut [u8]) {
        let mut off = (address - self.base) as usize;
        let ps = self.page_size as usize;
        let mut done = 0;
        while done < buf.len() {
            let (p, o) = (off / ps, off % ps);
            let n = (ps - o).min(buf.len() - done);
            match &self.pages[p] {
                Some(page) => buf[done..done + n].copy_from_slice(&page[o..o + n]),
                None => buf[done..done + n].fill(ERASED),
            }
            done += n;
            off += n;
        }
    }

    /// Programs at a bus address the caller has range-checked: `new = old & data`.
    pub(crate) fn program(&mut self, address: u32, data: &[u8]) {
        let mut off = (address - self.base) as usize;
        let ps = self.page_size as usize;
        let mut done = 0;
        while done < data.len() {
            let (p, o) = (off / ps, off % ps);
            let n = (ps - o).min(data.len() - done);
            let page = self.pages[p].get_or_insert_with(|| vec![ERASED; ps].into_boxed_slice());
            for (cell, d) in page[o..o + n].iter_mut().zip(&data[done..done + n]) {
                *cell &= d;
            }
            done += n;
            off += n;
        }
    }

    /// Flips bits of one byte (a fault), at a range-checked bus address.
    pub(crate) fn flip(&mut self, address: u32, mask: u8) {
        let off = (address - self.base) as usize;
        let ps = self.page_size as usize;
        let page = self.pages[off / ps].get_or_insert_with(|| vec![ERASED; ps].into_boxed_slice());
        page[off % ps] ^= mask;
    }

    fn erase(&mut self) {
        for page in self.pages.iter_mut() {
            if let Some(mut p) = page.take() {
                p.zeroize();
            }
        }
    }

    /// Whether every byte reads 0xFF.
    pub(crate) fn is_blank(&self) -> bool {
        self.pages
            .iter()
            .flatten()
            .all(|p| p.iter().all(|&b| b == ERASED))
    }

    /// First non-erased address in a range-checked range, with its byte.
    pub(crate) fn first_non_blank(&self, address: u32, length: u32) -> Option<(u32, u8)> {
        let mut buf = vec![0u8; 4096];
        let mut at = address;
        let end = u64::from(address) + u64::from(length);
        while u64::from(at) < end {
            let n = (end - u64::from(at)).min(4096) as usize;
            self.read(at, &mut buf[..n]);
            if let Some(i) = buf[..n].iter().position(|&b| b != ERASED) {
                return Some((at + i as u32, buf[i]));
            }
            at += n as u32;
        }
        None
    }
}

impl Drop for Flash {
    fn drop(&mut self) {
        // Flash may hold secrets written to Space::Flash.
        self.erase();
    }
}

/// One simulated secure MCU.
///
/// Tests inspect it through the `inspect_*` methods, which bypass the lock (they model
/// looking at the silicon, not using the programming interface). `Debug` shows no contents.
pub struct SimChip {
    pub(crate) index: u64,
    pub(crate) device_type: String,
    pub(crate) signature: Vec<u8>,
    pub(crate) uid: Vec<u8>,
    pub(crate) flash: Flash,
    pub(crate) keystore: Zeroizing<Vec<u8>>,
    pub(crate) lock: LockLevel,
    pub(crate) identity: Location,
    pub(crate) planned: Vec<Fault>,
    pending: Vec<Fault>,
    fired: Vec<Fault>,
    pub(crate) rng: SimRng,
    agent: AgentEndpoint,
    pub(crate) bus_ns: u64,
}

/// Everything needed to make a chip.
pub(crate) struct ChipSpec {
    pub(crate) index: u64,
    pub(crate) device_type: String,
    pub(crate) signature: Vec<u8>,
    pub(crate) uid: Vec<u8>,
    pub(crate) flash_base: u32,
    pub(crate) flash_size: u32,
    pub(crate) page_size: u32,
    pub(crate) keystore_size: u32,
    pub(crate) identity: Location,
    pub(crate) faults: Vec<Fault>,
    pub(crate) rng_seed: u64,
}

impl SimChip {
    pub(crate) fn new(spec: ChipSpec) -> Self {
        let mut chip = SimChip {
            index: spec.index,
            device_type: spec.device_type,
            signature: spec.signature,
            uid: spec.uid,
            flash: Flash::new(spec.flash_base, spec.flash_size, spec.page_size),
            keystore: Zeroizing::new(vec![ERASED; spec.keystore_size as usize]),
            lock: LockLevel::None,
            identity: spec.identity,
            planned: spec.faults.clone(),
            pending: spec.faults,
            fired: Vec::new(),
            rng: SimRng::new(spec.rng_seed),
            agent: AgentEndpoint::new(),
            bus_ns: 0,
        };
        if let Some(level) = chip.pending.iter().find_map(|f| match f {
            Fault::AlreadyLocked(l) => Some(*l),
            _ => None,
        }) {
            chip.arrive_provisioned(level);
            chip.fire(Fault::AlreadyLocked(level));
        }
        // The device type is fixed when the board is made (see `SimConfig::chip`).
        chip.fire(Fault::WrongDevice);
        chip
    }

    /// A board that went through a line before: firmware, an identity key, locked.
    fn arrive_provisioned(&mut self, level: LockLevel) {
        let mut firmware = vec![0u8; 4096.min(self.flash.size as usize)];
        self.rng.fill(&mut firmware);
        self.flash.program(self.flash.base, &firmware);
        let scalar = self.random_scalar();
        let _ = self.write_location(self.identity, &scalar[..]);
        self.lock = level;
    }

    /// A valid P-256 scalar from the simulation RNG (not secret: predictable from the seed).
    pub(crate) fn random_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        let mut s = Zeroizing::new([0u8; 32]);
        loop {
            self.rng.fill(&mut s[..]);
            if flashgate_agent::is_valid_scalar(&s) {
                return s;
            }
        }
    }

    /// Removes `fault` from the pending list if it is there; true if it fired.
    pub(crate) fn fire(&mut self, fault: Fault) -> bool {
        match self.pending.iter().position(|f| *f == fault) {
            Some(i) => {
                self.pending.remove(i);
                self.fired.push(fault);
                true
            }
            None => false,
        }
    }

    /// Whether `fault` is still pending.
    pub(crate) fn has_pending(&self, fault: Fault) -> bool {
        self.pending.contains(&fault)
    }

    /// Chip erase: flash and key store to 0xFF, readout lock removed.
    pub(crate) fn chip_erase(&mut self) {
        self.flash.erase();
        self.keystore.fill(ERASED);
        self.lock = LockLevel::None;
    }

    /// Writes data at a location, with the storage's own semantics (flash ANDs, the key store
    /// erases and rewrites). `Err(())` if the location is outside the space or the space does
    /// not exist here.
    pub(crate) fn write_location(&mut self, at: Location, data: &[u8]) -> Result<(), ()> {
        match at.space {
            Space::KeyStore => {
                let start = at.offset as usize;
                let dst = self.keystore.get_mut(start..start + data.len()).ok_or(())?;
                dst.copy_from_slice(data);
                Ok(())
            }
            Space::Flash => {
                let address = self.flash_address(at, data.len())?;
                self.flash.program(address, data);
                Ok(())
            }
            Space::Eeprom | Space::Otp => Err(()),
        }
    }

    /// Reads a location back (what a read over the unlocked interface returns).
    pub(crate) fn read_location(&self, at: Location, buf: &mut [u8]) -> Result<(), ()> {
        match at.space {
            Space::KeyStore => {
                let start = at.offset as usize;
                let src = self.keystore.get(start..start + buf.len()).ok_or(())?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Space::Flash => {
                let address = self.flash_address(at, buf.len())?;
                self.flash.read(address, buf);
                Ok(())
            }
            Space::Eeprom | Space::Otp => Err(()),
        }
    }

    fn flash_address(&self, at: Location, len: usize) -> Result<u32, ()> {
        let address = self.flash.base.checked_add(at.offset).ok_or(())?;
        let len = u32::try_from(len).map_err(|_| ())?;
        if self.flash.contains(address, len) {
            Ok(address)
        } else {
            Err(())
        }
    }

    /// Size of a space in bytes (0 if the chip does not have it).
    pub(crate) fn space_size(&self, space: Space) -> u32 {
        match space {
            Space::KeyStore => self.keystore.len() as u32,
            Space::Flash => self.flash.size,
            Space::Eeprom | Space::Otp => 0,
        }
    }

    /// Passes UART bytes to the on-chip agent and returns its reply bytes.
    pub(crate) fn agent_receive(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut endpoint = std::mem::take(&mut self.agent);
        let out = endpoint.receive(&mut AgentView(self), bytes);
        self.agent = endpoint;
        out
    }

    /// The agent restarts with the chip (connect, brown-out).
    pub(crate) fn reset_agent(&mut self) {
        self.agent.reset();
    }

    /// The raw option byte for a lock level.
    pub(crate) fn raw_lock(level: LockLevel) -> u8 {
        match level {
            LockLevel::None => RAW_NONE,
            LockLevel::Readout => RAW_READOUT,
            LockLevel::Permanent => RAW_PERMANENT,
        }
    }

    // ---- inspection (tests) ----

    /// Board index within its fixture.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Unique ID.
    pub fn uid(&self) -> &[u8] {
        &self.uid
    }

    /// Device type.
    pub fn device_type(&self) -> &str {
        &self.device_type
    }

    /// Current lock state, as `read_lock` would report it.
    pub fn lock_state(&self) -> LockState {
        LockState {
            level: self.lock,
            raw: vec![SimChip::raw_lock(self.lock)],
        }
    }

    /// Flash contents at a bus address, ignoring the lock; `None` outside flash.
    pub fn inspect_flash(&self, address: u32, length: u32) -> Option<Vec<u8>> {
        if !self.flash.contains(address, length) {
            return None;
        }
        let mut buf = vec![0u8; length as usize];
        self.flash.read(address, &mut buf);
        Some(buf)
    }

    /// Whether all of flash is erased.
    pub fn flash_is_blank(&self) -> bool {
        self.flash.is_blank()
    }

    /// Key-store contents, ignoring the lock; `None` outside the key store.
    pub fn inspect_keystore(&self, offset: u32, length: u32) -> Option<Zeroizing<Vec<u8>>> {
        let start = offset as usize;
        self.keystore
            .get(start..start + length as usize)
            .map(|s| Zeroizing::new(s.to_vec()))
    }

    /// Where the agent reads its identity key.
    pub fn identity_location(&self) -> Location {
        self.identity
    }

    /// The faults planned for this board.
    pub fn planned_faults(&self) -> &[Fault] {
        &self.planned
    }

    /// The faults that have fired so far.
    pub fn fired_faults(&self) -> &[Fault] {
        &self.fired
    }

    /// Simulated time spent on this board so far (all drivers that worked on it).
    pub fn bus_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.bus_ns)
    }
}

impl fmt::Debug for SimChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimChip")
            .field("index", &self.index)
            .field("device_type", &self.device_type)
            .field("uid", &Hex(&self.uid))
            .field("flash_base", &format_args!("0x{:08x}", self.flash.base))
            .field("flash_size", &self.flash.size)
            .field("lock", &self.lock)
            .field("planned_faults", &self.planned)
            .field("fired_faults", &self.fired)
            .finish_non_exhaustive()
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The chip as its own firmware sees it.
struct AgentView<'a>(&'a mut SimChip);

impl AgentDevice for AgentView<'_> {
    fn device_type(&self) -> &str {
        &self.0.device_type
    }

    fn uid(&self) -> &[u8] {
        &self.0.uid
    }

    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        if self.0.fire(Fault::WrongSignature) {
            // Firmware bug model: it signs with some other valid key.
            return self.0.random_scalar();
        }
        let mut s = Zeroizing::new([ERASED; 32]);
        // Outside the space reads as erased, which the agent reports as NoKey.
        if self.0.read_location(self.0.identity, &mut s[..]).is_err() {
            s.fill(ERASED);
        }
        s
    }

    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        if !self.0.flash.contains(address, length) {
            return Err(AgentError::RegionOutside { address, length });
        }
        self.0.flash.read(address, buf);
        Ok(())
    }
}
