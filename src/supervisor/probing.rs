//! Per-instance health (SPEC §11) as the actor keeps it: the state of the
//! last probes and when the next one is due. Probes themselves run in
//! `crate::health`, off the actor.

use std::time::Instant;

/// `health` of an instance, as INSTANCE shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// RUNNING, no probe passed yet.
    Starting,
    /// The last probe passed.
    Healthy,
    /// `retries` probes failed in a row.
    Unhealthy,
}

impl Health {
    /// `starting` / `healthy` / `unhealthy`.
    pub fn name(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// An instance's probing state.
#[derive(Debug, Clone, Default)]
pub struct Probing {
    /// None outside RUNNING or without a healthcheck.
    pub health: Option<Health>,
    /// Failures in a row.
    pub fails: u32,
    /// When the next probe runs (None while one runs, or outside RUNNING).
    pub due: Option<Instant>,
    /// Bumped when the instance leaves RUNNING: results of older probes
    /// are stale.
    pub generation: u64,
    /// Unhealthy and left so (`on_unhealthy = "none"`).
    pub stuck: bool,
    /// The last probe's output (first 200 bytes).
    pub output: String,
}

impl Probing {
    /// Whether the last probe passed.
    pub fn is_healthy(&self) -> bool {
        self.health == Some(Health::Healthy)
    }

    /// Unhealthy for good (nothing restarts it).
    pub fn is_stuck(&self) -> bool {
        self.stuck && self.health == Some(Health::Unhealthy)
    }
}

use tokio::sync::mpsc;

use crate::config::OnUnhealthy;
use crate::health::{self, ProbeResult, ProbeRun};
use crate::protocol::{Event as WireEvent, HealthEvent};

use super::state::{Event, State};
use super::{now, unix_now, Key, Supervisor};

/// A finished probe: whose, of which generation, and what it found.
pub(super) type Finished = (Key, u64, ProbeResult);

impl Supervisor {
    /// Called after `key` changed state: entering RUNNING arms the first
    /// probe (after `start_period`); leaving it ends probing.
    pub(super) fn health_follows_state(&mut self, key: &Key) {
        let check = self
            .services
            .get(&key.0)
            .and_then(|s| s.config.policy.healthcheck.as_ref())
            .map(|h| h.start_period);
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let running = inst.proc.state == State::Running;
        match (running, check, inst.health.health) {
            (true, Some(start_period), None) => {
                inst.health = Probing {
                    health: Some(Health::Starting),
                    fails: 0,
                    due: Some(now() + start_period),
                    generation: inst.health.generation + 1,
                    stuck: false,
                    output: String::new(),
                };
            }
            (false, _, Some(_)) | (true, None, Some(_)) => {
                inst.health = Probing {
                    generation: inst.health.generation + 1,
                    ..Probing::default()
                };
            }
            _ => {}
        }
        self.sync_timers(key);
    }

    /// Starts the probes that are due, each on a task of its own.
    pub(super) fn run_due_probes(&mut self, tx: &mpsc::UnboundedSender<Finished>) {
        let due = self.due(super::PROBE_TIMER, now());
        for key in due {
            let Some(svc) = self.services.get(&key.0) else {
                continue;
            };
            let Some(check) = svc.config.policy.healthcheck.as_ref() else {
                continue;
            };
            let check = check.for_instance(&key.0, key.1);
            let spec = svc.config.spawn.for_instance(&key.0, key.1);
            // The files under `env`, as the instance itself gets them.
            let mut env = spec.file_env.clone();
            env.extend(spec.env.clone());
            env.insert("TASKMASTER_SERVICE".into(), key.0.to_string());
            env.insert("TASKMASTER_INSTANCE".into(), key.1.to_string());
            let run = ProbeRun {
                probe: check.probe,
                timeout: check.timeout,
                env,
                workingdir: spec.workingdir,
                credentials: spec.credentials,
            };
            let Some(inst) = self.instances.get_mut(&key) else {
                continue;
            };
            inst.health.due = None;
            let generation = inst.health.generation;
            self.sync_timers(&key);
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = health::run(run).await;
                let _ = tx.send((key, generation, result));
            });
        }
    }

    /// A probe finished: count it, change the health when it must, say so,
    /// restart an unhealthy instance when asked, and arm the next probe.
    pub(super) fn on_probe(&mut self, (key, generation, result): Finished) {
        let Some(check) = self
            .services
            .get(&key.0)
            .and_then(|s| s.config.policy.healthcheck.clone())
        else {
            return;
        };
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.health.generation != generation || inst.proc.state != State::Running {
            return;
        }
        let h = &mut inst.health;
        let before = h.health;
        h.output = result.output;
        if result.ok {
            h.fails = 0;
            h.health = Some(Health::Healthy);
        } else {
            h.fails += 1;
            if h.fails >= check.retries {
                h.health = Some(Health::Unhealthy);
            }
        }
        h.due = Some(now() + check.interval);
        let after = h.health;
        self.sync_timers(&key);
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        let h = &mut inst.health;
        if before == after {
            return;
        }
        let name = inst.name.clone();
        let output = h.output.clone();
        let health = after.map(Health::name).unwrap_or("");
        let restart =
            after == Some(Health::Unhealthy) && check.on_unhealthy == OnUnhealthy::Restart;
        h.stuck = after == Some(Health::Unhealthy) && !restart;
        match after {
            Some(Health::Unhealthy) => crate::log!(
                "unhealthy: {name} after {} failed probes{} (last: {})",
                check.retries,
                if restart { ", restarting it" } else { "" },
                output.trim_end()
            ),
            _ => crate::log!("health: {name} is {health}"),
        }
        let event = WireEvent::Health(HealthEvent {
            name,
            service: key.0.to_string(),
            instance: key.1,
            health: health.to_string(),
            output,
            time: unix_now(),
        });
        if self.observer.wants_events() {
            self.hook_batch.push(event.clone());
        }
        let _ = self.events.send(event);
        if restart {
            if let Some(inst) = self.instances.get_mut(&key) {
                inst.respawn_pending = true;
            }
            let _ = self.apply(&key, Event::Stop);
        }
        if self.any_deps {
            self.reevaluate_dependents(&key.0.clone());
        }
    }
}
