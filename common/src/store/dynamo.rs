//! The mirror table in DynamoDB: scans in parallel segments, rows by key,
//! and status writes per destination under one conditional guard.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};

use crate::control::table::status::Guard;
use crate::control::table::{DestStatus, Mirror, ScannedRow};
use crate::error::error_line;
use crate::store::StoreError;
use crate::store::item::json_to_attr;
use crate::store::item::status_to_attr;
use crate::store::row_from_item;

/// Scan pages read ahead of the consumer, across all segments: enough to
/// keep a page arriving while one is planned.
const READ_AHEAD: usize = 2;

/// Every call asks what it consumed, for the run's report.
pub(super) const TOTAL: aws_sdk_dynamodb::types::ReturnConsumedCapacity =
    aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total;

// ---------------------------------------------------------------- DynamoDB

/// What `table create` made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Table,
    /// The table existed without the source index: the index was added
    /// (DynamoDB backfills it from the rows' `source_scope`).
    Index,
    Nothing,
}

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    page_size: Option<i32>,
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// DynamoDB's answer to `SET status.<dest>` on a row without a `status` map
/// (one written by hand): a `ValidationException` about the document path.
pub(super) fn missing_status_map(
    e: &aws_sdk_dynamodb::operation::update_item::UpdateItemError,
) -> bool {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    e.code() == Some("ValidationException")
        && e.message().is_some_and(|m| m.contains("document path"))
}

impl DynamoStore {
    /// A store on `table` through an explicitly configured client.
    pub fn with_client(client: aws_sdk_dynamodb::Client, table: &str) -> DynamoStore {
        DynamoStore {
            client,
            table: table.to_string(),
            page_size: None,
        }
    }

    /// A store on `table`, with region, credentials and endpoint from the
    /// standard AWS configuration.
    pub async fn new(table: &str) -> DynamoStore {
        let conf = crate::aws::config().await;
        DynamoStore {
            client: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(&conf)
                    .interceptor(crate::usage::Tally)
                    .build(),
            ),
            table: table.to_string(),
            page_size: None,
        }
    }

    /// Items per scan page (DynamoDB's default is 1 MB of items).
    pub fn with_page_size(mut self, items: Option<u32>) -> DynamoStore {
        self.page_size = items.map(|n| n.clamp(1, i32::MAX as u32) as i32);
        self
    }

    pub(super) fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    pub(super) fn table(&self) -> &str {
        &self.table
    }

    pub(super) fn err(&self, message: String) -> StoreError {
        StoreError::Dynamo {
            table: self.table.clone(),
            message,
            cause: None,
        }
    }

    /// An SDK failure, its words in the message and itself as the cause.
    pub(super) fn sdk_err<E>(&self, doing: Option<&str>, e: E) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let words = error_line(&e);
        StoreError::Dynamo {
            table: self.table.clone(),
            message: match doing {
                Some(d) => format!("{d}: {words}"),
                None => words,
            },
            cause: Some(Box::new(e)),
        }
    }

    /// Create the table (on-demand, key `source`, with the source index).
    /// An existing table is fine; one made before the index gets it added.
    pub async fn create_table(&self) -> Result<Created, StoreError> {
        use aws_sdk_dynamodb::operation::create_table::CreateTableError;
        let index = super::index::definition().map_err(|e| self.err(e))?;
        let r = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(self.attributes()?))
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("source")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| self.err(e.to_string()))?,
            )
            .global_secondary_indexes(index)
            .send()
            .await;
        match r {
            Ok(_) => Ok(Created::Table),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(CreateTableError::ResourceInUseException(_))
                ) =>
            {
                self.add_index().await
            }
            Err(e) => Err(self.sdk_err(Some("cannot create it"), e)),
        }
    }

    /// The key's and the index's attribute types.
    fn attributes(&self) -> Result<Vec<AttributeDefinition>, StoreError> {
        ["source", super::index::ATTRIBUTE]
            .into_iter()
            .map(|name| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| self.err(e.to_string()))
            })
            .collect()
    }

    /// Add the source index to an existing table that lacks it.
    async fn add_index(&self) -> Result<Created, StoreError> {
        use aws_sdk_dynamodb::types::{
            CreateGlobalSecondaryIndexAction, GlobalSecondaryIndexUpdate,
        };
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.sdk_err(Some("cannot describe it"), e))?;
        let has_index = described.table().is_some_and(|t| {
            t.global_secondary_indexes()
                .iter()
                .any(|i| i.index_name() == Some(super::index::INDEX))
        });
        if has_index {
            return Ok(Created::Nothing);
        }
        let index = super::index::definition().map_err(|e| self.err(e))?;
        let action = CreateGlobalSecondaryIndexAction::builder()
            .index_name(super::index::INDEX)
            .set_key_schema(Some(index.key_schema().to_vec()))
            .set_projection(index.projection().cloned())
            .build()
            .map_err(|e| self.err(e.to_string()))?;
        self.client
            .update_table()
            .table_name(&self.table)
            .set_attribute_definitions(Some(self.attributes()?))
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(action).build(),
            )
            .send()
            .await
            .map_err(|e| self.sdk_err(Some("cannot add the source index"), e))?;
        Ok(Created::Index)
    }

    /// Scan every page of every segment, in parallel segments, into one
    /// list (strongly consistent reads): for callers that need the whole
    /// table at once. The controller streams with [`DynamoStore::pages`].
    pub async fn scan(&self, segments: u32) -> Result<Vec<ScannedRow>, StoreError> {
        use futures_util::StreamExt as _;
        let mut pages = self.pages(segments, true);
        let mut all = Vec::new();
        while let Some(page) = pages.next().await {
            all.extend(page?);
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// The table's pages as they are read, `segments` in parallel. However
    /// many segments, at most [`READ_AHEAD`] pages are being read or waiting
    /// for the consumer, so memory is bounded by the page size, not by the
    /// table or the segments. `consistent` asks for strongly consistent
    /// reads (twice the read units); the controller does not need them,
    /// because every write it makes is conditional on what it read.
    pub fn pages(&self, segments: u32, consistent: bool) -> super::Pages {
        let segments = segments.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let ahead = std::sync::Arc::new(tokio::sync::Semaphore::new(READ_AHEAD));
        for seg in 0..segments {
            let (store, tx, ahead) = (self.clone(), tx.clone(), ahead.clone());
            tokio::spawn(async move {
                let mut start: Option<HashMap<String, AttributeValue>> = None;
                loop {
                    // Held until the consumer takes the page off the channel.
                    let Ok(permit) = ahead.clone().acquire_owned().await else {
                        return;
                    };
                    let mut req = store
                        .client
                        .scan()
                        .table_name(&store.table)
                        .consistent_read(consistent)
                        .return_consumed_capacity(TOTAL)
                        .set_limit(store.page_size);
                    if segments > 1 {
                        req = req.segment(seg as i32).total_segments(segments as i32);
                    }
                    let out = match req.set_exclusive_start_key(start.take()).send().await {
                        Ok(out) => out,
                        Err(e) => {
                            let failed = Err(store.sdk_err(Some("scan failed"), e));
                            let _ = tx.send((failed, permit)).await;
                            return;
                        }
                    };
                    crate::usage::consumed(true, out.consumed_capacity());
                    let rows = out.items().iter().map(row_from_item).collect();
                    // The consumer stopped (an error, or a shutdown): so do we.
                    if tx.send((Ok(rows), permit)).await.is_err() {
                        return;
                    }
                    match out.last_evaluated_key() {
                        Some(k) if !k.is_empty() => start = Some(k.clone()),
                        _ => return,
                    }
                }
            });
        }
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            // The permit goes as the page is handed over: another may be read.
            rx.recv().await.map(|(page, _permit)| (page, rx))
        }))
    }

    pub async fn get(&self, source: &str) -> Result<Option<ScannedRow>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("source", s(source))
            .consistent_read(true)
            .return_consumed_capacity(TOTAL)
            .send()
            .await
            .map_err(|e| self.sdk_err(None, e))?;
        crate::usage::consumed(true, out.consumed_capacity());
        Ok(out.item().map(row_from_item))
    }

    /// Add or replace a mirror's user fields, keeping its status.
    /// Write a row's mirror fields with `UpdateItem`, keeping its status and
    /// any attribute of the user's own.
    pub async fn put_mirror(&self, m: &Mirror) -> Result<(), StoreError> {
        let (set, remove) = mirror_attributes(m);
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("source", s(m.key()));
        let mut assign = Vec::with_capacity(set.len());
        for (name, value) in set {
            assign.push(format!("{name} = :{name}"));
            req = req.expression_attribute_values(format!(":{name}"), value);
        }
        let mut expr = format!("SET {}", assign.join(", "));
        if !remove.is_empty() {
            expr.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let out = req
            .update_expression(expr)
            .return_consumed_capacity(TOTAL)
            .send()
            .await
            .map_err(|e| self.sdk_err(None, e))?;
        crate::usage::consumed(false, out.consumed_capacity());
        Ok(())
    }

    pub async fn delete(&self, source: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("source", s(source))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.sdk_err(None, e))?;
        Ok(out.attributes().is_some())
    }

    pub async fn update_status(
        &self,
        source: &str,
        dest: &str,
        st: &DestStatus,
    ) -> Result<(), StoreError> {
        self.write_status(source, dest, st, Guard::Attempt).await
    }

    pub(super) async fn write_status(
        &self,
        source: &str,
        dest: &str,
        st: &DestStatus,
        guard: Guard<'_>,
    ) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        let value = status_to_attr(st);
        for attempt in 0..2 {
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("source", s(source))
                .update_expression("SET #st.#d = :v")
                .expression_attribute_names("#st", "status")
                .expression_attribute_names("#d", dest)
                .expression_attribute_names("#src", "source")
                .expression_attribute_values(":v", value.clone())
                .return_consumed_capacity(TOTAL);
            // Never let an older attempt's result overwrite a newer one's
            // (RFC 3339 UTC strings of one format compare in time order).
            req = match (guard, &st.last_attempt) {
                (Guard::Attempt, Some(t)) => req
                    .condition_expression(
                        "attribute_exists(#src) AND (attribute_not_exists(#st.#d.#la) OR #st.#d.#la <= :t)",
                    )
                    .expression_attribute_names("#la", "last_attempt")
                    .expression_attribute_values(":t", s(t.clone())),
                (Guard::Attempt, None) => req.condition_expression("attribute_exists(#src)"),
                (Guard::QueuedAt(Some(seen)), _) => req
                    .condition_expression("attribute_exists(#src) AND #st.#d.#qa = :seen")
                    .expression_attribute_names("#qa", "queued_at")
                    .expression_attribute_values(":seen", s(seen)),
                (Guard::QueuedAt(None), _) => req
                    .condition_expression("attribute_exists(#src) AND attribute_not_exists(#st.#d.#qa)")
                    .expression_attribute_names("#qa", "queued_at"),
            };
            match req.send().await {
                Ok(out) => {
                    crate::usage::consumed(false, out.consumed_capacity());
                    return Ok(());
                }
                Err(e) => match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(_)) => {
                        return Err(match self.get(source).await? {
                            Some(_) => StoreError::Stale {
                                dest: dest.to_string(),
                            },
                            None => StoreError::RowGone(source.to_string()),
                        });
                    }
                    // The row has no `status` map yet (written by hand): create it, then retry.
                    Some(se) if attempt == 0 && missing_status_map(se) => {
                        self.client
                            .update_item()
                            .table_name(&self.table)
                            .key("source", s(source))
                            .update_expression("SET #st = if_not_exists(#st, :empty)")
                            .condition_expression("attribute_exists(#src)")
                            .expression_attribute_names("#st", "status")
                            .expression_attribute_names("#src", "source")
                            .expression_attribute_values(
                                ":empty",
                                AttributeValue::M(HashMap::new()),
                            )
                            .send()
                            .await
                            .map_err(|e| match e.as_service_error() {
                                Some(UpdateItemError::ConditionalCheckFailedException(_)) => {
                                    StoreError::RowGone(source.to_string())
                                }
                                _ => self.sdk_err(None, e),
                            })?;
                    }
                    _ => {
                        return Err(
                            self.sdk_err(Some(&format!("cannot write the status of {dest}")), e)
                        );
                    }
                },
            }
        }
        Err(self.err(format!("cannot write the status of {dest}")))
    }

    pub async fn set_row_error(&self, source: &str, error: Option<&str>) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("source", s(source))
            .condition_expression("attribute_exists(#src)")
            .expression_attribute_names("#src", "source")
            .expression_attribute_names("#err", "error");
        req = match error {
            Some(msg) => req
                .update_expression("SET #err = :e")
                .expression_attribute_values(":e", s(msg)),
            None => req.update_expression("REMOVE #err"),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Err(StoreError::RowGone(source.to_string()))
            }
            Err(e) => Err(self.sdk_err(None, e)),
        }
    }
}

/// The attributes a mirror is stored as (none of them a DynamoDB reserved
/// word), and the optional ones it does not have.
pub(super) fn mirror_attributes(
    m: &Mirror,
) -> (Vec<(&'static str, AttributeValue)>, Vec<&'static str>) {
    let mut set = vec![
        (
            "destinations",
            AttributeValue::L(m.destination_names().into_iter().map(s).collect()),
        ),
        ("enabled", AttributeValue::Bool(m.enabled)),
        (
            crate::store::index::ATTRIBUTE,
            s(crate::store::index::scope_of(m)),
        ),
    ];
    let mut remove = Vec::new();
    let mut optional = |name: &'static str, value: Option<AttributeValue>| match value {
        Some(v) => set.push((name, v)),
        None => remove.push(name),
    };
    optional("overwrite", m.overwrite.map(AttributeValue::Bool));
    optional(
        "tags",
        m.select
            .as_ref()
            .map(|sel| json_to_attr(&serde_json::to_value(&sel.tags).unwrap_or_default())),
    );
    optional(
        "repositories",
        m.select
            .as_ref()
            .and_then(|sel| sel.repositories.as_ref())
            .map(|r| json_to_attr(&serde_json::to_value(r).unwrap_or_default())),
    );
    optional(
        "strip",
        m.select.as_ref().and_then(|sel| sel.strip.clone()).map(s),
    );
    optional(
        "platforms",
        (!m.platforms.is_empty())
            .then(|| AttributeValue::L(m.platforms.iter().map(|p| s(p.to_string())).collect())),
    );
    optional(
        "expires",
        m.expires.map(|x| AttributeValue::N(x.to_string())),
    );
    (set, remove)
}
