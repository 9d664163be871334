//! ECR as ECR behaves: copies through the ECR double
//! (`tests/src/ecr_double.rs`), which enforces the IAM of the template's
//! roles per call, immutable tags, S3 redirects, throttling and ECR's
//! refusals, with moto as the control plane behind a gate that enforces
//! the same IAM.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mirrorfleet_tests::ecr_double::{ECR_HOST, EcrConfig, EcrFront};
use mirrorfleet_tests::iam::Policy;
use mirrorfleet_tests::*;
use serde_json::{Value, json};

fn ecr_skopeo(stack: &Stack) -> Skopeo {
    Skopeo {
        creds: Some(stack.ecr_creds.clone()),
        ..Skopeo::plain()
    }
}

/// The digest at `repo:tag` of the registry behind the ECR host, read by skopeo.
fn ecr_digest(stack: &Stack, name: &str) -> String {
    ecr_skopeo(stack)
        .digest(&format!("{}/{name}", stack.ecr))
        .unwrap()
}

/// `worker copy` as the front's role; (exit code, stdout, stderr).
fn copy(stack: &Stack, front: &EcrFront, extra: &str, args: &[&str]) -> (i32, String, String) {
    let settings = front.settings(&[&stack.src, &stack.dst], extra);
    let env = front.env(stack);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec!["copy", "--registries", settings.to_str().unwrap()];
    all.extend_from_slice(args);
    run_bin("mirrorfleet-worker", &all, &env)
}

async fn create_repository(stack: &Stack, name: &str, mutability: &str, filters: &[&str]) {
    use aws_sdk_ecr::types::{
        ImageTagMutability, ImageTagMutabilityExclusionFilter,
        ImageTagMutabilityExclusionFilterType,
    };
    let mut req = moto_ecr(stack)
        .create_repository()
        .repository_name(name)
        .image_tag_mutability(ImageTagMutability::from(mutability));
    for f in filters {
        req = req.image_tag_mutability_exclusion_filters(
            ImageTagMutabilityExclusionFilter::builder()
                .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                .filter(*f)
                .build()
                .unwrap(),
        );
    }
    req.send().await.unwrap();
    mirrorfleet_tests::ecr_double::note_exclusions(name, filters);
}

/// A permission the template does not grant (or one taken away) fails the
/// copy with ECR's words naming it; with the template's own, it succeeds.
#[tokio::test]
async fn a_permission_missing_from_the_template_fails_the_copy_naming_it() {
    let stack = Stack::get();
    let repo = unique("ecr-iam");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    for action in [
        "ecr:PutImage",
        "ecr:InitiateLayerUpload",
        "ecr:CreateRepository",
    ] {
        let mut config = EcrConfig::for_role(&stack, "CopyRole");
        config.policy = config.policy.without(action);
        let front = EcrFront::with(&stack, config);
        let dest = format!("{ECR_HOST}/{repo}-{}:v1", action.len());
        let (code, out, err) = copy(&stack, &front, "", &[&src, &dest]);
        assert_eq!(code, 1, "{action}: {out}\n{err}");
        assert!(
            out.contains(&format!("is not authorized to perform: {action}")),
            "{action}: {out}"
        );
    }
    let front = EcrFront::start(&stack, "CopyRole");
    let dest = format!("{ECR_HOST}/{repo}:v1");
    let (code, out, err) = copy(&stack, &front, "", &[&src, &dest]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(ecr_digest(&stack, &format!("{repo}:v1")), digest);
}

/// Where tag listing is refused (it takes `ecr:ListImages`), a destination
/// reached as a plain registry still copies: the answer is "unknown" and
/// blobs are HEADed one by one.
#[tokio::test]
async fn a_refused_tag_listing_is_unknown_not_fatal() {
    let stack = Stack::get();
    let repo = unique("ecr-nolist");
    let digest = push_image(&stack, &repo, "v1").await;
    create_repository(&stack, &repo, "MUTABLE", &[]).await;
    let front = EcrFront::start(&stack, "CopyRole");
    // The front's own address as the registry, with the token as a login:
    // no ECR host name, so mirrorfleet lists the repository to learn it is new.
    let settings = std::env::temp_dir().join(format!("{}.yaml", unique("mf-registries")));
    let (user, pass) = stack.ecr_creds.split_once(':').unwrap();
    std::fs::write(
        &settings,
        format!(
            "registries:\n  {}:\n    plain_http: true\n    username: {user}\n    password_env: MF_ECR_PASS\n  {}:\n    plain_http: true\n",
            front.double.addr, stack.src
        ),
    )
    .unwrap();
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings.to_str().unwrap(),
            &format!("{}/{repo}:v1", stack.src),
            &format!("{}/{repo}:v1", front.double.addr),
        ],
        &[("MF_ECR_PASS", pass)],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(front.double.count("ecr:ListImages", Some(403)), 1);
    assert!(front.double.count("ecr:BatchCheckLayerAvailability", None) >= 3);
    assert_eq!(ecr_digest(&stack, &format!("{repo}:v1")), digest);
}

/// ECR refuses any push to an existing immutable tag, even of the same
/// digest. A manifest PUT that was written but whose reply was lost is
/// retried, refused, HEADed and found right: success. Two copies racing on
/// one tag both succeed.
#[tokio::test]
async fn an_immutable_tag_holding_the_digest_is_success_after_a_lost_reply_or_a_race() {
    let stack = Stack::get();
    let repo = unique("ecr-frozen");
    let digest = push_image(&stack, &repo, "v1").await;
    create_repository(&stack, &repo, "IMMUTABLE", &[]).await;
    let front = EcrFront::start(&stack, "CopyRole");
    front.double.lose_reply_of_put("v1");
    let src = format!("{}/{repo}:v1", stack.src);
    let (code, out, err) = copy(
        &stack,
        &front,
        "",
        &[&src, &format!("{ECR_HOST}/{repo}:v1")],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        front.double.count("ecr:PutImage", Some(400)) >= 1,
        "{:?}",
        front.double.seen()
    );
    assert_eq!(ecr_digest(&stack, &format!("{repo}:v1")), digest);

    let raced = format!("{repo}-race");
    create_repository(&stack, &raced, "IMMUTABLE", &[]).await;
    // The blobs are put there first under another tag, so the copies race
    // on the tag alone: uploads of one blob into one repository at once are
    // what distribution 2.8 itself gets wrong, which is no race of ECR's.
    let (code, out, err) = copy(
        &stack,
        &front,
        "",
        &[&src, &format!("{ECR_HOST}/{raced}:seed")],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let dest = format!("{ECR_HOST}/{raced}:v1");
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (stack, src, dest) = (stack.clone(), src.clone(), dest.clone());
            std::thread::spawn(move || {
                let front = EcrFront::start(&stack, "CopyRole");
                copy(&stack, &front, "", &[&src, &dest])
            })
        })
        .collect();
    for r in runs {
        let (code, out, err) = r.join().unwrap();
        assert_eq!(code, 0, "{out}\n{err}");
    }
    assert_eq!(ecr_digest(&stack, &format!("{raced}:v1")), digest);
}

/// `IMMUTABLE_WITH_EXCLUSION` from the settings is created as such, and its
/// filters are honoured: an excluded tag moves, the others are refused.
#[tokio::test]
async fn exclusion_filters_are_created_and_honoured() {
    let stack = Stack::get();
    let repo = unique("ecr-excl");
    let a = push_image(&stack, &repo, "a").await;
    let b = push_image(&stack, &repo, "b").await;
    let front = EcrFront::start(&stack, "CopyRole");
    let settings = "ecr:\n  tag_mutability: IMMUTABLE_WITH_EXCLUSION\n  tag_mutability_exclusions: ['latest*']\n";
    let dest = format!("{repo}-dst");
    for tag in ["latest", "v1"] {
        let (code, out, err) = copy(
            &stack,
            &front,
            settings,
            &[
                &format!("{}/{repo}:a", stack.src),
                &format!("{ECR_HOST}/{dest}:{tag}"),
            ],
        );
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let described = front
        .ecr_client()
        .describe_repositories()
        .repository_names(&dest)
        .send()
        .await
        .unwrap();
    let r = &described.repositories()[0];
    assert_eq!(
        r.image_tag_mutability().map(|m| m.as_str()),
        Some("IMMUTABLE_WITH_EXCLUSION")
    );
    assert_eq!(
        r.image_tag_mutability_exclusion_filters()[0].filter(),
        "latest*"
    );
    let src_b = format!("{}/{repo}:b", stack.src);
    let (code, out, err) = copy(
        &stack,
        &front,
        settings,
        &[&src_b, &format!("{ECR_HOST}/{dest}:latest")],
    );
    assert_eq!(code, 0, "the excluded tag moves: {out}\n{err}");
    let (code, out, _) = copy(
        &stack,
        &front,
        settings,
        &[&src_b, &format!("{ECR_HOST}/{dest}:v1")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("overwrite refused"), "{out}");
    let sk = ecr_skopeo(&stack);
    assert_eq!(
        sk.digest(&format!("{}/{dest}:latest", stack.ecr)).unwrap(),
        b
    );
    assert_eq!(sk.digest(&format!("{}/{dest}:v1", stack.ecr)).unwrap(), a);
}

/// An ECR source: blob GETs are redirected to "S3", which refuses any
/// `Authorization` header; the copy follows without our credentials. A copy
/// between two ECR repositories tries a mount, which ECR refuses unless
/// enabled, and uploads instead. Tokens are fetched once for all of it.
#[tokio::test]
async fn redirected_blob_gets_carry_no_credentials_and_a_refused_mount_uploads() {
    let stack = Stack::get();
    let repo = unique("ecr-source");
    create_repository(&stack, &repo, "MUTABLE", &[]).await;
    let pusher = Pusher::new(Target {
        creds: Some(stack.ecr_creds.clone()),
        ..Target::plain(&stack.ecr)
    })
    .unwrap();
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        children.push(
            pusher
                .image(
                    &repo,
                    false,
                    ("linux", arch),
                    &[4000, 3000, 2000],
                    json!({}),
                )
                .await
                .unwrap(),
        );
    }
    let digest = pusher
        .index(&repo, "v1", false, children, json!({}))
        .await
        .unwrap();
    let front = EcrFront::start(&stack, "CopyRole");
    let src = format!("{ECR_HOST}/{repo}:v1");
    let (code, out, err) = copy(
        &stack,
        &front,
        "",
        &[
            "--output",
            "json",
            &src,
            &format!("{}/{repo}:v1", stack.dst),
            &format!("{ECR_HOST}/{repo}-copy:v1"),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (s3, refused) = front.double.s3();
    assert!(s3 >= 8, "{s3} blob GETs reached S3");
    assert_eq!(refused, 0, "a redirected GET carried Authorization");
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", stack.dst))
            .unwrap(),
        digest
    );
    assert_eq!(ecr_digest(&stack, &format!("{repo}-copy:v1")), digest);
    let report: Value = serde_json::from_str(&out).unwrap();
    let to_ecr = report["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"].as_str().unwrap().contains("-copy"))
        .unwrap();
    assert_eq!(to_ecr["blobs_mounted"], 0, "{report}");
    assert_eq!(to_ecr["blobs_copied"], 8, "{report}");
    // One token for the whole copy: concurrent requests share one fetch.
    assert_eq!(front.gate.count("ecr:GetAuthorizationToken"), 1);
}

/// ECR's rates: PutImage and the closing PUT of uploads answered 429 past
/// them. The copy backs off (Retry-After honoured, fewer requests at once)
/// and completes.
#[tokio::test]
async fn throttled_image_pushes_and_uploads_back_off_and_complete() {
    let stack = Stack::get();
    let repo = unique("ecr-throttle");
    let digest = push_image(&stack, &repo, "v1").await;
    let mut config = EcrConfig::for_role(&stack, "CopyRole");
    config.throttle_first = BTreeMap::from([
        ("ecr:PutImage".to_string(), 2),
        ("ecr:CompleteLayerUpload".to_string(), 2),
    ]);
    let front = EcrFront::with(&stack, config);
    let (code, out, err) = copy(
        &stack,
        &front,
        "",
        &[
            &format!("{}/{repo}:v1", stack.src),
            &format!("{ECR_HOST}/{repo}:v1"),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(front.double.count("ecr:CompleteLayerUpload", Some(429)) >= 1);
    assert!(front.double.count("ecr:PutImage", Some(429)) >= 1);
    assert_eq!(ecr_digest(&stack, &format!("{repo}:v1")), digest);
}

/// What ECR cannot take gets a plain, permanent error: a 0-byte blob, and a
/// repository name outside ECR's rule (refused before CreateRepository).
#[tokio::test]
async fn content_and_names_ecr_refuses_are_clear_permanent_errors() {
    let stack = Stack::get();
    let repo = unique("ecr-empty");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let img = p
        .image(&repo, false, ("linux", "amd64"), &[0, 100], json!({}))
        .await
        .unwrap();
    p.index(&repo, "v1", false, vec![img], json!({}))
        .await
        .unwrap();
    let front = EcrFront::start(&stack, "CopyRole");
    let src = format!("{}/{repo}:v1", stack.src);
    let (code, out, err) = copy(
        &stack,
        &front,
        "",
        &[&src, &format!("{ECR_HOST}/{repo}:v1")],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("refuses empty (0-byte) blobs"), "{out}");
    assert!(out.contains("does not have any parts"), "{out}");
    assert_eq!(
        front.double.count("ecr:PutImage", None),
        0,
        "a manifest was pushed"
    );

    let (code, out, _) = copy(
        &stack,
        &front,
        "",
        &[&src, &format!("{ECR_HOST}/a__b/{repo}:v1")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a valid ECR repository name"), "{out}");
    assert_eq!(
        front.gate.count("ecr:CreateRepository"),
        1,
        "{:?}",
        front.gate.calls()
    );
}

/// cosign's signature tag changes whenever an image is signed again. An
/// immutable destination cannot take the new one: the copy reports it once,
/// and `--check-referrers` does not queue the image again for it.
#[tokio::test]
async fn a_signature_an_immutable_destination_refuses_is_reported_once_not_requeued() {
    let stack = Stack::get();
    let repo = unique("ecr-signed");
    let digest = push_image(&stack, &repo, "v1").await;
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let sig_tag = format!("{}.sig", digest.replace(':', "-"));
    let sign = |n: u8| {
        let p = &p;
        let (repo, sig_tag) = (repo.clone(), sig_tag.clone());
        async move {
            let layer = p
                .blob(&repo, format!("signature {n}").as_bytes())
                .await
                .unwrap();
            let cfg = p.blob_typed(&repo, b"{}", OCI_CONFIG).await.unwrap();
            let raw = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": cfg, "layers": [layer]}))
            .unwrap();
            p.manifest(&repo, &sig_tag, OCI_MANIFEST, &raw)
                .await
                .unwrap()
        }
    };
    sign(1).await;
    let dest_repo = format!("{repo}-dst");
    create_repository(&stack, &dest_repo, "IMMUTABLE", &[]).await;
    let front = EcrFront::start(&stack, "WorkerRole");
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("mf-signed")));
    std::fs::write(
        &file,
        format!(
            "mirrors:\n  - source: {}/{repo}:v1\n    destinations: [{ECR_HOST}/{dest_repo}:v1]\n",
            stack.src
        ),
    )
    .unwrap();
    let settings = front.settings(&[&stack.src], "");
    let env = front.env(&stack);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sync = || {
        run_bin(
            "mirrorfleet-controller",
            &[
                "sync",
                "--check-referrers",
                "--registries",
                settings.to_str().unwrap(),
                "--output",
                "json",
                file.to_str().unwrap(),
            ],
            &env,
        )
    };
    let (code, out, err) = sync();
    assert_eq!(code, 0, "{out}\n{err}");
    let sk = ecr_skopeo(&stack);
    let first_sig = sk
        .digest(&format!("{}/{dest_repo}:{sig_tag}", stack.ecr))
        .unwrap();

    // Signed again at the source: the destination's tag is frozen.
    sign(2).await;
    let (code, out, err) = sync();
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["plan"]["jobs_enqueued"], 1,
        "queued once for the new signature: {v}"
    );
    assert_eq!(
        err.matches("the destination's tags are immutable").count(),
        1,
        "{err}"
    );
    let (code, out, err) = sync();
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["plan"]["jobs_enqueued"], 0,
        "queued again for a tag it cannot take: {v}"
    );
    assert!(
        !err.contains("the destination's tags are immutable"),
        "{err}"
    );
    assert_eq!(
        sk.digest(&format!("{}/{dest_repo}:{sig_tag}", stack.ecr))
            .unwrap(),
        first_sig
    );
}

/// `docs/deploy.md` lists, per role, every ECR permission the template
/// grants and why; this is the test that keeps the two the same.
#[test]
fn the_permissions_in_the_deploy_guide_are_the_templates() {
    let guide = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md"),
    )
    .unwrap();
    let mut documented: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for line in guide.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 4 && cells[2].starts_with("`ecr:") {
            let role = cells[1].trim_matches('`').to_string();
            for action in cells[2].split(',') {
                documented
                    .entry(role.clone())
                    .or_default()
                    .insert(action.trim().trim_matches('`').to_string());
            }
        }
    }
    assert!(
        !documented.is_empty(),
        "no permission table in docs/deploy.md"
    );
    for role in ["ControllerRole", "WorkerRole", "CopyRole"] {
        let granted = Policy::of(role).actions("ecr");
        assert_eq!(
            documented.get(role).cloned().unwrap_or_default(),
            granted,
            "{role}: docs/deploy.md and the template differ"
        );
    }
}

/// An OCI 1.1 artifact naming a subject, which ECR answers with 405
/// (aws/containers-roadmap#2783): the image is mirrored, and the warning
/// says in plain words that the destination refuses that kind of manifest.
#[tokio::test]
async fn a_refused_artifact_manifest_is_a_plain_warning_not_a_failure() {
    let stack = Stack::get();
    let repo = unique("ecr-sbom");
    let image = push_image(&stack, &repo, "v1").await;
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let image_raw = Skopeo::plain()
        .raw(&format!("{}/{repo}@{image}", stack.src))
        .unwrap();
    let cfg = p
        .blob_typed(&repo, b"{}", "application/vnd.oci.empty.v1+json")
        .await
        .unwrap();
    let sbom = p
        .blob_typed(&repo, &random_bytes(300), "text/spdx+json")
        .await
        .unwrap();
    let artifact = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "text/spdx+json", "config": cfg, "layers": [sbom],
        "subject": {"mediaType": OCI_INDEX, "digest": image, "size": image_raw.len()}}))
    .unwrap();
    p.manifest(&repo, &sha256(&artifact), OCI_MANIFEST, &artifact)
        .await
        .unwrap();
    // Where there is no referrers API: the tag schema index names it.
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&artifact),
            "size": artifact.len(), "artifactType": "text/spdx+json"}]}))
    .unwrap();
    p.manifest(&repo, &image.replace(':', "-"), OCI_INDEX, &index)
        .await
        .unwrap();
    let front = EcrFront::start(&stack, "CopyRole");
    let (code, out, err) = copy(
        &stack,
        &front,
        "",
        &[
            "--output",
            "json",
            &format!("{}/{repo}:v1", stack.src),
            &format!("{ECR_HOST}/{repo}:v1"),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let warnings = report["destinations"][0]["warnings"].to_string();
    assert!(
        warnings.contains("the destination refuses this kind of manifest (HTTP 405"),
        "{report}"
    );
    assert_eq!(front.double.count("ecr:PutImage", Some(405)), 1);
    assert_eq!(ecr_digest(&stack, &format!("{repo}:v1")), image);
}
