//! Local mode's table: the mirror file as the rows, with their statuses in
//! an embedded database next to it (`local`, which says why SQLite).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::control::table::status::Guard;
use crate::control::table::{DestStatus, Mirror, MirrorFile, Row, ScannedRow};
use crate::store::StoreError;
use crate::store::local::{OwnedGuard, StateDb, StatusWrite};

/// Local mode: mirrors from a YAML file (read-only to us), status in
/// `<file>.state.db` next to it so a second run is incremental.
#[derive(Debug)]
pub struct FileStore {
    mirrors: Vec<Mirror>,
    /// The rows' keys, so a write for a row no longer in the file is told
    /// apart in O(1).
    keys: HashSet<String>,
    state: StateDb,
}

impl FileStore {
    /// Read the mirror file at `path` and open (or create) its state
    /// database, importing an old `<file>.state.json` when there is one and
    /// the database is new.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let mirrors = MirrorFile::load(path)?;
        let keys = mirrors.iter().map(Mirror::key).collect();
        let state = StateDb::open(
            &state_path_of(path),
            &PathBuf::from(format!("{}.state.json", path.display())),
        )?;
        Ok(FileStore {
            mirrors,
            keys,
            state,
        })
    }

    /// Where the statuses of the mirror file at `path` are kept.
    pub fn state_path(&self) -> &Path {
        self.state.path()
    }

    pub(super) async fn scan(&self) -> Result<Vec<ScannedRow>, StoreError> {
        let mut state = self.state.snapshot().await?;
        Ok(self
            .mirrors
            .iter()
            .map(|m| {
                let key = m.key();
                ScannedRow {
                    row: Ok(Row {
                        mirror: m.clone(),
                        status: state.status.remove(&key).unwrap_or_default(),
                        error: state.errors.remove(&key),
                    }),
                    key,
                    // A file is read whole: it has no index.
                    scope: None,
                }
            })
            .collect())
    }

    pub(super) async fn get(&self, source: &str) -> Result<Option<ScannedRow>, StoreError> {
        let Some(mirror) = self.mirrors.iter().find(|m| m.key() == source) else {
            return Ok(None);
        };
        let (status, error) = self.state.row(source).await?;
        Ok(Some(ScannedRow {
            row: Ok(Row {
                mirror: mirror.clone(),
                status,
                error,
            }),
            key: source.to_string(),
            scope: None,
        }))
    }

    /// Whether another live `sync` process has the file's state open now.
    /// Local mode's queue is in the process's memory, so when none has, a
    /// destination still `queued` or `copying` was claimed by a process
    /// that is gone (killed) and its job is lost: the caller may queue it
    /// again at once rather than after the claim hold-off.
    pub async fn others_open(&self) -> Result<bool, StoreError> {
        self.state.others_open().await
    }

    fn known(&self, source: &str) -> bool {
        self.keys.contains(source)
    }

    pub(super) async fn write_status(
        &self,
        source: &str,
        dest: &str,
        st: &DestStatus,
        guard: Guard<'_>,
    ) -> Result<(), StoreError> {
        let mut done = self
            .write_statuses(
                vec![(source.to_string(), dest.to_string(), st.clone())],
                guard,
            )
            .await?;
        done.pop().unwrap_or(Ok(()))
    }

    /// Write many statuses in one transaction, each under `guard`; one
    /// result per write, in order. The outer error is the transaction's.
    pub(super) async fn write_statuses(
        &self,
        writes: Vec<(String, String, DestStatus)>,
        guard: Guard<'_>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let guard = OwnedGuard::of(guard);
        let (known, gone): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .enumerate()
            .partition(|(_, (source, _, _))| self.known(source));
        let dests: Vec<String> = known.iter().map(|(_, (_, d, _))| d.clone()).collect();
        let order: Vec<usize> = known.iter().map(|(i, _)| *i).collect();
        let written = self
            .state
            .write_statuses(
                known
                    .into_iter()
                    .map(|(_, (source, dest, status))| StatusWrite {
                        source,
                        dest,
                        status,
                        guard: guard.clone(),
                    })
                    .collect(),
            )
            .await?;
        let mut out: Vec<(usize, Result<(), StoreError>)> = gone
            .into_iter()
            .map(|(i, (source, _, _))| (i, Err(StoreError::RowGone(source))))
            .collect();
        for ((i, dest), ok) in order.into_iter().zip(dests).zip(written) {
            out.push((
                i,
                if ok {
                    Ok(())
                } else {
                    Err(StoreError::Stale { dest })
                },
            ));
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    pub(super) async fn set_row_error(
        &self,
        source: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        if !self.known(source) {
            return Err(StoreError::RowGone(source.to_string()));
        }
        self.state.set_row_error(source, error).await
    }
}

/// `<file>.state.db`, next to the mirror file.
fn state_path_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.state.db", path.display()))
}
