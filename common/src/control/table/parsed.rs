//! What a mirror file or CSV held, row by row: the mirrors that parsed, and
//! each row refused with the reason, so `table import` can take the good rows
//! of a large file and report the few bad ones instead of refusing it all.

use std::fmt;

use crate::control::table::{Mirror, TableError};

/// A row that parsed, with where it stood in the file.
#[derive(Debug)]
pub struct Numbered {
    /// Its position, for ordering reports as the file is ordered.
    pub n: usize,
    /// How a report names it: `mirror 3 (source)` or `line 4 (source)`.
    pub at: String,
    pub mirror: Mirror,
}

/// A row that did not parse, or that an import cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub n: usize,
    pub at: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

/// The rows of one file, good and bad, in file order.
#[derive(Debug, Default)]
pub struct Parsed {
    pub mirrors: Vec<Numbered>,
    pub refused: Vec<Refused>,
}

impl Parsed {
    pub(super) fn take(&mut self, n: usize, at: String, mirror: Mirror) {
        self.mirrors.push(Numbered { n, at, mirror });
    }

    pub(super) fn refuse(&mut self, n: usize, at: String, reason: impl fmt::Display) {
        self.refused.push(Refused {
            n,
            at,
            reason: reason.to_string(),
        });
    }

    /// Move the rows `check` refuses (a store's own limits, such as the size
    /// of an item) to the refused ones, which stay in file order.
    pub fn refuse_where(&mut self, check: impl Fn(&Mirror) -> Result<(), String>) {
        let mut kept = Vec::with_capacity(self.mirrors.len());
        for row in std::mem::take(&mut self.mirrors) {
            match check(&row.mirror) {
                Ok(()) => kept.push(row),
                Err(reason) => self.refuse(row.n, row.at, reason),
            }
        }
        self.mirrors = kept;
        self.refused.sort_by_key(|r| r.n);
    }

    /// The mirrors alone, for an import that takes what parsed.
    pub fn into_mirrors(self) -> Vec<Mirror> {
        self.mirrors.into_iter().map(|r| r.mirror).collect()
    }

    /// All or nothing, as local mode reads its file: the first bad row is the
    /// error.
    pub fn strict(self, path: &str) -> Result<Vec<Mirror>, TableError> {
        match self.refused.into_iter().min_by_key(|r| r.n) {
            Some(first) => Err(TableError::Parse {
                path: path.to_string(),
                message: first.to_string(),
            }),
            None => Ok(self.mirrors.into_iter().map(|r| r.mirror).collect()),
        }
    }
}
