//! Which replies a transition settles: the bookkeeping behind "answer
//! `start`/`stop`/`restart` once every named instance reached its goal".
//!
//! Pure (no channels, no clock): the actor registers a waiter per request,
//! reports each state change, and collects the waiters that are complete,
//! with their results in the order the request named the instances. Generic
//! over the reply handle so tests use plain values.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::protocol::ActionResult;

use super::state::State;
use super::Key;

/// What a waiter wants from one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// RUNNING (ok) or FATAL/EXITED/STOPPED (failed).
    Started,
    /// STOPPED.
    Stopped,
    /// STOPPED, then a start, then `Started`.
    Restart,
}

/// One instance's share of a request.
#[derive(Debug)]
struct Target {
    goal: Goal,
    result: Option<ActionResult>,
}

/// A request waiting for its instances to settle.
#[derive(Debug)]
struct Waiter<R> {
    /// Per instance, in request order.
    targets: Vec<Target>,
    /// Targets without a result yet.
    open: usize,
    /// Where the answer goes.
    reply: R,
}

/// Every pending request.
///
/// Indexed by instance, so a state change costs the number of requests
/// waiting on that instance, not the number of instances all requests
/// name: a `stop all` of 10,000 instances is 20,000 changes, each of which
/// used to look at every one of the 10,000 targets.
#[derive(Debug)]
pub struct Waiters<R> {
    /// By id (ids grow, so this is registration order).
    list: BTreeMap<u64, Waiter<R>>,
    /// The open targets of each instance, as (waiter id, target index), in
    /// registration order.
    by_key: HashMap<Key, Vec<(u64, usize)>>,
    /// Waiters whose last target got its result.
    complete: BTreeSet<u64>,
    next_id: u64,
}

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Waiters {
            list: BTreeMap::new(),
            by_key: HashMap::new(),
            complete: BTreeSet::new(),
            next_id: 0,
        }
    }
}

fn name_of(key: &Key) -> String {
    format!("{}:{}", key.0, key.1)
}

fn result(key: &Key, ok: bool, message: &str) -> Option<ActionResult> {
    Some(ActionResult {
        name: name_of(key),
        ok,
        message: message.into(),
    })
}

impl<R> Waiters<R> {
    /// Registers a request on `keys`, all with `goal`; returns its id.
    pub fn register(&mut self, keys: &[Key], goal: Goal, reply: R) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let targets: Vec<Target> = keys.iter().map(|_| Target { goal, result: None }).collect();
        for (i, k) in keys.iter().enumerate() {
            self.by_key.entry(k.clone()).or_default().push((id, i));
        }
        if targets.is_empty() {
            self.complete.insert(id);
        }
        self.list.insert(
            id,
            Waiter {
                open: targets.len(),
                targets,
                reply,
            },
        );
        id
    }

    /// Calls `f` on each open target of `key` (in waiter `id` only, when
    /// given), in registration order; `f` returns a result to settle it.
    fn visit(
        &mut self,
        id: Option<u64>,
        key: &Key,
        mut f: impl FnMut(&mut Target) -> Option<ActionResult>,
    ) {
        let Some(open) = self.by_key.get_mut(key) else {
            return;
        };
        let list = &mut self.list;
        let complete = &mut self.complete;
        open.retain(|&(w, i)| {
            if id.is_some_and(|id| id != w) {
                return true;
            }
            let Some(waiter) = list.get_mut(&w) else {
                return false;
            };
            let t = &mut waiter.targets[i];
            if t.result.is_some() {
                return false;
            }
            match f(t) {
                Some(r) => {
                    t.result = Some(r);
                    waiter.open -= 1;
                    if waiter.open == 0 {
                        complete.insert(w);
                    }
                    false
                }
                None => true,
            }
        });
        if open.is_empty() {
            self.by_key.remove(key);
        }
    }

    /// Settles `key` in waiter `id` with an explicit result (a refusal).
    pub fn settle(&mut self, id: u64, key: &Key, ok: bool, message: &str) {
        self.visit(Some(id), key, |_| result(key, ok, message));
    }

    /// Settles `key` in every waiter (the instance went away).
    pub fn settle_all(&mut self, key: &Key, ok: bool, message: &str) {
        self.visit(None, key, |_| result(key, ok, message));
    }

    /// Settles every waiter wanting `goal` from `key` (a WAITING start
    /// whose dependencies settled unmet).
    pub fn settle_goal(&mut self, key: &Key, goal: Goal, ok: bool, message: &str) {
        self.visit(None, key, |t| {
            (t.goal == goal).then(|| result(key, ok, message)).flatten()
        });
    }

    /// Changes what waiter `id` wants from `key` (a restart with nothing to
    /// stop just waits for the start).
    pub fn retarget(&mut self, id: u64, key: &Key, goal: Goal) {
        self.visit(Some(id), key, |t| {
            t.goal = goal;
            None
        });
    }

    /// `key` entered `to`; `reason` is its status text for failures.
    pub fn on_change(&mut self, key: &Key, to: State, reason: &str) {
        self.visit(None, key, |t| match (t.goal, to) {
            (Goal::Started, State::Running) => result(key, true, "started"),
            (Goal::Started, State::Fatal | State::Exited) => result(key, false, reason),
            (Goal::Started, State::Stopped) => result(key, false, "stopped before it started"),
            (Goal::Stopped, State::Stopped) => result(key, true, "stopped"),
            (Goal::Restart, State::Stopped) => {
                t.goal = Goal::Started;
                None
            }
            _ => None,
        });
    }

    /// Removes and returns the complete waiters with their results, in
    /// registration order.
    pub fn take_done(&mut self) -> Vec<(R, Vec<ActionResult>)> {
        let mut done = Vec::new();
        for id in std::mem::take(&mut self.complete) {
            if let Some(w) = self.list.remove(&id) {
                let results = w.targets.into_iter().filter_map(|t| t.result).collect();
                done.push((w.reply, results));
            }
        }
        done
    }

    /// Whether nothing is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use State::*;

    fn key(i: u32) -> Key {
        (Arc::from("web"), i)
    }

    /// (goal, the states the instance goes through, expected (ok, message)
    /// or None when the waiter must still be pending).
    type Row<'a> = (Goal, &'a [State], Option<(bool, &'a str)>);

    #[test]
    fn goals_settle_on_the_right_states() {
        let rows: &[Row] = &[
            (Goal::Started, &[Starting, Running], Some((true, "started"))),
            (Goal::Started, &[Starting], None),
            (Goal::Started, &[Starting, Backoff, Starting], None),
            (
                Goal::Started,
                &[Starting, Backoff, Fatal],
                Some((false, "why")),
            ),
            (
                Goal::Started,
                &[Starting, Running, Exited],
                Some((true, "started")),
            ),
            (Goal::Started, &[Starting, Exited], Some((false, "why"))),
            (
                Goal::Started,
                &[Stopped],
                Some((false, "stopped before it started")),
            ),
            (Goal::Stopped, &[Stopping], None),
            (Goal::Stopped, &[Stopping, Stopped], Some((true, "stopped"))),
            (Goal::Restart, &[Stopping, Stopped], None),
            (
                Goal::Restart,
                &[Stopping, Stopped, Starting, Running],
                Some((true, "started")),
            ),
            (Goal::Restart, &[Running], None),
        ];
        for (goal, states, want) in rows {
            let mut w = Waiters::default();
            w.register(&[key(0)], *goal, "reply");
            for s in *states {
                w.on_change(&key(0), *s, "why");
            }
            let done = w.take_done();
            match want {
                None => assert!(done.is_empty(), "{goal:?} {states:?}: {done:?}"),
                Some((ok, msg)) => {
                    assert_eq!(done.len(), 1, "{goal:?} {states:?}");
                    let r = &done[0].1[0];
                    assert_eq!(
                        (r.ok, r.message.as_str()),
                        (*ok, *msg),
                        "{goal:?} {states:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_waiter_completes_when_all_its_instances_settled_in_request_order() {
        let mut w = Waiters::default();
        w.register(&[key(1), key(0)], Goal::Started, 7);
        w.on_change(&key(0), Running, "");
        assert!(w.take_done().is_empty());
        w.on_change(&key(1), Fatal, "exited too quickly");
        let done = w.take_done();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 7);
        let names: Vec<_> = done[0].1.iter().map(|r| (r.name.as_str(), r.ok)).collect();
        assert_eq!(names, [("web:1", false), ("web:0", true)]);
        assert!(w.is_empty());
    }

    #[test]
    fn settle_retarget_and_settle_all_touch_only_their_targets() {
        let mut w = Waiters::default();
        let a = w.register(&[key(0)], Goal::Restart, "a");
        let b = w.register(&[key(0)], Goal::Stopped, "b");
        w.retarget(a, &key(0), Goal::Started);
        w.settle(b, &key(0), false, "not running");
        let done = w.take_done();
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].0, done[0].1[0].message.as_str()),
            ("b", "not running")
        );
        w.on_change(&key(0), Running, "");
        assert_eq!(w.take_done()[0].0, "a");
        // An instance that disappears settles every waiter still on it.
        w.register(&[key(0), key(1)], Goal::Started, "c");
        w.on_change(&key(1), Running, "");
        w.settle_all(&key(0), false, "removed by reload");
        let done = w.take_done();
        assert_eq!(done[0].1[0].message, "removed by reload");
        assert!(done[0].1[1].ok);
    }

    #[test]
    fn a_request_on_many_instances_settles_in_time_linear_in_their_number() {
        // `stop all` of 20,000 instances: 40,000 changes. Scanning every
        // target per change took 8e8 steps; indexed it is instant.
        let n = 20_000;
        let keys: Vec<Key> = (0..n).map(key).collect();
        let mut w = Waiters::default();
        w.register(&keys, Goal::Stopped, "all");
        w.register(&keys[..2], Goal::Started, "two");
        let t = std::time::Instant::now();
        let mut done = Vec::new();
        for k in &keys {
            w.on_change(k, Stopping, "");
            w.on_change(k, Stopped, "");
            done.extend(w.take_done().into_iter().map(|d| (k.1, d.0, d.1.len())));
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        // "two" completed at the second instance, "all" at the last.
        assert_eq!(done, [(1, "two", 2), (n - 1, "all", n as usize)]);
        assert!(w.is_empty());
    }

    #[test]
    fn an_empty_request_completes_at_once_and_waiters_come_out_in_order() {
        let mut w = Waiters::default();
        w.register(&[key(0)], Goal::Started, "first");
        w.register(&[], Goal::Stopped, "empty");
        w.register(&[key(0)], Goal::Started, "third");
        assert_eq!(w.take_done().len(), 1);
        w.on_change(&key(0), Running, "");
        let done: Vec<&str> = w.take_done().into_iter().map(|d| d.0).collect();
        assert_eq!(done, ["first", "third"]);
        assert!(w.is_empty());
    }
}
