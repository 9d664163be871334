//! A storm: a 200-tag local-mode sync with at least 10% of all requests to
//! both registries failing (5xx, 429 with Retry-After, dropped connections)
//! converges, with the requests beyond a clean run's, counted at the
//! proxies, bounded by the faults, and a run time within a loose bound of
//! the same sync without faults.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mirrorfleet_tests::faults::{Counts, FaultProxy, Faults};
use mirrorfleet_tests::*;
use serde_json::Value;

/// `sync` over `mirrors` (pairs of source and destination) in its own file;
/// returns the wall time and the JSON summary.
async fn sync(plain: &str, mirrors: &[(String, String)]) -> (Duration, Value) {
    sync_with(plain, mirrors, &["--workers", "16"]).await
}

/// [`sync`] with these flags instead of `--workers 16`.
async fn sync_with(plain: &str, mirrors: &[(String, String)], flags: &[&str]) -> (Duration, Value) {
    let body: String = mirrors
        .iter()
        .map(|(s, d)| format!("  - source: {s}\n    destinations: [{d}]\n"))
        .collect();
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("storm")));
    std::fs::write(&file, format!("mirrors:\n{body}")).unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(worker_bin().with_file_name("mirrorfleet-controller"))
        .arg("sync")
        .args(flags)
        .args([
            "--plain-http",
            plain,
            "--output",
            "json",
            file.to_str().unwrap(),
        ])
        .env("MIRRORFLEET_PROGRESS", "never")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
    (took, serde_json::from_str(&stdout).unwrap())
}

fn registry_totals(summary: &Value) -> (u64, u64) {
    let regs = summary["registries"].as_object().unwrap();
    let sum = |k: &str| regs.values().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    (sum("requests"), sum("retries"))
}

#[tokio::test]
async fn a_200_tag_sync_through_a_storm_converges_with_bounded_retries() {
    let stack = Stack::get();
    let prefix = unique("storm");
    let fleet = Pusher::new(Target::plain(&stack.src))
        .unwrap()
        .fleet(&prefix, 20, 10, 16)
        .await
        .unwrap();
    assert_eq!(fleet.len(), 200);
    let sp = FaultProxy::start(&stack.src, Faults::default(), 41)
        .await
        .unwrap();
    let dp = FaultProxy::start(&stack.dst, Faults::default(), 43)
        .await
        .unwrap();
    let plain = format!("{},{}", sp.addr, dp.addr);
    let mirrors = |suffix: &str| -> Vec<(String, String)> {
        fleet
            .iter()
            .map(|(repo, tag, _)| {
                (
                    format!("{}/{repo}:{tag}", sp.addr),
                    format!("{}/{repo}-{suffix}:{tag}", dp.addr),
                )
            })
            .collect()
    };

    let proxied = || Counts::get(&sp.counts().requests) + Counts::get(&dp.counts().requests);
    let (clean_time, clean) = sync(&plain, &mirrors("clean")).await;
    let (clean_requests, clean_retries) = registry_totals(&clean);
    let clean_proxied = proxied();
    assert_eq!(clean_retries, 0, "{clean}");

    // 12% of requests fail (5% 5xx, 3.5% 429 with Retry-After: 1, 3.5%
    // dropped), so the share that does is at least the README's 10%.
    let storm = Faults {
        server_error: 0.05,
        throttle: 0.035,
        drop: 0.035,
        ..Default::default()
    };
    sp.set_faults(storm.clone());
    dp.set_faults(storm);
    let (storm_time, stormy) = sync(&plain, &mirrors("storm")).await;
    let (storm_requests, storm_retries) = registry_totals(&stormy);
    let faults = sp.counts().faults() + dp.counts().faults();
    let blob_faults = Counts::get(&sp.counts().blob_faults) + Counts::get(&dp.counts().blob_faults);
    let storm_proxied = proxied() - clean_proxied;

    // Everything converged, checked outside mirrorfleet.
    let http = reqwest::Client::new();
    let sk = Skopeo::plain();
    for (i, (repo, tag, digest)) in fleet.iter().enumerate() {
        let r = http
            .head(format!(
                "http://{}/v2/{repo}-storm/manifests/{tag}",
                stack.dst
            ))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{repo}-storm:{tag}");
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            digest,
            "{repo}-storm:{tag}"
        );
        if i % 25 == 0 {
            sk.assert_tree(&format!("{}/{repo}-storm", stack.dst), digest)
                .unwrap();
        }
    }

    let extra = storm_proxied.saturating_sub(clean_proxied);
    eprintln!(
        "storm: | run | wall s | requests (proxy) | retries (client) | faults injected |\n\
         | clean | {:.1} | {clean_proxied} ({clean_requests}) | {clean_retries} | 0 |\n\
         | storm | {:.1} | {storm_proxied} ({storm_requests}) | {storm_retries} | {faults} ({blob_faults} on blobs), {extra} extra requests |",
        clean_time.as_secs_f64(),
        storm_time.as_secs_f64()
    );
    assert!(
        faults * 10 >= storm_proxied,
        "the storm was milder than the README's 10%: {faults} faults in {storm_proxied} requests"
    );
    // Every request beyond the clean run's answers a fault: one retry per
    // fault, plus, for a fault on a blob transfer, the restart of the whole
    // transfer (a new upload session and the blob read again: two more).
    let slack = 2 * blob_faults;
    assert!(
        extra <= faults + slack,
        "{extra} requests beyond the clean run for {faults} faults (+{slack} for restarted transfers)"
    );
    // A loose guard against retry storms, not a timing: each 429 waits a
    // second and a dropped body waits out its backoff, on a 2-core machine
    // whose load varies; `bench/sync.sh` reports the real ratio.
    assert!(
        storm_time <= clean_time * 6,
        "the storm took {storm_time:?}, more than 6x the clean {clean_time:?}"
    );
}

/// With default flags, the number of images copied at once adapts: it
/// grows from its start while throughput grows, falls when a 429 storm
/// hits in mid-run, and grows again once the storm is over. The sync still
/// converges.
#[tokio::test]
async fn images_at_once_back_off_in_a_429_storm_and_grow_again() {
    let stack = Stack::get();
    let prefix = unique("adapt");
    let fleet = Pusher::new(Target::plain(&stack.src))
        .unwrap()
        .fleet(&prefix, 30, 5, 16)
        .await
        .unwrap();
    let sp = Arc::new(
        FaultProxy::start(&stack.src, Faults::default(), 7)
            .await
            .unwrap(),
    );
    let dp = Arc::new(
        FaultProxy::start(&stack.dst, Faults::default(), 11)
            .await
            .unwrap(),
    );
    // Images finished so far: the tag, pushed last, of each.
    let tagged = Arc::new(AtomicU64::new(0));
    let t = tagged.clone();
    dp.set_hook(Some(Arc::new(move |method: &str, path: &str| {
        if method == "PUT" && path.contains("/manifests/") && !path.contains("sha256:") {
            t.fetch_add(1, Ordering::Relaxed);
        }
    })));
    // The storm: 429s on a third of the requests to both registries, from
    // the 40th image until 60 were answered 429 (or 5 s passed).
    let storm = {
        let (sp, dp, tagged) = (sp.clone(), dp.clone(), tagged.clone());
        tokio::spawn(async move {
            while tagged.load(Ordering::Relaxed) < 40 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let faults = Faults {
                throttle: 0.33,
                ..Default::default()
            };
            sp.set_faults(faults.clone());
            dp.set_faults(faults);
            let began = Instant::now();
            let throttled =
                || Counts::get(&sp.counts().throttled) + Counts::get(&dp.counts().throttled);
            while throttled() < 60 && began.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sp.set_faults(Faults::default());
            dp.set_faults(Faults::default());
            (tagged.load(Ordering::Relaxed), throttled())
        })
    };
    let mirrors: Vec<(String, String)> = fleet
        .iter()
        .map(|(repo, tag, _)| {
            (
                format!("{}/{repo}:{tag}", sp.addr),
                format!("{}/{repo}-adapt:{tag}", dp.addr),
            )
        })
        .collect();
    let plain = format!("{},{}", sp.addr, dp.addr);
    let (took, summary) = sync_with(&plain, &mirrors, &[]).await;
    let (storm_ended_at, throttled) = storm.await.unwrap();

    let c = &summary["workers"]["concurrency"];
    let steps = c["steps"].as_array().unwrap();
    let change = |s: &Value| s["change"].as_str().unwrap().to_string();
    let limit = |s: &Value| s["limit"].as_u64().unwrap();
    let first_back = steps
        .iter()
        .position(|s| change(s) == "backed_off")
        .unwrap_or_else(|| panic!("never backed off through {throttled} 429s: {c:#}"));
    let last_back = steps
        .iter()
        .rposition(|s| change(s) == "backed_off")
        .unwrap();
    let high = steps[..first_back]
        .iter()
        .map(limit)
        .chain([c["start"].as_u64().unwrap()])
        .max()
        .unwrap();
    let low = steps
        .iter()
        .filter(|s| change(s) == "backed_off")
        .map(limit)
        .min()
        .unwrap();
    assert!(
        high > c["start"].as_u64().unwrap(),
        "never grew before the storm: {c:#}"
    );
    assert!(low < high, "the limit did not fall: {c:#}");
    assert!(
        steps[last_back + 1..].iter().any(|s| limit(s) > low),
        "never grew again after the storm (it ended at image {storm_ended_at}): {c:#}"
    );
    assert_eq!(c["cap"], 32, "the default cap");
    // And every image arrived.
    let http = reqwest::Client::new();
    for (repo, tag, digest) in fleet.iter().step_by(7) {
        let r = http
            .head(format!(
                "http://{}/v2/{repo}-adapt/manifests/{tag}",
                stack.dst
            ))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            digest
        );
    }
    eprintln!(
        "adaptive: {} images in {:.1}s, storm from image 40 to {storm_ended_at} ({throttled} 429s); \
         limit {} -> peak {high} before, {low} at its lowest, {} at the end",
        fleet.len(),
        took.as_secs_f64(),
        c["start"],
        c["last"]
    );
}
