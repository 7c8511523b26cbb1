//! `max_memory` (SPEC §12): one timer on the actor's deadlines, armed only
//! while some service sets the option. Each tick sums the RSS of every
//! watched instance's process group in one scan of /proc
//! (`process::memory`, through the [`Spawner`](super::Spawner)), and an
//! instance over its limit is restarted the way an unhealthy one is: stop
//! (stopsignal, stoptime), then `Event::Respawn`, so `restarts` counts it.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::process::memory::human;

use super::state::{Event, State};
use super::{now, Key, Supervisor};

/// Between checks: SPEC §12 asks for at least one a second.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Arms the check when some service sets `max_memory`, disarms it when
    /// none does (after a start-up or a reload).
    pub(super) fn arm_memory(&mut self) {
        let wanted = self
            .services
            .values()
            .any(|s| !s.removed && s.config.policy.max_memory.is_some());
        self.memory_due = match (wanted, self.memory_due) {
            (true, Some(due)) => Some(due),
            (true, None) => Some(now() + INTERVAL),
            (false, _) => None,
        };
    }

    /// Runs the check when it is due, and arms the next one.
    pub(super) fn check_memory_if_due(&mut self) {
        let t = now();
        if self.memory_due.is_none_or(|d| d > t) {
            return;
        }
        self.memory_due = Some(t + INTERVAL);
        let watched: Vec<(Key, u32, u64)> = self
            .instances
            .iter()
            .filter(|(_, i)| {
                matches!(i.proc.state, State::Running | State::Starting)
                    && !i.retiring
                    && !i.respawn_pending
            })
            .filter_map(|(k, i)| {
                let limit = self.services.get(&k.0)?.config.policy.max_memory?;
                Some((k.clone(), i.proc.pgid?, limit))
            })
            .collect();
        if watched.is_empty() {
            return;
        }
        let groups: BTreeSet<u32> = watched.iter().map(|w| w.1).collect();
        let rss = self.spawner.group_rss(&groups);
        for (key, pgid, limit) in watched {
            let Some(&used) = rss.get(&pgid) else {
                continue;
            };
            if used <= limit {
                continue;
            }
            let Some(inst) = self.instances.get_mut(&key) else {
                continue;
            };
            crate::log!(
                "max_memory: {} uses {} > {}, restarting",
                inst.name,
                human(used),
                human(limit)
            );
            inst.respawn_pending = true;
            let _ = self.apply(&key, Event::Stop);
        }
    }
}
