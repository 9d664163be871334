//! Settings and credentials kept in AWS: the registry settings from an SSM
//! parameter (SecureString) or a Secrets Manager secret, and a registry's
//! password that exists only in a Secrets Manager secret (moto's). The
//! worker copies from the basic-auth registry with them, and the password
//! appears nowhere in its output, even at trace level. Bad input (a missing
//! parameter, a missing secret, a secret of the wrong shape) is reported in
//! words that name the parameter or secret, never a value.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::*;

/// A moto secret holding `value`; returns its ARN.
async fn secret(stack: &Stack, value: &str) -> String {
    moto_secrets(stack)
        .create_secret()
        .name(unique("mf-creds"))
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

/// A SecureString SSM parameter holding `value`; returns its name.
async fn parameter(stack: &Stack, value: &str) -> String {
    let name = format!("/mirrorfleet/{}/registries", unique("ssm"));
    moto_ssm(stack)
        .put_parameter()
        .name(&name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    name
}

/// Registry settings that reach the stack's plain registries, the
/// basic-auth one with its credentials in `secret_arn`.
fn settings_yaml(stack: &Stack, secret_arn: &str) -> String {
    format!(
        "registries:\n  {src}:\n    plain_http: true\n  {dst}:\n    plain_http: true\n  {basic}:\n    plain_http: true\n    credentials_secret: {secret_arn}\n",
        src = stack.src,
        dst = stack.dst,
        basic = stack.basic,
    )
}

/// `worker copy` with the settings at `registries`, logging at trace level.
async fn copy(stack: &Stack, registries: &str, src: &str, dest: &str) -> (i32, String, String) {
    let mut env = moto_env(stack);
    env.push(("MIRRORFLEET_REGISTRIES", registries.to_string()));
    env.push(("MIRRORFLEET_LOG", "trace".to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_bin_off("mirrorfleet-worker", &["copy", src, dest], &env).await
}

#[tokio::test]
async fn settings_from_ssm_and_credentials_from_secrets_manager() {
    let stack = Stack::get();
    let repo = unique("aws-settings");
    let (user, pass) = stack.basic_creds.split_once(':').unwrap();
    let arn = secret(
        &stack,
        &serde_json::json!({"username": user, "password": pass}).to_string(),
    )
    .await;
    let yaml = settings_yaml(&stack, &arn);
    let sk_basic = Skopeo {
        creds: Some(stack.basic_creds.clone()),
        ..Skopeo::plain()
    };

    // Into the basic-auth registry, then out of it, settings from SSM.
    let digest = push_image(&stack, &repo, "v1").await;
    let name = parameter(&stack, &yaml).await;
    let private = format!("{}/{repo}:v1", stack.basic);
    let (code, out, err) = copy(
        &stack,
        &format!("ssm:{name}"),
        &format!("{}/{repo}:v1", stack.src),
        &private,
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sk_basic.digest(&private).unwrap(), digest);
    assert!(
        !out.contains(pass) && !err.contains(pass),
        "the password was printed"
    );

    // The same settings as a Secrets Manager secret.
    let settings_arn = secret(&stack, &yaml).await;
    let back = format!("{}/{repo}-back:v1", stack.dst);
    let (code, out, err) = copy(
        &stack,
        &format!("secretsmanager:{settings_arn}"),
        &private,
        &back,
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(Skopeo::plain().digest(&back).unwrap(), digest);
    assert!(
        !out.contains(pass) && !err.contains(pass),
        "the password was printed"
    );

    // A Docker config's `auths` works as the secret's shape too.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(&stack.basic_creds);
    let docker_arn = secret(
        &stack,
        &serde_json::json!({"auths": {stack.basic.clone(): {"auth": auth}}}).to_string(),
    )
    .await;
    let name = parameter(&stack, &settings_yaml(&stack, &docker_arn)).await;
    let again = format!("{}/{repo}-docker:v1", stack.dst);
    let (code, out, err) = copy(&stack, &format!("ssm:{name}"), &private, &again).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(Skopeo::plain().digest(&again).unwrap(), digest);
}

#[tokio::test]
async fn missing_or_malformed_settings_and_secrets_are_named_never_shown() {
    let stack = Stack::get();
    let repo = unique("aws-bad");
    push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let (_, pass) = stack.basic_creds.split_once(':').unwrap();

    // A parameter that does not exist: invalid configuration, nothing done.
    let missing = format!("/mirrorfleet/{}/none", unique("ssm"));
    let (code, _, err) = copy(
        &stack,
        &format!("ssm:{missing}"),
        &src,
        &format!("{}/{repo}:x", stack.dst),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("error:")
            && l.contains(&format!("cannot read SSM parameter {missing}"))
            && l.contains("ParameterNotFound")),
        "{err}"
    );

    // A credential secret that does not exist, and one of the wrong shape:
    // the destination fails in words naming the secret; the password (in
    // the wrong-shape secret) is never printed.
    let gone = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}",
        unique("gone")
    );
    let wrong = secret(
        &stack,
        &serde_json::json!({"user": "x", "pass": pass}).to_string(),
    )
    .await;
    for (arn, words) in [
        (gone.as_str(), format!("cannot read secret {gone}")),
        (
            wrong.as_str(),
            format!("secret {wrong} holds no credentials for {}", stack.basic),
        ),
    ] {
        let name = parameter(&stack, &settings_yaml(&stack, arn)).await;
        let dest = format!("{}/{repo}:v1", stack.basic);
        let (code, out, err) = copy(&stack, &format!("ssm:{name}"), &src, &dest).await;
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(
            out.contains(&words) || err.contains(&words),
            "{words:?} not in:\n{out}\n{err}"
        );
        assert!(
            !out.contains(pass) && !err.contains(pass),
            "a secret's value was printed"
        );
    }
}

/// The stack grants `ssm:GetParameter` on exactly its
/// `RegistrySettingsParameter`: a process of its roles (IAM enforced by the
/// gate, from the template) reads that one, and another parameter is a
/// clear refusal naming it, for the worker and the controller alike.
#[tokio::test]
async fn only_the_stacks_settings_parameter_may_be_read() {
    use mirrorfleet_tests::gate::AwsGate;
    use mirrorfleet_tests::iam::{Policy, template_path};
    let stack = Stack::get();
    let repo = unique("aws-ssm-iam");
    push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let yaml = format!(
        "registries:\n  {}:\n    plain_http: true\n  {}:\n    plain_http: true\n",
        stack.src, stack.dst
    );
    let granted = parameter(&stack, &yaml).await;
    let other = parameter(&stack, &yaml).await;
    let params = std::collections::BTreeMap::from([(
        "RegistrySettingsParameter".to_string(),
        granted.clone(),
    )]);
    for (role, bin, args) in [
        (
            "CopyRole",
            "mirrorfleet-worker",
            vec![
                "copy".to_string(),
                src.clone(),
                format!("{}/{repo}:v1", stack.dst),
            ],
        ),
        (
            "ControllerRole",
            "mirrorfleet-controller",
            vec![
                "check".to_string(),
                src.clone(),
                format!("{}/{repo}:v1", stack.dst),
            ],
        ),
    ] {
        let policy = Policy::for_role(&template_path(), role, &params, true).unwrap();
        let gate = AwsGate::start(&stack.moto, policy).unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for (name, allowed) in [(&granted, true), (&other, false)] {
            let mut env = moto_env_via(&stack, &gate.url);
            env.push(("MIRRORFLEET_REGISTRIES", format!("ssm:{name}")));
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (code, out, err) = run_bin_off(bin, &args, &env).await;
            if allowed {
                assert_eq!(code, 0, "{role}: {out}\n{err}");
            } else {
                assert_eq!(code, 2, "{role}: {out}\n{err}");
                assert!(
                    err.lines().any(|l| l.starts_with("error:")
                        && l.contains(&format!("cannot read SSM parameter {name}"))
                        && l.contains("not authorized to perform: ssm:GetParameter")),
                    "{role}: {err}"
                );
                assert!(
                    !err.contains("plain_http"),
                    "the parameter's value was printed"
                );
            }
        }
        assert_eq!(gate.count("ssm:GetParameter"), 2, "{role}");
    }
}
