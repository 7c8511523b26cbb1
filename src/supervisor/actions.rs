//! Feeding events to one instance: the state machine decides, this file
//! executes its actions (through the [`Spawner`](super::Spawner)), feeds
//! back their outcomes, logs each transition in supervisord's words and
//! publishes it to subscribers and the observer.

use std::collections::VecDeque;

use nix::sys::signal::Signal;

use crate::protocol::{Event as WireEvent, TransitionEvent};

use super::state::{Action, Event, Exit, Refusal, State};
use super::{exit_fields, now, unix_now, Key, Supervisor};

impl Supervisor {
    /// Feeds one event to an instance and executes the resulting actions,
    /// feeding back their outcomes, until the instance is quiet.
    pub(super) fn apply(&mut self, key: &Key, first: Event) -> Result<(), Refusal> {
        let mut queue = VecDeque::from([first]);
        let mut is_first = true;
        let mut changed = false;
        while let Some(event) = queue.pop_front() {
            // Every start path goes through the dependencies' verdict.
            let event = if event == Event::Start && self.any_deps && !self.is_live(key) {
                let mut gated = VecDeque::from(self.gate_start(key));
                let first = gated.pop_front().unwrap_or(Event::Start);
                for e in gated.into_iter().rev() {
                    queue.push_front(e);
                }
                first
            } else {
                event
            };
            changed |= self.step(key, event, &mut queue, &mut is_first)?;
        }
        self.flush_waiters();
        if changed {
            self.after_change(key);
        }
        self.drop_retired(key);
        self.sync_timers(key);
        Ok(())
    }

    /// What a state change of `key` may unblock: WAITING dependents, stops
    /// deferred for dependents.
    fn after_change(&mut self, key: &Key) {
        if let Some(inst) = self.instances.get_mut(key) {
            if inst.proc.state != State::Waiting {
                inst.waiting_for.clear();
            }
        }
        self.health_follows_state(key);
        if self.any_deps {
            let service = key.0.clone();
            if self
                .instances
                .get(key)
                .is_some_and(|i| i.proc.state == State::Waiting)
            {
                // Met meanwhile, or settled unmet: a waiting start is told.
                self.reevaluate(&service);
            }
            self.reevaluate_dependents(&service);
            self.release_stops();
        }
    }

    /// One event of [`Supervisor::apply`]; true when the state changed.
    fn step(
        &mut self,
        key: &Key,
        event: Event,
        queue: &mut VecDeque<Event>,
        is_first: &mut bool,
    ) -> Result<bool, Refusal> {
        {
            let Some(svc) = self.services.get(&key.0) else {
                return Ok(false);
            };
            // An Arc: the policy is shared, not copied, per event.
            let policy = std::sync::Arc::clone(&svc.config.policy);
            let Some(inst) = self.instances.get_mut(key) else {
                return Ok(false);
            };
            let exited = match &event {
                Event::Exited { exit, .. } => Some((inst.proc.pid.or(inst.last_pid), *exit)),
                _ => None,
            };
            let early_exit =
                matches!(event, Event::Exited { .. }) && inst.proc.state == State::Starting;
            let step = match inst.proc.handle(&policy, event, now()) {
                Ok(step) => step,
                Err(r) if *is_first => return Err(r),
                Err(_) => return Ok(false),
            };
            if early_exit {
                // A failed start says why in its own words (SPEC §10).
                let spec = svc.config.spawn.for_instance(&key.0, key.1);
                let words = super::logs::last_words(&inst.name, &spec);
                if let (Some(words), Some(reason)) = (words, inst.proc.reason.as_mut()) {
                    reason.push_str(": ");
                    reason.push_str(&words);
                }
            }
            *is_first = false;
            let changed = !step.changes.is_empty();
            if let Some(pid) = inst.proc.pid {
                inst.last_pid = Some(pid);
            }
            let mut restart_after_stop = false;
            let mut respawn_after_stop = false;
            for (n, (from, to)) in step.changes.iter().enumerate() {
                let exit = if n == 0 { exited } else { None };
                let gives_up = step.changes.get(n + 1).is_some_and(|c| c.1 == State::Fatal);
                self.announce(key, (*from, *to), exit, gives_up, &policy);
                let reason = self
                    .instances
                    .get(key)
                    .map(|i| i.proc.describe(now()))
                    .unwrap_or_default();
                self.waiters.on_change(key, *to, &reason);
                if *to == State::Stopped && self.shutdown.is_empty() {
                    if let Some(i) = self.instances.get_mut(key).filter(|i| !i.retiring) {
                        restart_after_stop |= std::mem::take(&mut i.restart_pending);
                        respawn_after_stop |= std::mem::take(&mut i.respawn_pending);
                    }
                }
            }
            for action in step.actions {
                if let Some(ev) = self.execute(key, action) {
                    queue.push_back(ev);
                }
            }
            self.track(key);
            if restart_after_stop {
                queue.push_back(Event::Start);
            } else if respawn_after_stop {
                queue.push_back(Event::Respawn);
            }
            Ok(changed)
        }
    }

    /// Whether `key` is on its way up already (a start changes nothing).
    fn is_live(&self, key: &Key) -> bool {
        self.instances.get(key).is_some_and(|i| {
            matches!(
                i.proc.state,
                State::Running | State::Starting | State::Stopping | State::Waiting
            )
        })
    }

    /// Keeps `pids` and `draining` in line with the instance's state.
    pub(super) fn track(&mut self, key: &Key) {
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        if let Some(pid) = inst.proc.pid {
            self.pids.insert(pid, key.clone());
        }
        let leaderless = inst.proc.state == State::Stopping || inst.proc.drain.is_some();
        if leaderless && inst.proc.pid.is_none() {
            self.draining.insert(key.clone());
        } else {
            self.draining.remove(key);
        }
    }

    fn execute(&mut self, key: &Key, action: Action) -> Option<Event> {
        let inst = self.instances.get(key)?;
        match action {
            Action::Spawn => {
                if !self.shutdown.is_empty() {
                    return Some(Event::SpawnFailed {
                        reason: "the daemon is shutting down".into(),
                    });
                }
                let spec = &self.services.get(&key.0)?.config.spawn;
                let name = &inst.name;
                // The transition into STARTING is logged here, with its pid.
                let from = inst.starting_from.name();
                match self.spawner.spawn(spec, &key.0, key.1) {
                    Ok(pid) => {
                        crate::log!(
                            "spawned: '{name}' with pid {pid} [{from} -> STARTING, pid {pid}]"
                        );
                        Some(Event::Spawned { pid })
                    }
                    Err(reason) => {
                        crate::log!("spawnerr: {name}: {reason} [{from} -> STARTING]");
                        Some(Event::SpawnFailed { reason })
                    }
                }
            }
            Action::Signal(sig) => {
                if let Some(pgid) = inst.proc.pgid {
                    self.spawner.signal(pgid, sig);
                }
                None
            }
            Action::Kill => {
                if let Some(pgid) = inst.proc.pgid {
                    crate::log!("killing: {} (process group {pgid}) with SIGKILL", inst.name);
                    self.spawner.signal(pgid, Signal::SIGKILL);
                }
                None
            }
        }
    }

    /// Logs a transition in supervisord's words and publishes it.
    fn announce(
        &mut self,
        key: &Key,
        (from, to): (State, State),
        exited: Option<(Option<u32>, Exit)>,
        gives_up: bool,
        policy: &crate::config::Policy,
    ) {
        if to == State::Starting {
            if let Some(inst) = self.instances.get_mut(key) {
                inst.starting_from = from;
            }
        }
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        let p = &inst.proc;
        let name = &inst.name;
        let pid = match to {
            State::Starting => None,
            _ => p.pid.or(exited.and_then(|e| e.0)),
        };
        let exit = exited.map(|e| e.1);
        let expected = if to == State::Exited {
            p.expected
        } else {
            None
        };
        let pid_text = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
        let arrow = format!("[{} -> {}{pid_text}]", from.name(), to.name());
        match to {
            // Logged with the pid once spawned (see `execute`).
            State::Starting => {}
            State::Running => crate::log!(
                "success: {name} entered RUNNING state, process has stayed up for > than {} seconds (starttime) {arrow}",
                policy.starttime.as_secs_f64()
            ),
            State::Exited => crate::log!(
                "exited: {name} ({}; {}) {arrow}",
                exit.map(Exit::describe).unwrap_or_default(),
                if expected == Some(true) { "expected" } else { "not expected" }
            ),
            // The BACKOFF on the way to FATAL has no retry of its own.
            State::Backoff if gives_up => crate::log!(
                "backoff: {name} entered BACKOFF state ({}), no retries left {arrow}",
                p.reason.as_deref().unwrap_or("start failed"),
            ),
            State::Backoff => crate::log!(
                "backoff: {name} entered BACKOFF state ({}), retry {} of {} {arrow}",
                p.reason.as_deref().unwrap_or("start failed"),
                p.retries,
                policy.startretries
            ),
            State::Fatal => crate::log!(
                "gave up: {name} entered FATAL state, too many start retries too quickly ({}) {arrow}",
                p.reason.as_deref().unwrap_or("start failed")
            ),
            State::Stopping => crate::log!("waiting for {name} to stop (sent {}) {arrow}", policy.stopsignal.as_str()),
            State::Waiting => crate::log!(
                "{name} {} {arrow}",
                super::deps::waiting_line(&inst.waiting_for)
            ),
            State::Stopped => crate::log!(
                "stopped: {name}{} {arrow}",
                exit.map(|e| format!(" ({})", e.describe())).unwrap_or_default()
            ),
        }
        // Nobody to tell (no subscriber, no hook): the event is not built.
        let hooks = self.observer.wants_events();
        if !hooks && self.events.receiver_count() == 0 {
            return;
        }
        let (exitcode, signal) = exit_fields(exit);
        let event = WireEvent::Transition(TransitionEvent {
            name: name.clone(),
            service: key.0.to_string(),
            instance: key.1,
            from: from.name().into(),
            to: to.name().into(),
            pid,
            exitcode,
            signal,
            expected,
            time: unix_now(),
            description: self.description(inst, now()),
            restarts: p.restarts,
            health: inst.health.health.map(|h| h.name().to_string()),
            waiting_for: (to == State::Waiting)
                .then(|| inst.waiting_for.iter().map(|w| w.0.clone()).collect()),
        });
        if hooks {
            self.hook_batch.push(event.clone());
        }
        let _ = self.events.send(event);
    }

    /// Hands the events gathered since the last flush to the hook host.
    pub(super) fn flush_hooks(&mut self) {
        if !self.hook_batch.is_empty() {
            self.observer.events(&mut self.hook_batch);
        }
    }

    /// Drops a retiring instance (or a removed service) once it has no process.
    pub(super) fn drop_retired(&mut self, key: &Key) {
        let idle = self.instances.get(key).is_some_and(|i| {
            i.retiring
                && i.proc.pid.is_none()
                && i.proc.state != State::Stopping
                && i.proc.drain.is_none()
        });
        if !idle {
            return;
        }
        self.instances.remove(key);
        self.sync_timers(key);
        self.draining.remove(key);
        self.waiters.settle_all(key, false, "removed by reload");
        self.flush_waiters();
        let service_empty = !self.instances.keys().any(|(s, _)| s == &key.0);
        if service_empty && self.services.get(&key.0).is_some_and(|s| s.removed) {
            self.services.remove(&key.0);
        }
    }
}
