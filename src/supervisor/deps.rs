//! Dependencies (SPEC §11), as pure functions of the config and the
//! instances' states: whether an instance may start, must wait (and for
//! what), or must fail; which services to start first; which instances must
//! stop before which. Table-tested below, like `state.rs`.

use std::collections::BTreeMap;

use crate::config::Condition;

use super::state::State;

/// What the supervisor knows of one instance, for dependency checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Its state.
    pub state: State,
    /// Whether its health is "healthy" (false without a healthcheck).
    pub healthy: bool,
    /// Whether it is RUNNING, unhealthy, and will not be restarted for it
    /// (`on_unhealthy = "none"`): a settled failure to become healthy.
    pub stuck_unhealthy: bool,
    /// For EXITED: whether the exit code was expected.
    pub expected: Option<bool>,
}

/// What an instance's dependencies say right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// All met: start.
    Go,
    /// Not met yet: wait for these (in config order).
    Wait(Vec<(String, Condition)>),
    /// Not met, and every unmet one has settled without meeting it (a start
    /// waiting on it should be told so; the instance keeps waiting).
    Stuck(Vec<(String, Condition)>),
    /// A dependency failed: the waiting instance becomes FATAL for this.
    Fail(String),
}

/// Whether `views` (the instances of one dependency) meet `cond`; Err with
/// the failure when they never will by themselves.
fn check(service: &str, cond: Condition, views: &[View]) -> Result<bool, String> {
    if views.iter().any(|v| v.state == State::Fatal) {
        return Err(format!("dependency {service} is FATAL"));
    }
    Ok(match cond {
        Condition::Started => views.iter().all(|v| v.state == State::Running),
        Condition::Healthy => views.iter().all(|v| v.state == State::Running && v.healthy),
        Condition::Completed => {
            if views
                .iter()
                .any(|v| v.state == State::Exited && v.expected == Some(false))
            {
                return Err(format!("dependency {service} exited unexpectedly"));
            }
            views
                .iter()
                .all(|v| v.state == State::Exited && v.expected == Some(true))
        }
    })
}

/// Whether an unmet dependency has settled: nothing will change it unless
/// somebody acts.
fn settled(cond: Condition, views: &[View]) -> bool {
    views.iter().all(|v| match v.state {
        State::Running => cond == Condition::Healthy && (v.healthy || v.stuck_unhealthy),
        State::Stopped | State::Exited => true,
        _ => false,
    })
}

/// The verdict for an instance whose service has `deps`; `views` gives the
/// instances of a service (None: no such service any more, which no longer
/// holds anyone).
pub fn verdict<'a>(
    deps: &BTreeMap<String, Condition>,
    views: impl Fn(&str) -> Option<&'a [View]>,
) -> Verdict {
    let mut unmet = Vec::new();
    let mut all_settled = true;
    for (service, cond) in deps {
        let Some(v) = views(service) else { continue };
        match check(service, *cond, v) {
            Err(why) => return Verdict::Fail(why),
            Ok(true) => {}
            Ok(false) => {
                all_settled &= settled(*cond, v);
                unmet.push((service.clone(), *cond));
            }
        }
    }
    match (unmet.is_empty(), all_settled) {
        (true, _) => Verdict::Go,
        (false, true) => Verdict::Stuck(unmet),
        (false, false) => Verdict::Wait(unmet),
    }
}

/// `waiting for db (healthy), migrate (completed)`.
pub fn waiting_line(unmet: &[(String, Condition)]) -> String {
    let parts: Vec<String> = unmet
        .iter()
        .map(|(s, c)| format!("{s} ({})", c.name()))
        .collect();
    format!("waiting for {}", parts.join(", "))
}

/// Whether a dependency instance in `view` needs starting for a dependent
/// that waits on `cond`: STOPPED, FATAL, or EXITED unless that satisfies
/// `completed`.
pub fn needs_start(cond: Condition, view: &View) -> bool {
    match view.state {
        State::Stopped | State::Fatal => true,
        State::Exited => !(cond == Condition::Completed && view.expected == Some(true)),
        _ => false,
    }
}

/// Whether an instance counts as stopped for ordering a stop of its
/// dependencies: it has no process and none is coming.
pub fn is_down(state: State) -> bool {
    matches!(
        state,
        State::Stopped | State::Exited | State::Fatal | State::Waiting
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Condition::*;
    use State::*;

    fn v(state: State) -> View {
        View {
            state,
            healthy: false,
            stuck_unhealthy: false,
            expected: None,
        }
    }
    fn healthy() -> View {
        View {
            healthy: true,
            ..v(Running)
        }
    }
    fn stuck() -> View {
        View {
            stuck_unhealthy: true,
            ..v(Running)
        }
    }
    fn exited(expected: bool) -> View {
        View {
            expected: Some(expected),
            ..v(Exited)
        }
    }

    #[test]
    fn each_condition_against_each_state() {
        use Verdict::*;
        let wait = |c| Wait(vec![("db".to_string(), c)]);
        let stuck_v = |c| Stuck(vec![("db".to_string(), c)]);
        let rows: Vec<(Condition, Vec<View>, Verdict)> = vec![
            (Started, vec![v(Running), v(Running)], Go),
            (Started, vec![v(Running), v(Starting)], wait(Started)),
            (Started, vec![v(Running), v(Backoff)], wait(Started)),
            (
                Started,
                vec![v(Fatal)],
                Fail("dependency db is FATAL".into()),
            ),
            (Started, vec![v(Stopped)], stuck_v(Started)),
            (Healthy, vec![healthy()], Go),
            (Healthy, vec![v(Running)], wait(Healthy)),
            (Healthy, vec![healthy(), stuck()], stuck_v(Healthy)),
            (Healthy, vec![v(Starting)], wait(Healthy)),
            (Completed, vec![exited(true), exited(true)], Go),
            (Completed, vec![v(Running)], wait(Completed)),
            (
                Completed,
                vec![exited(true), exited(false)],
                Fail("dependency db exited unexpectedly".into()),
            ),
            (
                Completed,
                vec![v(Fatal)],
                Fail("dependency db is FATAL".into()),
            ),
        ];
        for (cond, views, want) in rows {
            let deps = BTreeMap::from([("db".to_string(), cond)]);
            let got = verdict(&deps, |s| (s == "db").then_some(views.as_slice()));
            assert_eq!(got, want, "{cond:?} {views:?}");
        }
    }

    #[test]
    fn several_dependencies_list_what_is_unmet_and_a_dropped_one_holds_nobody() {
        let db = [healthy()];
        let migrate = [v(Running)];
        let deps = BTreeMap::from([
            ("db".to_string(), Healthy),
            ("gone".to_string(), Started),
            ("migrate".to_string(), Completed),
        ]);
        let got = verdict(&deps, |s| match s {
            "db" => Some(&db[..]),
            "migrate" => Some(&migrate[..]),
            _ => None,
        });
        assert_eq!(got, Verdict::Wait(vec![("migrate".into(), Completed)]));
        assert_eq!(
            waiting_line(&[("db".into(), Healthy), ("migrate".into(), Completed)]),
            "waiting for db (healthy), migrate (completed)"
        );
    }

    #[test]
    fn what_a_start_starts_first() {
        for (cond, view, want) in [
            (Started, v(Stopped), true),
            (Started, v(Fatal), true),
            (Started, exited(true), true),
            (Completed, exited(true), false),
            (Completed, exited(false), true),
            (Started, v(Running), false),
            (Started, v(Starting), false),
            (Started, v(Waiting), false),
        ] {
            assert_eq!(needs_start(cond, &view), want, "{cond:?} {view:?}");
        }
        assert!(is_down(Stopped) && is_down(Waiting) && !is_down(Stopping) && !is_down(Running));
    }
}
