//! Which replies a transition settles: the bookkeeping behind "answer
//! `start`/`stop`/`restart` once every named instance reached its goal".
//!
//! Pure (no channels, no clock): the actor registers a waiter per request,
//! reports each state change, and collects the waiters that are complete,
//! with their results in the order the request named the instances. Generic
//! over the reply handle so tests use plain values.

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
    key: Key,
    goal: Goal,
    result: Option<ActionResult>,
}

/// A request waiting for its instances to settle.
#[derive(Debug)]
struct Waiter<R> {
    /// Stable identity (positions shift as others complete).
    id: u64,
    /// Per instance, in request order.
    targets: Vec<Target>,
    /// Where the answer goes.
    reply: R,
}

/// Every pending request.
#[derive(Debug)]
pub struct Waiters<R> {
    list: Vec<Waiter<R>>,
    next_id: u64,
}

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Waiters {
            list: Vec::new(),
            next_id: 0,
        }
    }
}

fn name_of(key: &Key) -> String {
    format!("{}:{}", key.0, key.1)
}

impl<R> Waiters<R> {
    /// Registers a request on `keys`, all with `goal`; returns its id.
    pub fn register(&mut self, keys: &[Key], goal: Goal, reply: R) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let targets = keys
            .iter()
            .map(|k| Target {
                key: k.clone(),
                goal,
                result: None,
            })
            .collect();
        self.list.push(Waiter { id, targets, reply });
        id
    }

    fn open_targets<'a>(
        &'a mut self,
        id: Option<u64>,
        key: &'a Key,
    ) -> impl Iterator<Item = &'a mut Target> + 'a {
        self.list
            .iter_mut()
            .filter(move |w| id.is_none_or(|id| w.id == id))
            .flat_map(|w| w.targets.iter_mut())
            .filter(move |t| &t.key == key && t.result.is_none())
    }

    /// Settles `key` in waiter `id` with an explicit result (a refusal).
    pub fn settle(&mut self, id: u64, key: &Key, ok: bool, message: &str) {
        for t in self.open_targets(Some(id), key) {
            t.result = Some(ActionResult {
                name: name_of(key),
                ok,
                message: message.into(),
            });
        }
    }

    /// Settles `key` in every waiter (the instance went away).
    pub fn settle_all(&mut self, key: &Key, ok: bool, message: &str) {
        for t in self.open_targets(None, key) {
            t.result = Some(ActionResult {
                name: name_of(key),
                ok,
                message: message.into(),
            });
        }
    }

    /// Settles every waiter wanting `goal` from `key` (a WAITING start
    /// whose dependencies settled unmet).
    pub fn settle_goal(&mut self, key: &Key, goal: Goal, ok: bool, message: &str) {
        for t in self.open_targets(None, key).filter(|t| t.goal == goal) {
            t.result = Some(ActionResult {
                name: name_of(key),
                ok,
                message: message.into(),
            });
        }
    }

    /// Changes what waiter `id` wants from `key` (a restart with nothing to
    /// stop just waits for the start).
    pub fn retarget(&mut self, id: u64, key: &Key, goal: Goal) {
        for t in self.open_targets(Some(id), key) {
            t.goal = goal;
        }
    }

    /// `key` entered `to`; `reason` is its status text for failures.
    pub fn on_change(&mut self, key: &Key, to: State, reason: &str) {
        for t in self.open_targets(None, key) {
            let result = |ok: bool, message: &str| {
                Some(ActionResult {
                    name: name_of(key),
                    ok,
                    message: message.into(),
                })
            };
            match (t.goal, to) {
                (Goal::Started, State::Running) => t.result = result(true, "started"),
                (Goal::Started, State::Fatal | State::Exited) => t.result = result(false, reason),
                (Goal::Started, State::Stopped) => {
                    t.result = result(false, "stopped before it started")
                }
                (Goal::Stopped, State::Stopped) => t.result = result(true, "stopped"),
                (Goal::Restart, State::Stopped) => t.goal = Goal::Started,
                _ => {}
            }
        }
    }

    /// Removes and returns the complete waiters with their results.
    pub fn take_done(&mut self) -> Vec<(R, Vec<ActionResult>)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].targets.iter().all(|t| t.result.is_some()) {
                let w = self.list.remove(i);
                let results = w.targets.into_iter().filter_map(|t| t.result).collect();
                done.push((w.reply, results));
            } else {
                i += 1;
            }
        }
        done
    }

    /// Whether nothing is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
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
}
