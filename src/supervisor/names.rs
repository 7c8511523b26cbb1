//! Name resolution: `web` (every instance of a service), `web:1` (one
//! instance), `all` (every instance the action applies to, SPEC §9).
//!
//! Pure: a function of the names and the instance table, generic over the
//! table's values so it is tested without processes.

use std::collections::BTreeMap;

use super::{CommandError, Key, Name};

/// Which instances `all` covers: a predicate on each instance's record.
pub type Covers<'a, T> = &'a dyn Fn(&T) -> bool;

/// Resolves `names` into instance keys, in request order, without
/// duplicates. `visible` hides instances on their way out (a reload removed
/// them); `all` takes the visible instances `covers` accepts; `service`
/// finds a live service by name.
pub fn resolve<T>(
    names: &[String],
    instances: &BTreeMap<Key, T>,
    visible: impl Fn(&T) -> bool,
    covers: Covers<'_, T>,
    service: impl Fn(&str) -> Option<Name>,
) -> Result<Vec<Key>, CommandError> {
    let mut keys: Vec<Key> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut push = |k: &Key| {
        if seen.insert(k.clone()) {
            keys.push(k.clone());
        }
    };
    for name in names {
        if name == "all" {
            instances
                .iter()
                .filter(|(_, i)| visible(i) && covers(i))
                .for_each(|(k, _)| push(k));
            continue;
        }
        let (svc, index) = match name.split_once(':') {
            Some((s, i)) => (s, Some(i)),
            None => (name.as_str(), None),
        };
        let unknown = || CommandError {
            code: "unknown_name",
            message: format!("no such service or instance: {name}"),
        };
        let svc = service(svc).ok_or_else(unknown)?;
        match index {
            None => instances
                .range((svc.clone(), 0)..=(svc.clone(), u32::MAX))
                .filter(|(_, i)| visible(i))
                .for_each(|(k, _)| push(k)),
            Some(i) => {
                let key = (svc, i.parse::<u32>().map_err(|_| unknown())?);
                match instances.get(&key) {
                    Some(inst) if visible(inst) => push(&key),
                    _ => return Err(unknown()),
                }
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// (visible, running) per instance.
    fn table() -> BTreeMap<Key, (bool, bool)> {
        let mut t = BTreeMap::new();
        t.insert((Arc::from("api"), 0), (true, true));
        t.insert((Arc::from("web"), 0), (true, false));
        t.insert((Arc::from("web"), 1), (true, true));
        t.insert((Arc::from("web"), 2), (false, true));
        t
    }

    fn run(names: &[&str]) -> Result<Vec<String>, String> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let t = table();
        let running = |i: &(bool, bool)| i.1;
        resolve(
            &names,
            &t,
            |i| i.0,
            &running,
            |s| ["api", "web"].contains(&s).then(|| Arc::from(s)),
        )
        .map(|keys| keys.iter().map(|k| format!("{}:{}", k.0, k.1)).collect())
        .map_err(|e| format!("{}: {}", e.code, e.message))
    }

    /// Names asked, then the instances or the error expected.
    type Row<'a> = (&'a [&'a str], Result<&'a [&'a str], &'a str>);

    #[test]
    fn names_resolve_in_request_order_without_duplicates() {
        let rows: &[Row] = &[
            (&["web"], Ok(&["web:0", "web:1"])),
            (&["web:1", "api"], Ok(&["web:1", "api:0"])),
            (&["web:1", "web"], Ok(&["web:1", "web:0"])),
            (&["all"], Ok(&["api:0", "web:1"])),
            (&["web:0", "all"], Ok(&["web:0", "api:0", "web:1"])),
            (
                &["webb"],
                Err("unknown_name: no such service or instance: webb"),
            ),
            (
                &["web:2"],
                Err("unknown_name: no such service or instance: web:2"),
            ),
            (
                &["web:x"],
                Err("unknown_name: no such service or instance: web:x"),
            ),
            (
                &["web:9"],
                Err("unknown_name: no such service or instance: web:9"),
            ),
        ];
        for (names, want) in rows {
            let want = want
                .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(str::to_string);
            assert_eq!(run(names), want, "{names:?}");
        }
    }
}
