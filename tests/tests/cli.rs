//! The binaries as users run them: flags, exit codes, JSON output, and an ECR
//! destination (moto's control plane, a local registry serving the ECR host).

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::ecr_double::{ECR_HOST, EcrFront};
use mirrorfleet_tests::*;
use serde_json::{Value, json};

#[tokio::test]
async fn worker_copy_output_and_exit_codes() {
    let stack = Stack::get();
    let repo = unique("cli");
    let digest = push_image(&stack, &repo, "v1").await;
    let plain = format!("{},{}", stack.src, stack.dst);
    let src = format!("{}/{repo}:v1", stack.src);
    // Destinations comma-separated in one argument, as Batch parameters pass them.
    let dests = format!("{0}/{repo}-a:v1,{0}/{repo}-b:v1", stack.dst);
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--plain-http",
            &plain,
            "--output",
            "json",
            &src,
            &dests,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["source_digest"], digest);
    assert_eq!(v["destinations"].as_array().unwrap().len(), 2);
    assert_eq!(v["destinations"][0]["outcome"], "copied");
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}-b:v1", stack.dst))
            .unwrap(),
        digest
    );

    // Text output, flags from the environment, and a second run in sync.
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &["copy", &src, &format!("{}/{repo}-a:v1", stack.dst)],
        &[("MIRRORFLEET_PLAIN_HTTP", &plain)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("DESTINATION") && out.contains("in sync"),
        "{out}"
    );

    // A missing tag: exit 1 and the reason in words.
    let (code, out, _) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--plain-http",
            &plain,
            &format!("{}/{repo}:missing", stack.src),
            &format!("{}/{repo}:x", stack.dst),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.contains("was not found"), "{out}");

    // An invalid reference: exit 2 before anything is contacted.
    let (code, _, err) = run_bin("mirrorfleet-worker", &["copy", "Bad:Ref:", "x/y:z"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid image reference"), "{err}");

    // JSON logs are one object per line.
    let (code, _, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "--log-format",
            "json",
            "copy",
            "--plain-http",
            &plain,
            &src,
            &format!("{}/{repo}-a:v1", stack.dst),
        ],
        &[],
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "no log lines to check: {err}");
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v.get("level").is_some());
    }
}

/// The lines of a help text's `Examples:` section (indented lines up to
/// the next unindented one).
fn example_lines(help: &str) -> Vec<&str> {
    help.lines()
        .skip_while(|l| !l.starts_with("Examples:"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// Why an Examples section cannot be pasted into a shell as printed: a line
/// that is neither a command, a comment, nor the continuation of a line
/// ending in `\` (what clap's wrapping of a long line leaves), or a flag the
/// subcommand does not have.
fn unpasteable(examples: &[&str], help: &str) -> Vec<String> {
    let starts_command = |l: &str| {
        ["mirrorfleet-", "aws ", "export ", "cat "]
            .iter()
            .any(|p| l.starts_with(p))
    };
    let mut problems = Vec::new();
    let mut continued = false;
    for line in examples {
        let t = line.trim();
        if t.is_empty() {
            if continued {
                problems.push("a `\\` continues into a blank line".to_string());
            }
            continued = false;
            continue;
        }
        if !continued && !t.starts_with('#') && !starts_command(t) {
            problems.push(format!("not a command, comment or continuation: {t:?}"));
        }
        if !t.starts_with('#') {
            let command = t.split(" #").next().unwrap_or(t);
            for flag in command.split_whitespace().filter(|w| w.starts_with("--")) {
                let name = flag.split('=').next().unwrap_or(flag);
                if !help.contains(&format!("{name} ")) && !help.contains(&format!("{name}\n")) {
                    problems.push(format!("{name} is not a flag of this subcommand: {t:?}"));
                }
            }
        }
        continued = t.ends_with('\\');
    }
    problems
}

#[test]
fn unpasteable_examples_are_caught() {
    let help = "Options:\n  --platform <OS/ARCH>\n  --jobs <JOBS>\n";
    let wrapped = [
        "  mirrorfleet-worker copy --platform linux/amd64,linux/arm64 nginx:1.27",
        "  registry.example.com/nginx:1.27",
    ];
    assert_eq!(unpasteable(&wrapped, help).len(), 1);
    let unknown = ["  mirrorfleet-worker consume --concurrency 8"];
    assert_eq!(unpasteable(&unknown, help).len(), 1);
    let good = [
        "  # two platforms",
        "  mirrorfleet-worker copy --platform linux/amd64 \\",
        "      nginx:1.27 registry.example.com/nginx:1.27",
        "",
        "  mirrorfleet-worker consume --jobs 8   # eight at once",
    ];
    assert_eq!(unpasteable(&good, help), Vec::<String>::new());
}

/// Every subcommand's `--help` has examples that paste into a shell as
/// printed (clap wraps help at 100 columns, which breaks a long command
/// line in two) and name only flags the subcommand has.
#[tokio::test]
async fn help_has_examples_that_paste() {
    let subcommands: [(&str, &[&str]); 6] = [
        ("mirrorfleet-worker", &["copy"]),
        ("mirrorfleet-worker", &["consume"]),
        ("mirrorfleet-controller", &["check"]),
        ("mirrorfleet-controller", &["run"]),
        ("mirrorfleet-controller", &["sync"]),
        ("mirrorfleet-controller", &["table"]),
    ];
    for (bin, sub) in subcommands {
        let args: Vec<&str> = sub.iter().copied().chain(["--help"]).collect();
        let (code, out, _) = run_bin(bin, &args, &[]);
        assert_eq!(code, 0);
        assert!(
            out.contains("Examples:") && out.contains("[env: MIRRORFLEET_"),
            "{bin} {sub:?}: {out}"
        );
        let examples = example_lines(&out);
        assert!(examples.len() >= 2, "{bin} {sub:?}: {out}");
        // Flags of `table`'s own subcommands are checked against their help.
        let mut all_help = out.clone();
        if sub == ["table"] {
            for t in ["create", "add", "rm", "ls", "import", "export"] {
                all_help.push_str(&run_bin(bin, &["table", t, "--help"], &[]).1);
            }
        }
        let problems = unpasteable(&examples, &all_help);
        assert!(problems.is_empty(), "{bin} {sub:?}: {problems:#?}\n{out}");
    }
}

#[tokio::test]
async fn controller_check_compares_digests() {
    let stack = Stack::get();
    let repo = unique("check");
    push_image(&stack, &repo, "v1").await;
    let plain = format!("{},{}", stack.src, stack.dst);
    let src = format!("{}/{repo}:v1", stack.src);
    let dest = format!("{}/{repo}:v1", stack.dst);
    let (code, out, _) = run_bin(
        "mirrorfleet-controller",
        &["check", "--plain-http", &plain, &src, &dest],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("differs"));
    let (code, _, err) = run_bin(
        "mirrorfleet-worker",
        &["copy", "--plain-http", &plain, &src, &dest],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run_bin(
        "mirrorfleet-controller",
        &[
            "check",
            "--plain-http",
            &plain,
            "--output",
            "json",
            &src,
            &dest,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[1]["in_sync"], true);
}

/// skopeo logged in to the registry that serves the ECR host.
fn ecr_skopeo(stack: &Stack) -> Skopeo {
    Skopeo {
        creds: Some(stack.ecr_creds.clone()),
        ..Skopeo::plain()
    }
}

#[tokio::test]
async fn ecr_destination_creates_repository_and_honours_immutable_tags() {
    let stack = Stack::get();
    let ecr = moto_ecr(&stack);
    // The ad-hoc copy job's role, as the template grants it.
    let front = EcrFront::start(&stack, "CopyRole");
    let env = front.env(&stack);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let repo = unique("ecr-src");
    let a = push_image(&stack, &repo, "a").await;
    push_image(&stack, &repo, "b").await;
    let settings = front.settings(&[&stack.src], "ecr:\n  scan_on_push: true\n");
    let settings = settings.to_str().unwrap();

    // 1. A repository that does not exist yet is created, with the configured settings.
    let created = unique("auto/app");
    let dest = format!("{ECR_HOST}/{created}:a");
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings,
            &format!("{}/{repo}:a", stack.src),
            &dest,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let described = ecr
        .describe_repositories()
        .repository_names(&created)
        .send()
        .await
        .unwrap();
    let r = &described.repositories()[0];
    assert_eq!(
        r.image_scanning_configuration().map(|c| c.scan_on_push()),
        Some(true)
    );
    assert_eq!(
        ecr_skopeo(&stack)
            .digest(&format!("{}/{created}:a", stack.ecr))
            .unwrap(),
        a
    );
    // A repository it just created holds nothing: no listing (which takes
    // ecr:ListImages, a permission the template does not grant).
    assert_eq!(front.double.count("ecr:ListImages", None), 0);
    assert!(front.double.count("ecr:PutImage", Some(201)) >= 3);
    assert_eq!(front.gate.count("ecr:CreateRepository"), 1);

    // 2. An immutable repository: the same digest again is success, another is refused.
    let frozen = unique("frozen");
    ecr.create_repository()
        .repository_name(&frozen)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
    let dest = format!("{ECR_HOST}/{frozen}:t");
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings,
            &format!("{}/{repo}:a", stack.src),
            &dest,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings,
            &format!("{}/{repo}:a", stack.src),
            &dest,
        ],
        &env,
    );
    assert_eq!(code, 0);
    assert!(out.contains("in sync"), "{out}");
    let (code, out, _) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings,
            &format!("{}/{repo}:b", stack.src),
            &dest,
        ],
        &env,
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("overwrite refused"), "{out}");
    assert_eq!(
        ecr_skopeo(&stack)
            .digest(&format!("{}/{frozen}:t", stack.ecr))
            .unwrap(),
        a
    );
}

#[tokio::test]
async fn docker_credential_helper_supplies_the_login() {
    let stack = Stack::get();
    let repo = unique("helper");
    let digest = push_image(&stack, &repo, "v1").await;
    // A credential helper that answers for the basic-auth registry, reading
    // the host from stdin as the protocol says (never from argv).
    let dir = std::env::temp_dir().join(unique("mf-helper"));
    std::fs::create_dir_all(&dir).unwrap();
    let (user, pass) = stack.basic_creds.split_once(':').unwrap();
    let helper = dir.join("docker-credential-mftest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread host\n[ \"$1\" = get ] && [ \"$host\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}' \"$host\"\n",
            stack.basic
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        json!({"credHelpers": {stack.basic.clone(): "mftest"}}).to_string(),
    )
    .unwrap();

    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plain = format!("{},{}", stack.src, stack.basic);
    let dest = format!("{}/{repo}:v1", stack.basic);
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--plain-http",
            &plain,
            "--authfile",
            config.to_str().unwrap(),
            &format!("{}/{repo}:v1", stack.src),
            &dest,
        ],
        &[("PATH", &path)],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let sk = Skopeo {
        creds: Some(stack.basic_creds.clone()),
        ..Skopeo::plain()
    };
    assert_eq!(sk.digest(&dest).unwrap(), digest);
    assert!(
        !err.contains(pass) && !out.contains(pass),
        "the password was printed"
    );
}

/// An ECR destination is asked which blobs it has in one
/// `BatchCheckLayerAvailability` call: a blob ECR reports is skipped without
/// a HEAD, the others are HEADed and copied as usual.
#[tokio::test]
async fn ecr_destination_skips_the_blobs_ecr_reports_present() {
    use aws_sdk_ecr::primitives::Blob;
    let stack = Stack::get();
    let ecr = moto_ecr(&stack);
    let front = EcrFront::start(&stack, "CopyRole");
    let env = front.env(&stack);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let repo = unique("ecr-layers");
    let shared = random_bytes(3000);
    let shared_digest = sha256(&shared);

    // The source image: the shared layer and one of its own.
    let src = Pusher::new(Target::plain(&stack.src)).unwrap();
    let mut layers = Vec::new();
    for bytes in [shared.clone(), random_bytes(2000)] {
        let mut d = src.blob(&repo, &bytes).await.unwrap();
        d["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
        layers.push(d);
    }
    let own_digest = layers[1]["digest"].as_str().unwrap().to_string();
    let cfg = src
        .blob_typed(
            &repo,
            br#"{"architecture":"amd64","os":"linux"}"#,
            "application/vnd.oci.image.config.v1+json",
        )
        .await
        .unwrap();
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": layers}))
    .unwrap();
    src.manifest(
        &repo,
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
    .await
    .unwrap();

    // ECR already holds the shared layer: uploaded through ECR's API (what
    // BatchCheckLayerAvailability reports) and present in the registry.
    ecr.create_repository()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();
    let upload = ecr
        .initiate_layer_upload()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    ecr.upload_layer_part()
        .repository_name(&repo)
        .upload_id(id)
        .part_first_byte(0)
        .part_last_byte(shared.len() as i64 - 1)
        .layer_part_blob(Blob::new(shared.clone()))
        .send()
        .await
        .unwrap();
    ecr.complete_layer_upload()
        .repository_name(&repo)
        .upload_id(id)
        .layer_digests(&shared_digest)
        .send()
        .await
        .unwrap();
    let ecr_registry = Pusher::new(Target {
        creds: Some(stack.ecr_creds.clone()),
        ..Target::plain(&stack.ecr)
    })
    .unwrap();
    // An older image there shares the layer (the usual case: a base layer).
    let mut old_layer = ecr_registry.blob(&repo, &shared).await.unwrap();
    old_layer["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
    let old_cfg = ecr_registry
        .blob_typed(
            &repo,
            br#"{"architecture":"amd64","os":"linux","old":true}"#,
            "application/vnd.oci.image.config.v1+json",
        )
        .await
        .unwrap();
    let old = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": old_cfg, "layers": [old_layer]}))
    .unwrap();
    ecr_registry
        .manifest(
            &repo,
            "old",
            "application/vnd.oci.image.manifest.v1+json",
            &old,
        )
        .await
        .unwrap();

    let settings = front.settings(&[&stack.src], "");
    let heads = |digest: &str| count_requests(&stack, "ecr", &["\"HEAD /v2/", &repo, digest]);
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings.to_str().unwrap(),
            "--output",
            "json",
            &format!("{}/{repo}:v1", stack.src),
            &format!("{ECR_HOST}/{repo}:v1"),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let d = &report["destinations"][0];
    assert_eq!(d["blobs_skipped"], 1, "{report}");
    assert_eq!(d["blobs_copied"], 2, "{report}");
    assert_eq!(
        heads(&shared_digest),
        0,
        "the layer ECR reported was HEADed"
    );
    assert_eq!(heads(&own_digest), 1, "the other layer was not checked");
    assert_eq!(front.gate.count("ecr:BatchCheckLayerAvailability"), 1);
    assert_eq!(
        ecr_skopeo(&stack)
            .digest(&format!("{}/{repo}:v1", stack.ecr))
            .unwrap(),
        sha256(&manifest)
    );
}
