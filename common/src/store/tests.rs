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

// ---------------------------------------------------------------- local state

/// A mirror file of `n` rows (`a.example.com/x:<i>` -> `b.example.com/x:<i>`)
/// in a fresh directory.
fn mirror_file(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.yaml");
    let rows: String = (0..n)
        .map(|i| {
            format!("  - source: a.example.com/x:{i}\n    destinations: [b.example.com/x:{i}]\n")
        })
        .collect();
    std::fs::write(&file, format!("mirrors:\n{rows}")).unwrap();
    (dir, file)
}

fn attempt(t: &str, state: State) -> DestStatus {
    DestStatus {
        state: Some(state),
        last_attempt: Some(t.into()),
        ..Default::default()
    }
}

fn status_of(rows: &[crate::control::table::ScannedRow], i: usize) -> Option<DestStatus> {
    let row = rows[i].row.as_ref().unwrap();
    row.status.get(&format!("b.example.com/x:{i}")).cloned()
}

#[tokio::test]
async fn the_state_is_a_database_next_to_the_mirror_file() {
    let (_dir, file) = mirror_file(1);
    let f = FileStore::open(&file).unwrap();
    assert_eq!(
        f.state_path(),
        std::path::Path::new(&format!("{}.state.db", file.display()))
    );
    let store = Store::File(f);
    store
        .update_status(
            "a.example.com/x:0",
            "b.example.com/x:0",
            &attempt("2026-01-01T00:00:01Z", State::Synced),
        )
        .await
        .unwrap();
    let head = std::fs::read(format!("{}.state.db", file.display())).unwrap();
    assert!(head.starts_with(b"SQLite format 3\0"));
    assert!(!file.with_extension("yaml.state.json").exists());
}

#[tokio::test]
async fn an_old_json_state_is_imported_once_and_kept_as_a_backup() {
    let (_dir, file) = mirror_file(2);
    let json = std::path::PathBuf::from(format!("{}.state.json", file.display()));
    let old = serde_json::json!({
        "status": {"a.example.com/x:0": {"b.example.com/x:0": {
            "state": "synced", "last_attempt": "2026-01-01T00:00:10Z", "attempts": 2,
            "dest_digest": crate::oci::digest::Digest::sha256_of(b"a").to_string()}}},
        "errors": {"a.example.com/x:1": "source image gone"}
    });
    std::fs::write(&json, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    let store = Store::File(FileStore::open(&file).unwrap());
    let rows = store.scan(1).await.unwrap();
    let st = status_of(&rows, 0).unwrap();
    assert_eq!((st.state, st.attempts), (Some(State::Synced), 2));
    assert_eq!(
        rows[1].row.as_ref().unwrap().error.as_deref(),
        Some("source image gone")
    );
    assert!(!json.exists(), "the old file was not moved away");
    let bak = std::path::PathBuf::from(format!("{}.bak", json.display()));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&bak).unwrap()).unwrap(),
        old,
        "the backup is the old file"
    );
    // The guard still holds against the imported status.
    assert!(matches!(
        store
            .update_status(
                "a.example.com/x:0",
                "b.example.com/x:0",
                &attempt("2026-01-01T00:00:05Z", State::Failed)
            )
            .await,
        Err(StoreError::Stale { .. })
    ));
    drop(store);
    // A later run does not import again, even if an old file shows up.
    std::fs::write(
        &json,
        r#"{"status": {"a.example.com/x:1": {"b.example.com/x:1": {"state": "failed"}}}}"#,
    )
    .unwrap();
    let again = Store::File(FileStore::open(&file).unwrap());
    let rows = again.scan(1).await.unwrap();
    assert_eq!(status_of(&rows, 1), None, "imported a second time");
    assert!(json.exists(), "a file not imported was moved");
}

#[tokio::test]
async fn a_bad_old_json_state_is_named_and_nothing_is_imported() {
    let (_dir, file) = mirror_file(1);
    let json = std::path::PathBuf::from(format!("{}.state.json", file.display()));
    std::fs::write(&json, "{not json").unwrap();
    let err = FileStore::open(&file).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: key must be a string", json.display())),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "{not json");
    // Mended, it is imported by the next open.
    std::fs::write(
        &json,
        r#"{"status": {"a.example.com/x:0": {"b.example.com/x:0": {"state": "failed"}}}}"#,
    )
    .unwrap();
    let store = Store::File(FileStore::open(&file).unwrap());
    let rows = store.scan(1).await.unwrap();
    assert_eq!(status_of(&rows, 0).unwrap().state, Some(State::Failed));
}

#[test]
fn a_corrupt_state_database_is_refused_named_and_left_as_it_was() {
    let (_dir, file) = mirror_file(1);
    let db = std::path::PathBuf::from(format!("{}.state.db", file.display()));
    for bytes in [
        // Not a database at all.
        (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
        // A database header over garbage pages.
        {
            let mut b = b"SQLite format 3\0".to_vec();
            b.extend((0..8176u32).map(|i| (i.wrapping_mul(40_503) >> 7) as u8));
            b
        },
    ] {
        std::fs::write(&db, &bytes).unwrap();
        let err = crate::error::error_line(&FileStore::open(&file).unwrap_err());
        assert!(
            err.starts_with(&format!("{}: ", db.display())) && err.contains("move it away"),
            "{err}"
        );
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "the file was changed");
    }
}

#[tokio::test]
async fn two_stores_on_one_file_keep_the_guard() {
    // Two stores on one file are two connections, as two processes have.
    let (_dir, file) = mirror_file(1);
    let a = Store::File(FileStore::open(&file).unwrap());
    let b = Store::File(FileStore::open(&file).unwrap());
    let (src, dst) = ("a.example.com/x:0", "b.example.com/x:0");
    a.update_status(src, dst, &attempt("2026-01-01T00:00:10Z", State::Synced))
        .await
        .unwrap();
    assert!(matches!(
        b.update_status(src, dst, &attempt("2026-01-01T00:00:05Z", State::Copying))
            .await,
        Err(StoreError::Stale { .. })
    ));
    let queued = |t: &str| DestStatus {
        state: Some(State::Queued),
        queued_at: Some(t.into()),
        last_attempt: Some("2026-01-01T00:00:10Z".into()),
        ..Default::default()
    };
    a.claim_queued(src, dst, None, &queued("2026-01-01T00:01:00Z"))
        .await
        .unwrap();
    assert!(matches!(
        b.claim_queued(src, dst, None, &queued("2026-01-01T00:01:01Z"))
            .await,
        Err(StoreError::Stale { .. })
    ));
    let rows = b.scan(1).await.unwrap();
    assert_eq!(
        status_of(&rows, 0).unwrap().queued_at.as_deref(),
        Some("2026-01-01T00:01:00Z"),
        "the second store sees the first's write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_stores_claim_each_destination_once() {
    // Four stores (connections) claim the same 50 destinations at once,
    // each one having seen none claimed: exactly one claim lands for each.
    let (_dir, file) = mirror_file(50);
    let stores: Vec<std::sync::Arc<Store>> = (0..4)
        .map(|_| std::sync::Arc::new(Store::File(FileStore::open(&file).unwrap())))
        .collect();
    let mut tasks = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..50 {
                let st = DestStatus {
                    state: Some(State::Queued),
                    queued_at: Some(format!("2026-01-01T00:00:{n:02}Z")),
                    ..Default::default()
                };
                let (src, dst) = (
                    format!("a.example.com/x:{i}"),
                    format!("b.example.com/x:{i}"),
                );
                match store.claim_queued(&src, &dst, None, &st).await {
                    Ok(()) => won.push(i),
                    Err(StoreError::Stale { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            (n, won)
        }));
    }
    let mut winner = vec![None; 50];
    for t in tasks {
        let (n, won) = t.await.unwrap();
        for i in won {
            assert_eq!(winner[i], None, "destination {i} claimed twice");
            winner[i] = Some(n);
        }
    }
    let rows = stores[0].scan(1).await.unwrap();
    for (i, w) in winner.iter().enumerate() {
        let w = w.unwrap_or_else(|| panic!("destination {i} claimed by nobody"));
        assert_eq!(
            status_of(&rows, i).unwrap().queued_at,
            Some(format!("2026-01-01T00:00:{w:02}Z")),
            "the stored claim is the winner's"
        );
    }
}

#[tokio::test]
async fn a_batch_checks_the_guard_for_each_status() {
    let (_dir, file) = mirror_file(3);
    let store = Store::File(FileStore::open(&file).unwrap());
    store
        .update_status(
            "a.example.com/x:1",
            "b.example.com/x:1",
            &attempt("2026-01-01T00:00:10Z", State::Synced),
        )
        .await
        .unwrap();
    let w = |src: &str, dst: &str, t: &str| {
        (src.to_string(), dst.to_string(), attempt(t, State::Synced))
    };
    let done = store
        .update_statuses(vec![
            w(
                "a.example.com/x:0",
                "b.example.com/x:0",
                "2026-01-01T00:00:20Z",
            ),
            // Older than what is stored: refused, alone.
            w(
                "a.example.com/x:1",
                "b.example.com/x:1",
                "2026-01-01T00:00:05Z",
            ),
            w(
                "a.example.com/gone:1",
                "b.example.com/x:9",
                "2026-01-01T00:00:20Z",
            ),
            w(
                "a.example.com/x:2",
                "b.example.com/x:2",
                "2026-01-01T00:00:20Z",
            ),
        ])
        .await
        .unwrap();
    assert!(done[0].is_ok(), "{:?}", done[0]);
    assert!(matches!(done[1], Err(StoreError::Stale { ref dest }) if dest == "b.example.com/x:1"));
    assert!(matches!(done[2], Err(StoreError::RowGone(ref s)) if s == "a.example.com/gone:1"));
    assert!(done[3].is_ok(), "{:?}", done[3]);
    let rows = store.scan(1).await.unwrap();
    let t = |i| status_of(&rows, i).unwrap().last_attempt.unwrap();
    assert_eq!(
        (t(0), t(1), t(2)),
        (
            "2026-01-01T00:00:20Z".to_string(),
            "2026-01-01T00:00:10Z".to_string(),
            "2026-01-01T00:00:20Z".to_string()
        )
    );
}

#[tokio::test]
async fn row_errors_are_set_cleared_and_refused_for_unknown_rows() {
    let (_dir, file) = mirror_file(1);
    let store = Store::File(FileStore::open(&file).unwrap());
    let src = "a.example.com/x:0";
    store.set_row_error(src, Some("gone")).await.unwrap();
    store.set_row_error(src, Some("still gone")).await.unwrap();
    let row = store.get(src).await.unwrap().unwrap();
    assert_eq!(row.row.unwrap().error.as_deref(), Some("still gone"));
    store.set_row_error(src, None).await.unwrap();
    let again = Store::File(FileStore::open(&file).unwrap());
    assert_eq!(
        again.get(src).await.unwrap().unwrap().row.unwrap().error,
        None
    );
    assert!(again.get("a.example.com/y:0").await.unwrap().is_none());
    assert!(matches!(
        again.set_row_error("a.example.com/y:0", Some("x")).await,
        Err(StoreError::RowGone(_))
    ));
}

#[tokio::test]
async fn a_run_sees_the_others_that_have_the_file_open() {
    let (_dir, file) = mirror_file(1);
    let a = FileStore::open(&file).unwrap();
    assert!(!a.others_open().await.unwrap());
    let b = FileStore::open(&file).unwrap();
    assert!(a.others_open().await.unwrap());
    assert!(b.others_open().await.unwrap());
    drop(b);
    assert!(
        !a.others_open().await.unwrap(),
        "a closed store still counts"
    );
    // A run of a process that is gone (this boot, a pid with another start
    // time) does not count, and the next open forgets it.
    let db = format!("{}.state.db", file.display());
    let raw = rusqlite::Connection::open(&db).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let dead = format!("{} {} 1 0", boot.trim(), std::process::id());
    raw.execute(
        "INSERT INTO runs (id, opened) VALUES (?1, '2026-01-01T00:00:00Z')",
        [&dead],
    )
    .unwrap();
    assert!(!a.others_open().await.unwrap());
    drop(FileStore::open(&file).unwrap());
    let left: i64 = raw
        .query_row("SELECT count(*) FROM runs WHERE id = ?1", [&dead], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn many_status_writes_stay_cheap() {
    // O(1) per write: 2,000 single writes and a 2,000-row batch in a file
    // that stays small (the JSON file was rewritten whole for each).
    let (_dir, file) = mirror_file(2000);
    let store = Store::File(FileStore::open(&file).unwrap());
    let started = std::time::Instant::now();
    for i in 0..2000 {
        store
            .update_status(
                &format!("a.example.com/x:{i}"),
                &format!("b.example.com/x:{i}"),
                &attempt("2026-01-01T00:00:10Z", State::Synced),
            )
            .await
            .unwrap();
    }
    let batch = (0..2000)
        .map(|i| {
            (
                format!("a.example.com/x:{i}"),
                format!("b.example.com/x:{i}"),
                attempt("2026-01-01T00:00:20Z", State::Synced),
            )
        })
        .collect();
    assert!(
        store
            .update_statuses(batch)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    let rows = store.scan(1).await.unwrap();
    assert_eq!(rows.len(), 2000);
    assert_eq!(
        status_of(&rows, 1999).unwrap().last_attempt.as_deref(),
        Some("2026-01-01T00:00:20Z")
    );
}
