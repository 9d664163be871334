//! Where the mirror table lives: DynamoDB, or (local mode) a YAML file with
//! its statuses in an embedded SQLite database next to it (`file` reads the
//! rows, `local` keeps the statuses and says why SQLite).
//!
//! Status is written per destination with `UpdateItem` on the `status.<dest>`
//! path, conditional on the row still existing, so the user's own fields are
//! never overwritten and a row deleted while its job was queued is not
//! brought back. `table import` writes new rows in batches (`batch`). Every
//! row is indexed by its source's repository or registry (`index`), so an
//! ECR push finds its rows without a scan. In local mode the same rules
//! hold per status write, in a transaction of the database that reads the
//! old status and asks the same `Guard`, so two `sync` processes may share
//! one file.

mod batch;
mod dynamo;
mod file;
pub mod index;
mod item;
mod local;
mod runs;
#[cfg(test)]
mod tests;

pub use batch::Imported;
pub use dynamo::{Created, DynamoStore};
pub use file::FileStore;
pub use item::row_from_item;
pub use local::SqlError;

pub mod queue;

use crate::control::table::{DestStatus, ScannedRow};
use crate::error::Cause;

use crate::control::table::status::Guard;

/// Rows per page of a file's table.
const FILE_PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `message` says what failed, with its causes' words; the SDK's error
    /// stays as the typed `cause`.
    #[error("DynamoDB table {table}: {message}")]
    Dynamo {
        table: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("the row for {0} no longer exists (deleted while its job was queued)")]
    RowGone(String),
    #[error(
        "a newer attempt already wrote the status of {dest}; this older result was not recorded"
    )]
    Stale { dest: String },
    #[error(transparent)]
    Table(#[from] crate::control::table::TableError),
    /// Local mode's state database (`path`) could not be read or written.
    #[error("{path}: {message}")]
    Local {
        path: String,
        message: String,
        #[source]
        source: Option<SqlError>,
    },
}

/// The table's rows a page at a time, as a scan reads them.
pub type Pages =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Vec<ScannedRow>, StoreError>> + Send>>;

/// The mirror table, wherever it lives.
#[derive(Debug)]
pub enum Store {
    Dynamo(DynamoStore),
    File(FileStore),
}

impl Store {
    pub async fn scan(&self, segments: u32) -> Result<Vec<ScannedRow>, StoreError> {
        match self {
            Store::Dynamo(d) => d.scan(segments).await,
            Store::File(f) => f.scan().await,
        }
    }

    /// The rows a page at a time, as they are read (see [`DynamoStore::pages`]);
    /// a file is read whole, then handed out in pages of the same kind.
    pub async fn pages(&self, segments: u32, consistent: bool) -> Pages {
        match self {
            Store::Dynamo(d) => d.pages(segments, consistent),
            Store::File(f) => {
                let rows = match f.scan().await {
                    Ok(rows) => rows,
                    Err(e) => return Box::pin(futures_util::stream::iter([Err(e)])),
                };
                let mut rows = rows.into_iter();
                let pages: Vec<Result<Vec<ScannedRow>, StoreError>> = std::iter::from_fn(|| {
                    let page: Vec<ScannedRow> = rows.by_ref().take(FILE_PAGE).collect();
                    (!page.is_empty()).then_some(Ok(page))
                })
                .collect();
                Box::pin(futures_util::stream::iter(pages))
            }
        }
    }

    /// The rows an event concerns, found through the source index without a
    /// scan; `None` where only a scan can tell (a file, or an event that
    /// names no registry).
    pub fn event_pages(&self, filter: &crate::control::scan::EventFilter) -> Option<Pages> {
        let (Store::Dynamo(d), Some(lookup)) = (self, index::lookup(filter)) else {
            return None;
        };
        let d = d.clone();
        Some(Box::pin(futures_util::stream::once(async move {
            d.lookup_rows(&lookup).await
        })))
    }

    /// Bring the row's source index entry up to date (a row typed by hand,
    /// or one written before the index); `true` when it was written. A
    /// file has no index.
    pub async fn keep_indexed(&self, scanned: &ScannedRow) -> Result<bool, StoreError> {
        let (Store::Dynamo(d), Ok(row)) = (self, &scanned.row) else {
            return Ok(false);
        };
        let want = index::scope_of(&row.mirror);
        if scanned.scope.as_deref() == Some(want.as_str()) {
            return Ok(false);
        }
        d.set_scope(&scanned.key, &want).await?;
        Ok(true)
    }

    pub async fn get(&self, source: &str) -> Result<Option<ScannedRow>, StoreError> {
        match self {
            Store::Dynamo(d) => d.get(source).await,
            Store::File(f) => f.get(source).await,
        }
    }

    /// Write one destination's status; fails with [`StoreError::RowGone`]
    /// when the row has been deleted.
    pub async fn update_status(
        &self,
        source: &str,
        dest: &str,
        status: &DestStatus,
    ) -> Result<(), StoreError> {
        match self {
            Store::Dynamo(d) => d.write_status(source, dest, status, Guard::Attempt).await,
            Store::File(f) => f.write_status(source, dest, status, Guard::Attempt).await,
        }
    }

    /// Write many destinations' statuses (the in-sync statuses a controller
    /// found for a page of rows), each under the same rule as
    /// [`Store::update_status`]; one result per write, in order. A file
    /// writes them in one transaction, checking the guard for each inside
    /// it (the outer error: that transaction failed, nothing was written);
    /// DynamoDB writes each with its own conditional `UpdateItem`.
    pub async fn update_statuses(
        &self,
        writes: Vec<(String, String, DestStatus)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        match self {
            Store::Dynamo(d) => {
                let mut out = Vec::with_capacity(writes.len());
                for (source, dest, status) in &writes {
                    out.push(d.write_status(source, dest, status, Guard::Attempt).await);
                }
                Ok(out)
            }
            Store::File(f) => f.write_statuses(writes, Guard::Attempt).await,
        }
    }

    /// Mark `dest` queued only if nobody else queued it since this
    /// controller read the row (`seen_queued_at`): two controllers running
    /// at once then never both send a job for it. Fails with
    /// [`StoreError::Stale`] when another controller won.
    pub async fn claim_queued(
        &self,
        source: &str,
        dest: &str,
        seen_queued_at: Option<&str>,
        status: &DestStatus,
    ) -> Result<(), StoreError> {
        let guard = Guard::QueuedAt(seen_queued_at);
        match self {
            Store::Dynamo(d) => d.write_status(source, dest, status, guard).await,
            Store::File(f) => f.write_status(source, dest, status, guard).await,
        }
    }

    /// Set or clear the row-level error.
    pub async fn set_row_error(&self, source: &str, error: Option<&str>) -> Result<(), StoreError> {
        match self {
            Store::Dynamo(d) => d.set_row_error(source, error).await,
            Store::File(f) => f.set_row_error(source, error).await,
        }
    }
}
