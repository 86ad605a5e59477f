//! One simulated chip shared between a server and a test.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flashgate_serial::SerialDevice;

use super::{SimError, SimOptions, Stm32Sim};

/// One simulated chip shared between whoever serves it (a pty server, an in-process link)
/// and whoever inspects it.
#[derive(Debug, Clone)]
pub struct SimHandle(Arc<Mutex<Stm32Sim>>);

impl SimHandle {
    /// Shares `sim`.
    pub fn new(sim: Stm32Sim) -> Self {
        SimHandle(Arc::new(Mutex::new(sim)))
    }

    /// A chip from options.
    pub fn from_options(options: SimOptions) -> Result<Self, SimError> {
        Ok(SimHandle::new(Stm32Sim::new(options)?))
    }

    /// The chip, locked for inspection or set-up.
    pub fn lock(&self) -> MutexGuard<'_, Stm32Sim> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SerialDevice for SimHandle {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        self.lock().feed(input)
    }

    fn reset_link(&mut self) {
        self.lock().reset_link();
    }

    fn idle(&mut self, duration: Duration) {
        self.lock().idle(duration);
    }
}
