//! Processes, read from `/proc`: a process's children, whether a process lives.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// The pids of the processes whose parent is `parent`.
pub fn children_of(parent: u32) -> HashSet<i32> {
    let mut children = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent) {
            children.insert(pid);
        }
    }
    children
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: i32) -> bool {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    match std::fs::read_to_string(path) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits (at most `within`) until none of `pids` runs; panics with `what` and the survivors.
pub fn all_dead(pids: &HashSet<i32>, within: Duration, what: &str) {
    crate::eventually_blocking(within, what, || {
        let alive: Vec<i32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
        if alive.is_empty() { Ok(()) } else { Err(alive) }
    })
}
