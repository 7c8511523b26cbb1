//! The actor's reload and waiter logic without processes: a fake
//! [`Spawner`] (pids are numbers, exits are queued by the test, a "stubborn"
//! process ignores the stop signal) under paused tokio time, so stoptime
//! and back-off delays pass instantly and deterministically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::observer::NoObserver;
use super::state::{Exit, State};
use super::{Control, Key, Spawner, Supervisor};
use crate::config::{validate, Config, SpawnSpec};

/// The fake machine the actor runs on.
#[derive(Default)]
struct World {
    next_pid: u32,
    /// Live process groups: pgid -> live members (the leader counts).
    groups: BTreeMap<u32, u32>,
    /// Leaders still alive.
    leaders: BTreeSet<u32>,
    /// Commands (by pgid) whose processes ignore the stop signal.
    stubborn: BTreeSet<u32>,
    /// Commands that ignore SIGTERM, by `cmd` text.
    stubborn_cmds: BTreeSet<String>,
    /// Exits not reaped yet.
    exited: Vec<(u32, Exit)>,
    /// Every signal sent: (pgid, signal).
    signals: Vec<(u32, Signal)>,
    /// Every spawn: (pid, cmd).
    spawns: Vec<(u32, String)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Fake {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().expect("world")
    }
    /// The leader of group `pid` exits with `exit` (members stay).
    fn exit(&self, pid: u32, exit: Exit) {
        let mut w = self.world();
        if w.leaders.remove(&pid) {
            w.exited.push((pid, exit));
            if let Some(n) = w.groups.get_mut(&pid) {
                *n -= 1;
            }
        }
    }
}

impl Spawner for Fake {
    fn spawn(&mut self, spec: &SpawnSpec, _: &str, _: u32) -> Result<u32, String> {
        let mut w = self.world();
        w.next_pid += 1;
        let pid = 1000 + w.next_pid;
        w.groups.insert(pid, 1);
        w.leaders.insert(pid);
        if w.stubborn_cmds.contains(&spec.cmd) {
            w.stubborn.insert(pid);
        }
        w.spawns.push((pid, spec.cmd.clone()));
        Ok(pid)
    }
    fn signal(&mut self, pgid: u32, sig: Signal) {
        let mut w = self.world();
        w.signals.push((pgid, sig));
        let dies = sig == Signal::SIGKILL || !w.stubborn.contains(&pgid);
        if dies && w.groups.remove(&pgid).is_some() && w.leaders.remove(&pgid) {
            w.exited.push((pgid, Exit::Signal(sig)));
        }
    }
    fn group_alive(&mut self, pgid: u32) -> bool {
        let mut w = self.world();
        let alive = w.groups.get(&pgid).is_some_and(|n| *n > 0);
        if !alive {
            w.groups.remove(&pgid);
        }
        alive
    }
    fn reap(&mut self) -> Vec<(u32, Exit)> {
        std::mem::take(&mut self.world().exited)
    }
    fn flush(&mut self, _: u32) -> bool {
        false
    }
}

fn config(services: Value) -> Config {
    validate(&json!({ "services": services }), Path::new("/tmp")).expect("valid config")
}

fn stubborn(extra: Value) -> Value {
    let mut v = json!({ "cmd": "stubborn", "starttime": 0, "stoptime": 1 });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn actor(services: Value) -> (Supervisor, Fake) {
    let fake = Fake::default();
    fake.world().stubborn_cmds.insert("stubborn".into());
    let (sup, _, _) = Supervisor::with_spawner(
        config(services),
        PathBuf::from("/tmp/taskmaster.lua"),
        Arc::new(NoObserver),
        Box::new(fake.clone()),
    );
    (sup, fake)
}

fn key(s: &str, i: u32) -> Key {
    (Arc::from(s), i)
}

impl Supervisor {
    /// Works off everything queued and reaps what the fake world reports,
    /// as the run loop would.
    fn settle(&mut self) {
        for _ in 0..100 {
            self.work_pending();
            self.on_sigchld();
            if self.pending.is_empty() {
                break;
            }
        }
    }
    /// Lets `d` pass and fires what is due.
    async fn pass(&mut self, d: Duration) {
        tokio::time::advance(d).await;
        self.on_deadlines();
        self.settle();
    }
    fn state(&self, k: &Key) -> (State, Option<u32>) {
        let p = &self.instances[k].proc;
        (p.state, p.pid)
    }
}

#[tokio::test(start_paused = true)]
async fn readding_a_stopping_service_revives_its_record_and_kills_the_old_process() {
    let (mut sup, fake) = actor(json!({ "a": stubborn(json!({})) }));
    sup.queue_autostarts();
    sup.settle();
    let (state, old) = sup.state(&key("a", 0));
    assert_eq!(state, State::Running);
    let old = old.expect("pid");

    sup.apply_config(config(json!({})));
    assert_eq!(sup.state(&key("a", 0)), (State::Stopping, Some(old)));
    sup.apply_config(config(json!({ "a": stubborn(json!({})) })));
    sup.settle();
    // Still the old record, still stopping: nothing new spawned yet.
    assert_eq!(sup.state(&key("a", 0)), (State::Stopping, Some(old)));
    assert_eq!(fake.world().spawns.len(), 1);

    // stoptime passes: SIGKILL, the exit is the old record's, then it starts.
    sup.pass(Duration::from_secs(1)).await;
    assert!(fake.world().signals.contains(&(old, Signal::SIGKILL)));
    let (state, new) = sup.state(&key("a", 0));
    assert_eq!(state, State::Running);
    assert_ne!(new, Some(old));
    assert_eq!(fake.world().spawns.len(), 2);
    assert_eq!(sup.instances.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn removing_without_readding_drops_the_record_once_its_group_is_gone() {
    let (mut sup, fake) =
        actor(json!({ "a": stubborn(json!({})), "b": { "cmd": "b", "starttime": 0 } }));
    sup.queue_autostarts();
    sup.settle();
    sup.apply_config(config(json!({ "b": { "cmd": "b", "starttime": 0 } })));
    assert!(
        sup.instances.contains_key(&key("a", 0)),
        "kept while stopping"
    );
    assert!(
        sup.resolve(&["a".into()], &|_| true).is_err(),
        "but not addressable"
    );
    sup.pass(Duration::from_secs(1)).await;
    assert!(!sup.instances.contains_key(&key("a", 0)));
    assert!(!sup.services.contains_key("a"));
    assert_eq!(fake.world().spawns.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn numprocs_down_then_up_while_stopping_restarts_once_stopped() {
    let two = json!({ "a": stubborn(json!({ "numprocs": 2 })) });
    let (mut sup, _fake) = actor(two.clone());
    sup.queue_autostarts();
    sup.settle();
    let old = sup.state(&key("a", 1)).1;
    sup.apply_config(config(json!({ "a": stubborn(json!({ "numprocs": 1 })) })));
    assert_eq!(sup.state(&key("a", 1)).0, State::Stopping);
    sup.apply_config(config(two));
    sup.settle();
    assert_eq!(sup.state(&key("a", 1)).0, State::Stopping);
    sup.pass(Duration::from_secs(1)).await;
    let (state, pid) = sup.state(&key("a", 1));
    assert_eq!(state, State::Running);
    assert_ne!(pid, old);
}

#[tokio::test(start_paused = true)]
async fn a_dead_leaders_group_is_emptied_before_the_restart() {
    let (mut sup, fake) = actor(json!({
        "a": { "cmd": "stubborn", "starttime": 0, "stoptime": 2, "autorestart": "always" }
    }));
    sup.queue_autostarts();
    sup.settle();
    let leader = sup.state(&key("a", 0)).1.expect("pid");
    // A member outlives the leader.
    *fake.world().groups.get_mut(&leader).expect("group") += 1;
    fake.exit(leader, Exit::Code(1));
    sup.settle();
    assert_eq!(sup.state(&key("a", 0)), (State::Exited, None));
    assert!(fake.world().signals.contains(&(leader, Signal::SIGTERM)));
    assert_eq!(
        fake.world().spawns.len(),
        1,
        "no restart while the group lives"
    );
    sup.pass(Duration::from_secs(2)).await;
    assert!(fake.world().signals.contains(&(leader, Signal::SIGKILL)));
    // The group is empty now: the restart happens.
    sup.pass(super::state::KILL_RECHECK).await;
    assert_eq!(sup.state(&key("a", 0)).0, State::Running);
    assert_eq!(sup.instances[&key("a", 0)].proc.restarts, 1);
    assert_eq!(fake.world().spawns.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn replies_settle_when_the_instances_do_and_all_skips_what_does_not_apply() {
    let (mut sup, _fake) = actor(json!({
        "a": stubborn(json!({})),
        "idle": { "cmd": "idle", "autostart": false },
    }));
    sup.queue_autostarts();
    sup.settle();
    let (tx, mut rx) = oneshot::channel();
    sup.control(Control::Stop, vec!["all".into()], tx);
    sup.settle();
    assert!(rx.try_recv().is_err(), "a is still stopping");
    sup.pass(Duration::from_secs(1)).await;
    let results = rx.try_recv().expect("answered").expect("ok");
    let names: Vec<_> = results.iter().map(|r| (r.name.as_str(), r.ok)).collect();
    assert_eq!(names, [("a:0", true)]);

    let (tx, mut rx) = oneshot::channel();
    sup.control(Control::Start, vec!["idle".into(), "a".into()], tx);
    sup.settle();
    assert!(rx.try_recv().is_err(), "idle is STARTING for its starttime");
    sup.pass(Duration::from_secs(1)).await;
    let results = rx.try_recv().expect("answered").expect("ok");
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    let (tx, mut rx) = oneshot::channel();
    sup.control(Control::Start, vec!["all".into()], tx);
    sup.settle();
    assert_eq!(rx.try_recv().expect("answered").expect("ok"), vec![]);
}

/// A config with `deps` added by hand: (dependent, dependency, condition).
fn with_deps(services: Value, deps: &[(&str, &str, crate::config::Condition)]) -> Config {
    let mut c = config(services);
    for (svc, dep, cond) in deps {
        if let Some(s) = c.services.get_mut(*svc) {
            std::sync::Arc::make_mut(&mut s.policy)
                .depends_on
                .insert(dep.to_string(), *cond);
        }
    }
    c
}

fn actor_on(config: Config) -> (Supervisor, Fake) {
    let fake = Fake::default();
    fake.world().stubborn_cmds.insert("stubborn".into());
    let (mut sup, _, _) = Supervisor::with_spawner(
        Config::default(),
        PathBuf::from("/tmp/taskmaster.lua"),
        Arc::new(NoObserver),
        Box::new(fake.clone()),
    );
    sup.apply_config(config);
    (sup, fake)
}

#[tokio::test(start_paused = true)]
async fn a_dependent_waits_until_its_dependency_runs_then_starts() {
    use crate::config::Condition::Started;
    let (mut sup, fake) = actor_on(with_deps(
        json!({ "db": { "cmd": "db" }, "api": { "cmd": "api", "starttime": 0 } }),
        &[("api", "db", Started)],
    ));
    sup.settle();
    assert_eq!(sup.state(&key("db", 0)).0, State::Starting);
    assert_eq!(sup.state(&key("api", 0)).0, State::Waiting);
    let info = sup.info(&key("api", 0), super::now());
    assert_eq!(info.description, "waiting for db (started)");
    sup.pass(Duration::from_secs(1)).await;
    assert_eq!(sup.state(&key("db", 0)).0, State::Running);
    assert_eq!(sup.state(&key("api", 0)).0, State::Running);
    let spawns: Vec<String> = fake.world().spawns.iter().map(|s| s.1.clone()).collect();
    assert_eq!(spawns, ["db", "api"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_dependency_makes_the_waiting_instance_fatal() {
    use crate::config::Condition::Started;
    let (mut sup, fake) = actor_on(with_deps(
        json!({ "db": { "cmd": "db", "startretries": 0 }, "api": { "cmd": "api" } }),
        &[("api", "db", Started)],
    ));
    sup.settle();
    let db = sup.state(&key("db", 0)).1.expect("db pid");
    fake.exit(db, Exit::Code(1));
    sup.settle();
    assert_eq!(sup.state(&key("db", 0)).0, State::Fatal);
    assert_eq!(sup.state(&key("api", 0)).0, State::Fatal);
    assert_eq!(
        sup.instances[&key("api", 0)].proc.reason.as_deref(),
        Some("dependency db is FATAL")
    );
}

#[tokio::test(start_paused = true)]
async fn start_starts_dependencies_transitively_and_settles_when_running() {
    use crate::config::Condition::{Completed, Started};
    let (mut sup, fake) = actor_on(with_deps(
        json!({
            "db": { "cmd": "db", "autostart": false, "starttime": 0 },
            "migrate": { "cmd": "migrate", "autostart": false, "autorestart": "never" },
            "api": { "cmd": "api", "autostart": false, "starttime": 0 },
        }),
        &[("api", "migrate", Completed), ("migrate", "db", Started)],
    ));
    sup.settle();
    assert!(fake.world().spawns.is_empty());
    let (tx, mut rx) = oneshot::channel();
    sup.control(Control::Start, vec!["api".into()], tx);
    sup.settle();
    assert_eq!(sup.state(&key("db", 0)).0, State::Running);
    assert_eq!(sup.state(&key("migrate", 0)).0, State::Starting);
    assert_eq!(sup.state(&key("api", 0)).0, State::Waiting);
    assert!(rx.try_recv().is_err());
    // The one-shot job finishes within its starttime: completed.
    let m = sup.state(&key("migrate", 0)).1.expect("pid");
    fake.exit(m, Exit::Code(0));
    sup.settle();
    assert_eq!(sup.state(&key("migrate", 0)).0, State::Exited);
    assert_eq!(sup.state(&key("api", 0)).0, State::Running);
    let r = rx.try_recv().expect("answered").expect("ok");
    assert_eq!((r[0].name.as_str(), r[0].ok), ("api:0", true));
}

#[tokio::test(start_paused = true)]
async fn stop_all_and_shutdown_stop_dependents_first_but_a_single_stop_does_not_cascade() {
    use crate::config::Condition::Started;
    let (mut sup, fake) = actor_on(with_deps(
        json!({
            "db": { "cmd": "stubborn", "starttime": 0, "stoptime": 1 },
            "api": { "cmd": "stubborn", "starttime": 0, "stoptime": 1 },
        }),
        &[("api", "db", Started)],
    ));
    sup.settle();
    let db = sup.state(&key("db", 0)).1.expect("db");
    let api = sup.state(&key("api", 0)).1.expect("api");
    // stop db alone: only db.
    let (tx, _rx) = oneshot::channel();
    sup.control(Control::Stop, vec!["db".into()], tx);
    sup.settle();
    assert_eq!(sup.state(&key("api", 0)).0, State::Running);
    assert!(fake.world().signals.iter().all(|s| s.0 == db));
    sup.pass(Duration::from_secs(1)).await;
    let (tx, _rx) = oneshot::channel();
    sup.control(Control::Start, vec!["db".into()], tx);
    sup.settle();
    let db = sup.state(&key("db", 0)).1.expect("db again");
    fake.world().signals.clear();
    sup.begin_shutdown(None);
    sup.settle();
    assert_eq!(fake.world().signals, [(api, Signal::SIGTERM)], "api first");
    sup.pass(Duration::from_secs(1)).await;
    let signals = fake.world().signals.clone();
    assert_eq!(
        signals,
        [
            (api, Signal::SIGTERM),
            (api, Signal::SIGKILL),
            (db, Signal::SIGTERM)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_under_always_counts_every_restart_and_never_backs_off() {
    // SPEC §16 W3: `always`, starttime 0, the child exits at once each time.
    let (mut sup, fake) = actor(json!({
        "crash": { "cmd": "crash", "starttime": 0, "autorestart": "always", "startretries": 1 }
    }));
    sup.queue_autostarts();
    sup.settle();
    for n in 1..=50u32 {
        let pid = sup.state(&key("crash", 0)).1.expect("running");
        fake.world().groups.remove(&pid);
        fake.exit(pid, Exit::Code(1));
        sup.settle();
        let p = &sup.instances[&key("crash", 0)].proc;
        // From RUNNING an exit is an EXITED + restart, not a failed start:
        // no back-off, no retry count, however many (startretries is 1).
        assert_eq!((p.state, p.restarts, p.retries), (State::Running, n, 0));
        assert_eq!(p.deadline, None);
    }
    assert_eq!(fake.world().spawns.len(), 51);
    // An exit while STARTING (starttime > 0) still backs off, with the
    // delay of the timer index (1 s before retry 1), and gives up.
    let (mut sup, fake) = actor(json!({
        "slow": { "cmd": "slow", "starttime": 5, "autorestart": "always", "startretries": 1 }
    }));
    sup.queue_autostarts();
    sup.settle();
    let pid = sup.state(&key("slow", 0)).1.expect("starting");
    fake.world().groups.remove(&pid);
    fake.exit(pid, Exit::Code(1));
    sup.settle();
    assert_eq!(sup.state(&key("slow", 0)).0, State::Backoff);
    sup.pass(Duration::from_millis(999)).await;
    assert_eq!(fake.world().spawns.len(), 1, "retried before its delay");
    sup.pass(Duration::from_millis(1)).await;
    assert_eq!(fake.world().spawns.len(), 2);
    let pid = sup.state(&key("slow", 0)).1.expect("starting again");
    fake.world().groups.remove(&pid);
    fake.exit(pid, Exit::Code(1));
    sup.settle();
    assert_eq!(sup.state(&key("slow", 0)).0, State::Fatal);
    assert!(sup.timers.is_empty() && sup.armed.is_empty());
}

/// A spawner that takes real time per spawn, as `posix_spawn` does.
struct Slow(Fake, Duration);

impl Spawner for Slow {
    fn spawn(&mut self, spec: &SpawnSpec, s: &str, i: u32) -> Result<u32, String> {
        std::thread::sleep(self.1);
        self.0.spawn(spec, s, i)
    }
    fn signal(&mut self, pgid: u32, sig: Signal) {
        self.0.signal(pgid, sig)
    }
    fn group_alive(&mut self, pgid: u32) -> bool {
        self.0.group_alive(pgid)
    }
    fn reap(&mut self) -> Vec<(u32, Exit)> {
        self.0.reap()
    }
    fn flush(&mut self, pid: u32) -> bool {
        self.0.flush(pid)
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_autostart_is_worked_off_in_short_slices_and_status_answers_meanwhile() {
    // 10 services × 100 = 1,000 instances at 200 µs a spawn (0.2 s in
    // all): the run loop answers a status between slices of SLICE, not
    // after the last spawn, and every instance ends up RUNNING.
    let services: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            let svc = json!({ "cmd": "sleep 1", "numprocs": 100, "starttime": 0 });
            (format!("s{i}"), svc)
        })
        .collect();
    let fake = Fake::default();
    let (sup, handle, rx) = Supervisor::with_spawner(
        config(Value::Object(services)),
        PathBuf::from("/tmp/taskmaster.lua"),
        Arc::new(NoObserver),
        Box::new(Slow(fake.clone(), Duration::from_micros(200))),
    );
    let actor = tokio::spawn(sup.run(rx));
    // Let the run loop begin its first slice.
    tokio::task::yield_now().await;
    let status = handle.status(Vec::new()).await.expect("status");
    let started = status
        .instances
        .iter()
        .filter(|i| i.state == "RUNNING")
        .count();
    // Answered between slices, not after the last spawn (how fast, in
    // wall-clock time, is the bench's SCALE figure, not a test's).
    assert!(started < 1000, "status waited for every spawn");
    // Everything starts.
    loop {
        let s = handle.status(Vec::new()).await.expect("status");
        if s.instances.iter().all(|i| i.state == "RUNNING") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(fake.world().spawns.len(), 1000);
    // The fake world sends no SIGCHLD: the loop cannot see exits, so the
    // stop is tested below, on the actor driven by hand.
    actor.abort();
}

#[tokio::test(start_paused = true)]
async fn stop_all_of_a_thousand_instances_is_one_reply_listing_each() {
    let services: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            let svc = json!({ "cmd": "sleep 1", "numprocs": 100, "starttime": 0 });
            (format!("s{i}"), svc)
        })
        .collect();
    let (mut sup, fake) = actor(Value::Object(services));
    sup.queue_autostarts();
    sup.settle();
    let (tx, mut rx) = oneshot::channel();
    sup.control(Control::Stop, vec!["all".into()], tx);
    assert!(
        rx.try_recv().is_err(),
        "answered before the instances stopped"
    );
    sup.settle();
    let results = rx.try_recv().expect("answered").expect("ok");
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r.ok && r.message == "stopped"));
    // In request order: s0:0 … s9:99.
    assert_eq!(results[0].name, "s0:0");
    assert_eq!(results[999].name, "s9:99");
    assert_eq!(fake.world().signals.len(), 1000);
}
