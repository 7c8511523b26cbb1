//! The per-instance state machine of SPEC §4, as a pure function.
//!
//! [`Proc::handle`] takes an event and the current time and returns the
//! actions to perform (spawn, signal the group, SIGKILL the group) and the
//! state changes it made. It does no IO and never reads the clock, so every
//! transition is tested by tables below without processes or sleeping; the
//! supervisor actor (`supervisor/mod.rs`) executes the actions and feeds
//! back what happened (spawned, exited, timer fired).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{AutoRestart, Policy};
pub use crate::process::Exit;

/// Process states, as supervisord names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running, by request or never started.
    Stopped,
    /// Spawned, not yet up for `starttime`.
    Starting,
    /// Up for at least `starttime`.
    Running,
    /// A start failed; waiting before the next retry.
    Backoff,
    /// Stop signal sent; waiting for the group to exit.
    Stopping,
    /// Exited from RUNNING and not restarted.
    Exited,
    /// Gave up after too many failed starts (or a dependency failed).
    Fatal,
    /// To start once its dependencies are met (SPEC §11).
    Waiting,
}

impl State {
    /// The name shown to users (`RUNNING`).
    pub fn name(self) -> &'static str {
        match self {
            State::Stopped => "STOPPED",
            State::Starting => "STARTING",
            State::Running => "RUNNING",
            State::Backoff => "BACKOFF",
            State::Stopping => "STOPPING",
            State::Exited => "EXITED",
            State::Fatal => "FATAL",
            State::Waiting => "WAITING",
        }
    }
}

/// What happened to an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Manual start (fresh retry count).
    Start,
    /// Manual stop.
    Stop,
    /// A start whose dependencies are not met yet: wait in WAITING.
    Wait,
    /// The dependencies of a WAITING instance are met: start it.
    Go,
    /// A dependency of a WAITING instance failed: FATAL.
    DependencyFailed {
        /// `dependency db is FATAL`.
        reason: String,
    },
    /// An automatic restart from STOPPED (an unhealthy instance was
    /// stopped to be restarted): counts in `restarts`, keeps nothing else.
    Respawn,
    /// The spawn requested by [`Action::Spawn`] succeeded.
    Spawned {
        /// Pid (= process group id) of the new process.
        pid: u32,
    },
    /// The spawn requested by [`Action::Spawn`] failed.
    SpawnFailed {
        /// Why, for the status line.
        reason: String,
    },
    /// The instance's main process was reaped.
    Exited {
        /// How it ended.
        exit: Exit,
        /// Whether other members of its process group still exist.
        group_alive: bool,
    },
    /// The armed deadline passed.
    Deadline {
        /// Whether the process group still has members.
        group_alive: bool,
    },
    /// The main process is gone and its process group is now empty.
    GroupGone,
}

/// What the supervisor must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Spawn the process, then report [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn,
    /// Send this signal to the process group.
    Signal(Signal),
    /// Send SIGKILL to the process group.
    Kill,
}

/// A command refused in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `start` of a STARTING or RUNNING instance.
    AlreadyStarted,
    /// `start` while a stop is under way.
    Stopping,
    /// `stop` of an instance with no process.
    NotRunning,
}

impl Refusal {
    /// The message users see.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::AlreadyStarted => "already started",
            Refusal::Stopping => "is stopping",
            Refusal::NotRunning => "not running",
        }
    }
}

/// The outcome of one event.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// To perform, in order.
    pub actions: Vec<Action>,
    /// State changes made, in order, as (from, to).
    pub changes: Vec<(State, State)>,
}

/// What an instance does once the group of its dead leader is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDrain {
    /// Nothing (EXITED or FATAL stays, a stop came meanwhile).
    Stay,
    /// Spawn again (an automatic restart, or a start asked meanwhile).
    Start,
    /// Arm the back-off delay before the next retry (BACKOFF).
    Retry,
}

/// How often a stop re-checks a process group that outlived its SIGKILL.
pub const KILL_RECHECK: Duration = Duration::from_millis(100);

/// One instance's supervision state.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    /// Current state.
    pub state: State,
    /// The main process while it lives (also its process group id).
    pub pid: Option<u32>,
    /// The process group being stopped, kept until it is empty.
    pub pgid: Option<u32>,
    /// When the current process was spawned.
    pub started: Option<Instant>,
    /// Failed starts since the last manual start or RUNNING.
    pub retries: u32,
    /// Automatic restarts since the last manual start.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<Exit>,
    /// Whether the last exit from RUNNING was expected.
    pub expected: Option<bool>,
    /// Why the last start failed (spawn error or early exit).
    pub reason: Option<String>,
    /// When the armed timer fires (starttime, backoff delay, stop grace).
    pub deadline: Option<Instant>,
    /// Whether a process was ever spawned.
    pub ever_started: bool,
    /// The leader exited while its group lived on: the group is being
    /// emptied (stopsignal, SIGKILL after stoptime), then this happens.
    pub drain: Option<AfterDrain>,
}

impl Default for Proc {
    fn default() -> Self {
        Proc {
            state: State::Stopped,
            pid: None,
            pgid: None,
            started: None,
            retries: 0,
            restarts: 0,
            last_exit: None,
            expected: None,
            reason: None,
            deadline: None,
            ever_started: false,
            drain: None,
        }
    }
}

impl Proc {
    /// Applies one event at time `now`.
    pub fn handle(&mut self, policy: &Policy, event: Event, now: Instant) -> Result<Step, Refusal> {
        let mut step = Step::default();
        if let Some(after) = self.drain {
            match event {
                Event::Start if self.state != State::Stopping => {
                    self.retries = 0;
                    self.restarts = 0;
                    self.reason = None;
                    self.drain = Some(AfterDrain::Start);
                    return Ok(step);
                }
                Event::Stop => {
                    return match (self.state, after) {
                        (State::Backoff, _) | (State::Exited, AfterDrain::Start) => {
                            self.drain = Some(AfterDrain::Stay);
                            self.go(State::Stopped, &mut step);
                            Ok(step)
                        }
                        _ => Err(Refusal::NotRunning),
                    };
                }
                Event::Deadline { group_alive } if self.deadline.is_some() => {
                    if group_alive {
                        step.actions.push(Action::Kill);
                        self.deadline = Some(now + KILL_RECHECK);
                    } else {
                        self.drained(after, now, &mut step);
                    }
                    return Ok(step);
                }
                Event::GroupGone => {
                    self.drained(after, now, &mut step);
                    return Ok(step);
                }
                _ => {}
            }
        }
        match (self.state, event) {
            (State::Running | State::Starting, Event::Start) => {
                return Err(Refusal::AlreadyStarted)
            }
            (State::Stopping, Event::Start) => return Err(Refusal::Stopping),
            // Already on its way: the reply settles when it runs.
            (State::Waiting, Event::Start | Event::Wait) => {}
            (State::Running | State::Starting | State::Stopping, Event::Wait) => {
                return Err(Refusal::AlreadyStarted)
            }
            (_, Event::Wait) => {
                self.retries = 0;
                self.restarts = 0;
                self.reason = None;
                self.deadline = None;
                self.go(State::Waiting, &mut step);
            }
            (State::Waiting, Event::Go) => self.begin_start(&mut step),
            (State::Waiting, Event::DependencyFailed { reason }) => {
                self.reason = Some(reason);
                self.go(State::Fatal, &mut step);
            }
            (State::Stopped, Event::Respawn) => {
                self.restarts += 1;
                self.retries = 0;
                self.begin_start(&mut step);
            }
            (_, Event::Start) => {
                self.retries = 0;
                self.restarts = 0;
                self.reason = None;
                self.begin_start(&mut step);
            }

            (State::Starting | State::Running, Event::Stop) => {
                self.deadline = Some(now + policy.stoptime);
                step.actions.push(Action::Signal(policy.stopsignal));
                self.go(State::Stopping, &mut step);
            }
            (State::Backoff | State::Waiting, Event::Stop) => {
                self.deadline = None;
                self.go(State::Stopped, &mut step);
            }
            (State::Stopping, Event::Stop) => {}
            (_, Event::Stop) => return Err(Refusal::NotRunning),

            (State::Starting, Event::Spawned { pid }) => {
                self.pid = Some(pid);
                self.pgid = Some(pid);
                self.started = Some(now);
                self.ever_started = true;
                self.last_exit = None;
                self.expected = None;
                if policy.starttime.is_zero() {
                    self.up(&mut step);
                } else {
                    self.deadline = Some(now + policy.starttime);
                }
            }
            (State::Starting, Event::SpawnFailed { reason }) => {
                self.reason = Some(reason);
                self.failed_start(policy, now, &mut step);
            }

            // A one-shot job (autorestart never) that finishes well within
            // starttime has completed, not failed (SPEC §18).
            (State::Starting, Event::Exited { exit, group_alive })
                if policy.autorestart == AutoRestart::Never
                    && matches!(exit, Exit::Code(c) if policy.exitcodes.contains(&c)) =>
            {
                let group = self.pgid;
                self.gone(exit);
                self.deadline = None;
                self.retries = 0;
                self.reason = None;
                self.expected = Some(true);
                self.go(State::Exited, &mut step);
                if group_alive {
                    self.begin_drain(policy, group, AfterDrain::Stay, now, &mut step);
                }
            }
            (State::Starting, Event::Exited { exit, group_alive }) => {
                let group = self.pgid;
                self.gone(exit);
                self.reason = Some(format!("exited too quickly ({})", exit.describe()));
                self.failed_start(policy, now, &mut step);
                if group_alive {
                    // Retry only once the group is empty; the delay counts from then.
                    let after = if self.state == State::Backoff {
                        AfterDrain::Retry
                    } else {
                        AfterDrain::Stay
                    };
                    self.begin_drain(policy, group, after, now, &mut step);
                }
            }
            (State::Running, Event::Exited { exit, group_alive }) => {
                let group = self.pgid;
                self.gone(exit);
                let expected = matches!(exit, Exit::Code(c) if policy.exitcodes.contains(&c));
                self.expected = Some(expected);
                self.go(State::Exited, &mut step);
                let restart = match policy.autorestart {
                    AutoRestart::Always => true,
                    AutoRestart::Unexpected => !expected,
                    AutoRestart::Never => false,
                };
                if restart {
                    self.restarts += 1;
                    self.retries = 0;
                }
                if group_alive {
                    let after = if restart {
                        AfterDrain::Start
                    } else {
                        AfterDrain::Stay
                    };
                    self.begin_drain(policy, group, after, now, &mut step);
                } else if restart {
                    self.begin_start(&mut step);
                }
            }
            (State::Stopping, Event::Exited { exit, group_alive }) => {
                self.pid = None;
                self.last_exit = Some(exit);
                self.expected = None;
                if group_alive {
                    // The rest of the group outlived its leader: make sure the
                    // grace timer (or a prompt re-check after SIGKILL) is armed.
                    if self.deadline.is_none() {
                        step.actions.push(Action::Kill);
                        self.deadline = Some(now + KILL_RECHECK);
                    }
                } else {
                    self.stopped(&mut step);
                }
            }

            (State::Starting, Event::Deadline { .. }) if self.deadline.is_some() => {
                self.up(&mut step);
            }
            (State::Backoff, Event::Deadline { .. }) if self.deadline.is_some() => {
                self.begin_start(&mut step);
            }
            (State::Stopping, Event::Deadline { group_alive }) if self.deadline.is_some() => {
                if self.pid.is_none() && !group_alive {
                    self.stopped(&mut step);
                } else {
                    step.actions.push(Action::Kill);
                    self.deadline = Some(now + KILL_RECHECK);
                }
            }
            (State::Stopping, Event::GroupGone) if self.pid.is_none() => self.stopped(&mut step),

            // Stale or impossible combinations (a timer for a state already
            // left, an exit for a process already accounted for) change nothing.
            _ => {}
        }
        Ok(step)
    }

    fn go(&mut self, to: State, step: &mut Step) {
        step.changes.push((self.state, to));
        self.state = to;
    }

    /// The leader is gone but its group lives on (SPEC §17): the rest gets
    /// the stopsignal now and SIGKILL after stoptime; `after` waits.
    fn begin_drain(
        &mut self,
        policy: &Policy,
        group: Option<u32>,
        after: AfterDrain,
        now: Instant,
        step: &mut Step,
    ) {
        self.drain = Some(after);
        self.pgid = group;
        self.deadline = Some(now + policy.stoptime);
        step.actions.push(Action::Signal(policy.stopsignal));
    }

    /// The dead leader's group is empty: do what waited for it.
    fn drained(&mut self, after: AfterDrain, now: Instant, step: &mut Step) {
        self.drain = None;
        self.pgid = None;
        self.deadline = None;
        match after {
            AfterDrain::Stay => {}
            AfterDrain::Start => self.begin_start(step),
            AfterDrain::Retry => {
                self.deadline = Some(now + Duration::from_secs(u64::from(self.retries)));
            }
        }
    }

    fn begin_start(&mut self, step: &mut Step) {
        self.deadline = None;
        self.pid = None;
        step.actions.push(Action::Spawn);
        self.go(State::Starting, step);
    }

    fn up(&mut self, step: &mut Step) {
        self.deadline = None;
        self.retries = 0;
        self.reason = None;
        self.go(State::Running, step);
    }

    fn gone(&mut self, exit: Exit) {
        self.pid = None;
        self.pgid = None;
        self.last_exit = Some(exit);
        self.expected = None;
    }

    fn stopped(&mut self, step: &mut Step) {
        self.pid = None;
        self.pgid = None;
        self.deadline = None;
        self.go(State::Stopped, step);
    }

    /// A start failed: BACKOFF with a delay of k seconds before retry k, or
    /// FATAL once `startretries` retries have failed.
    fn failed_start(&mut self, policy: &Policy, now: Instant, step: &mut Step) {
        self.pid = None;
        self.go(State::Backoff, step);
        if self.retries < policy.startretries {
            self.retries += 1;
            self.deadline = Some(now + Duration::from_secs(u64::from(self.retries)));
        } else {
            self.deadline = None;
            self.go(State::Fatal, step);
        }
    }

    /// The supervisorctl-style status text.
    pub fn describe(&self, now: Instant) -> String {
        let uptime = |started: Instant| format_uptime(now.saturating_duration_since(started));
        match self.state {
            State::Running => match (self.pid, self.started) {
                (Some(pid), Some(s)) => format!("pid {pid}, uptime {}", uptime(s)),
                _ => String::new(),
            },
            State::Starting | State::Stopping => {
                self.pid.map(|p| format!("pid {p}")).unwrap_or_default()
            }
            State::Backoff | State::Fatal => self.reason.clone().unwrap_or_default(),
            State::Exited => match self.last_exit {
                Some(exit) => {
                    let exp = if self.expected == Some(true) {
                        "expected"
                    } else {
                        "not expected"
                    };
                    format!("{}; {exp}", exit.describe())
                }
                None => String::new(),
            },
            State::Waiting => String::new(),
            State::Stopped if !self.ever_started => "Not started".into(),
            State::Stopped => "stopped".into(),
        }
    }
}

/// `H:MM:SS`, as supervisorctl prints uptimes.
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests;
