//! `start`/`stop`/`restart` on the actor: names resolved, a waiter
//! registered, the instances queued and worked off [`SLICE`] at a time
//! (at most [`CHUNK`] per turn).

use crate::protocol::ActionResult;

use super::handle::{gone, Answer};
use super::names::{self, Covers};
use super::state::{AfterDrain, Event, State};
use super::waiters::Goal;
use super::{CommandError, Control, Inst, Key, Pending, Supervisor, CHUNK, SLICE};

/// What `all` covers for each action (SPEC §9): `stop all` the instances
/// that are not already STOPPED/EXITED/FATAL, `start all` those that are not
/// already STARTING/RUNNING, `restart all` every one.
fn covered_by_all(action: Control) -> Covers<'static, Inst> {
    match action {
        // An EXITED instance that restarts once its old group is empty is
        // still live.
        Control::Stop => &|i: &Inst| {
            !matches!(i.proc.state, State::Stopped | State::Exited | State::Fatal)
                || i.restart_pending
                || i.proc.drain == Some(AfterDrain::Start)
        },
        // WAITING counts as started (SPEC §18).
        Control::Start => &|i: &Inst| {
            !matches!(
                i.proc.state,
                State::Starting | State::Running | State::Waiting
            )
        },
        Control::Restart => &|_: &Inst| true,
    }
}

impl Supervisor {
    /// Resolves `web`, `web:1`, `all` into instance keys, in request order;
    /// instances on their way out are not addressable.
    pub(super) fn resolve(
        &self,
        names: &[String],
        covers: Covers<'_, Inst>,
    ) -> Result<Vec<Key>, CommandError> {
        names::resolve(
            names,
            &self.instances,
            |i| !i.retiring,
            covers,
            |s| {
                self.services
                    .get_key_value(s)
                    .filter(|(_, svc)| !svc.removed)
                    .map(|(n, _)| n.clone())
            },
        )
    }

    /// Starts a `start`/`stop`/`restart`: validates the names, registers a
    /// waiter answered once every instance settled, and queues the instances.
    pub(super) fn control(
        &mut self,
        action: Control,
        names: Vec<String>,
        reply: Answer<Vec<ActionResult>>,
    ) {
        if !self.shutdown.is_empty() {
            let _ = reply.send(gone());
            return;
        }
        if names.is_empty() {
            let _ = reply.send(Err(CommandError {
                code: "bad_args",
                message: "expected at least one name (a service, service:N, or all)".into(),
            }));
            return;
        }
        let keys = match self.resolve(&names, covered_by_all(action)) {
            Ok(k) => k,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let goal = match action {
            Control::Start => Goal::Started,
            Control::Stop => Goal::Stopped,
            Control::Restart => Goal::Restart,
        };
        let id = self.waiters.register(&keys, goal, reply);
        let ordered = action == Control::Stop && names.iter().any(|n| n == "all");
        self.pending.extend(keys.into_iter().map(|key| Pending {
            waiter: Some(id),
            key,
            action,
            ordered,
        }));
        self.work_pending();
    }

    /// Queues autostarts: worked off in chunks like client requests, so a
    /// thousand of them do not keep the daemon from answering meanwhile.
    pub(super) fn queue_starts(&mut self, keys: Vec<Key>) {
        self.pending.extend(keys.into_iter().map(|key| Pending {
            waiter: None,
            key,
            action: Control::Start,
            ordered: false,
        }));
    }

    /// Acts on pending instances for up to [`SLICE`] (at least one, at most
    /// [`CHUNK`]).
    pub(super) fn work_pending(&mut self) {
        let until = std::time::Instant::now() + SLICE;
        for n in 0..CHUNK {
            if n > 0 && std::time::Instant::now() >= until {
                break;
            }
            let Some(Pending {
                waiter,
                key,
                action,
                ordered,
            }) = self.pending.pop_front()
            else {
                break;
            };
            let refused = if !self.shutdown.is_empty() {
                Some("the daemon is shutting down")
            } else if self.instances.get(&key).is_none_or(|i| i.retiring) {
                Some("removed by reload")
            } else {
                None
            };
            if let Some(why) = refused {
                if let Some(w) = waiter {
                    self.waiters.settle(w, &key, false, why);
                }
                continue;
            }
            if ordered {
                // `stop all`: dependents first (SPEC §11).
                if let Some(inst) = self.instances.get_mut(&key) {
                    inst.restart_pending = false;
                    inst.respawn_pending = false;
                }
                self.ordered_stop(&key);
                continue;
            }
            let event = match action {
                Control::Start => Event::Start,
                Control::Stop => {
                    // A stop cancels a start that waited for the old process.
                    if let Some(inst) = self.instances.get_mut(&key) {
                        inst.restart_pending = false;
                        inst.respawn_pending = false;
                    }
                    Event::Stop
                }
                Control::Restart if self.restart_when_stopped(&key) => Event::Stop,
                Control::Restart => {
                    if let Some(w) = waiter {
                        self.waiters.retarget(w, &key, Goal::Started);
                    }
                    Event::Start
                }
            };
            let result = self.apply(&key, event);
            match (result, waiter) {
                (Err(refusal), Some(w)) => self.waiters.settle(w, &key, false, refusal.message()),
                // An autostart of an instance still stopping (a reload brought
                // it back): start it once it is stopped.
                (Err(super::state::Refusal::Stopping), None) => {
                    if let Some(inst) = self.instances.get_mut(&key) {
                        inst.restart_pending = true;
                    }
                }
                // Any other refused autostart (a client already started it)
                // needs no answer.
                _ => {}
            }
        }
        self.flush_waiters();
    }

    /// Marks a live instance to start again once stopped; false if it has
    /// nothing to stop.
    pub(super) fn restart_when_stopped(&mut self, key: &Key) -> bool {
        match self.instances.get_mut(key) {
            Some(inst)
                if matches!(
                    inst.proc.state,
                    State::Starting | State::Running | State::Stopping
                ) =>
            {
                inst.restart_pending = true;
                true
            }
            _ => false,
        }
    }

    /// Answers every waiter whose instances have all settled.
    pub(super) fn flush_waiters(&mut self) {
        for (reply, results) in self.waiters.take_done() {
            let _ = reply.send(Ok(results));
        }
    }
}
