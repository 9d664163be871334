//! Many rows at once, for `table import`: rows that are new are written with
//! `BatchWriteItem` (25 items a call, several calls at once), rows that
//! exist already with `UpdateItem`, so their status and the user's own
//! attributes stay. DynamoDB may leave items of a batch unprocessed under
//! load; those are sent again through the one retry helper.
//!
//! Which rows exist is asked with `BatchGetItem` (100 keys a call, only the
//! key read). A row created by someone else between that read and the write
//! is written over whole; it loses only its status, which the next
//! controller run records again from the registries.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::control::table::Mirror;
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::store::dynamo::{DynamoStore, TOTAL, mirror_attributes, s};

/// Items per `BatchWriteItem` (DynamoDB's limit).
const WRITE_BATCH: usize = 25;
/// Keys per `BatchGetItem` (DynamoDB's limit).
const READ_BATCH: usize = 100;
/// Batch calls in flight at once.
const IN_FLIGHT: usize = 4;

/// What an import wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub created: usize,
    pub updated: usize,
}

impl DynamoStore {
    /// Write every mirror: new rows in batches, existing rows one by one.
    pub async fn put_mirrors(&self, mirrors: &[Mirror]) -> Result<Imported, StoreError> {
        let keys: Vec<String> = mirrors.iter().map(Mirror::key).collect();
        let existing: HashSet<String> = futures_util::stream::iter(keys.chunks(READ_BATCH))
            .map(|chunk| self.existing(chunk))
            .buffer_unordered(IN_FLIGHT)
            .try_fold(HashSet::new(), |mut all, found| async move {
                all.extend(found);
                Ok(all)
            })
            .await?;
        let (old, new): (Vec<&Mirror>, Vec<&Mirror>) =
            mirrors.iter().partition(|m| existing.contains(&m.key()));
        futures_util::stream::iter(new.chunks(WRITE_BATCH))
            .map(|chunk| self.write_new(chunk))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        futures_util::stream::iter(old.iter())
            .map(|m| self.put_mirror(m))
            .buffer_unordered(IN_FLIGHT * 4)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(Imported {
            created: new.len(),
            updated: old.len(),
        })
    }

    /// Which of `keys` are rows already.
    async fn existing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        let mut wanted: Vec<HashMap<String, AttributeValue>> = keys
            .iter()
            .map(|k| HashMap::from([("source".to_string(), s(k.clone()))]))
            .collect();
        let mut found = Vec::new();
        let mut backoff = Backoff::default();
        while !wanted.is_empty() {
            let ask = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut wanted)))
                .projection_expression("#src")
                .expression_attribute_names("#src", "source")
                .build()
                .map_err(|e| self.err(e.to_string()))?;
            let out = self
                .client()
                .batch_get_item()
                .request_items(self.table(), ask)
                .return_consumed_capacity(TOTAL)
                .send()
                .await
                .map_err(|e| self.sdk_err(Some("reading which rows exist"), e))?;
            crate::usage::consumed(true, out.consumed_capacity());
            for item in out
                .responses()
                .and_then(|r| r.get(self.table()))
                .into_iter()
                .flatten()
            {
                if let Some(AttributeValue::S(k)) = item.get("source") {
                    found.push(k.clone());
                }
            }
            wanted = out
                .unprocessed_keys()
                .and_then(|u| u.get(self.table()))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            if !wanted.is_empty() && !backoff.wait(None).await {
                return Err(self.err(format!(
                    "{} keys stayed unprocessed by BatchGetItem",
                    wanted.len()
                )));
            }
        }
        Ok(found)
    }

    /// Write rows that do not exist yet, whole.
    async fn write_new(&self, mirrors: &[&Mirror]) -> Result<(), StoreError> {
        let mut pending = mirrors
            .iter()
            .map(|m| {
                let (set, _) = mirror_attributes(m);
                let mut item: HashMap<String, AttributeValue> =
                    set.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                item.insert("source".into(), s(m.key()));
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|p| WriteRequest::builder().put_request(p).build())
                    .map_err(|e| self.err(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut backoff = Backoff::default();
        while !pending.is_empty() {
            let out = self
                .client()
                .batch_write_item()
                .request_items(self.table(), std::mem::take(&mut pending))
                .return_consumed_capacity(TOTAL)
                .send()
                .await
                .map_err(|e| self.sdk_err(Some("writing rows"), e))?;
            crate::usage::consumed(false, out.consumed_capacity());
            pending = out
                .unprocessed_items()
                .and_then(|u| u.get(self.table()))
                .cloned()
                .unwrap_or_default();
            if !pending.is_empty() && !backoff.wait(None).await {
                return Err(self.err(format!(
                    "{} rows stayed unprocessed by BatchWriteItem",
                    pending.len()
                )));
            }
        }
        Ok(())
    }
}
