//! The connections being served (SPEC §17): the table behind the cap of
//! [`MAX_CLIENTS`](super::MAX_CLIENTS) and the eviction of the longest idle
//! one, so that silent sockets cannot lock new clients out.
//!
//! A connection is idle when no request of it is being carried out, it has
//! no `subscribe` and no follow; each of those holds a guard ([`InFlight`],
//! [`Following`]) or a flag on its [`Slot`], and dropping the slot frees the
//! place. The accept loop waits on [`Connections::room`] only when every
//! slot is busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{oneshot, Notify};

/// The connections being served, so that a new one past the cap can close
/// the one idle the longest. Shared by the accept loop and every connection;
/// the lock is only ever held for a few field updates or one scan of at most
/// [`MAX_CLIENTS`] entries, never across an await.
#[derive(Clone)]
pub(super) struct Connections {
    /// The table and the accept loop's wake-up.
    shared: Arc<Shared>,
}

struct Shared {
    /// Connections served at once before idle ones are closed for new ones.
    cap: usize,
    /// Every connection still counted against the cap.
    table: Mutex<Table>,
    /// Notified when a connection ends or turns idle: the accept loop,
    /// waiting because every slot was busy, may have room again.
    room: Notify,
}

#[derive(Default)]
struct Table {
    /// Connections by id; an evicted one is removed at once (its task winds
    /// down within [`CLOSE_GRACE`] and is not counted meanwhile).
    entries: HashMap<u64, Entry>,
    /// A logical clock: connection ids and activity stamps, always rising.
    clock: u64,
}

struct Entry {
    /// Clock reading of its last activity: accepted, a frame received, or a
    /// request finished. The smallest among idle entries is evicted first.
    last_active: u64,
    /// Requests being carried out for it.
    in_flight: usize,
    /// Whether it receives the event stream; then it is never idle.
    subscribed: bool,
    /// Follows running on it; while there are any it is never idle.
    follows: usize,
    /// Fired to close the connection when it is evicted.
    evict: oneshot::Sender<()>,
}

impl Entry {
    fn idle(&self) -> bool {
        self.in_flight == 0 && !self.subscribed && self.follows == 0
    }
}

impl Table {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The idle connection whose last activity is the oldest.
    fn longest_idle(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.idle())
            .min_by_key(|(_, e)| e.last_active)
            .map(|(id, _)| *id)
    }
}

impl Connections {
    pub(super) fn new(cap: usize) -> Connections {
        Connections {
            shared: Arc::new(Shared {
                cap,
                table: Mutex::new(Table::default()),
                room: Notify::new(),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table holds no invariant a panic mid-update could break
        // beyond a stale count; keep serving rather than propagate.
        self.shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves once a new connection can be served: below the cap, or an
    /// idle connection can make room.
    pub(super) async fn room(&self) {
        loop {
            // `notify_one` keeps a permit when nobody waits, so a wake-up
            // between this check and the await is not lost.
            let woken = self.shared.room.notified();
            {
                let table = self.table();
                if table.entries.len() < self.shared.cap || table.longest_idle().is_some() {
                    return;
                }
            }
            woken.await;
        }
    }

    /// Counts a new connection in, first evicting the longest idle ones
    /// while the table is full. The receiver fires when this one is evicted.
    pub(super) fn admit(&self) -> (Slot, oneshot::Receiver<()>) {
        let mut table = self.table();
        while table.entries.len() >= self.shared.cap {
            let Some(victim) = table.longest_idle() else {
                // It turned busy since `room`: serve the new one anyway;
                // the excess is worked off by the next admissions.
                break;
            };
            if let Some(entry) = table.entries.remove(&victim) {
                let _ = entry.evict.send(());
            }
        }
        let id = table.tick();
        let (evict, evicted) = oneshot::channel();
        table.entries.insert(
            id,
            Entry {
                last_active: id,
                in_flight: 0,
                subscribed: false,
                follows: 0,
                evict,
            },
        );
        let slot = Slot {
            id,
            connections: self.clone(),
        };
        (slot, evicted)
    }

    /// Updates one connection's entry, if it is still counted.
    fn update(&self, id: u64, f: impl FnOnce(&mut Entry, u64)) {
        let mut table = self.table();
        let now = table.tick();
        if let Some(entry) = table.entries.get_mut(&id) {
            f(entry, now);
        }
    }
}

/// One connection's place in the [`Connections`] table; dropping it frees
/// the place.
pub(super) struct Slot {
    /// Its key in the table.
    id: u64,
    /// The table.
    connections: Connections,
}

impl Slot {
    /// A frame arrived: it is active now.
    pub(super) fn touch(&self) {
        self.connections
            .update(self.id, |e, now| e.last_active = now);
    }

    /// From now on it follows the event stream, so it is never idle.
    pub(super) fn subscribed(&self) {
        self.connections.update(self.id, |e, _| e.subscribed = true);
    }

    /// A request is being carried out until the guard drops.
    pub(super) fn request(self: &Arc<Self>) -> InFlight {
        self.connections.update(self.id, |e, _| e.in_flight += 1);
        InFlight(self.clone())
    }

    /// A follow runs on it until the guard drops.
    pub(super) fn following(self: &Arc<Self>) -> Following {
        self.connections.update(self.id, |e, _| e.follows += 1);
        Following(self.clone())
    }
}

impl Slot {
    /// Something that kept it busy ended (`end` undoes its count): it is
    /// active now, and the accept loop may have room if it turned idle.
    fn release(&self, end: impl FnOnce(&mut Entry)) {
        let mut idle = false;
        self.connections.update(self.id, |e, now| {
            end(e);
            e.last_active = now;
            idle = e.idle();
        });
        if idle {
            self.connections.shared.room.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.table().entries.remove(&self.id);
        self.connections.shared.room.notify_one();
    }
}

/// A request in flight on a connection (so the connection is not idle).
pub(super) struct InFlight(Arc<Slot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .release(|e| e.in_flight = e.in_flight.saturating_sub(1));
    }
}

/// A follow running on a connection (so the connection is not idle).
pub(super) struct Following(Arc<Slot>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.release(|e| e.follows = e.follows.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_full_table_evicts_the_longest_idle_never_a_busy_or_subscribed_one() {
        let connections = Connections::new(4);
        let mut admitted: Vec<_> = (0..4)
            .map(|_| {
                let (slot, evicted) = connections.admit();
                (Arc::new(slot), evicted)
            })
            .collect();
        let evicted = |admitted: &mut Vec<(Arc<Slot>, oneshot::Receiver<()>)>| -> Vec<usize> {
            (0..admitted.len())
                .filter(|&i| admitted[i].1.try_recv().is_ok())
                .collect()
        };
        admitted[0].0.subscribed();
        let busy = admitted[1].0.request();
        admitted[2].0.touch(); // now more recent than 3
        let newcomer = connections.admit();
        assert_eq!(evicted(&mut admitted), [3]);
        // A finished request makes its connection idle, and recent.
        drop(busy);
        let (slot, rx) = newcomer;
        admitted.push((Arc::new(slot), rx));
        let _kept = connections.admit();
        assert_eq!(evicted(&mut admitted), [2]);
        let _kept_too = connections.admit();
        assert_eq!(
            evicted(&mut admitted),
            [4],
            "the newcomer, idle since before 1 finished"
        );
        let _and_more = connections.admit();
        assert_eq!(evicted(&mut admitted), [1]);
    }

    #[test]
    fn a_following_connection_is_not_idle() {
        let connections = Connections::new(2);
        let (a, mut a_evicted) = connections.admit();
        let (b, mut b_evicted) = connections.admit();
        let (a, _b) = (Arc::new(a), Arc::new(b));
        // `a` is the older: by age alone it would go first.
        let follow = a.following();
        let _c = connections.admit();
        assert!(a_evicted.try_recv().is_err(), "a follower was evicted");
        assert!(b_evicted.try_recv().is_ok());
        drop(follow);
        let _d = connections.admit(); // evicts c, idle since before
        let _e = connections.admit();
        assert!(
            a_evicted.try_recv().is_ok(),
            "idle again once the follow ended"
        );
    }

    #[tokio::test]
    async fn room_waits_while_every_connection_is_busy() {
        let connections = Connections::new(2);
        let (a, _a) = connections.admit();
        let (b, _b) = connections.admit();
        let (a, b) = (Arc::new(a), Arc::new(b));
        a.subscribed();
        let busy = b.request();
        let waiting = tokio::time::timeout(Duration::from_millis(50), connections.room());
        assert!(waiting.await.is_err(), "no room while all are busy");
        drop(busy);
        let waiting = tokio::time::timeout(Duration::from_secs(5), connections.room());
        assert!(waiting.await.is_ok(), "an idle connection makes room");
        drop(b);
        assert_eq!(connections.table().entries.len(), 1);
    }
}
