//! Local mode's state file as the tests read it: the statuses and row
//! errors in `<mirrors>.state.db` (SQLite), read-only, in the shape the old
//! JSON state file had, so checks read the same either way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value, json};

/// `<mirrors>.state.db`.
pub fn state_db(mirrors: &Path) -> PathBuf {
    PathBuf::from(format!("{}.state.db", mirrors.display()))
}

/// `{"status": {row: {destination: status}}, "errors": {row: error}}` as
/// the state database holds them now (one read transaction); empty maps
/// before the database exists. Panics on a file SQLite cannot read.
pub fn local_state(mirrors: &Path) -> Value {
    let db = state_db(mirrors);
    if !db.exists() {
        return json!({"status": {}, "errors": {}});
    }
    let mut conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = conn.transaction().unwrap();
    let mut status: Map<String, Value> = Map::new();
    let mut errors: Map<String, Value> = Map::new();
    // A database another process is still creating has no tables yet.
    let made: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    if made > 0 {
        let mut st = tx
            .prepare("SELECT source, dest, status FROM status")
            .unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (source, dest, json) = row.unwrap();
            let s: Value = serde_json::from_str(&json).unwrap();
            status
                .entry(source)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap()
                .insert(dest, s);
        }
        let mut st = tx.prepare("SELECT source, error FROM row_error").unwrap();
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap();
        for row in rows {
            let (source, error) = row.unwrap();
            errors.insert(source, Value::String(error));
        }
    }
    json!({"status": status, "errors": errors})
}

/// SQLite's own check of the whole state file: `ok`, or what is wrong.
pub fn state_integrity(mirrors: &Path) -> String {
    let db = state_db(mirrors);
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut st = conn.prepare("PRAGMA integrity_check").unwrap();
    let lines: Vec<String> = st
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| vec![e.to_string()]);
    lines.join("; ")
}
