//! The `depends_on` option of SPEC §11: read per service, then checked
//! across services once every service has been read.
//!
//! Reading ([`read`]) takes a list of service names (each `"started"`) or a
//! table name → `"started"` | `"healthy"` | `"completed"`. The cross-service
//! checks ([`check`]) need the whole config, so [`super::validate`] collects
//! a [`Node`] per service — also for a service whose own options have
//! errors, so that one mistake does not echo as "unknown service" in every
//! dependent — and runs them last, adding to the same list of problems.
//!
//! Cycles: the graph is split into strongly connected components (Tarjan,
//! iterative, so a chain of thousands of services cannot overflow the
//! stack). Within a component, the shortest cycle through each member (by
//! breadth-first search, neighbours in name order) is reported once, rotated
//! to start at its first service in name order and reported there:
//! `services.a.depends_on: dependency cycle a -> b -> a`. Every component
//! with a cycle is searched from its first member, so every tangle is
//! reported (in linear time); the searches from its other members, which
//! add the other cycles, stop once [`SEARCH_BUDGET`] steps are spent, since
//! a pathological config (one cycle through fifty thousand services) would
//! otherwise take quadratic time to report the same cycle over and over.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::Value;

use super::fields::{did_you_mean, kind, Problems};
use super::Condition;

/// How many edges the extra cycle searches (see the module header) may
/// follow in all: far more than any real config's, and a bound on the time
/// a pathological one can take.
pub(super) const SEARCH_BUDGET: usize = 1_000_000;

/// What the cross-service checks know of one service.
#[derive(Debug, Default)]
pub(super) struct Node {
    /// Its dependencies, as read.
    pub(super) deps: BTreeMap<String, Condition>,
    /// Whether it has a `healthcheck` (valid or not: a broken one is
    /// already reported, and is not also "missing").
    pub(super) healthcheck: bool,
}

/// Reads the `depends_on` value `v` (at `path`).
pub(super) fn read(v: &Value, path: &str, p: &mut Problems) -> BTreeMap<String, Condition> {
    let mut deps = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    // A name listed twice means the same thing once.
                    Some(name) => {
                        deps.insert(name.to_string(), Condition::Started);
                    }
                    None => p.add(
                        &format!("{path}[{}]", i + 1),
                        format!("expected a service name, got {}", kind(item)),
                    ),
                }
            }
        }
        Value::Object(map) => {
            for (name, word) in map {
                let condition = match word.as_str() {
                    Some("started") => Condition::Started,
                    Some("healthy") => Condition::Healthy,
                    Some("completed") => Condition::Completed,
                    _ => {
                        p.add(
                            &format!("{path}.{name}"),
                            format!(
                                "expected \"started\", \"healthy\" or \"completed\", got {}",
                                kind(word)
                            ),
                        );
                        continue;
                    }
                };
                deps.insert(name.clone(), condition);
            }
        }
        other => p.add(
            path,
            format!(
                "expected a list of service names or a table of conditions, got {}",
                kind(other)
            ),
        ),
    }
    deps
}

/// The checks that need every service: unknown names, `healthy` without a
/// healthcheck, cycles. `declared` is every name under `services`, valid or
/// not (a service whose name is already an error is not also unknown).
pub(super) fn check(graph: &BTreeMap<String, Node>, declared: &[&str], p: &mut Problems) {
    let known: BTreeSet<&str> = declared.iter().copied().collect();
    for (name, node) in graph {
        let path = format!("services.{name}.depends_on");
        for (dep, condition) in &node.deps {
            if !known.contains(dep.as_str()) {
                let hint = did_you_mean(dep, declared)
                    .map(|k| format!(" — did you mean \"{k}\"?"))
                    .unwrap_or_default();
                p.add(&path, format!("unknown service \"{dep}\"{hint}"));
            } else if *condition == Condition::Healthy
                && graph.get(dep).is_some_and(|d| !d.healthcheck)
            {
                p.add(
                    &format!("{path}.{dep}"),
                    format!("\"healthy\" needs a healthcheck on {dep}"),
                );
            }
        }
    }
    let names: Vec<&str> = graph.keys().map(String::as_str).collect();
    for cycle in cycles(graph) {
        let mut text: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
        text.push(names[cycle[0]]);
        p.add(
            &format!("services.{}.depends_on", names[cycle[0]]),
            format!("dependency cycle {}", text.join(" -> ")),
        );
    }
}

/// The cycles to report, as indexes into the graph's name order, each
/// starting at its lowest index, sorted.
fn cycles(graph: &BTreeMap<String, Node>) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = graph
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    // Name order in, name order out: BTreeMap keys are sorted, so are these.
    let adj: Vec<Vec<usize>> = graph
        .values()
        .map(|node| {
            node.deps
                .keys()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let (component, count) = components(&adj);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (v, &c) in component.iter().enumerate() {
        members[c].push(v);
    }
    let mut found = BTreeSet::new();
    let mut search = Search {
        came_from: vec![None; adj.len()],
        touched: Vec::new(),
        steps: 0,
    };
    for group in &members {
        let tangled = group.len() > 1 || group.iter().any(|&v| adj[v].contains(&v));
        if !tangled {
            continue;
        }
        for (k, &start) in group.iter().enumerate() {
            if k > 0 && search.steps > SEARCH_BUDGET {
                break;
            }
            if let Some(mut cycle) = search.shortest_cycle(&adj, &component, start) {
                let lowest = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, &v)| v)
                    .map_or(0, |(at, _)| at);
                cycle.rotate_left(lowest);
                found.insert(cycle);
            }
        }
    }
    found.into_iter().collect()
}

/// Breadth-first searches for cycles, sharing their scratch space.
struct Search {
    /// Per node, the node it was first reached from in this search.
    came_from: Vec<Option<usize>>,
    /// The nodes `came_from` was set for, to reset only those.
    touched: Vec<usize>,
    /// Edges followed by every search so far.
    steps: usize,
}

impl Search {
    /// The shortest cycle through `start`, within its component, as the
    /// services in order from `start` (not repeated at the end).
    fn shortest_cycle(
        &mut self,
        adj: &[Vec<usize>],
        component: &[usize],
        start: usize,
    ) -> Option<Vec<usize>> {
        for v in self.touched.drain(..) {
            self.came_from[v] = None;
        }
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &w in &adj[v] {
                self.steps += 1;
                if w == start {
                    let mut path = vec![v];
                    let mut at = v;
                    while at != start {
                        at = self.came_from[at]?;
                        path.push(at);
                    }
                    path.reverse();
                    return Some(path);
                }
                if component[w] == component[start] && self.came_from[w].is_none() {
                    self.came_from[w] = Some(v);
                    self.touched.push(w);
                    queue.push_back(w);
                }
            }
        }
        None
    }
}

/// Tarjan's strongly connected components, without recursion: each node's
/// component number, and how many there are.
fn components(adj: &[Vec<usize>]) -> (Vec<usize>, usize) {
    let n = adj.len();
    let mut order: Vec<Option<usize>> = vec![None; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut component = vec![usize::MAX; n];
    let mut count = 0;
    let mut next = 0;
    for root in 0..n {
        if order[root].is_some() {
            continue;
        }
        // (node, how many of its edges are done): the recursion's frames.
        let mut frames = vec![(root, 0)];
        order[root] = Some(next);
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&(v, edge)) = frames.last() {
            if let Some(&w) = adj[v].get(edge) {
                if let Some(frame) = frames.last_mut() {
                    frame.1 += 1;
                }
                match order[w] {
                    None => {
                        order[w] = Some(next);
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        frames.push((w, 0));
                    }
                    Some(o) if on_stack[w] => low[v] = low[v].min(o),
                    Some(_) => {}
                }
                continue;
            }
            frames.pop();
            if let Some(&(parent, _)) = frames.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if Some(low[v]) == order[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component[w] = count;
                    if w == v {
                        break;
                    }
                }
                count += 1;
            }
        }
    }
    (component, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service and the services it depends on.
    type Edges<'a> = &'a [(&'a str, &'a [&'a str])];

    fn graph(edges: Edges) -> BTreeMap<String, Node> {
        edges
            .iter()
            .map(|(name, deps)| {
                let deps = deps
                    .iter()
                    .map(|d| (d.to_string(), Condition::Started))
                    .collect();
                (
                    name.to_string(),
                    Node {
                        deps,
                        healthcheck: false,
                    },
                )
            })
            .collect()
    }

    fn problems(edges: Edges) -> Vec<String> {
        let g = graph(edges);
        let declared: Vec<&str> = g.keys().map(String::as_str).collect();
        let mut p = Problems::default();
        check(&g, &declared, &mut p);
        p.into_vec()
    }

    #[test]
    fn cycle_table() {
        let table: &[(Edges, &[&str])] = &[
            (&[("a", &["b"]), ("b", &[])], &[]),
            (
                &[("a", &["a"])],
                &["services.a.depends_on: dependency cycle a -> a"],
            ),
            (
                &[("a", &["b"]), ("b", &["a"])],
                &["services.a.depends_on: dependency cycle a -> b -> a"],
            ),
            // Found from c first in no way changes where it is reported.
            (
                &[("c", &["a"]), ("a", &["b"]), ("b", &["c"])],
                &["services.a.depends_on: dependency cycle a -> b -> c -> a"],
            ),
            // Two cycles through a, one self-loop: each once.
            (
                &[("a", &["a", "b", "c"]), ("b", &["a"]), ("c", &["a"])],
                &[
                    "services.a.depends_on: dependency cycle a -> a",
                    "services.a.depends_on: dependency cycle a -> b -> a",
                    "services.a.depends_on: dependency cycle a -> c -> a",
                ],
            ),
            // Separate tangles, each at its own first service; the
            // dependent outside them is no cycle.
            (
                &[
                    ("x", &["y"]),
                    ("y", &["x"]),
                    ("b", &["c"]),
                    ("c", &["b"]),
                    ("a", &["b", "x"]),
                ],
                &[
                    "services.b.depends_on: dependency cycle b -> c -> b",
                    "services.x.depends_on: dependency cycle x -> y -> x",
                ],
            ),
            // A diamond is no cycle.
            (
                &[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])],
                &[],
            ),
        ];
        for (edges, want) in table {
            assert_eq!(problems(edges), *want, "{edges:?}");
        }
    }

    #[test]
    fn a_long_chain_is_no_stack_overflow() {
        let n = 50_000;
        let names: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
        let mut g: BTreeMap<String, Node> = BTreeMap::new();
        for i in 0..n {
            let mut node = Node::default();
            node.deps
                .insert(names[(i + 1) % n].clone(), Condition::Started);
            g.insert(names[i].clone(), node);
        }
        let declared: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut p = Problems::default();
        check(&g, &declared, &mut p);
        let e = p.into_vec();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("services.s00000.depends_on: dependency cycle s00000 -> s00001 -> "),
            "{}",
            &e[0][..80]
        );
        assert!(e[0].ends_with(" -> s49999 -> s00000"));
    }
}
