//! Applying a reload on the actor: the pure diff (`reload.rs`) says which
//! services were added, removed or changed; this file retires, revives,
//! restarts and adds instances accordingly (SPEC §5, §17).

use crate::config::{Config, Service};
use crate::protocol::DiffData;

use super::reload;
use super::state::{Event, State};
use super::{unix_now, Key, Name, Supervisor};

impl Supervisor {
    pub(super) fn apply_config(&mut self, config: Config) -> DiffData {
        let plan = reload::diff(&self.current_config(), &config);
        self.config_info.loaded_at = unix_now();
        self.config_info.error = None;
        for name in &plan.removed {
            self.retire_service(name);
        }
        let old_deps = self.any_deps;
        for (name, svc) in config.services {
            let name: Name = name.into();
            match plan.kind_of(&name) {
                Some(reload::Change::Added) => {
                    let autostart = svc.policy.autostart;
                    // A service of this name may still be draining from an
                    // earlier removal: its records are revived, never
                    // replaced, so each keeps its own process (and the exit
                    // of that process) until it is idle; they start then.
                    self.services.remove(&name);
                    self.add_service(name.clone(), svc.clone());
                    if autostart {
                        self.queue_starts((0..svc.numprocs).map(|i| (name.clone(), i)).collect());
                    }
                }
                Some(reload::Change::Changed { respawn }) => {
                    self.change_service(name, svc, respawn)
                }
                _ => {}
            }
        }
        self.note_deps();
        self.arm_memory();
        if self.any_deps || old_deps {
            // A dropped or changed dependency may no longer hold anyone.
            let names: Vec<Name> = self.services.keys().cloned().collect();
            for n in names {
                self.reevaluate(&n);
            }
        }
        plan.data
    }

    fn current_config(&self) -> Config {
        Config {
            services: self
                .services
                .iter()
                .filter(|(_, s)| !s.removed)
                .map(|(n, s)| (n.to_string(), s.config.clone()))
                .collect(),
        }
    }

    fn retire_service(&mut self, name: &str) {
        let Some((name, _)) = self.services.get_key_value(name) else {
            return;
        };
        let name = name.clone();
        if let Some(svc) = self.services.get_mut(&name) {
            svc.removed = true;
        }
        let keys: Vec<Key> = self
            .instances
            .range((name.clone(), 0)..=(name.clone(), u32::MAX))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.retire(&key);
        }
    }

    fn retire(&mut self, key: &Key) {
        if let Some(inst) = self.instances.get_mut(key) {
            inst.retiring = true;
            inst.restart_pending = false;
        }
        let _ = self.apply(key, Event::Stop);
        self.drop_retired(key);
    }

    fn change_service(&mut self, name: Name, new: Service, respawn: bool) {
        let Some(svc) = self.services.get_mut(&name) else {
            return;
        };
        let old_n = svc.config.numprocs;
        svc.config = new.clone();
        // Extra instances stop and disappear.
        for i in new.numprocs..old_n {
            self.retire(&(name.clone(), i));
        }
        // Kept instances restart when the way they spawn changed.
        if respawn {
            for i in 0..new.numprocs.min(old_n) {
                let key = (name.clone(), i);
                if self.restart_when_stopped(&key) {
                    let _ = self.apply(&key, Event::Stop);
                } else if self
                    .instances
                    .get(&key)
                    .is_some_and(|i| i.proc.state == State::Backoff)
                {
                    // Retry at once with the new spawn options and a fresh count.
                    let _ = self.apply(&key, Event::Start);
                }
            }
        }
        // A healthcheck added or removed takes effect at once.
        for i in 0..new.numprocs.min(old_n) {
            self.health_follows_state(&(name.clone(), i));
        }
        // New instances start when the service autostarts; one still
        // stopping from an earlier shrink is revived and starts once stopped.
        for i in old_n..new.numprocs {
            let key = (name.clone(), i);
            self.add_instance(&name, i);
            if new.policy.autostart {
                self.queue_starts(vec![key]);
            }
        }
    }
}
