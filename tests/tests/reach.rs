//! The deployed reach, with the stack's IAM enforced: the gate in front of
//! moto and the ECR doubles allow exactly what the templates' roles allow
//! (read from `cloudformation/mirrorfleet.yaml` and `mirror-role.yaml`).
//!
//! - The README's two-region copy works when `Regions` names both regions,
//!   and the region not named is refused (the default: the stack's own).
//! - ECR in another account (docs/deploy.md, "ECR in another account"): the
//!   copy assumes the role `mirror-role.yaml` creates there, presenting its
//!   external id; the repository is created in that account, the registry
//!   gets that registry's token, and every call there is made as that role.
//!   A wrong external id is refused.
//! - A role the stack may not assume is a clear error naming the role, and
//!   the other destination of the same copy still syncs.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use mirrorfleet_tests::ecr_double::{EcrConfig, EcrDouble, moto_has_repository};
use mirrorfleet_tests::gate::AwsGate;
use mirrorfleet_tests::iam::{ACCOUNT, Place, Policy, template_path};
use mirrorfleet_tests::*;

/// The account the mirror role lives in.
const OTHER: &str = "210987654321";

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `role` of the fleet stack, with its conditional policies, for `pairs`.
fn fleet_policy(role: &str, pairs: &[(&str, &str)]) -> Policy {
    Policy::for_role(&template_path(), role, &params(pairs), true).unwrap()
}

/// The role `mirror-role.yaml` creates in `account`, for `pairs`.
fn mirror_policy(account: &str, pairs: &[(&str, &str)]) -> Policy {
    let path = template_path().with_file_name("mirror-role.yaml");
    let place = Place {
        account: account.to_string(),
        ..Place::default()
    };
    Policy::for_role_in(&path, "MirrorRole", &params(pairs), false, &place).unwrap()
}

/// An ECR registry of `account` in `region`, as `policy` may use it.
struct Registry {
    host: String,
    double: EcrDouble,
    _reader: AwsGate,
}

fn registry(stack: &Stack, account: &str, region: &str, policy: Policy) -> Registry {
    // The double reads repositories from moto with a gate of its own.
    let reader = AwsGate::start(&stack.moto, Policy::everything()).unwrap();
    let mut config = EcrConfig::for_role(stack, "CopyRole");
    config.policy = policy;
    config.region = region.to_string();
    config.account = account.to_string();
    config.moto = reader.url.clone();
    Registry {
        host: format!("{account}.dkr.ecr.{region}.amazonaws.com"),
        double: EcrDouble::start(config).unwrap(),
        _reader: reader,
    }
}

/// Registry settings: the stack's source registry over plain HTTP, and each
/// ECR registry through its double, with `extra` settings lines.
fn settings(stack: &Stack, registries: &[(&Registry, String)]) -> PathBuf {
    let mut yaml = format!("registries:\n  {}:\n    plain_http: true\n", stack.src);
    for (r, extra) in registries {
        yaml.push_str(&format!(
            "  {}:\n    endpoint: {}\n    plain_http: true\n{extra}",
            r.host, r.double.addr
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("mf-reach")));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `worker copy SRC DESTS` as a process whose AWS calls go through `gate`.
async fn copy(
    stack: &Stack,
    gate: &AwsGate,
    settings: &std::path::Path,
    src: &str,
    dests: &str,
) -> (i32, String) {
    let mut env = moto_env_via(stack, &gate.url);
    env.push(("MIRRORFLEET_REGISTRIES", settings.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = run_bin_off("mirrorfleet-worker", &["copy", src, dests], &env).await;
    (code, format!("{out}{err}"))
}

/// The digest at `name` (`repo:tag`) of the registry behind every double.
fn ecr_digest(stack: &Stack, name: &str) -> Option<String> {
    let skopeo = Skopeo {
        creds: Some(stack.ecr_creds.clone()),
        ..Skopeo::plain()
    };
    skopeo.digest(&format!("{}/{name}", stack.ecr)).ok()
}

#[tokio::test]
async fn the_readme_two_region_copy_works_in_the_regions_the_stack_names() {
    let stack = Stack::get();
    let repo = unique("two-region");
    let digest = push_image(&stack, &repo, "1.17").await;
    let src = format!("{}/{repo}:1.17", stack.src);
    for (regions, second_allowed) in [("us-east-1,us-east-2", true), ("", false)] {
        let policy = fleet_policy("CopyRole", &[("Regions", regions)]);
        // The controller HEADs both ends: it has the same regions.
        let controller = fleet_policy("ControllerRole", &[("Regions", regions)]);
        let arn_east2 = format!("arn:aws:ecr:us-east-2:{ACCOUNT}:repository/x");
        assert_eq!(
            controller.allows_in("ecr:BatchGetImage", &arn_east2, "us-east-2"),
            second_allowed
        );
        let gate = AwsGate::start(&stack.moto, policy.clone()).unwrap();
        let east1 = registry(&stack, ACCOUNT, "us-east-1", policy.clone());
        let east2 = registry(&stack, ACCOUNT, "us-east-2", policy);
        let settings = settings(&stack, &[(&east1, String::new()), (&east2, String::new())]);
        // One name per region here: both doubles keep their data in one registry.
        let (name1, name2) = (unique("golang"), unique("golang"));
        let dests = format!("{}/{name1}:1.17,{}/{name2}:1.17", east1.host, east2.host);
        let (code, log) = copy(&stack, &gate, &settings, &src, &dests).await;
        assert_eq!(
            ecr_digest(&stack, &format!("{name1}:1.17")),
            Some(digest.clone()),
            "{log}"
        );
        if second_allowed {
            assert_eq!(code, 0, "{log}");
            assert_eq!(
                ecr_digest(&stack, &format!("{name2}:1.17")),
                Some(digest.clone())
            );
            assert!(moto_has_repository(&stack.moto, "us-east-2", ACCOUNT, &name2).await);
            // Signed for us-east-2, checked there.
            assert!(
                gate.log()
                    .iter()
                    .any(|c| c.allowed && c.resource.contains(":us-east-2:"))
            );
        } else {
            assert_eq!(code, 1, "{log}");
            assert!(
                log.contains("not authorized")
                    && log.contains(&format!(
                        "arn:aws:ecr:us-east-2:{ACCOUNT}:repository/{name2}"
                    )),
                "{log}"
            );
            assert_eq!(ecr_digest(&stack, &format!("{name2}:1.17")), None);
        }
    }
}

#[tokio::test]
async fn another_account_is_reached_through_its_mirror_role_and_an_unlisted_role_is_named() {
    let stack = Stack::get();
    let repo = unique("cross-account");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let role = format!("arn:aws:iam::{OTHER}:role/mirrorfleet-mirror");
    let external_id = unique("mf-external");
    // The fleet stack names the role; the role's stack trusts the fleet.
    let fleet = fleet_policy("CopyRole", &[("DestinationRoleArns", &role)]);
    let mirror = mirror_policy(
        OTHER,
        &[
            (
                "FleetRoleArns",
                &format!("arn:aws:iam::{ACCOUNT}:role/mf-CopyRole"),
            ),
            ("Access", "push"),
            ("RepositoryPrefix", "mirror/"),
            ("ExternalId", &external_id),
        ],
    );
    let gate = AwsGate::start(&stack.moto, fleet).unwrap();
    gate.assumable(&role, mirror.clone(), Some(&external_id));
    let other = registry(&stack, OTHER, "us-east-1", mirror);
    // An account whose role the fleet stack does not name.
    let stranger_role = "arn:aws:iam::210987654399:role/mirrorfleet-mirror";
    let stranger = registry(&stack, "210987654399", "us-east-1", Policy::everything());
    let settings = settings(
        &stack,
        &[
            (
                &other,
                format!("    role_arn: {role}\n    external_id: {external_id}\n"),
            ),
            (&stranger, format!("    role_arn: {stranger_role}\n")),
        ],
    );
    let pushed = format!("mirror/{repo}");
    let dests = format!(
        "{}/{pushed}:v1,{}/mirror/{repo}-x:v1",
        other.host, stranger.host
    );
    let (code, log) = copy(&stack, &gate, &settings, &src, &dests).await;

    // The unlisted role: one clear error naming it; the other destination synced.
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(stranger_role) && log.contains("sts:AssumeRole"),
        "{log}"
    );
    assert_eq!(
        ecr_digest(&stack, &format!("{pushed}:v1")),
        Some(digest.clone()),
        "{log}"
    );
    let calls = gate.log();
    let assumed: Vec<_> = calls
        .iter()
        .filter(|c| c.action == "sts:AssumeRole")
        .collect();
    assert!(
        assumed.iter().any(|c| c.resource == role && c.allowed),
        "{calls:#?}"
    );
    assert!(
        assumed
            .iter()
            .any(|c| c.resource == stranger_role && !c.allowed)
    );
    // Everything in the other account was done as the mirror role, and allowed.
    let there: Vec<_> = calls
        .iter()
        .filter(|c| c.action.starts_with("ecr:") && c.resource.contains(OTHER))
        .collect();
    assert!(
        there.iter().any(|c| c.action == "ecr:CreateRepository"),
        "{calls:#?}"
    );
    assert!(
        there.iter().all(|c| c.role == "MirrorRole" && c.allowed),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.action == "ecr:GetAuthorizationToken" && c.role == "MirrorRole"),
        "{calls:#?}"
    );
    // The repository is the other account's, not ours.
    assert!(moto_has_repository(&stack.moto, "us-east-1", OTHER, &pushed).await);
    assert!(!moto_has_repository(&stack.moto, "us-east-1", ACCOUNT, &pushed).await);
    // The registry was given its own token (the double refuses another's).
    assert!(other.double.count("ecr:PutImage", Some(201)) >= 1);

    // The wrong external id: the role does not trust the caller.
    let wrong = settings_with_external_id(&stack, &other, &role, "not-the-external-id");
    let (code, log) = copy(
        &stack,
        &gate,
        &wrong,
        &src,
        &format!("{}/{pushed}:v1", other.host),
    )
    .await;
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&role) && log.contains("sts:AssumeRole"),
        "{log}"
    );
}

fn settings_with_external_id(stack: &Stack, r: &Registry, role: &str, id: &str) -> PathBuf {
    settings(
        stack,
        &[(r, format!("    role_arn: {role}\n    external_id: {id}\n"))],
    )
}
