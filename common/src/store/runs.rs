//! Which processes have a local state file open, so a `sync` can tell a
//! claim (`queued`, `copying`) that another live process is working on from
//! one left by a process that is gone.
//!
//! Local mode's queue lives in the process's memory: a `sync` killed with
//! jobs in hand loses them, while their destinations still say `queued` or
//! `copying`. DynamoDB mode waits out a hold-off for such claims (the SQS
//! message may still be delivered); here nothing can deliver it, so when no
//! other live process has the file open, the next run queues them again at
//! once. While another one has it open, its claims are left to it.
//!
//! A run is known by `<boot id> <pid> <process start time> <n>`: on the same
//! machine and boot, it is live while that process (same pid and start
//! time) exists. A run from another machine or boot (a file on a shared
//! disk), or on a system without `/proc`, cannot be checked and counts as
//! live for the claim hold-off after it opened the file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

/// Stores opened by this process so far, so two stores of one process are
/// two runs.
static OPENED: AtomicU64 = AtomicU64::new(0);

/// A run that cannot be checked counts as live this long after it opened
/// the file: the claim hold-off of `control::plan`.
const UNCHECKED_LIVE: Duration = crate::control::plan::DEFAULT_REQUEUE_AFTER;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY NOT NULL, -- boot id, pid, process start time, n
    opened TEXT NOT NULL          -- RFC 3339
) WITHOUT ROWID;
";

/// This process's identity, without the per-store number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    boot: String,
    pid: u32,
    start: String,
}

impl Process {
    fn me() -> Process {
        let pid = std::process::id();
        Process {
            boot: boot_id(),
            pid,
            start: start_time(pid).unwrap_or_default(),
        }
    }

    fn parse(id: &str) -> Option<Process> {
        let mut parts = id.split(' ');
        Some(Process {
            boot: parts.next()?.to_string(),
            pid: parts.next()?.parse().ok()?,
            start: parts.next()?.to_string(),
        })
    }
}

/// A new run id for a store this process opens.
pub(super) fn new_id() -> String {
    let p = Process::me();
    let n = OPENED.fetch_add(1, Ordering::Relaxed);
    format!("{} {} {} {n}", p.boot, p.pid, p.start)
}

/// Record run `id` as having the file open, and forget the runs that are
/// gone. Runs inside the caller's write transaction.
pub(super) fn register(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    for (other, _) in live_or_not(conn)?.into_iter().filter(|(_, live)| !live) {
        conn.execute("DELETE FROM runs WHERE id = ?1", [&other])?;
    }
    conn.execute(
        "INSERT OR REPLACE INTO runs (id, opened) VALUES (?1, ?2)",
        params![id, crate::control::table::now_rfc3339()],
    )?;
    Ok(())
}

/// The run `id` closed the file.
pub(super) fn unregister(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM runs WHERE id = ?1", [id])
        .map(|_| ())
}

/// Whether a live run other than `id` has the file open.
pub(super) fn others_live(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(live_or_not(conn)?
        .into_iter()
        .any(|(other, live)| live && other != id))
}

/// Every recorded run, and whether it is live.
fn live_or_not(conn: &Connection) -> rusqlite::Result<Vec<(String, bool)>> {
    let me = Process::me();
    let mut st = conn.prepare_cached("SELECT id, opened FROM runs")?;
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(id, opened)| {
            let live = is_live(&me, &id, &opened, SystemTime::now());
            (id, live)
        })
        .collect())
}

fn is_live(me: &Process, id: &str, opened: &str, now: SystemTime) -> bool {
    match Process::parse(id) {
        Some(p) if !me.boot.is_empty() && p.boot == me.boot && !p.start.is_empty() => {
            start_time(p.pid).as_deref() == Some(p.start.as_str())
        }
        // Another machine or boot, or no /proc: by age.
        _ => humantime::parse_rfc3339(opened)
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < UNCHECKED_LIVE),
    }
}

/// This boot's id (Linux), or empty.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// When process `pid` started, in clock ticks since boot (Linux: field 22
/// of `/proc/PID/stat`), so a pid reused by another process is told apart.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from the last ')'. Field 3 is the first after it, so 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_live_while_its_process_is() {
        let me = Process::me();
        assert!(!me.boot.is_empty() && !me.start.is_empty(), "{me:?}");
        let now = SystemTime::now();
        let opened = "2000-01-01T00:00:00Z";
        assert!(is_live(&me, &new_id(), opened, now));
        // The same pid with another start time: a reused pid, gone.
        let reused = format!("{} {} 1 0", me.boot, me.pid);
        assert!(!is_live(&me, &reused, opened, now));
        // Another boot: by age.
        let recent = humantime::format_rfc3339(now - Duration::from_secs(60)).to_string();
        assert!(is_live(&me, "other-boot 1 1 0", &recent, now));
        assert!(!is_live(&me, "other-boot 1 1 0", opened, now));
        assert!(!is_live(&me, "garbage", opened, now));
    }
}
