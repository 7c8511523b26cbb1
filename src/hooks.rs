//! The Lua hook host (SPEC §6): runs the config's `tm.on(...)` handlers on a
//! thread of its own, fed events in order through a bounded queue.
//!
//! Supervision never waits for a hook: the actor only pushes onto the queue
//! (a mutex held for a push). When hooks fall more than [`QUEUE_CAP`] events
//! behind, the oldest pending events are dropped and the count is logged.
//!
//! Each handler call has a wall-clock budget (`tm.hook_timeout`, 1 s by
//! default) enforced by an instruction-count hook whose deadline stays
//! expired, so a `pcall` inside the script cannot swallow the cut-off, and
//! the state has a memory limit. A command a handler waits for through
//! `os.execute` or `io.popen` is killed when the budget expires (see
//! `config/lua.rs`), so a blocking call is cut off on time too. Errors and
//! cut-offs are logged with the file:line Lua reports and the event that
//! triggered them; the next handlers still run. Handlers see the event's
//! fields plus its `description` (status text) and `restarts`.
//!
//! `tm.start/stop/restart` queue the same requests as the commands without
//! waiting for them to settle (a hook stopping its own service cannot
//! deadlock); `tm.status()` asks the actor and waits for the answer, which
//! the actor gives without ever waiting on hooks; `tm.exec` runs
//! `/bin/sh -c` without waiting, logging its output line by line.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaSerdeExt, Table, Value as LuaValue};

use crate::config::lua::{arm_budget, error_text, Budget, HookState, HANDLERS_KEY, MODULE_KEY};
use crate::process;
use crate::protocol::Event;
use crate::supervisor::{Control, Handle, Observer};

impl Observer for HookQueue {
    fn wants_events(&self) -> bool {
        self.is_active()
    }
    fn events(&self, batch: &mut Vec<Event>) {
        self.push_events(batch);
    }
    fn swap_hooks(&self, hooks: Option<HookState>) {
        self.replace(hooks);
    }
}

/// Pending events kept before the oldest are dropped.
pub const QUEUE_CAP: usize = 4096;
/// Default budget of one handler call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Memory the hook state may grow by beyond what the config itself used.
pub const MEMORY_HEADROOM: usize = 64 * 1024 * 1024;

// Events are the common case and move through the queue by value; boxing
// them would cost an allocation per event for the rare config swap's sake.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event),
    Replace(Option<HookState>),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Msg>,
    /// How many of `items` are events (config swaps are never dropped).
    events: usize,
    /// Events dropped since the host last reported it.
    dropped: u64,
    closed: bool,
}

/// The producer side, shared by the actor and the reloader.
#[derive(Clone, Default)]
pub struct HookQueue {
    inner: Arc<(Mutex<Queue>, Condvar)>,
    /// Whether the current config has any handler (skip queueing otherwise).
    active: Arc<AtomicBool>,
}

impl HookQueue {
    /// Whether the current config has handlers (events are worth queueing).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Queues an event for the hooks, dropping the oldest pending event when full.
    pub fn push_event(&self, event: &Event) {
        if self.is_active() {
            self.push_all(std::iter::once(Msg::Event(event.clone())));
        }
    }

    /// Queues a batch of events with one lock and at most one wake-up (the
    /// supervisor flushes what one request or exit produced).
    pub fn push_events(&self, events: &mut Vec<Event>) {
        if self.is_active() {
            self.push_all(events.drain(..).map(Msg::Event));
        } else {
            events.clear();
        }
    }

    /// Swaps in the hooks of a newly applied config (None: no hooks).
    pub fn replace(&self, hooks: Option<HookState>) {
        self.active
            .store(hooks.as_ref().is_some_and(has_handlers), Ordering::Relaxed);
        self.push_all(std::iter::once(Msg::Replace(hooks)));
    }

    /// Stops the host thread once the queue is drained.
    pub fn close(&self) {
        let (lock, cv) = &*self.inner;
        if let Ok(mut q) = lock.lock() {
            q.closed = true;
        }
        cv.notify_all();
    }

    fn push_all(&self, msgs: impl Iterator<Item = Msg>) {
        let (lock, cv) = &*self.inner;
        let Ok(mut q) = lock.lock() else { return };
        // The host sleeps only on an empty queue: wake it only then.
        let was_empty = q.items.is_empty();
        for msg in msgs {
            if matches!(msg, Msg::Event(_)) {
                q.events += 1;
            }
            q.items.push_back(msg);
            if q.events > QUEUE_CAP {
                if let Some(pos) = q.items.iter().position(|m| matches!(m, Msg::Event(_))) {
                    q.items.remove(pos);
                    q.events -= 1;
                    q.dropped += 1;
                }
            }
        }
        let wake = was_empty && !q.items.is_empty();
        drop(q);
        if wake {
            cv.notify_one();
        }
    }

    fn pop(&self) -> Option<(Msg, u64)> {
        let (lock, cv) = &*self.inner;
        let mut q = lock.lock().ok()?;
        loop {
            if let Some(msg) = q.items.pop_front() {
                if matches!(msg, Msg::Event(_)) {
                    q.events -= 1;
                }
                let dropped = std::mem::take(&mut q.dropped);
                return Some((msg, dropped));
            }
            if q.closed {
                return None;
            }
            q = cv.wait(q).ok()?;
        }
    }
}

fn has_handlers(h: &HookState) -> bool {
    h.lua
        .named_registry_value::<Table>(HANDLERS_KEY)
        .map(|t| t.pairs::<LuaValue, LuaValue>().next().is_some())
        .unwrap_or(false)
}

/// Starts the host thread with the initial config's hooks.
pub fn start(queue: HookQueue, initial: Option<HookState>, handle: Handle) -> std::io::Result<()> {
    let rt = tokio::runtime::Handle::current();
    queue.replace(initial);
    let q = queue.clone();
    std::thread::Builder::new()
        .name("hooks".into())
        .spawn(move || {
            let mut host = Host {
                state: None,
                budget: Arc::default(),
                handle,
                rt,
            };
            while let Some((msg, dropped)) = q.pop() {
                if dropped > 0 {
                    crate::log!("hooks: fell behind, dropped the {dropped} oldest pending events");
                }
                match msg {
                    Msg::Replace(state) => host.adopt(state),
                    Msg::Event(ev) => host.dispatch(&ev),
                }
            }
        })?;
    Ok(())
}

struct Host {
    /// The current config's Lua state, with its daemon-bound functions installed.
    state: Option<Lua>,
    /// The time budget its instruction hook enforces.
    budget: Arc<Budget>,
    /// For tm.start/stop/restart/status.
    handle: Handle,
    /// To run the fire-and-forget command tasks.
    rt: tokio::runtime::Handle,
}

impl Host {
    fn adopt(&mut self, state: Option<HookState>) {
        self.state = None;
        let Some(HookState { lua }) = state else {
            return;
        };
        if let Err(e) = self.install(&lua) {
            crate::log!("hooks: cannot set up the hook state: {}", error_text(&e));
            return;
        }
        let limit = lua.used_memory() + MEMORY_HEADROOM;
        if let Err(e) = lua.set_memory_limit(limit) {
            crate::log!("hooks: cannot limit hook memory: {e}");
        }
        self.budget = Arc::default();
        arm_budget(&lua, self.budget.clone(), "hook");
        self.state = Some(lua);
    }

    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        let tm: Table = lua.named_registry_value(MODULE_KEY)?;
        tm.set(
            "exec",
            lua.create_function(|_, cmd: String| Ok(process::exec::exec_logged(&cmd).ok()))?,
        )?;
        for (name, action) in [
            ("start", Control::Start),
            ("stop", Control::Stop),
            ("restart", Control::Restart),
        ] {
            let handle = self.handle.clone();
            let rt = self.rt.clone();
            let f = lua.create_function(move |_, target: String| {
                let handle = handle.clone();
                rt.spawn(async move {
                    match handle.control(action, vec![target.clone()]).await {
                        Err(e) => crate::log!("hooks: {name} {target}: {}", e.message),
                        Ok(results) => {
                            for r in results.iter().filter(|r| !r.ok) {
                                crate::log!("hooks: {name} {}: {}", r.name, r.message);
                            }
                        }
                    }
                });
                Ok(())
            })?;
            tm.set(name, f)?;
        }
        let handle = self.handle.clone();
        let status = lua.create_function(move |lua, ()| {
            let data = handle.status_blocking().map_err(mlua::Error::runtime)?;
            lua.to_value_with(&data.instances, serde_options())
        })?;
        tm.set("status", status)?;
        Ok(())
    }

    fn dispatch(&mut self, event: &Event) {
        let Some(lua) = &self.state else { return };
        let names: &[&str] = match event {
            Event::Transition(t) => &[t.to.as_str(), "transition"],
            Event::Reload(_) => &["reload"],
            Event::Health(h) => match h.health.as_str() {
                "healthy" => &["healthy"],
                "unhealthy" => &["unhealthy"],
                _ => &[],
            },
        };
        let Ok(handlers) = lua.named_registry_value::<Table>(HANDLERS_KEY) else {
            return;
        };
        let lists: Vec<(&str, Table)> = names
            .iter()
            .filter_map(|n| handlers.get::<Table>(*n).ok().map(|t| (*n, t)))
            .collect();
        if lists.is_empty() {
            return;
        }
        let arg = match event_value(lua, event) {
            Ok(v) => v,
            Err(e) => {
                crate::log!("hooks: cannot pass event {}: {e}", label(event));
                return;
            }
        };
        let timeout = budget(lua);
        for (name, list) in lists {
            for f in list.sequence_values::<Function>().flatten() {
                call_with_budget(lua, &self.budget, &f, &arg, timeout, name, event);
            }
        }
    }
}

/// The Lua table a handler receives: built field by field for transitions
/// (the hot path of a crash loop), through serde for the rarer reloads.
fn event_value(lua: &Lua, event: &Event) -> mlua::Result<LuaValue> {
    let Event::Transition(t) = event else {
        return lua.to_value_with(event, serde_options());
    };
    let table = lua.create_table_with_capacity(0, 13)?;
    table.raw_set("event", "transition")?;
    table.raw_set("name", t.name.as_str())?;
    table.raw_set("service", t.service.as_str())?;
    table.raw_set("instance", t.instance)?;
    table.raw_set("from", t.from.as_str())?;
    table.raw_set("to", t.to.as_str())?;
    table.raw_set("pid", t.pid)?;
    table.raw_set("exitcode", t.exitcode)?;
    table.raw_set("signal", t.signal.as_deref())?;
    table.raw_set("expected", t.expected)?;
    table.raw_set("time", t.time)?;
    table.raw_set("description", t.description.as_str())?;
    table.raw_set("restarts", t.restarts)?;
    table.raw_set("health", t.health.as_deref())?;
    if let Some(w) = &t.waiting_for {
        table.raw_set("waiting_for", w.clone())?;
    }
    Ok(LuaValue::Table(table))
}

/// How an event is named in the log (`web:0 RUNNING -> EXITED`).
fn label(event: &Event) -> String {
    match event {
        Event::Transition(t) => format!("{} {} -> {}", t.name, t.from, t.to),
        Event::Reload(r) => format!("reload ({})", if r.ok { "ok" } else { "failed" }),
        Event::Health(h) => format!("{} {}", h.name, h.health),
    }
}

fn serde_options() -> mlua::serde::SerializeOptions {
    mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
        .set_array_metatable(false)
}

/// `tm.hook_timeout`, in seconds, when a positive number; else the default.
fn budget(lua: &Lua) -> Duration {
    lua.named_registry_value::<Table>(MODULE_KEY)
        .and_then(|tm| tm.get::<f64>("hook_timeout"))
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT)
}

fn call_with_budget(
    lua: &Lua,
    budget: &Arc<Budget>,
    f: &Function,
    arg: &LuaValue,
    timeout: Duration,
    name: &str,
    event: &Event,
) {
    if budget.tripped.load(Ordering::Relaxed) {
        // The last call was cut off: the hook now fails every instruction.
        arm_budget(lua, budget.clone(), "hook");
    }
    let set = |d: Option<Instant>| {
        if let Ok(mut slot) = budget.deadline.lock() {
            *slot = d;
        }
    };
    set(Some(Instant::now() + timeout));
    let result = f.call::<()>(arg.clone());
    set(None);
    if let Err(e) = result {
        crate::log!(
            "hooks: handler for \"{name}\" failed on {}: {}",
            label(event),
            error_text(&e)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ReloadEvent;

    fn ev(n: usize) -> Event {
        Event::Reload(ReloadEvent {
            ok: true,
            error: Some(n.to_string()),
            diff: None,
        })
    }

    #[test]
    fn a_full_queue_drops_the_oldest_events_and_counts_them() {
        let q = HookQueue::default();
        q.active.store(true, Ordering::Relaxed);
        for n in 0..QUEUE_CAP + 10 {
            q.push_event(&ev(n));
        }
        let (first, dropped) = q.pop().unwrap();
        assert_eq!(dropped, 10);
        assert!(matches!(first, Msg::Event(e) if e == ev(10)));
        let mut rest = 1;
        q.close();
        while let Some((_, d)) = q.pop() {
            assert_eq!(d, 0);
            rest += 1;
        }
        assert_eq!(rest, QUEUE_CAP);
    }

    #[test]
    fn nothing_is_queued_without_handlers_and_swaps_are_never_dropped() {
        let q = HookQueue::default();
        q.push_event(&ev(0));
        q.replace(None);
        q.active.store(true, Ordering::Relaxed);
        for n in 0..QUEUE_CAP + 5 {
            q.push_event(&ev(n));
        }
        let (first, _) = q.pop().unwrap();
        assert!(
            matches!(first, Msg::Replace(None)),
            "the swap survives a full queue"
        );
    }
}
