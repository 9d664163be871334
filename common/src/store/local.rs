//! Local mode's state: each destination's status and each row's error, in
//! an embedded SQLite database next to the mirror file (`FILE.state.db`).
//!
//! Why a database, and why SQLite (through `rusqlite`, built from its
//! bundled source so no system library is needed):
//! - A status write is one UPSERT of one (row, destination) record: O(1).
//!   The JSON file this replaces was rewritten whole for every write, O(N²)
//!   over a run (10,000 in-sync rows: 170 s and 13.4 GB written).
//! - Two `sync` processes may share one file. SQLite locks the file for the
//!   length of a write transaction and the other process waits its turn
//!   (the busy timeout); redb takes an exclusive lock on its file for as
//!   long as it is open, so a second process could not open it at all.
//! - Each write reads the old status, asks [`Guard`] and writes inside one
//!   `BEGIN IMMEDIATE` transaction, so the guard holds across processes as
//!   DynamoDB's condition expression does: a status never regresses.
//! - `kill -9` at any moment leaves a file the next run opens: a
//!   transaction is in the write-ahead log whole or not at all.
//!
//! A state file of the old format (`FILE.state.json`) is imported in the
//! transaction that creates the schema, then renamed to
//! `FILE.state.json.bak`, so it is imported once and kept as a backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Deserialize;

use crate::control::table::DestStatus;
use crate::control::table::status::Guard;
use crate::store::StoreError;
use crate::store::runs;

/// How long a write waits for another process's transaction to end.
/// Transactions are short (one status, or one batch of in-sync statuses),
/// so only a stopped process would hold the lock this long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema this code writes (`PRAGMA user_version`); 0 is a new file.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS status (
    source TEXT NOT NULL,
    dest TEXT NOT NULL,
    status TEXT NOT NULL, -- the DestStatus as JSON, as the old file held it
    PRIMARY KEY (source, dest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS row_error (
    source TEXT PRIMARY KEY NOT NULL,
    error TEXT NOT NULL
) WITHOUT ROWID;
";

const READ_STATUS: &str = "SELECT status FROM status WHERE source = ?1 AND dest = ?2";
const UPSERT_STATUS: &str = "INSERT INTO status (source, dest, status) VALUES (?1, ?2, ?3) \
     ON CONFLICT (source, dest) DO UPDATE SET status = excluded.status";

/// A SQLite error as the cause of a [`StoreError::Local`], in SQLite's
/// words once: rusqlite's error keeps SQLite's own as its source, which
/// says the same words again with the code's number.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SqlError(pub rusqlite::Error);

/// Every status and row error, keyed by row key (and destination).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Snapshot {
    #[serde(default)]
    pub(super) status: BTreeMap<String, BTreeMap<String, DestStatus>>,
    #[serde(default)]
    pub(super) errors: BTreeMap<String, String>,
}

/// One status write: the guard is owned so the write can move to a
/// blocking thread.
#[derive(Debug, Clone)]
pub(super) struct StatusWrite {
    pub(super) source: String,
    pub(super) dest: String,
    pub(super) status: DestStatus,
    pub(super) guard: OwnedGuard,
}

/// [`Guard`] with its `queued_at` owned.
#[derive(Debug, Clone)]
pub(super) enum OwnedGuard {
    Attempt,
    QueuedAt(Option<String>),
}

impl OwnedGuard {
    pub(super) fn of(guard: Guard<'_>) -> OwnedGuard {
        match guard {
            Guard::Attempt => OwnedGuard::Attempt,
            Guard::QueuedAt(seen) => OwnedGuard::QueuedAt(seen.map(str::to_string)),
        }
    }

    fn guard(&self) -> Guard<'_> {
        match self {
            OwnedGuard::Attempt => Guard::Attempt,
            OwnedGuard::QueuedAt(seen) => Guard::QueuedAt(seen.as_deref()),
        }
    }
}

/// The state database. SQLite calls block, so they run on tokio's blocking
/// threads; the connection is shared by this process's tasks one at a
/// time, and with other processes through SQLite's file locks.
#[derive(Debug, Clone)]
pub(super) struct StateDb {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// This store's entry in the `runs` table (`runs`).
    run: String,
}

impl Drop for Inner {
    /// The run closed the file: its claims are no longer anyone's. (A
    /// killed process leaves its entry, which the next opener finds dead.)
    fn drop(&mut self) {
        if let Err(e) = runs::unregister(&lock(&self.conn), &self.run) {
            tracing::debug!(file = %self.path.display(), error = %e, "cannot remove this run from the state database");
        }
    }
}

impl StateDb {
    /// Open (or create) the database at `path`, importing `legacy` (the old
    /// JSON state file) when the database is new. A file that is not a
    /// readable database is refused before anything is written to it.
    pub(super) fn open(path: &Path, legacy: &Path) -> Result<StateDb, StoreError> {
        let shown = path.display().to_string();
        let fail = |message: &str| {
            let message = message.to_string();
            let shown = shown.clone();
            move |source| StoreError::Local {
                path: shown,
                message,
                source: Some(SqlError(source)),
            }
        };
        // A bad old state file is refused before a new database is made
        // beside it (where one exists, `init` reads the old file only if
        // the database is still empty).
        let early = if path.exists() {
            None
        } else {
            Some(read_legacy(legacy)?)
        };
        let mut conn = Connection::open(path).map_err(fail("cannot open the state database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(fail("cannot open the state database"))?;
        // Read before any write: a file that is not a database, or a
        // damaged one, is refused as it is.
        let check: Vec<String> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(fail(concat!(
                "not a readable state database (move it away to start over; ",
                "the next run finds what is in sync again)"
            )))?;
        if check != ["ok"] {
            return Err(StoreError::Local {
                path: shown,
                message: format!(
                    "the state database is damaged (move it away to start over; the next run finds what is in sync again): {}",
                    check.join("; ")
                ),
                source: None,
            });
        }
        // Write-ahead log with synchronous=NORMAL: a commit is a write() to
        // the log, with no fsync. It survives the process being killed
        // (kill -9 at any moment: the log holds whole transactions, and the
        // next open replays or drops them); only a power loss or an OS
        // crash may lose the last commits, never the file. Readers do not
        // block the writer, so a second `sync` reads while this one writes.
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(fail("cannot open the state database"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail("cannot open the state database"))?;
        let run = runs::new_id();
        let imported = init(&mut conn, path, legacy, early, &run)?;
        if imported {
            let bak = PathBuf::from(format!("{}.bak", legacy.display()));
            // The import is committed: a rename that fails leaves the old
            // file, which is never read again (the schema exists now).
            if let Err(e) = std::fs::rename(legacy, &bak) {
                tracing::warn!(file = %legacy.display(), error = %e, "imported, but cannot rename it to .bak");
            } else {
                tracing::info!(from = %legacy.display(), to = %shown, backup = %bak.display(), "imported the old state file");
            }
        }
        Ok(StateDb {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                conn: Mutex::new(conn),
                run,
            }),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether another live process (or another store of this one) has the
    /// file open now; see `runs`.
    pub(super) async fn others_open(&self) -> Result<bool, StoreError> {
        self.blocking(|db, conn| {
            runs::others_live(conn, &db.inner.run).map_err(db.sql("cannot read the runs"))
        })
        .await
    }

    /// Every status and row error.
    pub(super) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.blocking(|db, conn| {
            let mut out = Snapshot::default();
            let mut st = conn
                .prepare_cached("SELECT source, dest, status FROM status")
                .map_err(db.sql("cannot read statuses"))?;
            let mut rows = st.query([]).map_err(db.sql("cannot read statuses"))?;
            while let Some(r) = rows.next().map_err(db.sql("cannot read statuses"))? {
                let (source, dest, json) = row3(r).map_err(db.sql("cannot read statuses"))?;
                let status = db.decode(&source, &dest, &json)?;
                out.status.entry(source).or_default().insert(dest, status);
            }
            let mut st = conn
                .prepare_cached("SELECT source, error FROM row_error")
                .map_err(db.sql("cannot read row errors"))?;
            let errors = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<BTreeMap<String, String>, _>>())
                .map_err(db.sql("cannot read row errors"))?;
            out.errors = errors;
            Ok(out)
        })
        .await
    }

    /// One row's statuses and error.
    pub(super) async fn row(
        &self,
        source: &str,
    ) -> Result<(BTreeMap<String, DestStatus>, Option<String>), StoreError> {
        let source = source.to_string();
        self.blocking(move |db, conn| {
            let mut st = conn
                .prepare_cached("SELECT dest, status FROM status WHERE source = ?1")
                .map_err(db.sql("cannot read statuses"))?;
            let pairs: Vec<(String, String)> = st
                .query_map([&source], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(db.sql("cannot read statuses"))?;
            let mut status = BTreeMap::new();
            for (dest, json) in pairs {
                let s = db.decode(&source, &dest, &json)?;
                status.insert(dest, s);
            }
            let error = conn
                .query_row(
                    "SELECT error FROM row_error WHERE source = ?1",
                    [&source],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db.sql("cannot read row errors"))?;
            Ok((status, error))
        })
        .await
    }

    /// Write `writes` in one transaction, each only where its guard allows:
    /// `Ok(true)` written, `Ok(false)` refused by the guard. The outer error
    /// is the transaction's (nothing was written).
    pub(super) async fn write_statuses(
        &self,
        writes: Vec<StatusWrite>,
    ) -> Result<Vec<bool>, StoreError> {
        self.blocking(move |db, conn| {
            let failed = db.sql("cannot write statuses");
            // IMMEDIATE takes the write lock before the read, so no other
            // process writes between this read and this write.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&failed)?;
            let mut done = Vec::with_capacity(writes.len());
            {
                let mut read = tx.prepare_cached(READ_STATUS).map_err(&failed)?;
                let mut upsert = tx.prepare_cached(UPSERT_STATUS).map_err(&failed)?;
                for w in &writes {
                    let old: Option<String> = read
                        .query_row(params![w.source, w.dest], |r| r.get(0))
                        .optional()
                        .map_err(&failed)?;
                    let old = match old {
                        Some(json) => Some(db.decode(&w.source, &w.dest, &json)?),
                        None => None,
                    };
                    if !w.guard.guard().allows(old.as_ref(), &w.status) {
                        done.push(false);
                        continue;
                    }
                    upsert
                        .execute(params![w.source, w.dest, encode(&w.status)])
                        .map_err(&failed)?;
                    done.push(true);
                }
            }
            tx.commit().map_err(&failed)?;
            Ok(done)
        })
        .await
    }

    /// Set (`Some`) or clear (`None`) a row's error.
    pub(super) async fn set_row_error(
        &self,
        source: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let (source, error) = (source.to_string(), error.map(str::to_string));
        self.blocking(move |db, conn| {
            let failed = db.sql("cannot write the row error");
            match error {
                Some(e) => conn.execute(
                    "INSERT INTO row_error (source, error) VALUES (?1, ?2) \
                     ON CONFLICT (source) DO UPDATE SET error = excluded.error",
                    params![source, e],
                ),
                None => conn.execute("DELETE FROM row_error WHERE source = ?1", [&source]),
            }
            .map_err(failed)?;
            Ok(())
        })
        .await
    }

    /// Run `f` on a blocking thread with the connection.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StateDb, &mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = lock(&db.inner.conn);
            f(&db, &mut conn)
        })
        .await;
        joined.map_err(|e| StoreError::Local {
            path: self.inner.path.display().to_string(),
            message: format!("a state database call did not finish: {e}"),
            source: None,
        })?
    }

    fn sql(&self, doing: &str) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        let (path, doing) = (self.inner.path.display().to_string(), doing.to_string());
        move |source| StoreError::Local {
            path: path.clone(),
            message: doing.clone(),
            source: Some(SqlError(source)),
        }
    }

    fn decode(&self, source: &str, dest: &str, json: &str) -> Result<DestStatus, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError::Local {
            path: self.inner.path.display().to_string(),
            message: format!("the status of {source} -> {dest} is not valid: {e}"),
            source: None,
        })
    }
}

/// The lock of a connection whose holder panicked is still a usable
/// connection: the panic dropped its transaction, which rolled back.
fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn row3(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn encode(status: &DestStatus) -> String {
    // A DestStatus is strings and numbers: serialising it cannot fail.
    serde_json::to_string(status).unwrap_or_default()
}

/// Create the schema in a new file, importing `legacy` in the same
/// transaction, and record this run (`runs`); `true` when it imported. Two
/// processes opening a new file at once take turns here, and the second
/// finds the schema made.
fn init(
    conn: &mut Connection,
    path: &Path,
    legacy: &Path,
    early: Option<Option<Snapshot>>,
    run: &str,
) -> Result<bool, StoreError> {
    let shown = path.display().to_string();
    let failed = |source| StoreError::Local {
        path: shown.clone(),
        message: "cannot create the state database".into(),
        source: Some(SqlError(source)),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Local {
            path: shown.clone(),
            message: format!(
                "written by a newer mirrorfleet (schema {version}; this one reads {SCHEMA_VERSION})"
            ),
            source: None,
        });
    }
    let imported = version < SCHEMA_VERSION
        && create(&tx, legacy, early).map_err(|e| match e {
            CreateError::Sql(e) => failed(e),
            CreateError::Legacy(e) => e,
        })?;
    runs::register(&tx, run).map_err(failed)?;
    tx.commit().map_err(failed)?;
    Ok(imported)
}

enum CreateError {
    Sql(rusqlite::Error),
    Legacy(StoreError),
}

impl From<rusqlite::Error> for CreateError {
    fn from(e: rusqlite::Error) -> CreateError {
        CreateError::Sql(e)
    }
}

/// The schema, in a new file, with the old JSON state imported; `true`
/// when there was one.
fn create(
    tx: &rusqlite::Transaction<'_>,
    legacy: &Path,
    early: Option<Option<Snapshot>>,
) -> Result<bool, CreateError> {
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(runs::SCHEMA)?;
    let old = match early {
        Some(read) => read,
        None => read_legacy(legacy).map_err(CreateError::Legacy)?,
    };
    let imported = match old {
        None => false,
        Some(old) => {
            let mut upsert = tx.prepare(UPSERT_STATUS)?;
            for (source, dests) in &old.status {
                for (dest, status) in dests {
                    upsert.execute(params![source, dest, encode(status)])?;
                }
            }
            let mut err =
                tx.prepare("INSERT OR REPLACE INTO row_error (source, error) VALUES (?1, ?2)")?;
            for (source, e) in &old.errors {
                err.execute(params![source, e])?;
            }
            true
        }
    };
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(imported)
}

/// The old JSON state file, if there is one.
fn read_legacy(legacy: &Path) -> Result<Option<Snapshot>, StoreError> {
    let bytes = match std::fs::read(legacy) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Table(crate::control::table::TableError::Read {
                path: legacy.display().to_string(),
                source,
            }));
        }
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        StoreError::Table(crate::control::table::TableError::Parse {
            path: legacy.display().to_string(),
            message: format!("{e} (an old state file, to be imported: move it away to start over)"),
        })
    })
}
