//! Dashboard sessions (SPEC §14): what a right `POST /login` hands the
//! browser in place of the token.
//!
//! A session is 32 bytes from the OS's random source, hex-encoded, kept in
//! memory only: they all die with the daemon, and a restarted daemon asks
//! for the token again. The store is bounded; past [`MAX_SESSIONS`] the
//! oldest session is forgotten, so a script that logs in in a loop costs a
//! fixed amount of memory and at worst logs out the oldest browser.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 1024;

/// The live sessions, shared by every connection.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    /// The ids, and their order of creation for eviction.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashSet<String>,
    order: VecDeque<String>,
}

impl Sessions {
    /// Makes a new session and returns its id.
    pub fn create(&self) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no random bytes from the OS: {e}"))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut inner = self.lock();
        while inner.order.len() >= MAX_SESSIONS {
            if let Some(old) = inner.order.pop_front() {
                inner.live.remove(&old);
            }
        }
        inner.live.insert(id.clone());
        inner.order.push_back(id.clone());
        Ok(id)
    }

    /// Whether `id` is a live session.
    pub fn is_live(&self, id: &str) -> bool {
        // Ids are 256 random bits: a lookup's timing says nothing useful.
        id.len() == 64 && self.lock().live.contains(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A set of strings holds no invariant a panic could break.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_live_and_bounded() {
        let s = Sessions::default();
        let a = s.create().unwrap();
        let b = s.create().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(s.is_live(&a) && s.is_live(&b));
        assert!(!s.is_live("nope"));
        assert!(!s.is_live(&"0".repeat(64)));
        for _ in 0..MAX_SESSIONS {
            s.create().unwrap();
        }
        assert!(!s.is_live(&a), "the oldest is forgotten past the cap");
        assert_eq!(s.lock().live.len(), MAX_SESSIONS);
        assert_eq!(s.lock().order.len(), MAX_SESSIONS);
    }
}
