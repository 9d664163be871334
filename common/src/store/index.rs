//! The source index: the rows an ECR push concerns, found without a scan.
//!
//! Every row carries `source_scope`, written with its mirror fields and
//! kept current by the scheduled scan (rows typed by hand in the console
//! get it on the next run). A global secondary index on it finds, for a
//! push of `repo:tag` to an ECR registry:
//! - the image row, by its key (`BatchGetItem` of the registry's host
//!   spellings, one request);
//! - the repository rows of `repo` (`Query` of `repository#…`);
//! - the registry rows of the registry (`Query` of `registry#…`).
//!
//! A pushed signature or attestation (`sha256-<hex>.sig`) concerns every
//! image row of the repository whose digest it names, so those are queried
//! (`image#…`) instead of the one key. Either way a push costs three
//! requests however large the table.
//!
//! The registry part of a scope is canonical (`<account>.dkr.ecr.<region>`
//! for ECR, whatever endpoint form the row names), so the index answers for
//! FIPS and dual-stack sources as well.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{
    AttributeValue, GlobalSecondaryIndex, KeySchemaElement, KeyType, KeysAndAttributes, Projection,
    ProjectionType,
};

use crate::control::scan::EventFilter;
use crate::control::table::{Mirror, ScannedRow};
use crate::registry::ecr::{canonical_registry, registry_spellings};
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::store::dynamo::{DynamoStore, TOTAL, s};
use crate::store::row_from_item;

/// The index's name, as `table create` and the template create it.
pub const INDEX: &str = "by-source-scope";
/// The attribute it is keyed on.
pub const ATTRIBUTE: &str = "source_scope";

/// The scope a row is indexed under: `image#<registry>/<repository>` for an
/// image row, `repository#…` for a repository row, `registry#<registry>`
/// for a registry-wide row.
pub fn scope_of(m: &Mirror) -> String {
    let registry = canonical_registry(m.source.registry());
    match &m.select {
        None => format!("image#{registry}/{}", m.source.repository()),
        Some(sel) if sel.repositories.is_none() => {
            format!("repository#{registry}/{}", m.source.repository())
        }
        Some(_) => format!("registry#{registry}"),
    }
}

/// Where the rows an event concerns are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Row keys read directly.
    pub keys: Vec<String>,
    /// Scopes queried through the index.
    pub scopes: Vec<String>,
}

/// The keys and scopes of `filter`'s rows; `None` when the event names no
/// registry (only a scan can find rows on any registry).
pub fn lookup(filter: &EventFilter) -> Option<Lookup> {
    let host = filter.registry.as_deref()?;
    let registry = canonical_registry(host);
    let repo = &filter.repository;
    let mut scopes = vec![
        format!("repository#{registry}/{repo}"),
        format!("registry#{registry}"),
    ];
    let keys = if filter.referrer_subject().is_some() {
        scopes.insert(0, format!("image#{registry}/{repo}"));
        Vec::new()
    } else {
        registry_spellings(host)
            .iter()
            .map(|h| format!("{h}/{repo}:{}", filter.tag))
            .collect()
    };
    Some(Lookup { keys, scopes })
}

/// The index as `CreateTable` and `UpdateTable` take it.
pub(super) fn definition() -> Result<GlobalSecondaryIndex, String> {
    GlobalSecondaryIndex::builder()
        .index_name(INDEX)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(ATTRIBUTE)
                .key_type(KeyType::Hash)
                .build()
                .map_err(|e| e.to_string())?,
        )
        // Whole rows: the planner needs them, and a second read per row
        // would cost more than the index's storage.
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())
}

impl DynamoStore {
    /// The rows `lookup` names: its keys in one `BatchGetItem`, each scope
    /// with a `Query` (all pages), at once. Never a scan.
    pub async fn lookup_rows(&self, lookup: &Lookup) -> Result<Vec<ScannedRow>, StoreError> {
        let mut queries = Vec::with_capacity(lookup.scopes.len());
        for scope in &lookup.scopes {
            queries.push(self.query_scope(scope));
        }
        let (keyed, scoped) = futures_util::try_join!(
            self.rows_by_key(&lookup.keys),
            futures_util::future::try_join_all(queries)
        )?;
        // A row found both ways is planned once.
        let rows: BTreeMap<String, ScannedRow> = keyed
            .into_iter()
            .chain(scoped.into_iter().flatten())
            .map(|r| (r.key.clone(), r))
            .collect();
        Ok(rows.into_values().collect())
    }

    async fn rows_by_key(&self, keys: &[String]) -> Result<Vec<ScannedRow>, StoreError> {
        let mut wanted: Vec<HashMap<String, AttributeValue>> = keys
            .iter()
            .map(|k| HashMap::from([("source".to_string(), s(k.clone()))]))
            .collect();
        let mut rows = Vec::new();
        let mut backoff = Backoff::default();
        while !wanted.is_empty() {
            let ask = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut wanted)))
                .consistent_read(true)
                .build()
                .map_err(|e| self.err(e.to_string()))?;
            let out = self
                .client()
                .batch_get_item()
                .request_items(self.table(), ask)
                .return_consumed_capacity(TOTAL)
                .send()
                .await
                .map_err(|e| self.sdk_err(Some("reading the pushed image's row"), e))?;
            crate::usage::consumed(true, out.consumed_capacity());
            let found = out.responses().and_then(|r| r.get(self.table()));
            rows.extend(found.into_iter().flatten().map(row_from_item));
            wanted = out
                .unprocessed_keys()
                .and_then(|u| u.get(self.table()))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            if !wanted.is_empty() && !backoff.wait(None).await {
                return Err(self.err("the pushed image's row stayed unprocessed".into()));
            }
        }
        Ok(rows)
    }

    async fn query_scope(&self, scope: &str) -> Result<Vec<ScannedRow>, StoreError> {
        let mut rows = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name(INDEX)
                .key_condition_expression("#scope = :scope")
                .expression_attribute_names("#scope", ATTRIBUTE)
                .expression_attribute_values(":scope", s(scope))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(TOTAL)
                .send()
                .await
                .map_err(|e| self.sdk_err(Some(&query_hint(scope)), e))?;
            crate::usage::consumed(true, out.consumed_capacity());
            rows.extend(out.items().iter().map(row_from_item));
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(rows),
            }
        }
    }

    /// Write the row's scope, unless the row has been deleted meanwhile.
    pub async fn set_scope(&self, key: &str, scope: &str) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        let r = self
            .client()
            .update_item()
            .table_name(self.table())
            .key("source", s(key))
            .update_expression("SET #scope = :scope")
            .condition_expression("attribute_exists(#src)")
            .expression_attribute_names("#scope", ATTRIBUTE)
            .expression_attribute_names("#src", "source")
            .expression_attribute_values(":scope", s(scope))
            .return_consumed_capacity(TOTAL)
            .send()
            .await;
        match r {
            Ok(out) => {
                crate::usage::consumed(false, out.consumed_capacity());
                Ok(())
            }
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.sdk_err(Some("indexing a row"), e)),
        }
    }
}

/// What to do when a query fails: most often the table predates the index.
fn query_hint(scope: &str) -> String {
    format!(
        "querying index {INDEX} for {scope} (a table created before the index needs \
         `mirrorfleet-controller table create` or a stack update to add it)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(yaml: &str) -> Mirror {
        crate::control::table::MirrorFile::parse(yaml, "test.yaml")
            .expect("a valid mirror file")
            .remove(0)
    }

    #[test]
    fn rows_are_indexed_by_kind_and_canonical_registry() {
        let ecr = "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com";
        let cases = [
            (
                format!("mirrors:\n- source: {ecr}/team/app:1.0\n  destinations: [r.example/app:1.0]\n"),
                "image#123456789012.dkr.ecr.us-east-1/team/app",
            ),
            (
                format!("mirrors:\n- source: {ecr}/team/app\n  tags: {{latest: 3}}\n  destinations: [r.example/app]\n"),
                "repository#123456789012.dkr.ecr.us-east-1/team/app",
            ),
            (
                "mirrors:\n- source: Registry.Example/team/app:1.0\n  destinations: [r.example/app:1.0]\n".to_string(),
                "image#registry.example/team/app",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(scope_of(&mirror(&yaml)), want, "{yaml}");
        }
    }

    #[test]
    fn a_push_reads_its_image_key_and_two_scopes() {
        let filter = |tag: &str| EventFilter {
            registry: Some("123456789012.dkr.ecr.us-east-1.amazonaws.com".into()),
            repository: "team/app".into(),
            tag: tag.into(),
        };
        let l = lookup(&filter("1.0")).unwrap();
        assert_eq!(l.keys.len(), 4);
        assert!(
            l.keys
                .contains(&"123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.0".to_string())
        );
        assert_eq!(
            l.scopes,
            [
                "repository#123456789012.dkr.ecr.us-east-1/team/app",
                "registry#123456789012.dkr.ecr.us-east-1"
            ]
        );
        // A signature concerns every image row of the repository.
        let sig = lookup(&filter(&format!("sha256-{}.sig", "ab".repeat(32)))).unwrap();
        assert!(sig.keys.is_empty());
        assert_eq!(
            sig.scopes[0],
            "image#123456789012.dkr.ecr.us-east-1/team/app"
        );
        assert_eq!(sig.scopes.len(), 3);
        // No registry: nothing but a scan can tell.
        let anywhere = EventFilter {
            registry: None,
            ..filter("1.0")
        };
        assert_eq!(lookup(&anywhere), None);
    }
}
