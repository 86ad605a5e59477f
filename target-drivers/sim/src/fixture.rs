//! A fixture that hands out simulated boards.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flashgate_target::{Fixture, Target, TargetError};

use crate::chip::SimChip;
use crate::config::SimConfig;
use crate::fault::Fault;
use crate::SimError;

/// One board the fixture handed out, kept for inspection.
#[derive(Debug, Clone)]
pub struct SimBoard {
    /// Index within the fixture (0, 1, 2, ...), which determines UID and faults.
    pub index: u64,
    /// Its UID.
    pub uid: Vec<u8>,
    /// The faults planned for it.
    pub faults: Vec<Fault>,
    /// The chip itself.
    pub chip: Arc<Mutex<SimChip>>,
}

impl SimBoard {
    /// Runs `f` on the chip (a convenience around the mutex).
    pub fn with_chip<R>(&self, f: impl FnOnce(&SimChip) -> R) -> R {
        f(&self.chip.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[derive(Debug)]
struct State {
    next: u64,
    boards: Vec<SimBoard>,
}

/// Hands out simulated boards, deterministically from the seed.
///
/// Board `i` always has the same UID and faults for a given configuration, whichever channel
/// takes it. **Sharing across channels:** clone the fixture once per channel. Clones share
/// one board counter, so every board index (and so every UID) is handed out exactly once
/// across all channels; which channel gets which index depends on scheduling. The `boards`
/// limit applies to the whole fixture.
#[derive(Debug, Clone)]
pub struct SimFixture {
    config: Arc<SimConfig>,
    state: Arc<Mutex<State>>,
}

impl SimFixture {
    /// A fixture for `config` (validated).
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        config.validate()?;
        Ok(SimFixture {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State {
                next: 0,
                boards: Vec::new(),
            })),
        })
    }

    /// A fixture from an option string such as `sim:seed=7,timing=realistic,boards=200`.
    pub fn from_options(options: &str) -> Result<Self, SimError> {
        SimFixture::new(options.parse()?)
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// How many boards were handed out.
    pub fn produced(&self) -> u64 {
        self.lock().next
    }

    /// The boards handed out so far, in index order (empty if `keep_boards` is off).
    pub fn boards(&self) -> Vec<SimBoard> {
        let mut boards = self.lock().boards.clone();
        boards.sort_by_key(|b| b.index);
        boards
    }

    /// Board `index`, if it was handed out and kept.
    pub fn board(&self, index: u64) -> Option<SimBoard> {
        self.lock()
            .boards
            .iter()
            .find(|b| b.index == index)
            .cloned()
    }

    /// Simulated time of all kept boards together.
    pub fn total_bus_time(&self) -> Duration {
        self.boards()
            .iter()
            .map(|b| b.with_chip(SimChip::bus_time))
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next board index and builds its chip.
    fn next_chip(&self) -> Option<Arc<Mutex<SimChip>>> {
        let mut state = self.lock();
        if self.config.boards.is_some_and(|limit| state.next >= limit) {
            return None;
        }
        let index = state.next;
        state.next += 1;
        let plan = self.config.faults_for(index);
        let faults = plan.faults.clone();
        let chip = self.config.chip(index, plan);
        if self.config.keep_boards {
            state.boards.push(SimBoard {
                index,
                uid: self.config.uid(index).to_vec(),
                faults,
                chip: Arc::clone(&chip),
            });
        }
        Some(chip)
    }
}

impl Fixture for SimFixture {
    fn next_board(&mut self) -> Result<Option<Box<dyn Target>>, TargetError> {
        Ok(self.next_chip().map(|chip| {
            Box::new(crate::SimTarget::new(
                chip,
                self.config.timing,
                self.config.pace,
            )) as Box<dyn Target>
        }))
    }
}
