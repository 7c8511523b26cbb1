//! The supervisor actor: owns every instance and executes what the pure
//! state machine (`state.rs`) decides.
//!
//! One task owns all supervision state; everyone else talks to it through a
//! cloneable [`Handle`] carrying a closed set of [`Request`]s (`handle.rs`).
//! The task wakes only for a request, a SIGCHLD, or the earliest armed
//! deadline: an idle daemon does no work at all.
//!
//! The actor is split along its seams: `names.rs` resolves names (pure),
//! `waiters.rs` decides which replies a transition settles (pure),
//! `control.rs` queues and works off `start`/`stop`/`restart`, `actions.rs`
//! feeds events to an instance and executes its actions, `reconfigure.rs`
//! applies a reload. Processes are reached only through a [`Spawner`], so
//! the actor runs under `tokio::time::pause()` with a fake one in tests.
//!
//! Invariants: an exit is applied only to the record whose pid it is (a
//! record is never replaced while it has a process or a group: a reload
//! that removes and re-adds a service, or shrinks and grows it, revives
//! the same record and starts it once it is idle); a retiring record stays
//! until its group is empty.

mod actions;
mod control;
mod deps;
mod handle;
mod logs;
mod memory;
mod names;
pub mod observer;
mod probing;
mod reconfigure;
pub mod reload;
pub mod spawner;
pub mod state;
#[cfg(test)]
mod tests;
mod waiters;
mod waiting;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{Config, Service};
use crate::output::Output;
use crate::protocol::{ConfigInfo, Event as WireEvent, InstanceInfo, StatusData};
pub use handle::{CommandError, Control, Handle, Request, EVENT_BACKLOG};
pub use observer::Observer;
pub use spawner::Spawner;
use state::{Event, Exit, Proc, State};
use waiters::Waiters;

/// A service name shared by its instances.
type Name = Arc<str>;
/// Identifies an instance: (service, index). Orders as `status` lists them.
type Key = (Name, u32);

/// One instance.
struct Inst {
    /// `web:0`.
    name: String,
    /// Supervision state.
    proc: Proc,
    /// The pid of the last process, for events about its exit.
    last_pid: Option<u32>,
    /// Being removed by a reload: dropped once it has no process.
    retiring: bool,
    /// Start again once STOPPED (a restart, a respawning reload, or a
    /// reload that brought a retiring instance back).
    restart_pending: bool,
    /// The state the current start came from, for the spawn log line.
    starting_from: State,
    /// While WAITING: the dependencies not met yet.
    waiting_for: Vec<(String, crate::config::Condition)>,
    /// Health probing (with a healthcheck).
    health: probing::Probing,
    /// Start again once STOPPED as an automatic restart (an unhealthy
    /// instance): `restarts` + 1 instead of a fresh count.
    respawn_pending: bool,
}

/// One service's current config.
struct Svc {
    /// The options in force.
    config: Service,
    /// Removed by a reload: dropped once its instances are gone.
    removed: bool,
}

/// One instance's share of a `start`/`stop`/`restart`, not yet acted on.
/// Requests naming many instances are worked off in slices of time between
/// other requests, so a `start all` of a thousand instances does not hold
/// up a `status` for the time of a thousand spawns.
struct Pending {
    /// The waiter to settle (None for autostarts, which nobody waits on).
    waiter: Option<u64>,
    /// The instance.
    key: Key,
    /// What to do to it.
    action: Control,
    /// A stop of `stop all`: dependents first.
    ordered: bool,
}

/// What woke the actor loop.
enum Wake {
    /// SIGCHLD.
    Child,
    /// A child's output reached its files.
    Flushed(u32),
    /// A health probe finished.
    Probe(probing::Finished),
    /// A request (None: every handle is gone).
    Request(Option<Request>),
    /// The earliest armed deadline passed.
    Deadline,
    /// Queued starts/stops are waiting.
    Pending,
}

/// How long one turn of the actor loop works off queued starts and stops
/// before it lets everything else run (requests, exits, connections): a
/// `start all` of 10,000 instances keeps the daemon answering within a few
/// of these.
const SLICE: std::time::Duration = std::time::Duration::from_millis(4);

/// At most this many queued instances per turn, however fast they go.
const CHUNK: usize = 256;

/// The actor's state.
pub struct Supervisor {
    /// Services by name.
    services: BTreeMap<Name, Svc>,
    /// Instances in status order.
    instances: BTreeMap<Key, Inst>,
    /// Live main processes.
    pids: HashMap<u32, Key>,
    /// Instances whose leader is gone but whose group may live on.
    draining: BTreeSet<Key>,
    /// Pending `start`/`stop`/`restart` requests.
    waiters: Waiters<handle::Answer<Vec<crate::protocol::ActionResult>>>,
    /// Instances of those requests still to act on, in order.
    pending: VecDeque<Pending>,
    /// The config path, load time and last error.
    config_info: ConfigInfo,
    /// Subscribers.
    events: broadcast::Sender<WireEvent>,
    /// The hook host (or whoever listens).
    observer: Arc<dyn Observer>,
    /// Events for the observer not yet handed over (flushed once per wake-up).
    hook_batch: Vec<WireEvent>,
    /// Processes, real or fake.
    spawner: Box<dyn Spawner>,
    /// Exits waiting for the child's output to reach its files, by pid.
    flushing: HashMap<u32, (Key, Exit)>,
    /// Pids whose output flush finished (see [`Spawner::flush`]).
    flushed: Option<mpsc::UnboundedReceiver<u32>>,
    /// Where probe tasks report (the run loop listens on the other end).
    probes: (
        mpsc::UnboundedSender<probing::Finished>,
        Option<mpsc::UnboundedReceiver<probing::Finished>>,
    ),
    /// Answered once everything is stopped after a shutdown request.
    shutdown: Vec<oneshot::Sender<()>>,
    /// Whether any service has `depends_on` (skips dependency work if not).
    any_deps: bool,
    /// Stops of an ordered `stop all`/shutdown waiting for dependents.
    stop_later: BTreeSet<Key>,
    /// The next `max_memory` check; None while no service sets it.
    memory_due: Option<Instant>,
    /// Every armed instance timer, earliest first: (when, kind, instance),
    /// kind [`STATE_TIMER`] (`proc.deadline`) or [`PROBE_TIMER`]
    /// (`health.due`). Kept in line by [`Supervisor::sync_timers`] after
    /// anything that may change them, so finding the next deadline (every
    /// turn of the loop) and the due instances costs no scan of all
    /// instances.
    timers: BTreeSet<(Instant, u8, Key)>,
    /// What `timers` holds for each instance: (deadline, probe due).
    armed: HashMap<Key, (Option<Instant>, Option<Instant>)>,
    /// A SIGCHLD whose reaping waits to gather more exits (see [`REAP_AFTER`]).
    reap_due: Option<Instant>,
}

/// With at least this many live children, reaping after a SIGCHLD waits
/// [`REAP_AFTER`]: `waitpid(-1)` walks every child for the call that finds
/// no more zombies, so reaping each exit of a `stop all` of 10,000 on its
/// own costs 10,000 walks of 10,000. Gathering them costs an exit at most
/// that delay, and only at that scale.
const REAP_BATCH_AT: usize = 1000;

/// How long a SIGCHLD waits to be reaped with others (see [`REAP_BATCH_AT`]).
const REAP_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// [`Supervisor::timers`] kind of `proc.deadline`.
const STATE_TIMER: u8 = 0;
/// [`Supervisor::timers`] kind of `health.due`.
const PROBE_TIMER: u8 = 1;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The actor's clock: tokio's, so tests can pause and advance it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Supervisor {
    /// Builds the actor for `config` on real processes, their output
    /// through `output` (nothing is started until [`Supervisor::run`]).
    pub fn new(
        config: Config,
        path: PathBuf,
        observer: Arc<dyn Observer>,
        output: Output,
    ) -> (Supervisor, Handle, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let os = spawner::Os::new(output, tx);
        let (mut sup, handle, requests) = Self::with_spawner(config, path, observer, Box::new(os));
        sup.flushed = Some(rx);
        (sup, handle, requests)
    }

    /// Like [`Supervisor::new`], with processes reached through `spawner`.
    pub fn with_spawner(
        config: Config,
        path: PathBuf,
        observer: Arc<dyn Observer>,
        spawner: Box<dyn Spawner>,
    ) -> (Supervisor, Handle, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let mut sup = Supervisor {
            services: BTreeMap::new(),
            instances: BTreeMap::new(),
            pids: HashMap::new(),
            draining: BTreeSet::new(),
            waiters: Waiters::default(),
            pending: VecDeque::new(),
            config_info: ConfigInfo {
                path: path.display().to_string(),
                loaded_at: unix_now(),
                error: None,
            },
            events: events.clone(),
            observer: observer.clone(),
            hook_batch: Vec::new(),
            spawner,
            flushing: HashMap::new(),
            flushed: None,
            probes: {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            },
            shutdown: Vec::new(),
            any_deps: false,
            stop_later: BTreeSet::new(),
            memory_due: None,
            timers: BTreeSet::new(),
            armed: HashMap::new(),
            reap_due: None,
        };
        for (name, svc) in config.services {
            sup.add_service(name.into(), svc);
        }
        sup.note_deps();
        sup.arm_memory();
        (
            sup,
            Handle {
                tx,
                events,
                observer,
            },
            rx,
        )
    }

    fn add_service(&mut self, name: Name, config: Service) {
        for i in 0..config.numprocs {
            self.add_instance(&name, i);
        }
        self.services.insert(
            name,
            Svc {
                config,
                removed: false,
            },
        );
    }

    /// Adds a fresh record, or revives a retiring one of the same key (which
    /// keeps its process: it starts again once idle, if `autostart` asks).
    /// Returns whether a fresh record was made.
    fn add_instance(&mut self, service: &Name, index: u32) -> bool {
        let key = (service.clone(), index);
        if let Some(inst) = self.instances.get_mut(&key) {
            inst.retiring = false;
            return false;
        }
        let inst = Inst {
            name: format!("{service}:{index}"),
            proc: Proc::default(),
            last_pid: None,
            retiring: false,
            restart_pending: false,
            starting_from: State::Stopped,
            waiting_for: Vec::new(),
            health: probing::Probing::default(),
            respawn_pending: false,
        };
        self.instances.insert(key, inst);
        true
    }

    /// Runs until a shutdown completes. Autostarts first.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                crate::log!("fatal: cannot watch SIGCHLD: {e}");
                return;
            }
        };
        self.queue_autostarts();
        let mut probe_results = self.probes.1.take();
        loop {
            if !self.pending.is_empty() {
                let _lines = crate::log::batch();
                self.work_pending();
                self.flush_hooks();
                drop(_lines);
                // Let the connections run (and queue their requests) before
                // the next chunk: nothing else runs on this thread until we yield.
                tokio::task::yield_now().await;
            }
            let next = self.next_deadline();
            // Whatever is ready comes before the next chunk of queued
            // starts and stops (a request, an exit); among those, no order.
            let woke = tokio::select! {
                biased;
                woke = async {
                    tokio::select! {
                        _ = sigchld.recv() => Wake::Child,
                        Some(pid) = next_flushed(&mut self.flushed) => Wake::Flushed(pid),
                        Some(done) = next_flushed(&mut probe_results) => Wake::Probe(done),
                        req = rx.recv() => Wake::Request(req),
                        _ = sleep_until(next) => Wake::Deadline,
                    }
                } => woke,
                _ = std::future::ready(()), if !self.pending.is_empty() => Wake::Pending,
            };
            // The log lines of this turn wake their writers once, at its end.
            let _lines = crate::log::batch();
            match woke {
                Wake::Child if self.pids.len() >= REAP_BATCH_AT => {
                    self.reap_due.get_or_insert(now() + REAP_AFTER);
                }
                Wake::Child => self.on_sigchld(),
                Wake::Flushed(pid) => self.on_flushed(pid),
                Wake::Probe(done) => self.on_probe(done),
                Wake::Request(Some(req)) => self.on_request(req),
                Wake::Request(None) => self.begin_shutdown(None),
                Wake::Deadline => self.on_deadlines(),
                Wake::Pending => {}
            }
            self.flush_hooks();
            drop(_lines);
            if !self.shutdown.is_empty() && self.all_gone() {
                break;
            }
        }
        // Reap anything that exited in the last moments.
        self.spawner.reap();
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
    }

    /// Queues the start of every instance whose service autostarts.
    fn queue_autostarts(&mut self) {
        let autostart: Vec<Key> = self
            .instances
            .keys()
            .filter(|(s, _)| self.services[s].config.policy.autostart)
            .cloned()
            .collect();
        self.queue_starts(autostart);
    }

    /// Recomputes whether any service has dependencies.
    fn note_deps(&mut self) {
        self.any_deps = self
            .services
            .values()
            .any(|s| !s.config.policy.depends_on.is_empty());
    }

    fn next_deadline(&self) -> Option<Instant> {
        let next = self.timers.first().map(|t| t.0);
        #[cfg(debug_assertions)]
        {
            let scanned = self
                .instances
                .values()
                .flat_map(|i| [i.proc.deadline, i.health.due])
                .flatten()
                .min();
            debug_assert_eq!(next, scanned, "timer index out of line");
        }
        next.into_iter()
            .chain(self.memory_due)
            .chain(self.reap_due)
            .min()
    }

    /// Brings [`Supervisor::timers`] in line with `key`'s record (or its
    /// absence).
    pub(super) fn sync_timers(&mut self, key: &Key) {
        let now = self
            .instances
            .get(key)
            .map_or((None, None), |i| (i.proc.deadline, i.health.due));
        let before = self.armed.get(key).copied().unwrap_or((None, None));
        if now == before {
            return;
        }
        for (t, kind) in [(before.0, STATE_TIMER), (before.1, PROBE_TIMER)] {
            if let Some(t) = t {
                self.timers.remove(&(t, kind, key.clone()));
            }
        }
        for (t, kind) in [(now.0, STATE_TIMER), (now.1, PROBE_TIMER)] {
            if let Some(t) = t {
                self.timers.insert((t, kind, key.clone()));
            }
        }
        if now == (None, None) {
            self.armed.remove(key);
        } else {
            self.armed.insert(key.clone(), now);
        }
    }

    /// The instances whose timer of `kind` is due at `now`, earliest first.
    pub(super) fn due(&self, kind: u8, now: Instant) -> Vec<Key> {
        self.timers
            .iter()
            .take_while(|t| t.0 <= now)
            .filter(|t| t.1 == kind)
            .map(|t| t.2.clone())
            .collect()
    }

    fn all_gone(&self) -> bool {
        self.stop_later.is_empty()
            && self.instances.values().all(|i| {
                i.proc.pid.is_none() && i.proc.state != State::Stopping && i.proc.drain.is_none()
            })
    }

    fn on_sigchld(&mut self) {
        for (pid, exit) in self.spawner.reap() {
            // Others are tm.exec children or orphaned grandchildren, whose
            // groups `process` keeps track of.
            let Some(key) = self.pids.remove(&pid) else {
                continue;
            };
            // What it wrote just before exiting reaches its files first.
            if self.spawner.flush(pid) {
                self.flushing.insert(pid, (key, exit));
                continue;
            }
            self.exited(pid, key, exit);
        }
        let draining: Vec<Key> = self.draining.iter().cloned().collect();
        for key in draining {
            let pgid = self.instances.get(&key).and_then(|i| i.proc.pgid);
            if pgid.is_none_or(|g| !self.spawner.group_alive(g)) {
                let _ = self.apply(&key, Event::GroupGone);
            }
        }
    }

    /// A child's output is in its files: its exit can be told.
    fn on_flushed(&mut self, pid: u32) {
        if let Some((key, exit)) = self.flushing.remove(&pid) {
            self.exited(pid, key, exit);
        }
    }

    fn exited(&mut self, pid: u32, key: Key, exit: Exit) {
        // Only ever the record whose process it is.
        if self.instances.get(&key).and_then(|i| i.proc.pid) != Some(pid) {
            crate::log!("warning: exit of pid {pid} matches no instance; ignored");
            return;
        }
        let group_alive = self.spawner.group_alive(pid);
        let _ = self.apply(&key, Event::Exited { exit, group_alive });
    }

    fn on_deadlines(&mut self) {
        if self.reap_due.is_some_and(|d| d <= now()) {
            self.reap_due = None;
            self.on_sigchld();
        }
        let tx = self.probes.0.clone();
        self.run_due_probes(&tx);
        self.check_memory_if_due();
        let now = now();
        let due = self.due(STATE_TIMER, now);
        for key in due {
            let pgid = self.instances[&key].proc.pgid;
            let group_alive = pgid.is_some_and(|g| self.spawner.group_alive(g));
            let _ = self.apply(&key, Event::Deadline { group_alive });
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Status { names, reply } => {
                let _ = reply.send(self.status(&names));
            }
            Request::Control {
                action,
                names,
                reply,
            } => self.control(action, names, reply),
            Request::Apply {
                config,
                hooks,
                reply,
            } => {
                // Events from here on belong to the new config's hooks.
                self.flush_hooks();
                self.observer.swap_hooks(hooks);
                let diff = self.apply_config(config);
                // Its transitions reach the hooks before the reload result does.
                self.flush_hooks();
                let _ = reply.send(diff);
            }
            Request::LogTargets {
                names,
                stream,
                reply,
            } => {
                let _ = reply.send(self.log_targets(&names, stream));
            }
            Request::Signal {
                signal,
                names,
                reply,
            } => {
                let _ = reply.send(self.send_signal(signal, &names));
            }
            Request::ConfigFailed { error } => {
                self.config_info.error = Some(error);
            }
            Request::Shutdown { reply } => self.begin_shutdown(Some(reply)),
        }
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        let first = self.shutdown.is_empty();
        match reply {
            Some(r) => self.shutdown.push(r),
            None => {
                let (tx, _) = oneshot::channel();
                self.shutdown.push(tx);
            }
        }
        if first {
            crate::log!("shutting down: stopping every instance");
            self.pending.clear();
            // Dependents first: an instance gets its stopsignal once every
            // instance of the services that depend on it is down.
            let keys: Vec<Key> = self.instances.keys().cloned().collect();
            for key in keys {
                self.ordered_stop(&key);
            }
        }
    }

    fn status(&self, names: &[String]) -> Result<StatusData, CommandError> {
        let keys: Vec<Key> = if names.is_empty() {
            self.instances.keys().cloned().collect()
        } else {
            self.resolve(names, &|_| true)?
        };
        let now = now();
        let instances = keys.iter().map(|k| self.info(k, now)).collect();
        Ok(StatusData {
            instances,
            config: self.config_info.clone(),
        })
    }

    /// The status text: the state machine's, the waiting line while
    /// WAITING, and the health (`, healthy`) when there is one.
    fn description(&self, inst: &Inst, now: Instant) -> String {
        let mut d = match inst.proc.state {
            State::Waiting => deps::waiting_line(&inst.waiting_for),
            _ => inst.proc.describe(now),
        };
        if let Some(h) = inst.health.health {
            d.push_str(", ");
            d.push_str(h.name());
        }
        d
    }

    fn info(&self, key: &Key, now: Instant) -> InstanceInfo {
        let inst = &self.instances[key];
        let p = &inst.proc;
        let (exitcode, signal) = exit_fields(p.last_exit);
        let description = self.description(inst, now);
        InstanceInfo {
            name: inst.name.clone(),
            service: key.0.to_string(),
            instance: key.1,
            state: p.state.name().into(),
            pid: p.pid,
            uptime: p
                .pid
                .and(p.started)
                .map(|s| now.saturating_duration_since(s).as_secs_f64()),
            exitcode,
            signal,
            restarts: p.restarts,
            description,
            health: inst.health.health.map(|h| h.name().to_string()),
            waiting_for: (p.state == State::Waiting)
                .then(|| inst.waiting_for.iter().map(|w| w.0.clone()).collect()),
        }
    }
}

fn exit_fields(exit: Option<Exit>) -> (Option<i32>, Option<String>) {
    match exit {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s.as_str().to_string())),
        None => (None, None),
    }
}

async fn next_flushed<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
