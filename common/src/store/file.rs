//! Local mode's table: the mirror file as the rows, with a JSON state file
//! next to it for the statuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::control::table::status::Guard;
use crate::control::table::{DestStatus, Mirror, MirrorFile, Row, ScannedRow};
use crate::store::StoreError;

// ---------------------------------------------------------------- file

/// Local mode: mirrors from a YAML file (read-only to us), status in
/// `<file>.state.json` next to it so a second run is incremental.
#[derive(Debug)]
pub struct FileStore {
    mirrors: Vec<Mirror>,
    state_path: PathBuf,
    state: Mutex<StateFile>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct StateFile {
    #[serde(default)]
    status: BTreeMap<String, BTreeMap<String, DestStatus>>,
    #[serde(default)]
    errors: BTreeMap<String, String>,
}

impl FileStore {
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let mirrors = MirrorFile::load(path)?;
        let state_path = PathBuf::from(format!("{}.state.json", path.display()));
        let state = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                crate::control::table::TableError::Parse {
                    path: state_path.display().to_string(),
                    message: format!("{e} (delete the file to start over)"),
                }
            })?,
            Err(_) => StateFile::default(),
        };
        Ok(FileStore {
            mirrors,
            state_path,
            state: Mutex::new(state),
        })
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    pub(super) async fn scan(&self) -> Vec<ScannedRow> {
        let state = self.state.lock().await;
        self.mirrors
            .iter()
            .map(|m| {
                let key = m.key();
                ScannedRow {
                    row: Ok(Row {
                        mirror: m.clone(),
                        status: state.status.get(&key).cloned().unwrap_or_default(),
                        error: state.errors.get(&key).cloned(),
                    }),
                    key,
                    // A file is read whole: it has no index.
                    scope: None,
                }
            })
            .collect()
    }

    pub(super) fn known(&self, source: &str) -> bool {
        self.mirrors.iter().any(|m| m.key() == source)
    }

    pub(super) async fn write_status(
        &self,
        source: &str,
        dest: &str,
        st: &DestStatus,
        guard: Guard<'_>,
    ) -> Result<(), StoreError> {
        if !self.known(source) {
            return Err(StoreError::RowGone(source.to_string()));
        }
        let mut state = self.state.lock().await;
        let row = state.status.entry(source.to_string()).or_default();
        let old = row.get(dest);
        if !guard.allows(old, st) {
            return Err(StoreError::Stale {
                dest: dest.to_string(),
            });
        }
        row.insert(dest.to_string(), st.clone());
        self.save(&state)
    }

    pub(super) async fn set_row_error(
        &self,
        source: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        if !self.known(source) {
            return Err(StoreError::RowGone(source.to_string()));
        }
        let mut state = self.state.lock().await;
        match error {
            Some(e) => state.errors.insert(source.to_string(), e.to_string()),
            None => state.errors.remove(source),
        };
        self.save(&state)
    }

    /// Write via a temporary file and rename, so a crash never leaves half a file.
    pub(super) fn save(&self, state: &StateFile) -> Result<(), StoreError> {
        let tmp = self.state_path.with_extension("json.tmp");
        let write = |p: &Path| -> std::io::Result<()> {
            std::fs::write(p, serde_json::to_vec_pretty(state).unwrap_or_default())?;
            std::fs::rename(p, &self.state_path)
        };
        write(&tmp).map_err(|source| {
            StoreError::Table(crate::control::table::TableError::Write {
                path: self.state_path.display().to_string(),
                source,
            })
        })
    }
}
