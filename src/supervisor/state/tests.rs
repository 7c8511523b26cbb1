//! The state machine's transition tables: every state, event, policy and
//! retry count, without processes or sleeping (time is an argument).

use super::*;
use State::*;

fn policy() -> Policy {
    Policy {
        startretries: 2,
        starttime: Duration::from_secs(1),
        stoptime: Duration::from_secs(5),
        ..Policy::default()
    }
}

fn at(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn proc_in(state: State, pid: Option<u32>) -> Proc {
    Proc {
        state,
        pid,
        pgid: pid,
        ever_started: pid.is_some(),
        ..Proc::default()
    }
}

/// One row: start state (with or without a live pid), event, the
/// expected actions, the state changes, and the timer left armed.
struct Row {
    from: State,
    pid: Option<u32>,
    deadline: bool,
    event: Event,
    actions: Vec<Action>,
    changes: Vec<(State, State)>,
    armed: Option<f64>,
}

fn row(from: State, pid: Option<u32>, event: Event) -> Row {
    Row {
        from,
        pid,
        deadline: false,
        event,
        actions: vec![],
        changes: vec![],
        armed: None,
    }
}

impl Row {
    fn timer(mut self) -> Self {
        self.deadline = true;
        self
    }
    fn acts(mut self, a: &[Action]) -> Self {
        self.actions = a.to_vec();
        self
    }
    fn to(mut self, c: &[(State, State)]) -> Self {
        self.changes = c.to_vec();
        self
    }
    fn armed(mut self, secs: f64) -> Self {
        self.armed = Some(secs);
        self
    }
}

#[test]
fn transition_table() {
    let code = |c| Event::Exited {
        exit: Exit::Code(c),
        group_alive: false,
    };
    let killed = Event::Exited {
        exit: Exit::Signal(Signal::SIGKILL),
        group_alive: false,
    };
    let term = Signal::SIGTERM;
    let rows = vec![
        // start from every idle state spawns
        row(Stopped, None, Event::Start)
            .acts(&[Action::Spawn])
            .to(&[(Stopped, Starting)]),
        row(Exited, None, Event::Start)
            .acts(&[Action::Spawn])
            .to(&[(Exited, Starting)]),
        row(Fatal, None, Event::Start)
            .acts(&[Action::Spawn])
            .to(&[(Fatal, Starting)]),
        row(Backoff, None, Event::Start)
            .timer()
            .acts(&[Action::Spawn])
            .to(&[(Backoff, Starting)]),
        // spawned: wait starttime; then RUNNING
        row(Starting, None, Event::Spawned { pid: 9 }).armed(1.0),
        row(Starting, Some(9), Event::Deadline { group_alive: true })
            .timer()
            .to(&[(Starting, Running)]),
        // exits while starting back off 1 s before retry 1
        row(Starting, Some(9), code(0))
            .to(&[(Starting, Backoff)])
            .armed(1.0),
        row(Starting, None, Event::SpawnFailed { reason: "x".into() })
            .to(&[(Starting, Backoff)])
            .armed(1.0),
        row(Backoff, None, Event::Deadline { group_alive: false })
            .timer()
            .acts(&[Action::Spawn])
            .to(&[(Backoff, Starting)]),
        // exits from RUNNING: default policy restarts only unexpected exits
        row(Running, Some(9), code(0)).to(&[(Running, Exited)]),
        row(Running, Some(9), code(3))
            .acts(&[Action::Spawn])
            .to(&[(Running, Exited), (Exited, Starting)]),
        row(Running, Some(9), killed.clone())
            .acts(&[Action::Spawn])
            .to(&[(Running, Exited), (Exited, Starting)]),
        // stop
        row(Running, Some(9), Event::Stop)
            .acts(&[Action::Signal(term)])
            .to(&[(Running, Stopping)])
            .armed(5.0),
        row(Starting, Some(9), Event::Stop)
            .acts(&[Action::Signal(term)])
            .to(&[(Starting, Stopping)])
            .armed(5.0),
        row(Backoff, None, Event::Stop)
            .timer()
            .to(&[(Backoff, Stopped)]),
        row(Stopping, Some(9), Event::Stop).timer().armed(0.0),
        row(Stopping, Some(9), Event::Deadline { group_alive: true })
            .timer()
            .acts(&[Action::Kill])
            .armed(0.1),
        row(Stopping, Some(9), killed)
            .timer()
            .to(&[(Stopping, Stopped)]),
        row(
            Stopping,
            Some(9),
            Event::Exited {
                exit: Exit::Code(0),
                group_alive: true,
            },
        )
        .timer()
        .armed(0.0),
        row(Stopping, None, Event::GroupGone)
            .timer()
            .to(&[(Stopping, Stopped)]),
        row(Stopping, None, Event::Deadline { group_alive: false })
            .timer()
            .to(&[(Stopping, Stopped)]),
        // stale events change nothing
        row(Running, Some(9), Event::Deadline { group_alive: true }),
        row(Stopped, None, Event::Deadline { group_alive: false })
            .timer()
            .armed(0.0),
        row(Exited, None, code(1)),
        row(Fatal, None, Event::Spawned { pid: 3 }),
        row(Stopping, Some(9), Event::GroupGone).timer().armed(0.0),
    ];
    let base = Instant::now();
    for (i, r) in rows.into_iter().enumerate() {
        let mut p = proc_in(r.from, r.pid);
        if r.deadline {
            p.deadline = Some(base);
        }
        let label = format!("row {i}: {:?} + {:?}", r.from, r.event);
        let step = p
            .handle(&policy(), r.event, base)
            .unwrap_or_else(|e| panic!("{label}: {e:?}"));
        assert_eq!(step.actions, r.actions, "{label}");
        assert_eq!(step.changes, r.changes, "{label}");
        assert_eq!(p.deadline.map(|d| d - base), r.armed.map(at), "{label}");
    }
}

#[test]
fn refusals() {
    let cases = [
        (Running, Event::Start, Refusal::AlreadyStarted),
        (Starting, Event::Start, Refusal::AlreadyStarted),
        (Stopping, Event::Start, Refusal::Stopping),
        (Stopped, Event::Stop, Refusal::NotRunning),
        (Exited, Event::Stop, Refusal::NotRunning),
        (Fatal, Event::Stop, Refusal::NotRunning),
    ];
    for (state, ev, want) in cases {
        let mut p = proc_in(state, None);
        let before = p.clone();
        assert_eq!(
            p.handle(&policy(), ev, Instant::now()),
            Err(want),
            "{state:?}"
        );
        assert_eq!(p, before, "a refusal changes nothing");
    }
}

#[test]
fn autorestart_policies_with_exitcodes() {
    // (policy, exit, restarts?)
    let cases = [
        (AutoRestart::Always, Exit::Code(0), true),
        (AutoRestart::Always, Exit::Code(2), true),
        (AutoRestart::Never, Exit::Code(2), false),
        (AutoRestart::Never, Exit::Signal(Signal::SIGKILL), false),
        (AutoRestart::Unexpected, Exit::Code(0), false),
        (AutoRestart::Unexpected, Exit::Code(2), false),
        (AutoRestart::Unexpected, Exit::Code(1), true),
        (AutoRestart::Unexpected, Exit::Signal(Signal::SIGTERM), true),
    ];
    for (autorestart, exit, restarts) in cases {
        let pol = Policy {
            autorestart,
            exitcodes: vec![0, 2],
            ..policy()
        };
        let mut p = proc_in(Running, Some(4));
        let step = p
            .handle(
                &pol,
                Event::Exited {
                    exit,
                    group_alive: false,
                },
                Instant::now(),
            )
            .unwrap();
        assert_eq!(
            step.actions.contains(&Action::Spawn),
            restarts,
            "{autorestart:?} {exit:?}"
        );
        assert_eq!(p.restarts, u32::from(restarts));
        let expected = matches!(exit, Exit::Code(0 | 2));
        assert_eq!(p.expected, Some(expected));
        if !restarts {
            assert_eq!(p.state, Exited);
            let exp = if expected { "expected" } else { "not expected" };
            assert_eq!(
                p.describe(Instant::now()),
                format!("{}; {exp}", exit.describe())
            );
        }
    }
}

#[test]
fn retries_then_fatal_with_growing_delays() {
    let pol = policy(); // startretries = 2 → 3 attempts
    let mut p = Proc::default();
    let t0 = Instant::now();
    let mut now = t0;
    let mut spawns = 0;
    let mut step = p.handle(&pol, Event::Start, now).unwrap();
    let mut delays = vec![];
    loop {
        assert_eq!(step.actions, vec![Action::Spawn]);
        spawns += 1;
        p.handle(&pol, Event::Spawned { pid: 100 + spawns }, now)
            .unwrap();
        let exit = Event::Exited {
            exit: Exit::Code(1),
            group_alive: false,
        };
        let s = p.handle(&pol, exit, now).unwrap();
        if p.state == Fatal {
            assert_eq!(s.changes, vec![(Starting, Backoff), (Backoff, Fatal)]);
            break;
        }
        let d = p.deadline.unwrap();
        delays.push(d - now);
        now = d;
        step = p
            .handle(&pol, Event::Deadline { group_alive: false }, now)
            .unwrap();
    }
    assert_eq!(spawns, 3, "startretries + 1 attempts");
    assert_eq!(delays, vec![at(1.0), at(2.0)]);
    assert_eq!(p.describe(now), "exited too quickly (exit status 1)");
    // A manual start gets a fresh retry count.
    p.handle(&pol, Event::Start, now).unwrap();
    assert_eq!((p.state, p.retries), (Starting, 0));
}

#[test]
fn zero_starttime_is_running_at_once_and_zero_retries_is_fatal_at_once() {
    let pol = Policy {
        starttime: Duration::ZERO,
        startretries: 0,
        ..policy()
    };
    let mut p = Proc::default();
    let now = Instant::now();
    p.handle(&pol, Event::Start, now).unwrap();
    let s = p.handle(&pol, Event::Spawned { pid: 5 }, now).unwrap();
    assert_eq!(s.changes, vec![(Starting, Running)]);
    assert_eq!(p.describe(now + at(62.0)), "pid 5, uptime 0:01:02");

    let mut q = Proc::default();
    q.handle(&pol, Event::Start, now).unwrap();
    let s = q
        .handle(
            &pol,
            Event::SpawnFailed {
                reason: "spawn error: nope".into(),
            },
            now,
        )
        .unwrap();
    assert_eq!(s.changes, vec![(Starting, Backoff), (Backoff, Fatal)]);
    assert_eq!(q.describe(now), "spawn error: nope");
}

#[test]
fn stop_escalates_until_the_group_is_empty() {
    let pol = policy();
    let t0 = Instant::now();
    let mut p = proc_in(Running, Some(7));
    let s = p.handle(&pol, Event::Stop, t0).unwrap();
    assert_eq!(s.actions, vec![Action::Signal(Signal::SIGTERM)]);
    // The leader exits but a grandchild stays: keep waiting for the grace period.
    let s = p
        .handle(
            &pol,
            Event::Exited {
                exit: Exit::Code(0),
                group_alive: true,
            },
            t0 + at(1.0),
        )
        .unwrap();
    assert!(s.actions.is_empty() && p.state == Stopping);
    // Grace over: SIGKILL the group, re-check shortly.
    let t = t0 + at(5.0);
    let s = p
        .handle(&pol, Event::Deadline { group_alive: true }, t)
        .unwrap();
    assert_eq!(s.actions, vec![Action::Kill]);
    assert_eq!(p.deadline, Some(t + KILL_RECHECK));
    let s = p.handle(&pol, Event::GroupGone, t + at(0.01)).unwrap();
    assert_eq!(s.changes, vec![(Stopping, Stopped)]);
    assert_eq!(p.describe(t), "stopped");
    assert_eq!(Proc::default().describe(t), "Not started");
}

#[test]
fn uptime_format() {
    assert_eq!(format_uptime(at(0.0)), "0:00:00");
    assert_eq!(format_uptime(at(3725.0)), "1:02:05");
    assert_eq!(format_uptime(at(360000.0)), "100:00:00");
}
