//! Where the mirror table lives: DynamoDB, or (local mode) a YAML file with a
//! JSON state file next to it.
//!
//! Status is written per destination with `UpdateItem` on the `status.<dest>`
//! path, conditional on the row still existing, so the user's own fields are
//! never overwritten and a row deleted while its job was queued is not
//! brought back.

pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::control::table::{DestStatus, Mirror, MirrorFile, Row, ScannedRow, State};
use crate::error::{Cause, error_line};

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
}

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
            Store::File(f) => Ok(f.scan().await),
        }
    }

    pub async fn get(&self, source: &str) -> Result<Option<ScannedRow>, StoreError> {
        match self {
            Store::Dynamo(d) => d.get(source).await,
            Store::File(f) => Ok(f.scan().await.into_iter().find(|r| r.key == source)),
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

/// What must still hold for a status write to land.
#[derive(Debug, Clone, Copy)]
enum Guard<'a> {
    /// No newer attempt's result is recorded (results of workers).
    Attempt,
    /// `queued_at` is still what the controller saw (claims of controllers).
    QueuedAt(Option<&'a str>),
}

// ---------------------------------------------------------------- DynamoDB

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    page_size: Option<i32>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// DynamoDB's answer to `SET status.<dest>` on a row without a `status` map
/// (one written by hand): a `ValidationException` about the document path.
fn missing_status_map(e: &aws_sdk_dynamodb::operation::update_item::UpdateItemError) -> bool {
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
            client: aws_sdk_dynamodb::Client::new(&conf),
            table: table.to_string(),
            page_size: None,
        }
    }

    /// Items per scan page (DynamoDB's default is 1 MB of items).
    pub fn with_page_size(mut self, items: Option<u32>) -> DynamoStore {
        self.page_size = items.map(|n| n.clamp(1, i32::MAX as u32) as i32);
        self
    }

    fn err(&self, message: String) -> StoreError {
        StoreError::Dynamo {
            table: self.table.clone(),
            message,
            cause: None,
        }
    }

    /// An SDK failure, its words in the message and itself as the cause.
    fn sdk_err<E>(&self, doing: Option<&str>, e: E) -> StoreError
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

    /// Create the table (on-demand, key `source`); an existing table is fine.
    pub async fn create_table(&self) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::operation::create_table::CreateTableError;
        let r = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("source")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| self.err(e.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("source")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| self.err(e.to_string()))?,
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(CreateTableError::ResourceInUseException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.sdk_err(Some("cannot create it"), e)),
        }
    }

    /// Scan every page of every segment, in parallel segments.
    pub async fn scan(&self, segments: u32) -> Result<Vec<ScannedRow>, StoreError> {
        let segments = segments.max(1);
        let mut tasks = Vec::new();
        for seg in 0..segments {
            let client = self.client.clone();
            let table = self.table.clone();
            let limit = self.page_size;
            tasks.push(tokio::spawn(async move {
                let mut rows = Vec::new();
                let mut start: Option<HashMap<String, AttributeValue>> = None;
                loop {
                    let mut req = client
                        .scan()
                        .table_name(&table)
                        .consistent_read(true)
                        .set_limit(limit);
                    if segments > 1 {
                        req = req.segment(seg as i32).total_segments(segments as i32);
                    }
                    let out = req.set_exclusive_start_key(start.take()).send().await?;
                    for item in out.items() {
                        rows.push(row_from_item(item));
                    }
                    match out.last_evaluated_key() {
                        Some(k) if !k.is_empty() => start = Some(k.clone()),
                        _ => break,
                    }
                }
                Ok::<
                    _,
                    aws_sdk_dynamodb::error::SdkError<
                        aws_sdk_dynamodb::operation::scan::ScanError,
                        aws_sdk_dynamodb::config::http::HttpResponse,
                    >,
                >(rows)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let rows = t
                .await
                .map_err(|e| self.err(format!("scan task failed: {e}")))?
                .map_err(|e| self.sdk_err(Some("scan failed"), e))?;
            all.extend(rows);
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    pub async fn get(&self, source: &str) -> Result<Option<ScannedRow>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("source", s(source))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_err(None, e))?;
        Ok(out.item().map(row_from_item))
    }

    /// Add or replace a mirror's user fields, keeping its status.
    pub async fn put_mirror(&self, m: &Mirror) -> Result<(), StoreError> {
        let mut set = vec!["destinations = :d", "enabled = :e"];
        let mut remove = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("source", s(m.key()))
            .expression_attribute_values(
                ":d",
                AttributeValue::L(m.destination_names().into_iter().map(s).collect()),
            )
            .expression_attribute_values(":e", AttributeValue::Bool(m.enabled));
        match m.overwrite {
            Some(o) => {
                set.push("overwrite = :o");
                req = req.expression_attribute_values(":o", AttributeValue::Bool(o));
            }
            None => remove.push("overwrite"),
        }
        match &m.select {
            Some(sel) => {
                set.push("tags = :t");
                let rules = serde_json::to_value(&sel.tags).unwrap_or_default();
                req = req.expression_attribute_values(":t", json_to_attr(&rules));
            }
            None => remove.push("tags"),
        }
        match m.select.as_ref().and_then(|sel| sel.repositories.as_ref()) {
            Some(rules) => {
                set.push("repositories = :r");
                let rules = serde_json::to_value(rules).unwrap_or_default();
                req = req.expression_attribute_values(":r", json_to_attr(&rules));
            }
            None => remove.push("repositories"),
        }
        match m.select.as_ref().and_then(|sel| sel.strip.as_ref()) {
            Some(strip) => {
                set.push("strip = :s");
                req = req.expression_attribute_values(":s", s(strip.clone()));
            }
            None => remove.push("strip"),
        }
        if m.platforms.is_empty() {
            remove.push("platforms");
        } else {
            set.push("platforms = :p");
            let list = m.platforms.iter().map(|p| s(p.to_string())).collect();
            req = req.expression_attribute_values(":p", AttributeValue::L(list));
        }
        match m.expires {
            Some(x) => {
                set.push("expires = :x");
                req = req.expression_attribute_values(":x", AttributeValue::N(x.to_string()));
            }
            None => remove.push("expires"),
        }
        let mut expr = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expr.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        req.update_expression(expr)
            .send()
            .await
            .map_err(|e| self.sdk_err(None, e))?;
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

    async fn write_status(
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
                .expression_attribute_values(":v", value.clone());
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
                Ok(_) => return Ok(()),
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

/// Read an item as typed by hand in the console: destinations as a list, a
/// string set or one comma-separated string; wrong types are a row error.
pub fn row_from_item(item: &HashMap<String, AttributeValue>) -> ScannedRow {
    let key = match item.get("source") {
        Some(AttributeValue::S(k)) => k.clone(),
        _ => {
            return ScannedRow {
                key: String::new(),
                row: Err("the row has no string `source`".into()),
            };
        }
    };
    let row = (|| {
        let dests: Vec<String> = match item.get("destinations") {
            Some(AttributeValue::L(l)) => l
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err("`destinations` must hold strings".to_string()),
                })
                .collect::<Result<_, _>>()?,
            Some(AttributeValue::Ss(ss)) => ss.clone(),
            Some(AttributeValue::S(s)) => vec![s.clone()],
            Some(_) => {
                return Err(
                    "`destinations` must be a list, a string set or a comma-separated string"
                        .into(),
                );
            }
            None => return Err("the row has no `destinations`".into()),
        };
        let tags = match item.get("tags") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<crate::control::select::TagRules>(attr_to_json(v))
                    .map_err(|e| format!("`tags`: {e}"))?,
            ),
        };
        let platforms = match item.get("platforms") {
            None => Vec::new(),
            Some(AttributeValue::L(items)) => items
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err("`platforms` must be a list of strings such as linux/amd64"),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(AttributeValue::Ss(v)) => v.clone(),
            Some(AttributeValue::S(s)) => vec![s.clone()],
            Some(_) => {
                return Err(
                    "`platforms` must be a list, a string set or a comma-separated string".into(),
                );
            }
        };
        let repositories = match item.get("repositories") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<crate::control::select::RepoRules>(attr_to_json(v))
                    .map_err(|e| format!("`repositories`: {e}"))?,
            ),
        };
        let mut mirror = if tags.is_some() || repositories.is_some() || key.ends_with("/*") {
            Mirror::with_selection(&key, &dests, tags.unwrap_or_default(), repositories)?
        } else {
            Mirror::new(&key, &dests)?
        };
        mirror.set_platforms(&platforms)?;
        match item.get("strip") {
            None => {}
            Some(AttributeValue::S(strip)) => mirror.set_strip(Some(strip))?,
            Some(_) => return Err("`strip` must be a string (a leading path such as team)".into()),
        }
        mirror.enabled = match item.get("enabled") {
            None => true,
            Some(AttributeValue::Bool(b)) => *b,
            Some(AttributeValue::S(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(AttributeValue::S(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err("`enabled` must be true or false".into()),
        };
        mirror.overwrite = match item.get("overwrite") {
            None => None,
            Some(AttributeValue::Bool(b)) => Some(*b),
            Some(AttributeValue::S(s)) if s == "allow" => Some(true),
            Some(AttributeValue::S(s)) if s == "refuse" => Some(false),
            Some(_) => {
                return Err("`overwrite` must be true or false (or \"allow\"/\"refuse\")".into());
            }
        };
        mirror.expires = match item.get("expires") {
            None => None,
            Some(AttributeValue::N(n)) => Some(
                n.parse()
                    .map_err(|_| "`expires` must be a whole number of Unix seconds")?,
            ),
            Some(_) => return Err("`expires` must be a number (Unix seconds)".into()),
        };
        let mut status = BTreeMap::new();
        match item.get("status") {
            None => {}
            Some(AttributeValue::M(m)) => {
                for (dest, v) in m {
                    if let AttributeValue::M(fields) = v {
                        status.insert(dest.clone(), status_from_attr(fields));
                    }
                }
            }
            // Status writes go into this map; any other type would make every
            // result of this row's copies fail to record.
            Some(_) => {
                return Err(
                    "`status` is written by mirrorfleet and must be a map; remove the attribute"
                        .into(),
                );
            }
        }
        let error = match item.get("error") {
            Some(AttributeValue::S(e)) => Some(e.clone()),
            _ => None,
        };
        Ok(Row {
            mirror,
            status,
            error,
        })
    })();
    ScannedRow { key, row }
}

/// A DynamoDB value as JSON, so hand-typed maps (a row's `tags`) are read
/// with the same serde rules as the YAML file. A map typed as a JSON string
/// is read as that JSON.
fn attr_to_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AttributeValue::S(x) => serde_json::from_str::<J>(x)
            .ok()
            .filter(J::is_object)
            .unwrap_or_else(|| J::String(x.clone())),
        AttributeValue::N(n) => n
            .parse::<i64>()
            .map(J::from)
            .or_else(|_| n.parse::<f64>().map(J::from))
            .unwrap_or_else(|_| J::String(n.clone())),
        AttributeValue::Bool(b) => J::Bool(*b),
        AttributeValue::Null(_) => J::Null,
        AttributeValue::L(l) => J::Array(l.iter().map(attr_to_json).collect()),
        AttributeValue::Ss(ss) => J::Array(ss.iter().cloned().map(J::String).collect()),
        AttributeValue::M(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), attr_to_json(v)))
                .collect(),
        ),
        _ => J::Null,
    }
}

fn json_to_attr(v: &serde_json::Value) -> AttributeValue {
    use serde_json::Value as J;
    match v {
        J::Null => AttributeValue::Null(true),
        J::Bool(b) => AttributeValue::Bool(*b),
        J::Number(n) => AttributeValue::N(n.to_string()),
        J::String(x) => s(x.clone()),
        J::Array(a) => AttributeValue::L(a.iter().map(json_to_attr).collect()),
        J::Object(o) => AttributeValue::M(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect(),
        ),
    }
}

fn status_to_attr(st: &DestStatus) -> AttributeValue {
    let mut m = HashMap::new();
    if let Some(state) = st.state {
        m.insert("state".to_string(), s(state.as_str()));
    }
    let opt = |m: &mut HashMap<String, AttributeValue>, k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), s(v));
        }
    };
    opt(
        &mut m,
        "source_digest",
        st.source_digest.as_ref().map(ToString::to_string),
    );
    opt(
        &mut m,
        "dest_digest",
        st.dest_digest.as_ref().map(ToString::to_string),
    );
    opt(&mut m, "last_attempt", st.last_attempt.clone());
    opt(&mut m, "last_success", st.last_success.clone());
    opt(&mut m, "queued_at", st.queued_at.clone());
    opt(&mut m, "error", st.error.clone());
    opt(&mut m, "platforms", st.platforms.clone());
    opt(&mut m, "refused_referrers", st.refused_referrers.clone());
    m.insert(
        "bytes_copied".into(),
        AttributeValue::N(st.bytes_copied.to_string()),
    );
    m.insert(
        "attempts".into(),
        AttributeValue::N(st.attempts.to_string()),
    );
    AttributeValue::M(m)
}

fn status_from_attr(m: &HashMap<String, AttributeValue>) -> DestStatus {
    let get = |k: &str| match m.get(k) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    let num = |k: &str| match m.get(k) {
        Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
        _ => 0,
    };
    DestStatus {
        state: get("state").and_then(|s| match s.as_str() {
            "queued" => Some(State::Queued),
            "copying" => Some(State::Copying),
            "synced" => Some(State::Synced),
            "failed" => Some(State::Failed),
            _ => None,
        }),
        source_digest: get("source_digest").and_then(|d| d.parse().ok()),
        dest_digest: get("dest_digest").and_then(|d| d.parse().ok()),
        last_attempt: get("last_attempt"),
        last_success: get("last_success"),
        queued_at: get("queued_at"),
        bytes_copied: num("bytes_copied"),
        attempts: num("attempts"),
        error: get("error"),
        platforms: get("platforms"),
        refused_referrers: get("refused_referrers"),
    }
}

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
struct StateFile {
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

    async fn scan(&self) -> Vec<ScannedRow> {
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
                }
            })
            .collect()
    }

    fn known(&self, source: &str) -> bool {
        self.mirrors.iter().any(|m| m.key() == source)
    }

    async fn write_status(
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
        let refused = match guard {
            Guard::Attempt => match (old.and_then(|o| o.last_attempt.as_ref()), &st.last_attempt) {
                (Some(old), Some(new)) => old > new,
                _ => false,
            },
            Guard::QueuedAt(seen) => old.and_then(|o| o.queued_at.as_deref()) != seen,
        };
        if refused {
            return Err(StoreError::Stale {
                dest: dest.to_string(),
            });
        }
        row.insert(dest.to_string(), st.clone());
        self.save(&state)
    }

    async fn set_row_error(&self, source: &str, error: Option<&str>) -> Result<(), StoreError> {
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
    fn save(&self, state: &StateFile) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn reads_hand_typed_items() {
        let list = item(&[
            ("source", s("golang:1.17")),
            (
                "destinations",
                AttributeValue::L(vec![s("a.example.com/g:1")]),
            ),
        ]);
        assert!(row_from_item(&list).row.is_ok());
        let set = item(&[
            ("source", s("golang:1.17")),
            (
                "destinations",
                AttributeValue::Ss(vec!["a.example.com/g:1".into(), "b.example.com/g:1".into()]),
            ),
            ("enabled", s("false")),
        ]);
        let r = row_from_item(&set).row.unwrap();
        assert_eq!(r.mirror.destinations.len(), 2);
        assert!(!r.mirror.enabled);
        let csv = item(&[
            ("source", s("golang:1.17")),
            ("destinations", s("a.example.com/g:1, b.example.com/g:1")),
        ]);
        assert_eq!(
            row_from_item(&csv).row.unwrap().mirror.destinations.len(),
            2
        );
    }

    #[test]
    fn wrong_types_are_row_errors() {
        let cases = [
            (item(&[("source", s("golang:1.17"))]), "no `destinations`"),
            (
                item(&[
                    ("source", s("golang:1.17")),
                    ("destinations", AttributeValue::N("3".into())),
                ]),
                "must be a list",
            ),
            (
                item(&[
                    ("source", s("golang:1.17")),
                    (
                        "destinations",
                        AttributeValue::L(vec![AttributeValue::N("1".into())]),
                    ),
                ]),
                "must hold strings",
            ),
            (
                item(&[
                    ("source", s("golang:1.17")),
                    ("destinations", s("a.example.com/g:1")),
                    ("enabled", AttributeValue::N("1".into())),
                ]),
                "`enabled`",
            ),
            (
                item(&[
                    ("source", s("golang:1.17")),
                    ("destinations", s("a.example.com/g:1")),
                    ("expires", s("soon")),
                ]),
                "`expires`",
            ),
            (
                item(&[
                    ("source", s("Golang")),
                    ("destinations", s("a.example.com/g:1")),
                ]),
                "lowercase",
            ),
            (
                item(&[("source", AttributeValue::N("1".into()))]),
                "no string `source`",
            ),
            (
                item(&[
                    ("source", s("golang:1.17")),
                    ("destinations", s("a.example.com/g:1")),
                    ("status", s("synced")),
                ]),
                "`status` is written by mirrorfleet and must be a map",
            ),
        ];
        for (it, want) in cases {
            let err = row_from_item(&it).row.unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[tokio::test]
    async fn file_store_refuses_older_results_and_unknown_rows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(
            &file,
            "mirrors:\n  - source: a.example.com/x:1\n    destinations: [b.example.com/x:1]\n",
        )
        .unwrap();
        let store = Store::File(FileStore::open(&file).unwrap());
        let at = |t: &str, state| DestStatus {
            state: Some(state),
            last_attempt: Some(t.into()),
            ..Default::default()
        };
        let (src, dst) = ("a.example.com/x:1", "b.example.com/x:1");
        store
            .update_status(src, dst, &at("2026-01-01T00:00:10Z", State::Synced))
            .await
            .unwrap();
        assert!(matches!(
            store
                .update_status(src, dst, &at("2026-01-01T00:00:05Z", State::Failed))
                .await,
            Err(StoreError::Stale { .. })
        ));
        store
            .update_status(src, dst, &at("2026-01-01T00:00:20Z", State::Failed))
            .await
            .unwrap();
        assert!(matches!(
            store
                .update_status(
                    "a.example.com/y:1",
                    dst,
                    &at("2026-01-01T00:00:30Z", State::Synced)
                )
                .await,
            Err(StoreError::RowGone(_))
        ));
        // The state survives a reopen.
        let again = Store::File(FileStore::open(&file).unwrap());
        let rows = again.scan(1).await.unwrap();
        let row = rows[0].row.as_ref().unwrap();
        assert_eq!(row.status[dst].state, Some(State::Failed));
    }

    #[tokio::test]
    async fn only_one_controller_claims_a_destination() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(
            &file,
            "mirrors:\n  - source: a.example.com/x:1\n    destinations: [b.example.com/x:1]\n",
        )
        .unwrap();
        let store = Store::File(FileStore::open(&file).unwrap());
        let (src, dst) = ("a.example.com/x:1", "b.example.com/x:1");
        let queued = |t: &str| DestStatus {
            state: Some(State::Queued),
            queued_at: Some(t.into()),
            ..Default::default()
        };
        // Both controllers saw no queued_at; the first claim wins.
        store
            .claim_queued(src, dst, None, &queued("2026-01-01T00:00:01Z"))
            .await
            .unwrap();
        assert!(matches!(
            store
                .claim_queued(src, dst, None, &queued("2026-01-01T00:00:02Z"))
                .await,
            Err(StoreError::Stale { .. })
        ));
        // A controller that saw the current claim may renew it.
        store
            .claim_queued(
                src,
                dst,
                Some("2026-01-01T00:00:01Z"),
                &queued("2026-01-01T02:00:00Z"),
            )
            .await
            .unwrap();
    }

    #[test]
    fn status_round_trips() {
        let st = DestStatus {
            state: Some(State::Failed),
            source_digest: Some(crate::oci::digest::Digest::sha256_of(b"a")),
            dest_digest: None,
            last_attempt: Some("2026-11-22T00:00:00Z".into()),
            last_success: None,
            queued_at: None,
            bytes_copied: 12,
            attempts: 3,
            error: Some("login refused".into()),
            platforms: Some("linux/amd64,linux/arm64".into()),
            refused_referrers: Some("sha256-00.sig".into()),
        };
        let AttributeValue::M(m) = status_to_attr(&st) else {
            panic!()
        };
        assert_eq!(status_from_attr(&m), st);
    }
}
