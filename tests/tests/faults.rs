//! Reliability: the copy engine behind a fault-injecting proxy
//! ([`mirrorfleet_tests::faults`]) converges on the source digest, or fails
//! with a clear error and pushes nothing. Results are checked with skopeo
//! against the real registries behind the proxies.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use mirrorfleet_common::CopyReport;
use mirrorfleet_common::copy::{CopyOptions, Engine, Outcome};
use mirrorfleet_common::registry::settings::{RegistrySettings, Settings};
use mirrorfleet_tests::faults::{Counts, Expiry, FaultProxy, Faults};
use mirrorfleet_tests::*;
use serde_json::json;

fn engine(settings: Settings) -> Engine {
    engine_with(settings, CopyOptions::default())
}

async fn copy(engine: &Engine, src: &str, dest: &str) -> CopyReport {
    copy_to(engine, src, &[dest]).await
}

/// Plain HTTP for the stack and the proxies, with a short read timeout so a
/// stalled response is abandoned quickly.
fn settings(stack: &Stack, proxies: &[&FaultProxy]) -> Settings {
    let mut s = Settings::default();
    for h in [&stack.src, &stack.dst] {
        s.mark_plain_http(h);
    }
    for p in proxies {
        s.registries.insert(
            p.addr.clone(),
            RegistrySettings {
                plain_http: true,
                read_timeout_seconds: Some(1),
                ..Default::default()
            },
        );
    }
    s
}

/// Two platforms, three layers each: enough requests for faults to land.
async fn push_fixture(stack: &Stack, repo: &str) -> String {
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        children.push(
            p.image(
                repo,
                false,
                ("linux", arch),
                &[4096, 64 * 1024, 300 * 1024],
                json!({}),
            )
            .await
            .unwrap(),
        );
    }
    p.index(repo, "v1", false, children, json!({}))
        .await
        .unwrap()
}

/// Copy through a proxy in front of each registry; the image must arrive
/// whole, with the source digest. Returns the proxies for their counts.
async fn survives(name: &str, src_faults: Faults, dst_faults: Faults) -> (FaultProxy, FaultProxy) {
    let stack = Stack::get();
    let repo = unique(name);
    let digest = push_fixture(&stack, &repo).await;
    let sp = FaultProxy::start(&stack.src, src_faults, 7).await.unwrap();
    let dp = FaultProxy::start(&stack.dst, dst_faults, 11).await.unwrap();
    let e = engine(settings(&stack, &[&sp, &dp]));
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", sp.addr),
        &format!("{}/{repo}:v1", dp.addr),
    )
    .await;
    let d = &r.destinations[0];
    assert_ne!(d.outcome, Outcome::Failed, "{name}: {:?}", d.error);
    let sk = Skopeo::plain();
    let dest = format!("{}/{repo}:v1", stack.dst);
    assert_eq!(sk.digest(&dest).unwrap(), digest, "{name}");
    sk.assert_tree(&format!("{}/{repo}", stack.dst), &digest)
        .unwrap();
    let counts = e.registries().request_counts().await;
    eprintln!(
        "{name}: src faults {} of {} requests, dst faults {} of {}; client {:?}",
        sp.counts().faults(),
        Counts::get(&sp.counts().requests),
        dp.counts().faults(),
        Counts::get(&dp.counts().requests),
        counts
    );
    (sp, dp)
}

/// The same faults in front of both registries; `count` says which fault
/// must have fired at least once.
async fn survives_on_both(name: &str, f: Faults, count: fn(&Counts) -> &AtomicU64) {
    let (s, d) = survives(name, f.clone(), f).await;
    assert!(
        Counts::get(count(s.counts())) + Counts::get(count(d.counts())) > 0,
        "{name}: no fault was injected"
    );
}

#[tokio::test]
async fn survives_server_errors() {
    let f = Faults {
        server_error: 0.3,
        ..Default::default()
    };
    survives_on_both("f-5xx", f, |c| &c.server_errors).await;
}

#[tokio::test]
async fn survives_errors_after_the_registry_did_the_work() {
    let f = Faults {
        error_after_forward: 0.25,
        ..Default::default()
    };
    survives_on_both("f-after", f, |c| &c.errors_after_forward).await;
}

#[tokio::test]
async fn survives_rate_limits_with_retry_after() {
    let f = Faults {
        throttle: 0.2,
        ..Default::default()
    };
    survives_on_both("f-429", f, |c| &c.throttled).await;
}

#[tokio::test]
async fn survives_connections_dropped_mid_body() {
    let f = Faults {
        drop: 0.25,
        ..Default::default()
    };
    survives_on_both("f-drop", f, |c| &c.dropped).await;
}

#[tokio::test]
async fn survives_stalled_responses() {
    let f = Faults {
        stall: 0.15,
        stall_for: Duration::from_secs(3),
        ..Default::default()
    };
    survives_on_both("f-stall", f, |c| &c.stalled).await;
}

#[tokio::test]
async fn survives_blob_bytes_corrupted_in_transit() {
    let (s, _) = survives(
        "f-corrupt",
        Faults {
            corrupt: 0.5,
            ..Default::default()
        },
        Faults::default(),
    )
    .await;
    assert!(Counts::get(&s.counts().corrupted) > 0);
}

#[tokio::test]
async fn survives_missing_digest_and_manifest_location_headers() {
    // The source never says a digest (HEAD falls back to GET and hashing);
    // the destination's manifest answers lack both headers, as ECR's do.
    let (s, d) = survives(
        "f-headers",
        Faults {
            omit_headers: vec!["Docker-Content-Digest".into()],
            ..Default::default()
        },
        Faults {
            omit_headers: vec!["Docker-Content-Digest".into(), "Location".into()],
            only: Some("/manifests/".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(Counts::get(&s.counts().stripped) > 0 && Counts::get(&d.counts().stripped) > 0);
}

/// Nothing of `repo` may have reached the destination.
async fn assert_nothing_pushed(stack: &Stack, repo: &str, blob: Option<&str>) {
    assert!(
        Skopeo::plain()
            .raw(&format!("{}/{repo}:v1", stack.dst))
            .is_err(),
        "a manifest was pushed"
    );
    if let Some(blob) = blob {
        let head = reqwest::Client::new()
            .head(format!("http://{}/v2/{repo}/blobs/{blob}", stack.dst))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 404, "the bad blob reached the destination");
    }
}

#[tokio::test]
async fn an_upload_session_without_location_is_a_clear_error() {
    let stack = Stack::get();
    let repo = unique("f-noloc");
    push_fixture(&stack, &repo).await;
    let dp = FaultProxy::start(
        &stack.dst,
        Faults {
            omit_headers: vec!["Location".into()],
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    let e = engine(settings(&stack, &[&dp]));
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", stack.src),
        &format!("{}/{repo}:v1", dp.addr),
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap();
    assert!(
        err.contains("the upload session has no Location header"),
        "{err}"
    );
    assert_nothing_pushed(&stack, &repo, None).await;
}

#[tokio::test]
async fn a_source_that_always_corrupts_a_blob_is_refused_and_nothing_is_pushed() {
    let stack = Stack::get();
    let repo = unique("f-liar");
    push_fixture(&stack, &repo).await;
    let sp = FaultProxy::start(
        &stack.src,
        Faults {
            corrupt: 1.0,
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    let e = engine(settings(&stack, &[&sp]));
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", sp.addr),
        &format!("{}/{repo}:v1", stack.dst),
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap();
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(
        Counts::get(&sp.counts().corrupted) >= CopyOptions::default().blob_attempts as u64,
        "each attempt re-read the blob"
    );
    assert_nothing_pushed(&stack, &repo, None).await;
}

#[tokio::test]
async fn manifests_that_lie_about_their_digest_are_refused_and_nothing_is_pushed() {
    let stack = Stack::get();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(2048);
    let child = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":OCI_CONFIG,"digest":sha256(&cfg),"size":cfg.len()},
        "layers":[{"mediaType":OCI_LAYER,"digest":sha256(&layer),"size":layer.len()}]}))
    .unwrap();
    let other_child = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":OCI_CONFIG,"digest":sha256(&cfg),"size":cfg.len()},
        "layers":[], "annotations": {"swapped": "yes"}}))
    .unwrap();
    let index = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_INDEX,
        "manifests":[{"mediaType":OCI_MANIFEST,"digest":sha256(&child),"size":child.len(),
        "platform":{"os":"linux","architecture":"amd64"}}]}))
    .unwrap();
    let r = |status, ct: &str, headers: Vec<(String, String)>, body: &[u8]| {
        (status, ct.to_string(), headers, body.to_vec())
    };
    let dcd = |d: String| vec![("Docker-Content-Digest".to_string(), d)];
    let mut routes = HashMap::new();
    routes.insert(
        "/v2/".to_string(),
        r(200, "application/json", vec![], b"{}"),
    );
    // 1. A tag whose answer claims another digest than its bytes have (and
    // serves the same bytes under the claimed digest).
    let claimed = sha256(b"something else");
    routes.insert(
        "/v2/liar/manifests/claims".into(),
        r(200, OCI_MANIFEST, dcd(claimed.clone()), &child),
    );
    routes.insert(
        format!("/v2/liar/manifests/{claimed}"),
        r(200, OCI_MANIFEST, dcd(claimed.clone()), &child),
    );
    // 2. An index whose child, fetched by digest, is other bytes.
    routes.insert(
        "/v2/liar/manifests/swaps".into(),
        r(200, OCI_INDEX, dcd(sha256(&index)), &index),
    );
    routes.insert(
        format!("/v2/liar/manifests/{}", sha256(&index)),
        r(200, OCI_INDEX, dcd(sha256(&index)), &index),
    );
    routes.insert(
        format!("/v2/liar/manifests/{}", sha256(&child)),
        r(200, OCI_MANIFEST, vec![], &other_child),
    );
    routes.insert(
        format!("/v2/liar/blobs/{}", sha256(&cfg)),
        r(200, "application/octet-stream", vec![], &cfg),
    );
    routes.insert(
        format!("/v2/liar/blobs/{}", sha256(&layer)),
        r(200, "application/octet-stream", vec![], &layer),
    );
    let fake = FakeRegistry::start(routes).await.unwrap();
    let mut s = settings(&stack, &[]);
    s.mark_plain_http(&fake.addr);
    let e = engine(s);
    for tag in ["claims", "swaps"] {
        let repo = unique("f-lying-manifest");
        let r = copy(
            &e,
            &format!("{}/liar:{tag}", fake.addr),
            &format!("{}/{repo}:v1", stack.dst),
        )
        .await;
        let err = r.destinations[0].error.clone().unwrap();
        assert!(
            err.contains("manifest") && err.contains("does not match its digest"),
            "{tag}: {err}"
        );
        assert_nothing_pushed(&stack, &repo, Some(&sha256(&layer))).await;
    }
}

#[tokio::test]
async fn an_expired_bearer_token_is_refreshed_and_the_copy_succeeds() {
    let stack = Stack::get();
    let repo = unique("f-expired");
    let digest = push_fixture(&stack, &repo).await;
    let dp = FaultProxy::start(&stack.token, Faults::default(), 1)
        .await
        .unwrap();
    // The token in use at the 6th request expires: from then on the
    // registry refuses it, as a real expired token is refused.
    dp.set_expiry(Expiry::Unauthorized { after: 6 });
    let mut s = settings(&stack, &[&dp]);
    let pw = std::env::temp_dir().join(unique("mf-pw"));
    let (user, pass) = stack.token_creds.split_once(':').unwrap();
    std::fs::write(&pw, pass).unwrap();
    let rs = s.registries.get_mut(&dp.addr).unwrap();
    rs.username = Some(user.to_string());
    rs.password_file = Some(pw);
    let e = engine(s);
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", stack.src),
        &format!("{}/{repo}:v1", dp.addr),
    )
    .await;
    assert_ne!(
        r.destinations[0].outcome,
        Outcome::Failed,
        "{:?}",
        r.destinations[0].error
    );
    assert!(Counts::get(&dp.counts().expired) > 0, "no token expired");
    let counts = e.registries().request_counts().await;
    assert!(counts[&dp.addr].reauths > 0, "{counts:?}");
    let sk = Skopeo {
        creds: Some(stack.token_creds.clone()),
        ..Skopeo::plain()
    };
    assert_eq!(
        sk.digest(&format!("{}/{repo}:v1", stack.token)).unwrap(),
        digest
    );
}

#[tokio::test]
async fn an_expired_ecr_token_is_refreshed_and_the_copy_succeeds() {
    use mirrorfleet_tests::ecr_double::{ECR_HOST, EcrFront};
    let stack = Stack::get();
    let repo = unique("f-ecr-expired");
    let digest = push_fixture(&stack, &repo).await;
    // ECR as the copy job's role meets it; one token refused as expired mid-run.
    let front = EcrFront::start(&stack, "CopyRole");
    front.double.expire_tokens(5, 1);
    let settings = front.settings(&[&stack.src], "");
    let (src, dst) = (
        format!("{}/{repo}:v1", stack.src),
        format!("{ECR_HOST}/{repo}:v1"),
    );
    let env = front.env(&stack);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "copy",
        "--registries",
        settings.to_str().unwrap(),
        &src,
        &dst,
    ];
    let (code, out, err) = run_bin_off("mirrorfleet-worker", &args, &env).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(front.double.expired(), 1);
    assert!(err.contains("token expired; fetching a new one"), "{err}");
    // Fetched once at the start and once after the refusal, however many
    // requests ran at once.
    assert_eq!(front.gate.count("ecr:GetAuthorizationToken"), 2);
    let sk = Skopeo {
        creds: Some(stack.ecr_creds.clone()),
        ..Skopeo::plain()
    };
    assert_eq!(
        sk.digest(&format!("{}/{repo}:v1", stack.ecr)).unwrap(),
        digest
    );
}

/// A registry that answers 429 gets fewer requests at once (halved per burst,
/// grown back on success) and the copy still completes.
#[tokio::test]
async fn rate_limits_slow_a_registry_down_and_the_copy_still_succeeds() {
    let stack = Stack::get();
    let repo = unique("f-adaptive");
    let digest = push_fixture(&stack, &repo).await;
    let dp = FaultProxy::start(
        &stack.dst,
        Faults {
            throttle: 0.3,
            ..Default::default()
        },
        5,
    )
    .await
    .unwrap();
    let mut s = settings(&stack, &[&dp]);
    s.registries.get_mut(&dp.addr).unwrap().max_concurrency = Some(8);
    let e = engine(s);
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", stack.src),
        &format!("{}/{repo}:v1", dp.addr),
    )
    .await;
    assert_ne!(
        r.destinations[0].outcome,
        Outcome::Failed,
        "{:?}",
        r.destinations[0].error
    );
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", stack.dst))
            .unwrap(),
        digest
    );
    let reg = e
        .registries()
        .get(&dp.addr, mirrorfleet_common::registry::Role::Destination)
        .await
        .unwrap();
    let (now, lowest) = reg.concurrency();
    let counts = e.registries().request_counts().await;
    eprintln!("adaptive: limit 8 -> lowest {lowest}, now {now}; {counts:?}");
    assert!(counts[&dp.addr].throttled > 0, "{counts:?}");
    assert!(lowest < 8, "429s did not slow the registry down");
}

/// Tag and catalog listings follow `Link` pages to the end, with the cursor
/// used exactly as the registry gave it.
#[tokio::test]
async fn tags_and_catalog_are_listed_across_pages() {
    use mirrorfleet_common::registry::Role;
    let stack = Stack::get();
    let repo = unique("f-pages");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let img = p
        .image(&repo, false, ("linux", "amd64"), &[100], json!({}))
        .await
        .unwrap();
    let raw = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [img]}),
    )
    .unwrap();
    let mut want = Vec::new();
    for i in 0..7 {
        let tag = format!("t{i}");
        p.manifest(&repo, &tag, OCI_INDEX, &raw).await.unwrap();
        want.push(tag);
    }
    let e = engine(settings(&stack, &[]));
    let src = e.registries().get(&stack.src, Role::Source).await.unwrap();
    let mut tags = src.list_tags(&repo, 2).await.unwrap();
    tags.sort();
    assert_eq!(tags, want);
    let before = src
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let repos = src.catalog(1000).await.unwrap();
    assert!(repos.contains(&repo), "{repo} not in the catalog");
    assert!(
        src.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > before
    );
    let err = src.list_tags("no/such/repo", 10).await.unwrap_err();
    assert!(err.to_string().contains("was not found"), "{err}");

    // A cursor that is not `last=`: followed as given, to another path even.
    let mut routes = HashMap::new();
    let page = |tags: &[&str], next: Option<&str>| {
        let headers = next
            .map(|n| vec![("Link".to_string(), format!("<{n}>; rel=\"next\""))])
            .unwrap_or_default();
        (
            200,
            "application/json".to_string(),
            headers,
            serde_json::to_vec(&json!({"name": "app", "tags": tags})).unwrap(),
        )
    };
    routes.insert(
        "/v2/".to_string(),
        (200, "application/json".into(), vec![], b"{}".to_vec()),
    );
    routes.insert(
        "/v2/app/tags/list".to_string(),
        page(
            &["a", "b"],
            Some("/v2/app/tags/page2?cursor=eyJ4IjoxfQ%3D%3D"),
        ),
    );
    routes.insert(
        "/v2/app/tags/page2".to_string(),
        page(&["c"], Some("/v2/app/tags/page3?cursor=opaque")),
    );
    routes.insert("/v2/app/tags/page3".to_string(), page(&[], None));
    let fake = FakeRegistry::start(routes).await.unwrap();
    let mut s = settings(&stack, &[]);
    s.mark_plain_http(&fake.addr);
    let e = engine(s);
    let reg = e.registries().get(&fake.addr, Role::Source).await.unwrap();
    assert_eq!(reg.list_tags("app", 2).await.unwrap(), ["a", "b", "c"]);
}

/// Times of the requests whose `METHOD path` matches, as a proxy sees them.
fn record(
    proxy: &FaultProxy,
    method: &'static str,
    needle: &'static str,
) -> Arc<std::sync::Mutex<Vec<std::time::Instant>>> {
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = times.clone();
    proxy.set_hook(Some(Arc::new(move |m: &str, path: &str| {
        if m == method && path.contains(needle) {
            t.lock().unwrap().push(std::time::Instant::now());
        }
    })));
    times
}

/// `manifest_puts_per_second` paces manifest PUTs to one registry across
/// concurrent copies (ECR's `PutImage` quota), and every image still arrives.
#[tokio::test]
async fn manifest_puts_are_paced_per_registry() {
    let stack = Stack::get();
    let repos: Vec<String> = (0..3).map(|i| unique(&format!("f-put-rate-{i}"))).collect();
    let mut digests = Vec::new();
    for r in &repos {
        digests.push(push_fixture(&stack, r).await);
    }
    let dp = FaultProxy::start(&stack.dst, Faults::default(), 3)
        .await
        .unwrap();
    let puts = record(&dp, "PUT", "/manifests/");
    let mut s = settings(&stack, &[&dp]);
    let r = s.registries.get_mut(&dp.addr).unwrap();
    r.manifest_puts_per_second = Some(2.0);
    // Manifest pushes may take a while to get their turn.
    r.read_timeout_seconds = Some(30);
    let e = engine(s);
    let (e, src, dst) = (&e, &stack.src, &dp.addr);
    let reports =
        futures_util::future::join_all(repos.iter().map(|r| async move {
            copy(e, &format!("{src}/{r}:v1"), &format!("{dst}/{r}:v1")).await
        }))
        .await;
    for rep in &reports {
        let d = &rep.destinations[0];
        assert_ne!(d.outcome, Outcome::Failed, "{:?}", d.error);
    }
    let sk = Skopeo::plain();
    for (r, digest) in repos.iter().zip(&digests) {
        assert_eq!(
            &sk.digest(&format!("{}/{r}:v1", stack.dst)).unwrap(),
            digest
        );
    }
    let times = puts.lock().unwrap().clone();
    assert_eq!(times.len(), 9, "3 images of 2 platforms: 9 manifest PUTs");
    let most_in_a_second = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let span = times
        .iter()
        .max()
        .unwrap()
        .duration_since(*times.iter().min().unwrap());
    eprintln!(
        "manifest PUTs at 2/s (burst 1): at most {most_in_a_second} in any second, 9 over {span:?}"
    );
    assert!(
        most_in_a_second <= 3,
        "{most_in_a_second} PUTs in one second at 2/s + burst 1"
    );
    // 8 intervals of 500 ms after the first.
    assert!(span >= Duration::from_millis(3900), "{span:?}");
}

/// Docker Hub's `ratelimit-remaining` running low: the worker warns once and
/// spaces its manifest GETs so the rest of the quota lasts the window.
#[tokio::test]
async fn a_pull_quota_running_low_slows_manifest_gets_down() {
    let stack = Stack::get();
    let repo = unique("f-pull-quota");
    let digest = push_fixture(&stack, &repo).await;
    // 8 pulls per 6 s: the first GET leaves 7 (at or below the concurrency
    // limit), so every later one waits at least 6/7 s.
    let sp = FaultProxy::start(
        &stack.src,
        Faults {
            rate_limit_remaining: Some((8, 6)),
            ..Default::default()
        },
        9,
    )
    .await
    .unwrap();
    let gets = record(&sp, "GET", "/manifests/");
    let plain = format!("{},{}", sp.addr, stack.dst);
    let (src, dst) = (
        format!("{}/{repo}:v1", sp.addr),
        format!("{}/{repo}:v1", stack.dst),
    );
    // The proxy runs on this test's runtime: run the binary off it.
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_bin(
            "mirrorfleet-worker",
            &["copy", "--plain-http", &plain, &src, &dst],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        err.matches("registry pull limit nearly used up: 7 pulls left in the window; slowing down")
            .count(),
        1,
        "warned once: {err}"
    );
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", stack.dst))
            .unwrap(),
        digest
    );
    let times = gets.lock().unwrap().clone();
    assert!(times.len() >= 3, "index and two children: {}", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("pull quota low: manifest GET gaps {gaps:?}");
    for g in &gaps {
        assert!(*g >= Duration::from_millis(800), "not slowed: {gaps:?}");
    }
}

/// Docker Hub's quota used up (`ratelimit-remaining: 0`): the job is not
/// retried against it (each retry would be one more refused pull); it is
/// put off until the window resets, through the message's visibility, and
/// the row says so.
#[tokio::test]
async fn a_used_up_pull_quota_defers_the_job_until_it_resets() {
    let stack = Stack::get();
    let repo = unique("f-quota-spent");
    push_fixture(&stack, &repo).await;
    // One pull per 10 minutes: the index GET spends it.
    let sp = FaultProxy::start(
        &stack.src,
        Faults {
            rate_limit_remaining: Some((1, 600)),
            ..Default::default()
        },
        11,
    )
    .await
    .unwrap();
    let gets = record(&sp, "GET", "/manifests/");
    let (env, queue, dlq) = control_setup(&stack, "f-quota", &[&sp.addr, &stack.dst], 3).await;
    let (src, dst) = (
        format!("{}/{repo}:v1", sp.addr),
        format!("{}/{repo}:v1", stack.dst),
    );
    let (code, out, err, rows) = tokio::task::spawn_blocking(move || {
        let (code, out, err) = run_env(
            "mirrorfleet-controller",
            &["table", "add", &src, &dst],
            &env,
        );
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = run_env("mirrorfleet-controller", &["run"], &env);
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = run_env(
            "mirrorfleet-worker",
            &["consume", "--exit-when-idle", "3s", "--wait", "1s"],
            &env,
        );
        (code, out, err, table_ls_json(&env))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("deferred until the registry's quota resets"),
        "{err}"
    );
    assert_eq!(
        gets.lock().unwrap().len(),
        1,
        "pulled again after the quota was spent"
    );
    let row = &rows[0];
    assert_eq!(row["state"], "failed", "{row}");
    let error = row["status"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("the pull quota of {} is used up", sp.addr)),
        "{row}"
    );
    // Not visible (put off), not in the DLQ.
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = moto_sqs(&stack)
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let a = attrs.attributes().unwrap();
    assert_eq!(a[&A::ApproximateNumberOfMessages], "0");
    assert_eq!(a[&A::ApproximateNumberOfMessagesNotVisible], "1");
    assert_eq!(queue_depth(&stack, &dlq).await, 0);
}

/// A token was issued and still refused for the repository
/// (`insufficient_scope`): Docker Hub's answer for one that does not exist
/// or is private. It reads as that, not as a bad login.
#[tokio::test]
async fn a_refused_token_scope_reads_as_repository_not_found_or_not_accessible() {
    let stack = Stack::get();
    let token = FakeRegistry::start(HashMap::from([(
        "/token".to_string(),
        (
            200,
            "application/json".to_string(),
            vec![],
            br#"{"token":"t0k3n","expires_in":300}"#.to_vec(),
        ),
    )]))
    .await
    .unwrap();
    let challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:team/app:pull\",error=\"insufficient_scope\"",
        token.addr
    );
    let hub = FakeRegistry::start(HashMap::from([(
        "/v2/team/app/manifests/1.0".to_string(),
        (
            401,
            "application/json".to_string(),
            vec![("WWW-Authenticate".to_string(), challenge)],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        ),
    )]))
    .await
    .unwrap();
    let plain = format!("{},{}", hub.addr, stack.dst);
    let (src, dst) = (
        format!("{}/team/app:1.0", hub.addr),
        format!("{}/{}:1.0", stack.dst, unique("f-scope")),
    );
    let run = |creds: &'static [(&'static str, &'static str)]| {
        let args = ["copy", "--plain-http", &plain, &src, &dst];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_bin_off("mirrorfleet-worker", &args, creds).await
        }
    };
    let (code, out, err) = run(&[("MIRRORFLEET_SRC_CREDS", "reader:secret")]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "repository team/app on {} was not found or is not accessible with these credentials",
            hub.addr
        )),
        "{out}"
    );
    assert!(!out.contains("login to"), "{out}");
    let (code, out, err) = run(&[]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    // Anonymous: the advice names both readings.
    assert!(
        out.contains(&format!(
            "repository team/app on {} was not found or it needs credentials and none were found",
            hub.addr
        )),
        "{out}"
    );
    assert!(!out.contains("login to"), "{out}");
}
