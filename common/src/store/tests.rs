use super::dynamo::*;
use super::file::*;
use super::item::*;
use super::*;
use crate::control::table::{DestStatus, State};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

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
