//! The actor's side of dependencies (SPEC §11): gating every start on the
//! pure verdict of `deps.rs`, starting missing dependencies first,
//! re-evaluating WAITING instances when a dependency changes, and stopping
//! dependents before their dependencies on `stop all` and shutdown.

use std::collections::BTreeMap;

use crate::config::Condition;

use super::deps::{self, Verdict, View};
use super::state::{Event, State};
use super::waiters::Goal;
use super::{Key, Supervisor};

impl Supervisor {
    /// What the instances of each service look like to a dependent.
    fn views(&self, services: &BTreeMap<String, Condition>) -> BTreeMap<String, Vec<View>> {
        services
            .keys()
            .filter(|s| self.services.get(s.as_str()).is_some_and(|v| !v.removed))
            .map(|s| {
                let name: super::Name = s.as_str().into();
                let views = self
                    .instances
                    .range((name.clone(), 0)..=(name, u32::MAX))
                    .filter(|(_, i)| !i.retiring)
                    .map(|(_, i)| self.view(i))
                    .collect();
                (s.clone(), views)
            })
            .collect()
    }

    fn view(&self, i: &super::Inst) -> View {
        View {
            state: i.proc.state,
            healthy: i.health.is_healthy(),
            stuck_unhealthy: i.health.is_stuck(),
            expected: i.proc.expected,
        }
    }

    /// The verdict for an instance of `service` now.
    pub(super) fn verdict(&self, service: &str) -> Verdict {
        let Some(svc) = self.services.get(service) else {
            return Verdict::Go;
        };
        let deps = &svc.config.policy.depends_on;
        if deps.is_empty() {
            return Verdict::Go;
        }
        let views = self.views(deps);
        deps::verdict(deps, |s| views.get(s).map(Vec::as_slice))
    }

    /// Turns a start of `key` into what its dependencies allow: every
    /// dependency that is down is started first (transitively, whatever
    /// its autostart), then the start goes ahead, waits, or fails.
    pub(super) fn gate_start(&mut self, key: &Key) -> Vec<Event> {
        let deps = match self.services.get(&key.0) {
            Some(s) if !s.config.policy.depends_on.is_empty() => s.config.policy.depends_on.clone(),
            _ => return vec![Event::Start],
        };
        for (dep, cond) in &deps {
            let name: super::Name = dep.as_str().into();
            let down: Vec<Key> = self
                .instances
                .range((name.clone(), 0)..=(name, u32::MAX))
                .filter(|(_, i)| !i.retiring && deps::needs_start(*cond, &self.view(i)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in down {
                let _ = self.apply(&k, Event::Start);
            }
        }
        match self.verdict(&key.0) {
            Verdict::Go => vec![Event::Start],
            Verdict::Wait(unmet) | Verdict::Stuck(unmet) => {
                if let Some(inst) = self.instances.get_mut(key) {
                    inst.waiting_for = unmet;
                }
                vec![Event::Wait]
            }
            Verdict::Fail(reason) => vec![Event::Wait, Event::DependencyFailed { reason }],
        }
    }

    /// `service` changed: WAITING instances of the services that depend on
    /// it start, fail, or keep waiting (a start waiting on a dependency
    /// that settled without meeting its condition is answered).
    pub(super) fn reevaluate_dependents(&mut self, service: &str) {
        if !self.any_deps {
            return;
        }
        let dependents: Vec<super::Name> = self
            .services
            .iter()
            .filter(|(_, s)| s.config.policy.depends_on.contains_key(service))
            .map(|(n, _)| n.clone())
            .collect();
        for d in dependents {
            self.reevaluate(&d);
        }
    }

    /// Re-checks every WAITING instance of `service`.
    pub(super) fn reevaluate(&mut self, service: &super::Name) {
        let waiting: Vec<Key> = self
            .instances
            .range((service.clone(), 0)..=(service.clone(), u32::MAX))
            .filter(|(_, i)| i.proc.state == State::Waiting && !i.retiring)
            .map(|(k, _)| k.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        match self.verdict(service) {
            Verdict::Go => {
                for k in waiting {
                    let _ = self.apply(&k, Event::Go);
                }
            }
            Verdict::Fail(reason) => {
                for k in waiting {
                    let _ = self.apply(
                        &k,
                        Event::DependencyFailed {
                            reason: reason.clone(),
                        },
                    );
                }
            }
            Verdict::Wait(unmet) => {
                for k in waiting {
                    if let Some(inst) = self.instances.get_mut(&k) {
                        inst.waiting_for = unmet.clone();
                    }
                }
            }
            Verdict::Stuck(unmet) => {
                let line = deps::waiting_line(&unmet);
                for k in waiting {
                    if let Some(inst) = self.instances.get_mut(&k) {
                        inst.waiting_for = unmet.clone();
                    }
                    self.waiters.settle_goal(&k, Goal::Started, false, &line);
                }
                self.flush_waiters();
            }
        }
    }

    /// Whether every instance of the services that depend on `key`'s
    /// service is down (so `key` may get its stopsignal in an ordered stop).
    pub(super) fn dependents_down(&self, key: &Key) -> bool {
        if !self.any_deps {
            return true;
        }
        self.services
            .iter()
            .filter(|(_, s)| s.config.policy.depends_on.contains_key(key.0.as_ref()))
            .all(|(n, _)| {
                self.instances
                    .range((n.clone(), 0)..=(n.clone(), u32::MAX))
                    .all(|(_, i)| deps::is_down(i.proc.state) && i.proc.pid.is_none())
            })
    }

    /// Stops `key` now if its dependents are down, else once they are.
    pub(super) fn ordered_stop(&mut self, key: &Key) {
        if self.dependents_down(key) {
            self.stop_later.remove(key);
            let _ = self.apply(key, Event::Stop);
        } else {
            self.stop_later.insert(key.clone());
        }
    }

    /// Gives the deferred stops whose dependents are now down their signal.
    pub(super) fn release_stops(&mut self) {
        if self.stop_later.is_empty() {
            return;
        }
        let ready: Vec<Key> = self
            .stop_later
            .iter()
            .filter(|k| self.dependents_down(k))
            .cloned()
            .collect();
        for k in ready {
            self.stop_later.remove(&k);
            let _ = self.apply(&k, Event::Stop);
        }
    }
}
