//! The supervisor actor: owns every instance and executes what the pure
//! state machine (`state.rs`) decides.
//!
//! One task owns all supervision state; everyone else (the server, the
//! signal handlers, the hooks, the reloader) talks to it through a cloneable
//! [`Handle`] carrying a closed set of [`Request`]s. The task wakes only for a
//! request, a SIGCHLD, or the earliest armed deadline: an idle daemon does no
//! work at all.
//!
//! `start`/`stop`/`restart` do not block the actor while their instances
//! settle: each request becomes a [`Waiter`] that is answered from the
//! transition stream when every instance it names reached its goal.

pub mod observer;
pub mod reload;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::lua::HookState;
use crate::config::{Config, Service};
use crate::process;
use crate::protocol::{
    ActionResult, ConfigInfo, DiffData, Event as WireEvent, InstanceInfo, StatusData,
    TransitionEvent,
};
pub use observer::Observer;
use state::{Action, Event, Exit, Proc, Refusal, State};

/// A service name shared by its instances.
type Name = Arc<str>;
/// Identifies an instance: (service, index). Orders as `status` lists them.
type Key = (Name, u32);

/// A command-level failure (SPEC §9): the whole request is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    /// Stable code (`unknown_name`, `shutting_down`, `bad_config`).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

/// `start`, `stop` or `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start instances and wait for RUNNING or FATAL.
    Start,
    /// Stop instances and wait for STOPPED.
    Stop,
    /// Stop if running, then start.
    Restart,
}

type Answer<T> = oneshot::Sender<Result<T, CommandError>>;

/// What the actor can be asked.
pub enum Request {
    /// Report instances (all when `names` is empty).
    Status {
        names: Vec<String>,
        reply: Answer<StatusData>,
    },
    /// Start/stop/restart; answered once the instances settled.
    Control {
        action: Control,
        names: Vec<String>,
        reply: Answer<Vec<ActionResult>>,
    },
    /// Apply a freshly loaded config (the caller validated it) and its hooks.
    Apply {
        config: Config,
        hooks: Option<HookState>,
        reply: oneshot::Sender<DiffData>,
    },
    /// Record a config that failed to load.
    ConfigFailed { error: String },
    /// Stop everything; answered when every process is gone.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Cloneable access to the supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<WireEvent>,
    observer: Arc<dyn Observer>,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// `status [NAME...]`.
    pub async fn status(&self, names: Vec<String>) -> Result<StatusData, CommandError> {
        self.ask(|reply| Request::Status { names, reply })
            .await
            .unwrap_or_else(gone)
    }

    /// `start`/`stop`/`restart NAME...`.
    pub async fn control(
        &self,
        action: Control,
        names: Vec<String>,
    ) -> Result<Vec<ActionResult>, CommandError> {
        self.ask(|reply| Request::Control {
            action,
            names,
            reply,
        })
        .await
        .unwrap_or_else(gone)
    }

    /// Applies a validated config and its hooks; returns the diff.
    pub async fn apply(&self, config: Config, hooks: Option<HookState>) -> Option<DiffData> {
        self.ask(|reply| Request::Apply {
            config,
            hooks,
            reply,
        })
        .await
    }

    /// `status` from a thread outside the runtime (the hook host).
    pub fn status_blocking(&self) -> Result<StatusData, String> {
        let (tx, rx) = oneshot::channel();
        let req = Request::Status {
            names: Vec::new(),
            reply: tx,
        };
        self.tx
            .blocking_send(req)
            .map_err(|_| "the daemon is shutting down".to_string())?;
        match rx.blocking_recv() {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) => Err(e.message),
            Err(_) => Err("the daemon is shutting down".into()),
        }
    }

    /// Records a failed reload.
    pub async fn config_failed(&self, error: String) {
        let _ = self.tx.send(Request::ConfigFailed { error }).await;
    }

    /// Stops every instance and ends the actor; returns when all are gone.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Request::Shutdown { reply }).await;
    }

    /// Follows transitions and reload results. A receiver that falls more
    /// than the channel's capacity behind gets `Lagged` and should be dropped.
    pub fn subscribe(&self) -> broadcast::Receiver<WireEvent> {
        self.events.subscribe()
    }

    /// Publishes an event to subscribers and hooks (used for reload results).
    pub fn publish(&self, event: WireEvent) {
        if self.observer.wants_events() {
            self.observer.events(&mut vec![event.clone()]);
        }
        let _ = self.events.send(event);
    }
}

fn gone<T>() -> Result<T, CommandError> {
    Err(CommandError {
        code: "shutting_down",
        message: "the daemon is shutting down".into(),
    })
}

/// Events kept for a slow subscriber before it is dropped.
pub const EVENT_BACKLOG: usize = 4096;

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
    /// Start again once STOPPED (a restart or a respawning reload).
    restart_pending: bool,
    /// The state the current start came from, for the spawn log line.
    starting_from: State,
}

/// One service's current config.
struct Svc {
    /// The options in force.
    config: Service,
    /// Removed by a reload: dropped once its instances are gone.
    removed: bool,
}

/// What a waiter wants from one instance.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    /// RUNNING (ok) or FATAL (failed).
    Started,
    /// STOPPED.
    Stopped,
    /// STOPPED, then a start, then `Started`.
    Restart,
}

/// A `start`/`stop`/`restart` request waiting for its instances to settle.
struct Waiter {
    /// Stable identity (positions in `waiters` shift as others complete).
    id: u64,
    /// Per instance: the goal, or the result once settled.
    targets: Vec<(Key, Goal, Option<ActionResult>)>,
    /// Where the answer goes.
    reply: Answer<Vec<ActionResult>>,
}

/// One instance's share of a `start`/`stop`/`restart`, not yet acted on.
/// Requests naming many instances are worked off in chunks between other
/// requests, so a `start all` of a thousand instances does not hold up a
/// `status` for the time of a thousand spawns.
struct Pending {
    /// The waiter to settle (None for autostarts, which nobody waits on).
    waiter: Option<u64>,
    /// The instance.
    key: Key,
    /// What to do to it.
    action: Control,
}

/// Instances acted on per turn of the actor loop.
const CHUNK: usize = 16;

/// The actor's state.
pub struct Supervisor {
    /// Services by name.
    services: BTreeMap<Name, Svc>,
    /// Instances in status order.
    instances: BTreeMap<Key, Inst>,
    /// Live main processes.
    pids: HashMap<u32, Key>,
    /// STOPPING instances whose leader is gone but whose group may live on.
    draining: BTreeSet<Key>,
    /// Pending `start`/`stop`/`restart` requests.
    waiters: Vec<Waiter>,
    /// Id of the next waiter.
    next_waiter: u64,
    /// Instances of those requests still to act on, in order.
    pending: VecDeque<Pending>,
    /// The config path, load time and last error.
    config_info: ConfigInfo,
    /// Subscribers.
    events: broadcast::Sender<WireEvent>,
    /// The hook host (or whoever listens).
    observer: Arc<dyn Observer>,
    /// Events for the hooks not yet queued (flushed once per wake-up).
    hook_batch: Vec<WireEvent>,
    /// Answered once everything is stopped after a shutdown request.
    shutdown: Vec<oneshot::Sender<()>>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Supervisor {
    /// Builds the actor for `config` (nothing is started until [`Supervisor::run`]).
    pub fn new(
        config: Config,
        path: PathBuf,
        observer: Arc<dyn Observer>,
    ) -> (Supervisor, Handle, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let mut sup = Supervisor {
            services: BTreeMap::new(),
            instances: BTreeMap::new(),
            pids: HashMap::new(),
            draining: BTreeSet::new(),
            waiters: Vec::new(),
            next_waiter: 0,
            pending: VecDeque::new(),
            config_info: ConfigInfo {
                path: path.display().to_string(),
                loaded_at: unix_now(),
                error: None,
            },
            events: events.clone(),
            observer: observer.clone(),
            hook_batch: Vec::new(),
            shutdown: Vec::new(),
        };
        for (name, svc) in config.services {
            sup.add_service(name.into(), svc);
        }
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

    fn add_instance(&mut self, service: &Name, index: u32) {
        let inst = Inst {
            name: format!("{service}:{index}"),
            proc: Proc::default(),
            last_pid: None,
            retiring: false,
            restart_pending: false,
            starting_from: State::Stopped,
        };
        self.instances.insert((service.clone(), index), inst);
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
        let autostart: Vec<Key> = self
            .instances
            .keys()
            .filter(|(s, _)| self.services[s].config.policy.autostart)
            .cloned()
            .collect();
        self.queue_starts(autostart);
        self.work_pending().await;
        self.flush_hooks();
        loop {
            let next = self.next_deadline();
            tokio::select! {
                _ = sigchld.recv() => self.on_sigchld().await,
                req = rx.recv() => match req {
                    Some(req) => self.on_request(req).await,
                    None => self.begin_shutdown(None).await,
                },
                _ = sleep_until(next) => self.on_deadlines().await,
                _ = std::future::ready(()), if !self.pending.is_empty() => self.work_pending().await,
            }
            self.flush_hooks();
            if !self.shutdown.is_empty() && self.all_gone() {
                break;
            }
        }
        // Reap anything that exited in the last moments.
        process::reap();
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.instances
            .values()
            .filter_map(|i| i.proc.deadline)
            .min()
    }

    fn all_gone(&self) -> bool {
        self.instances
            .values()
            .all(|i| i.proc.pid.is_none() && i.proc.state != State::Stopping)
    }

    async fn on_sigchld(&mut self) {
        for (pid, exit) in process::reap() {
            // Others are tm.exec children or orphaned grandchildren, whose
            // groups `process` keeps track of.
            let Some(key) = self.pids.remove(&pid) else {
                continue;
            };
            let group_alive = process::group_alive(pid);
            let _ = self.apply(&key, Event::Exited { exit, group_alive }).await;
        }
        let draining: Vec<Key> = self.draining.iter().cloned().collect();
        for key in draining {
            let pgid = self.instances.get(&key).and_then(|i| i.proc.pgid);
            if pgid.is_none_or(|g| !process::forget_if_empty(g)) {
                let _ = self.apply(&key, Event::GroupGone).await;
            }
        }
    }

    async fn on_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<Key> = self
            .instances
            .iter()
            .filter(|(_, i)| i.proc.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let pgid = self.instances[&key].proc.pgid;
            let group_alive = pgid.is_some_and(process::forget_if_empty);
            let _ = self.apply(&key, Event::Deadline { group_alive }).await;
        }
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Status { names, reply } => {
                let _ = reply.send(self.status(&names));
            }
            Request::Control {
                action,
                names,
                reply,
            } => self.control(action, names, reply).await,
            Request::Apply {
                config,
                hooks,
                reply,
            } => {
                // Events from here on belong to the new config's hooks.
                self.flush_hooks();
                self.observer.swap_hooks(hooks);
                let diff = self.apply_config(config).await;
                // Its transitions reach the hooks before the reload result does.
                self.flush_hooks();
                let _ = reply.send(diff);
            }
            Request::ConfigFailed { error } => {
                self.config_info.error = Some(error);
            }
            Request::Shutdown { reply } => self.begin_shutdown(Some(reply)).await,
        }
    }

    async fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
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
            let keys: Vec<Key> = self.instances.keys().cloned().collect();
            for key in keys {
                let _ = self.apply(&key, Event::Stop).await;
            }
        }
    }

    /// Resolves `web`, `web:1`, `all` into instance keys, in status order.
    fn resolve(&self, names: &[String]) -> Result<Vec<Key>, CommandError> {
        let mut keys = Vec::new();
        let mut push = |k: &Key| {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        };
        for name in names {
            if name == "all" {
                self.instances
                    .iter()
                    .filter(|(_, i)| !i.retiring)
                    .for_each(|(k, _)| push(k));
                continue;
            }
            let (service, index) = match name.split_once(':') {
                Some((s, i)) => (s, Some(i)),
                None => (name.as_str(), None),
            };
            let svc = self
                .services
                .get_key_value(service)
                .filter(|(_, s)| !s.removed);
            let unknown = || CommandError {
                code: "unknown_name",
                message: format!("no such service or instance: {name}"),
            };
            let (svc_name, _) = svc.ok_or_else(unknown)?;
            match index {
                None => self
                    .instances
                    .range((svc_name.clone(), 0)..=(svc_name.clone(), u32::MAX))
                    .filter(|(_, i)| !i.retiring)
                    .for_each(|(k, _)| push(k)),
                Some(i) => {
                    let key = (svc_name.clone(), i.parse::<u32>().map_err(|_| unknown())?);
                    match self.instances.get(&key) {
                        Some(inst) if !inst.retiring => push(&key),
                        _ => return Err(unknown()),
                    }
                }
            }
        }
        Ok(keys)
    }

    fn status(&self, names: &[String]) -> Result<StatusData, CommandError> {
        let keys: Vec<Key> = if names.is_empty() {
            self.instances.keys().cloned().collect()
        } else {
            self.resolve(names)?
        };
        let now = Instant::now();
        let instances = keys.iter().map(|k| self.info(k, now)).collect();
        Ok(StatusData {
            instances,
            config: self.config_info.clone(),
        })
    }

    fn info(&self, key: &Key, now: Instant) -> InstanceInfo {
        let inst = &self.instances[key];
        let p = &inst.proc;
        let (exitcode, signal) = exit_fields(p.last_exit);
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
            description: p.describe(now),
        }
    }

    /// Starts a `start`/`stop`/`restart`: validates the names, registers a
    /// waiter answered once every instance settled, and queues the instances.
    async fn control(
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
        let keys = match self.resolve(&names) {
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
        let targets = keys.iter().map(|k| (k.clone(), goal, None)).collect();
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push(Waiter { id, targets, reply });
        self.pending.extend(keys.into_iter().map(|key| Pending {
            waiter: Some(id),
            key,
            action,
        }));
        self.work_pending().await;
    }

    /// Queues autostarts: worked off in chunks like client requests, so a
    /// thousand of them do not keep the daemon from answering meanwhile.
    fn queue_starts(&mut self, keys: Vec<Key>) {
        self.pending.extend(keys.into_iter().map(|key| Pending {
            waiter: None,
            key,
            action: Control::Start,
        }));
    }

    /// Acts on up to [`CHUNK`] pending instances.
    async fn work_pending(&mut self) {
        for _ in 0..CHUNK {
            let Some(Pending {
                waiter,
                key,
                action,
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
                    self.settle(w, &key, false, why.into());
                }
                continue;
            }
            let event = match action {
                Control::Start => Event::Start,
                Control::Stop => Event::Stop,
                Control::Restart if self.restart_when_stopped(&key) => Event::Stop,
                Control::Restart => {
                    if let Some(w) = waiter {
                        self.retarget(w, &key, Goal::Started);
                    }
                    Event::Start
                }
            };
            let result = self.apply(&key, event).await;
            // An autostart refused (a client already started it) needs no answer.
            if let (Err(refusal), Some(w)) = (result, waiter) {
                self.settle(w, &key, false, refusal.message().to_string());
            }
        }
        self.flush_waiters();
        if !self.pending.is_empty() {
            // Let the connections run (and queue their requests) before the
            // next chunk: nothing else runs on this thread until we yield.
            tokio::task::yield_now().await;
        }
    }

    /// Marks a live instance to start again once stopped; false if it has
    /// nothing to stop.
    fn restart_when_stopped(&mut self, key: &Key) -> bool {
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

    fn retarget(&mut self, waiter: u64, key: &Key, goal: Goal) {
        if let Some(w) = self.waiters.iter_mut().find(|w| w.id == waiter) {
            for t in w
                .targets
                .iter_mut()
                .filter(|t| &t.0 == key && t.2.is_none())
            {
                t.1 = goal;
            }
        }
    }

    fn settle(&mut self, waiter: u64, key: &Key, ok: bool, message: String) {
        let name = self
            .instances
            .get(key)
            .map(|i| i.name.clone())
            .unwrap_or_else(|| format!("{}:{}", key.0, key.1));
        if let Some(w) = self.waiters.iter_mut().find(|w| w.id == waiter) {
            for t in w
                .targets
                .iter_mut()
                .filter(|t| &t.0 == key && t.2.is_none())
            {
                t.2 = Some(ActionResult {
                    name: name.clone(),
                    ok,
                    message: message.clone(),
                });
            }
        }
    }

    /// Answers every waiter whose instances have all settled.
    fn flush_waiters(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].targets.iter().all(|t| t.2.is_some()) {
                let w = self.waiters.remove(i);
                let results = w.targets.into_iter().filter_map(|t| t.2).collect();
                let _ = w.reply.send(Ok(results));
            } else {
                i += 1;
            }
        }
    }

    /// Settles the waiters `key` entering `to` satisfies.
    fn on_change_for_waiters(&mut self, key: &Key, to: State) {
        let reason = self
            .instances
            .get(key)
            .map(|i| i.proc.describe(Instant::now()))
            .unwrap_or_default();
        for w in &mut self.waiters {
            for t in w
                .targets
                .iter_mut()
                .filter(|t| &t.0 == key && t.2.is_none())
            {
                let name = format!("{}:{}", key.0, key.1);
                let result = |ok: bool, message: &str| {
                    Some(ActionResult {
                        name: name.clone(),
                        ok,
                        message: message.into(),
                    })
                };
                match (t.1, to) {
                    (Goal::Started, State::Running) => t.2 = result(true, "started"),
                    (Goal::Started, State::Fatal) => t.2 = result(false, &reason),
                    (Goal::Started, State::Stopped) => {
                        t.2 = result(false, "stopped before it started")
                    }
                    (Goal::Started, State::Exited) => t.2 = result(false, &reason),
                    (Goal::Stopped, State::Stopped) => t.2 = result(true, "stopped"),
                    (Goal::Restart, State::Stopped) => t.1 = Goal::Started,
                    _ => {}
                }
            }
        }
    }

    /// Feeds one event to an instance and executes the resulting actions,
    /// feeding back their outcomes, until the instance is quiet.
    async fn apply(&mut self, key: &Key, first: Event) -> Result<(), Refusal> {
        let mut queue = VecDeque::from([first]);
        let mut is_first = true;
        while let Some(event) = queue.pop_front() {
            let Some(svc) = self.services.get(&key.0) else {
                return Ok(());
            };
            let policy = svc.config.policy.clone();
            let Some(inst) = self.instances.get_mut(key) else {
                return Ok(());
            };
            let exited = match &event {
                Event::Exited { exit, .. } => Some((inst.proc.pid.or(inst.last_pid), *exit)),
                _ => None,
            };
            let step = match inst.proc.handle(&policy, event, Instant::now()) {
                Ok(step) => step,
                Err(r) if is_first => return Err(r),
                Err(_) => return Ok(()),
            };
            is_first = false;
            if let Some(pid) = inst.proc.pid {
                inst.last_pid = Some(pid);
            }
            let mut restart_after_stop = false;
            for (n, (from, to)) in step.changes.iter().enumerate() {
                let exit = if n == 0 { exited } else { None };
                self.announce(key, *from, *to, exit, &policy);
                self.on_change_for_waiters(key, *to);
                if *to == State::Stopped {
                    restart_after_stop |= self
                        .instances
                        .get_mut(key)
                        .is_some_and(|i| std::mem::take(&mut i.restart_pending) && !i.retiring)
                        && self.shutdown.is_empty();
                }
            }
            for action in step.actions {
                if let Some(ev) = self.execute(key, action).await {
                    queue.push_back(ev);
                }
            }
            self.track(key);
            if restart_after_stop {
                queue.push_back(Event::Start);
            }
        }
        self.flush_waiters();
        self.drop_retired(key);
        Ok(())
    }

    /// Keeps `pids` and `draining` in line with the instance's state.
    fn track(&mut self, key: &Key) {
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        if let Some(pid) = inst.proc.pid {
            self.pids.insert(pid, key.clone());
        }
        if inst.proc.state == State::Stopping && inst.proc.pid.is_none() {
            self.draining.insert(key.clone());
        } else {
            self.draining.remove(key);
        }
    }

    async fn execute(&mut self, key: &Key, action: Action) -> Option<Event> {
        let inst = self.instances.get(key)?;
        match action {
            Action::Spawn => {
                if !self.shutdown.is_empty() {
                    return Some(Event::SpawnFailed {
                        reason: "the daemon is shutting down".into(),
                    });
                }
                let spec = &self.services.get(&key.0)?.config.spawn;
                let name = &inst.name;
                // The transition into STARTING is logged here, with its pid.
                let from = inst.starting_from.name();
                match process::spawn(spec, &key.0, key.1) {
                    Ok(pid) => {
                        crate::log!(
                            "spawned: '{name}' with pid {pid} [{from} -> STARTING, pid {pid}]"
                        );
                        Some(Event::Spawned { pid })
                    }
                    Err(reason) => {
                        crate::log!("spawnerr: {name}: {reason} [{from} -> STARTING]");
                        Some(Event::SpawnFailed { reason })
                    }
                }
            }
            Action::Signal(sig) => {
                if let Some(pgid) = inst.proc.pgid {
                    process::signal_group(pgid, sig);
                }
                None
            }
            Action::Kill => {
                if let Some(pgid) = inst.proc.pgid {
                    crate::log!("killing: {} (process group {pgid}) with SIGKILL", inst.name);
                    process::signal_group(pgid, Signal::SIGKILL);
                }
                None
            }
        }
    }

    /// Logs a transition in supervisord's words and publishes it.
    fn announce(
        &mut self,
        key: &Key,
        from: State,
        to: State,
        exited: Option<(Option<u32>, Exit)>,
        policy: &crate::config::Policy,
    ) {
        if to == State::Starting {
            if let Some(inst) = self.instances.get_mut(key) {
                inst.starting_from = from;
            }
        }
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        let p = &inst.proc;
        let name = &inst.name;
        let pid = match to {
            State::Starting => None,
            _ => p.pid.or(exited.and_then(|e| e.0)),
        };
        let exit = exited.map(|e| e.1);
        let expected = if to == State::Exited {
            p.expected
        } else {
            None
        };
        let pid_text = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
        let arrow = format!("[{} -> {}{pid_text}]", from.name(), to.name());
        match to {
            // Logged with the pid once spawned (see `execute`).
            State::Starting => {}
            State::Running => crate::log!(
                "success: {name} entered RUNNING state, process has stayed up for > than {} seconds (starttime) {arrow}",
                policy.starttime.as_secs_f64()
            ),
            State::Exited => crate::log!(
                "exited: {name} ({}; {}) {arrow}",
                exit.map(Exit::describe).unwrap_or_default(),
                if expected == Some(true) { "expected" } else { "not expected" }
            ),
            State::Backoff => crate::log!(
                "backoff: {name} entered BACKOFF state ({}), retry {} of {} {arrow}",
                p.reason.as_deref().unwrap_or("start failed"),
                p.retries,
                policy.startretries
            ),
            State::Fatal => crate::log!(
                "gave up: {name} entered FATAL state, too many start retries too quickly ({}) {arrow}",
                p.reason.as_deref().unwrap_or("start failed")
            ),
            State::Stopping => crate::log!("waiting for {name} to stop (sent {}) {arrow}", policy.stopsignal.as_str()),
            State::Stopped => crate::log!(
                "stopped: {name}{} {arrow}",
                exit.map(|e| format!(" ({})", e.describe())).unwrap_or_default()
            ),
        }
        let (exitcode, signal) = exit_fields(exit);
        let event = WireEvent::Transition(TransitionEvent {
            name: name.clone(),
            service: key.0.to_string(),
            instance: key.1,
            from: from.name().into(),
            to: to.name().into(),
            pid,
            exitcode,
            signal,
            expected,
            time: unix_now(),
            description: p.describe(Instant::now()),
            restarts: p.restarts,
        });
        if self.observer.wants_events() {
            self.hook_batch.push(event.clone());
        }
        let _ = self.events.send(event);
    }

    /// Hands the events gathered since the last flush to the hook host.
    fn flush_hooks(&mut self) {
        if !self.hook_batch.is_empty() {
            self.observer.events(&mut self.hook_batch);
        }
    }

    /// Drops a retiring instance (or a removed service) once it has no process.
    fn drop_retired(&mut self, key: &Key) {
        let idle = self
            .instances
            .get(key)
            .is_some_and(|i| i.retiring && i.proc.pid.is_none() && i.proc.state != State::Stopping);
        if !idle {
            return;
        }
        self.instances.remove(key);
        self.draining.remove(key);
        for w in &mut self.waiters {
            for t in w
                .targets
                .iter_mut()
                .filter(|t| &t.0 == key && t.2.is_none())
            {
                t.2 = Some(ActionResult {
                    name: format!("{}:{}", key.0, key.1),
                    ok: false,
                    message: "removed by reload".into(),
                });
            }
        }
        self.flush_waiters();
        let service_empty = !self.instances.keys().any(|(s, _)| s == &key.0);
        if service_empty && self.services.get(&key.0).is_some_and(|s| s.removed) {
            self.services.remove(&key.0);
        }
    }

    async fn apply_config(&mut self, config: Config) -> DiffData {
        let plan = reload::diff(&self.current_config(), &config);
        self.config_info.loaded_at = unix_now();
        self.config_info.error = None;
        for name in &plan.removed {
            self.retire_service(name).await;
        }
        for (name, svc) in config.services {
            let name: Name = name.into();
            match plan.kind_of(&name) {
                Some(reload::Change::Added) => {
                    let autostart = svc.policy.autostart;
                    // Reuse the name of a service still draining from an earlier removal.
                    self.services.remove(&name);
                    self.add_service(name.clone(), svc.clone());
                    if autostart {
                        self.queue_starts((0..svc.numprocs).map(|i| (name.clone(), i)).collect());
                    }
                }
                Some(reload::Change::Changed { respawn }) => {
                    self.change_service(name, svc, respawn).await
                }
                _ => {}
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

    async fn retire_service(&mut self, name: &str) {
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
            self.retire(&key).await;
        }
    }

    async fn retire(&mut self, key: &Key) {
        if let Some(inst) = self.instances.get_mut(key) {
            inst.retiring = true;
        }
        let _ = self.apply(key, Event::Stop).await;
        self.drop_retired(key);
    }

    async fn change_service(&mut self, name: Name, new: Service, respawn: bool) {
        let Some(svc) = self.services.get_mut(&name) else {
            return;
        };
        let old_n = svc.config.numprocs;
        svc.config = new.clone();
        // Extra instances stop and disappear.
        for i in new.numprocs..old_n {
            self.retire(&(name.clone(), i)).await;
        }
        // Kept instances restart when the way they spawn changed.
        if respawn {
            for i in 0..new.numprocs.min(old_n) {
                let key = (name.clone(), i);
                if self.restart_when_stopped(&key) {
                    let _ = self.apply(&key, Event::Stop).await;
                } else if self
                    .instances
                    .get(&key)
                    .is_some_and(|i| i.proc.state == State::Backoff)
                {
                    // Retry at once with the new spawn options and a fresh count.
                    let _ = self.apply(&key, Event::Start).await;
                }
            }
        }
        // New instances start when the service autostarts.
        for i in old_n..new.numprocs {
            let key = (name.clone(), i);
            if let Some(inst) = self.instances.get_mut(&key) {
                inst.retiring = false;
            } else {
                self.add_instance(&name, i);
            }
            if new.policy.autostart {
                self.queue_starts(vec![key]);
            }
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
