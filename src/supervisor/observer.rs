//! How the supervisor tells the layers above it what happened, without
//! knowing them: the hook host implements [`Observer`] (the daemon wires it
//! in), so `supervisor/` never imports `hooks.rs`.

use crate::config::lua::HookState;
use crate::protocol::Event;

/// Receives the supervisor's events in order. Every method is called on the
/// actor and must return at once (queue, never wait).
pub trait Observer: Send + Sync {
    /// Whether events are wanted now (the actor skips gathering them otherwise).
    fn wants_events(&self) -> bool;
    /// Takes the events of one wake-up of the actor, in order (drains `batch`).
    fn events(&self, batch: &mut Vec<Event>);
    /// A newly applied config's hooks take over from this point of the event
    /// stream (None: the config has no hooks).
    fn swap_hooks(&self, hooks: Option<HookState>);
}

/// Wants nothing: for a supervisor without hooks (tests, exports).
pub struct NoObserver;

impl Observer for NoObserver {
    fn wants_events(&self) -> bool {
        false
    }
    fn events(&self, batch: &mut Vec<Event>) {
        batch.clear();
    }
    fn swap_hooks(&self, _: Option<HookState>) {}
}
