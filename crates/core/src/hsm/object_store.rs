//! One lock per process over the tokens' object stores.
//!
//! SoftHSM 2.6.1 (Debian 12's) writes a new token object's file one
//! attribute at a time, while `C_FindObjectsInit` in another thread of the
//! same process re-reads every new file of the token directory. Its file
//! locks are `fcntl` locks, which do not exclude threads of one process, so
//! the search can read the file half written and the writer then fails with
//! `CKR_GENERAL_ERROR` (SoftHSMv2 issue 573, fixed after 2.6.1). A station
//! running eight channels advances quota counters (new token objects) while
//! other channels search for their keys, so it met this. Writers of token
//! objects hold the lock alone, searches share it; everything else (signing,
//! session objects) runs without it.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

static OBJECT_STORE: RwLock<()> = RwLock::new(());

/// Held for as long as a session searches for objects or writes token objects.
#[derive(Debug)]
pub(super) enum StoreGuard {
    /// A search (`C_FindObjects*`): many at once.
    Search(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    /// A token object created, changed or destroyed: alone.
    Write(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

impl StoreGuard {
    /// Waits until no token object is being written.
    pub(super) fn search() -> Self {
        // The lock guards no data: a panic while it was held leaves nothing
        // half done that a later holder could see.
        Self::Search(OBJECT_STORE.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits until nothing else searches or writes.
    pub(super) fn write() -> Self {
        Self::Write(OBJECT_STORE.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`StoreGuard::write`] when `token_object`, else nothing (session
    /// objects live in memory, out of the searches' way).
    pub(super) fn write_if(token_object: bool) -> Option<Self> {
        token_object.then(Self::write)
    }
}
