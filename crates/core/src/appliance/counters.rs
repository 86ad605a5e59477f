//! The quota counters: one token data object per job, advanced before any
//! identity is issued.

use std::sync::Mutex;

use cryptoki::object::ObjectHandle;
use flashgate_audit::{CounterStore, LOG_HIGH_WATER_ID};

use crate::hsm::Token;

/// Label prefix of a quota counter object: `fg-count:<id>`.
pub const COUNTER_PREFIX: &str = "fg-count:";

/// Quota counters as token data objects. `CKA_VALUE` is read-only on some
/// tokens (SoftHSM), so a counter advances by creating the new value and
/// then destroying the old; a crash between leaves two, and the larger wins.
pub struct HsmCounterStore {
    pub(super) token: Mutex<Token>,
}

impl std::fmt::Debug for HsmCounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsmCounterStore")
    }
}

impl HsmCounterStore {
    fn values(token: &Token, id: &[u8; 16]) -> Result<Vec<(ObjectHandle, u64)>, String> {
        let label = format!("{COUNTER_PREFIX}{}", hex::encode(id));
        let mut out = Vec::new();
        for h in token.find_by_label(&label).map_err(|e| e.to_string())? {
            let v = token.data_value(h).map_err(|e| e.to_string())?;
            let v = <[u8; 8]>::try_from(v.as_slice())
                .map_err(|_| format!("counter object {label} is not 8 bytes"))?;
            out.push((h, u64::from_be_bytes(v)));
        }
        Ok(out)
    }
}

impl HsmCounterStore {
    /// Destroys every value of the log's high-water mark (it reads 0 after):
    /// only a log reset does this, and its record keeps the old value.
    pub(super) fn clear_high_water(&self) -> Result<(), String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        for (h, _) in Self::values(&token, &LOG_HIGH_WATER_ID)? {
            token.destroy(h).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl CounterStore for HsmCounterStore {
    fn read(&self, id: &[u8; 16]) -> Result<u64, String> {
        crate::hsm::latency::timed("counter-read", || self.read_value(id))
    }

    fn advance(&self, id: &[u8; 16], to: u64) -> Result<(), String> {
        crate::hsm::latency::timed("counter-advance", || self.advance_to(id, to))
    }
}

impl HsmCounterStore {
    fn read_value(&self, id: &[u8; 16]) -> Result<u64, String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        Ok(Self::values(&token, id)?
            .into_iter()
            .map(|(_, v)| v)
            .max()
            .unwrap_or(0))
    }

    fn advance_to(&self, id: &[u8; 16], to: u64) -> Result<(), String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        let old = Self::values(&token, id)?;
        let current = old.iter().map(|(_, v)| *v).max().unwrap_or(0);
        if to < current {
            return Err(format!(
                "refusing to move counter {} back from {current} to {to}",
                hex::encode(id)
            ));
        }
        if to == current && !old.is_empty() {
            return Ok(());
        }
        token
            .create_data(
                &format!("{COUNTER_PREFIX}{}", hex::encode(id)),
                &to.to_be_bytes(),
            )
            .map_err(|e| e.to_string())?;
        for (h, _) in old {
            token.destroy(h).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
