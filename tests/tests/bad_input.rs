//! Bad input gets a clear error and loses nothing.
//!
//! Every malformed input below goes through the real binaries (or straight
//! into moto's table and queue) and the test asserts the exact sentence the
//! user reads. Each group also carries at least one good image in the same
//! run, which must end `synced` at the source's digest (checked with skopeo),
//! while the bad ones end with their own error (a row error in `table ls`, a
//! failed destination, or a message in the dead-letter queue with the reason
//! in the worker's log). No process may panic, and exit codes are the
//! documented ones (README, "Exit codes").
//!
//! 117 malformed inputs in all:
//!
//! | group                                                   | cases |
//! | ------------------------------------------------------- | ----- |
//! | A. `worker copy`: invalid image arguments (exit 2)      |    17 |
//! | B. `worker copy`: destinations that fail at run time    |     5 |
//! | C. `table add`: refused before anything is written      |     9 |
//! | D. DynamoDB rows typed by hand with wrong types         |    19 |
//! | E. `table import`: bad files refused whole, bad rows alone |  24 |
//! | E. `table import`: 3 bad rows among 1,000, YAML and CSV |     6 |
//! | F. SQS: malformed messages and jobs gone stale          |    17 |
//! | G. `controller run`: unreadable sources, huge rows      |     7 |
//! | H. `controller sync` (local mode)                       |    13 |

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue as Av;
use mirrorfleet_tests::*;
use mirrorfleet_tests::{run_env as run, table_ls_json as table_json};
use serde_json::Value;

/// Attributes of a DynamoDB item, by name.
type Attrs<'a> = Vec<(&'a str, Av)>;

/// Wrong credentials for the basic-auth registry (the others ignore them).
const WRONG_CREDS: &str = "mirror:wrong-password";
/// A host name that never resolves (RFC 6761) and a port nothing listens on.
const NO_SUCH_HOST: &str = "nonexistent.invalid";
const REFUSED: &str = "127.0.0.1:1";

fn login_refused(stack: &Stack) -> String {
    format!(
        "login to {} failed: the registry refused the credentials (no details given)",
        stack.basic
    )
}

fn connection_refused(repo: &str, tag: &str) -> String {
    format!(
        "cannot reach {REFUSED}: error sending request for url (http://{REFUSED}/v2/{repo}/manifests/{tag}): \
         client error (Connect): tcp connect error: Connection refused (os error 111)"
    )
}

/// The resolver's own words after `dns error:` differ between systems; the
/// sentence up to there is ours and is asserted whole.
fn no_such_host(repo: &str, tag: &str) -> String {
    format!(
        "cannot reach {NO_SUCH_HOST}: error sending request for url (https://{NO_SUCH_HOST}/v2/{repo}/manifests/{tag}): \
         client error (Connect): dns error: "
    )
}

/// Plain HTTP for every local registry (and the refused port).
fn env(stack: &Stack, table: &str, queue: &str) -> Env {
    control_env(
        stack,
        table,
        queue,
        &[&stack.src, &stack.dst, &stack.basic, REFUSED],
    )
}

/// A fresh table and queue (dead-letter queue after 3 receives) in moto,
/// plain HTTP for every local registry (and the refused port).
async fn setup(stack: &Stack, name: &str) -> (Env, String, String) {
    control_setup(
        stack,
        name,
        &[&stack.src, &stack.dst, &stack.basic, REFUSED],
        3,
    )
    .await
}

fn with(env: &Env, k: &str, v: &str) -> Env {
    let mut e = env.clone();
    e.push((k.into(), v.into()));
    e
}

/// The stderr line `error: <message>`, exactly.
fn assert_error_line(err: &str, message: &str) {
    let want = format!("error: {message}");
    assert!(
        err.lines().any(|l| l == want),
        "expected the line\n  {want}\nin stderr:\n{err}"
    );
}

/// How an invalid input is quoted in messages: a long one is cut short.
fn quoted(input: &str) -> String {
    if input.chars().count() <= 200 {
        format!("{input:?}")
    } else {
        let head: String = input.chars().take(60).collect();
        format!(
            "{:?} ({} characters)",
            format!("{head}…"),
            input.chars().count()
        )
    }
}

fn table_name(env: &Env) -> String {
    env.iter()
        .find(|(k, _)| k == "MIRRORFLEET_TABLE")
        .unwrap()
        .1
        .clone()
}

fn add_row(env: &Env, args: &[&str]) {
    let mut a = vec!["table", "add"];
    a.extend_from_slice(args);
    let (code, _, err) = run("mirrorfleet-controller", &a, env);
    assert_eq!(code, 0, "{err}");
}

/// `table ls` entry of one destination.
fn entry<'a>(rows: &'a [Value], dest: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["destination"] == dest)
        .unwrap_or_else(|| panic!("{dest} not in the table"))
}

/// `table ls` error of a row that cannot be read at all.
fn invalid_row(rows: &[Value], source: &str) -> String {
    rows.iter()
        .find(|r| r["source"] == source && r.get("destination").is_none())
        .unwrap_or_else(|| panic!("no invalid row {source}"))["error"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `controller run --output json`, with its exit code checked.
fn controller_run(env: &Env, want_code: i32) -> (Value, String) {
    let (code, out, err) = run("mirrorfleet-controller", &["run", "--output", "json"], env);
    assert_eq!(code, want_code, "{out}\n{err}");
    (serde_json::from_str(&out).unwrap(), err)
}

/// `worker consume` until idle, JSON logs; returns (summary, log lines).
fn consume(env: &Env, visibility: &str, idle: &str) -> (Value, Vec<Value>) {
    let env = with(env, "MIRRORFLEET_LOG_FORMAT", "json");
    let (code, out, err) = run(
        "mirrorfleet-worker",
        &[
            "consume",
            "--visibility",
            visibility,
            "--wait",
            "1s",
            "--exit-when-idle",
            idle,
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0, "consume stops with 0 when idle: {out}\n{err}");
    let logs = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (serde_json::from_str(&out).unwrap(), logs)
}

/// The `field` of every log line whose message is `message`.
fn logged(logs: &[Value], message: &str, field: &str) -> Vec<String> {
    logs.iter()
        .filter(|l| l["message"] == message)
        .map(|l| l[field].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The good image must be at `dest` with the source's digest, and the table
/// must say so.
fn assert_synced(env: &Env, dest: &str, digest: &str) {
    assert_eq!(Skopeo::plain().digest(dest).unwrap(), digest, "{dest}");
    let rows = table_json(env);
    let e = entry(&rows, dest);
    assert_eq!(e["state"], "synced", "{e:#}");
    assert_eq!(e["status"]["dest_digest"], digest, "{e:#}");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

// ------------------------------------------------------------------ A

#[tokio::test]
async fn a_copy_refuses_invalid_references_before_contacting_anything() {
    let stack = Stack::get();
    let env = env(&stack, "unused", "unused");
    let repo = unique("bi-args");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}-good:v1", stack.dst);
    let d = &stack.dst;
    let huge = format!("{d}/{}:1", "a".repeat(100_000));

    // (destination argument, why it is refused); it is the second destination.
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{d}/App:1"),
            r#"repository names must be lowercase ("App" is not)"#,
        ),
        (
            format!("{d}/app:b+c"),
            "it contains the character '+', which is not allowed in an image reference",
        ),
        (
            format!("{d}/app:-x"),
            r#"tag "-x" must start with a letter, digit or '_'"#,
        ),
        (
            format!("{d}/app@sha256:zz"),
            "the digest after '@' is invalid: a sha256 digest has 64 hexadecimal characters after the ':', this one has 2",
        ),
        (
            format!("{d}/app@md5:d41d8cd98f00b204e9800998ecf8427e"),
            "the digest after '@' is invalid: only sha256 and sha512 digests are supported",
        ),
        (
            format!("{d}/app:{}", "t".repeat(129)),
            "a tag is at most 128 characters",
        ),
        (format!("{d}/my app:1"), "it contains the character ' '"),
        (
            "x::y".into(),
            r#"it contains "::" (one ':' separates the tag, or a registry host's port)"#,
        ),
        (
            format!("https://{d}/app:1"),
            "write the reference without a scheme (no http:// or https://)",
        ),
        (
            format!("{d}//app:1"),
            "the repository name has an empty path component",
        ),
        (
            format!("{d}/a:1;{d}/b:1"),
            "it contains the character ';', which is not allowed in an image reference",
        ),
        (
            "registry.example.com:99999/app:1".into(),
            r#""99999" is not a valid port"#,
        ),
        (
            huge.clone(),
            "it is far too long (a repository name is at most 255 characters)",
        ),
    ];
    for (bad, reason) in &cases {
        let (code, out, err) = run("mirrorfleet-worker", &["copy", &src, &good, bad], &env);
        assert_eq!(code, 2, "invalid usage: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "error: destination 2: invalid image reference {}: {reason}",
                quoted(bad)
            )
        );
        assert!(out.is_empty(), "{out}");
    }
    // An invalid source, and an empty destination list.
    let sources: [(&str, &str); 2] = [
        ("", r#"source: invalid image reference "": it is empty"#),
        (
            "Bad:Ref",
            r#"source: invalid image reference "Bad:Ref": repository names must be lowercase ("Bad" is not)"#,
        ),
    ];
    for (bad, message) in sources {
        let (code, _, err) = run("mirrorfleet-worker", &["copy", bad, &good], &env);
        assert_eq!(code, 2);
        assert_eq!(err.trim_end(), format!("error: {message}"));
    }
    for empty in ["", " , "] {
        let (code, _, err) = run("mirrorfleet-worker", &["copy", &src, empty], &env);
        assert_eq!(code, 2);
        assert_eq!(err.trim_end(), "error: no destination given");
    }
    assert_eq!(cases.len() + 4, 17);

    // Nothing was contacted or written: the good destination does not exist.
    assert!(Skopeo::plain().raw(&good).is_err(), "a refused run copied");
    // The same run without the bad argument copies the good image.
    let (code, _, err) = run("mirrorfleet-worker", &["copy", &src, &good], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Skopeo::plain().digest(&good).unwrap(), digest);
}

// ------------------------------------------------------------------ B

#[tokio::test]
async fn b_copy_reports_each_failing_destination_and_copies_the_good_one() {
    let stack = Stack::get();
    let env = with(
        &env(&stack, "unused", "unused"),
        "MIRRORFLEET_DEST_CREDS",
        WRONG_CREDS,
    );
    let repo = unique("bi-copy");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}:v1", stack.dst);
    // (destination, its error)
    let cases = [
        (
            src.clone(),
            format!("destination {src} is the source itself"),
        ),
        (
            format!("{NO_SUCH_HOST}/{repo}:v1"),
            no_such_host(&repo, "v1"),
        ),
        (
            format!("{REFUSED}/{repo}:v1"),
            connection_refused(&repo, "v1"),
        ),
        (format!("{}/{repo}:v1", stack.basic), login_refused(&stack)),
    ];
    let mut args = vec!["copy", "--output", "json", &src, &good];
    args.extend(cases.iter().map(|(d, _)| d.as_str()));
    let (code, out, err) = run("mirrorfleet-worker", &args, &env);
    assert_eq!(code, 1, "permanent failures among them: {err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let dests = report["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 5);
    assert_eq!(dests[0]["destination"], good);
    assert_eq!(dests[0]["outcome"], "copied");
    assert_eq!(dests[0]["digest"], digest);
    for ((dest, message), r) in cases.iter().zip(&dests[1..]) {
        assert_eq!(r["destination"], *dest);
        assert_eq!(r["outcome"], "failed");
        let error = r["error"].as_str().unwrap();
        if dest.starts_with(NO_SUCH_HOST) {
            assert!(error.starts_with(message.as_str()), "{error}");
        } else {
            assert_eq!(error, message);
        }
        // The reason is in the log too.
        assert!(err.contains(error), "{err}");
    }
    // Unreachable hosts are transient (retrying later may help); the rest are not.
    assert_eq!(dests[2]["transient"], true);
    assert_eq!(dests[3]["transient"], true);
    assert!(dests[4].get("transient").is_none());
    assert_eq!(Skopeo::plain().digest(&good).unwrap(), digest);

    // A source tag that does not exist: exit 1, said on the destination.
    let missing = format!("{}/{repo}:nope", stack.src);
    let (code, out, _) = run(
        "mirrorfleet-worker",
        &[
            "copy",
            "--output",
            "json",
            &missing,
            &format!("{}/{repo}:nope", stack.dst),
        ],
        &env,
    );
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["destinations"][0]["error"],
        format!("source image {missing} was not found (check the tag exists)")
    );
    assert_eq!(cases.len() + 1, 5);
}

// ------------------------------------------------------------------ C

#[tokio::test]
async fn c_table_add_refuses_bad_rows_and_writes_nothing() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "bi-add").await;
    let repo = unique("bi-add");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let dest = format!("{}/{repo}:v1", stack.dst);
    let huge = format!("{}/{}:v1", stack.src, "a".repeat(100_000));
    let d = &stack.dst;

    // (arguments after `table add`, the error)
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![src.clone(), format!("{d}/App:1")],
            format!(
                r#"destination 1: invalid image reference "{d}/App:1": repository names must be lowercase ("App" is not)"#
            ),
        ),
        (
            vec![src.clone(), ",".into()],
            format!("mirror {src} has no destinations"),
        ),
        (
            vec![src.clone(), dest.clone(), dest.clone()],
            format!("destination {dest} is listed twice"),
        ),
        (
            vec![src.clone(), src.clone()],
            format!("destination {src} is the source itself"),
        ),
        (
            vec!["Bad:Ref".into(), dest.clone()],
            r#"source: invalid image reference "Bad:Ref": repository names must be lowercase ("Bad" is not)"#
                .into(),
        ),
        (
            vec![src.clone(), format!("{dest},x::y")],
            r#"destination 2: invalid image reference "x::y": it contains "::" (one ':' separates the tag, or a registry host's port)"#
                .into(),
        ),
        (
            vec![src.clone(), format!("{d}/app@sha256:zz")],
            format!(
                r#"destination 1: invalid image reference "{d}/app@sha256:zz": the digest after '@' is invalid: a sha256 digest has 64 hexadecimal characters after the ':', this one has 2"#
            ),
        ),
        (
            vec![src.clone(), format!("{d}/app:{}", "t".repeat(129))],
            format!(
                r#"destination 1: invalid image reference "{d}/app:{}": a tag is at most 128 characters"#,
                "t".repeat(129)
            ),
        ),
        (
            vec![huge.clone(), dest.clone()],
            format!(
                "source: invalid image reference {}: it is far too long (a repository name is at most 255 characters)",
                quoted(&huge)
            ),
        ),
    ];
    for (args, message) in &cases {
        let mut a = vec!["table", "add"];
        a.extend(args.iter().map(String::as_str));
        let (code, out, err) = run("mirrorfleet-controller", &a, &env);
        assert_eq!(code, 1, "{out}");
        assert_error_line(&err, message);
    }
    assert_eq!(cases.len(), 9);
    assert!(table_json(&env).is_empty(), "a refused row was written");

    // The good row goes all the way.
    add_row(&env, &[&src, &dest]);
    let (s, _) = controller_run(&env, 0);
    assert_eq!(s["jobs_enqueued"], 1, "{s}");
    let (w, _) = consume(&env, "5s", "2s");
    assert_eq!(w["completed"], 1, "{w}");
    assert_synced(&env, &dest, &digest);
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 0);
}

// ------------------------------------------------------------------ D

#[tokio::test]
async fn d_rows_with_wrong_types_are_reported_on_themselves_and_kept() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "bi-types").await;
    let table = table_name(&env);
    let ddb = moto_dynamodb(&stack);
    let repo = unique("bi-types");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}:v1", stack.dst);
    add_row(&env, &[&src, &good]);

    let s = |v: &str| Av::S(v.to_string());
    let n = |v: &str| Av::N(v.to_string());
    let dest = |i: usize| s(&format!("{}/{repo}:d{i}", stack.dst));
    let must_be_list = "`destinations` must be a list, a string set or a comma-separated string";
    // (source tag, extra attributes, the row's error); `None` means no `destinations`.
    let cases: Vec<(&str, Attrs<'_>, String)> = vec![
        ("n1", vec![("destinations", n("3"))], must_be_list.into()),
        (
            "n2",
            vec![("destinations", Av::L(vec![n("1")]))],
            "`destinations` must hold strings".into(),
        ),
        (
            "n3",
            vec![(
                "destinations",
                Av::M([("a".to_string(), dest(3))].into_iter().collect()),
            )],
            must_be_list.into(),
        ),
        (
            "n4",
            vec![("destinations", Av::Null(true))],
            must_be_list.into(),
        ),
        ("n5", vec![], "the row has no `destinations`".into()),
        (
            "n6",
            vec![("destinations", s(""))],
            format!("mirror {}/{repo}:n6 has no destinations", stack.src),
        ),
        (
            "n7",
            vec![("destinations", Av::L(vec![]))],
            format!("mirror {}/{repo}:n7 has no destinations", stack.src),
        ),
        (
            "n8",
            vec![("destinations", dest(8)), ("enabled", n("1"))],
            "`enabled` must be true or false".into(),
        ),
        (
            "n9",
            vec![("destinations", dest(9)), ("expires", s("soon"))],
            "`expires` must be a number (Unix seconds)".into(),
        ),
        (
            "n10",
            vec![("destinations", dest(10)), ("expires", n("1.5"))],
            "`expires` must be a whole number of Unix seconds".into(),
        ),
        (
            "n11",
            vec![("destinations", dest(11)), ("overwrite", n("0"))],
            r#"`overwrite` must be true or false (or "allow"/"refuse")"#.into(),
        ),
        (
            "n12",
            vec![
                ("destinations", dest(12)),
                ("platforms", Av::Ss(vec!["linux/amd64".into(), "amd64".into()])),
            ],
            r#"`platforms`: "amd64" is not a platform: write os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7"#
                .into(),
        ),
        (
            "n12b",
            vec![("destinations", dest(12)), ("platforms", n("64"))],
            "`platforms` must be a list, a string set or a comma-separated string".into(),
        ),
        (
            "n12c",
            vec![("destinations", dest(12)), ("strip", n("1"))],
            "`strip` must be a string (a leading path such as team)".into(),
        ),
        (
            "n13",
            vec![("destinations", s(&format!("{}/{repo}/App:1", stack.dst)))],
            format!(
                r#"destination 1: invalid image reference "{}/{repo}/App:1": repository names must be lowercase ("App" is not)"#,
                stack.dst
            ),
        ),
        (
            "n14",
            vec![("destinations", Av::L(vec![dest(14), dest(14)]))],
            format!("destination {}/{repo}:d14 is listed twice", stack.dst),
        ),
    ];
    for (tag, attrs, _) in &cases {
        let mut req = ddb
            .put_item()
            .table_name(&table)
            .item("source", s(&format!("{}/{repo}:{tag}", stack.src)));
        for (k, v) in attrs {
            req = req.item(*k, v.clone());
        }
        req.send().await.unwrap();
    }
    // A key that is not a valid reference, as typed in the console.
    ddb.put_item()
        .table_name(&table)
        .item("source", s("Bad:Ref"))
        .item("destinations", dest(15))
        .send()
        .await
        .unwrap();
    // A row without a string `source` cannot exist: DynamoDB refuses it.
    let refused = [
        (
            vec![("destinations", dest(16))],
            "One or more parameter values were invalid: Missing the key source in the item",
        ),
        (
            vec![("source", Av::L(vec![s(&src)])), ("destinations", dest(17))],
            "One or more parameter values were invalid: Type mismatch for key source expected: S actual: L",
        ),
    ];
    for (attrs, message) in refused {
        let mut req = ddb.put_item().table_name(&table);
        for (k, v) in attrs {
            req = req.item(k, v);
        }
        let e = req.send().await.unwrap_err();
        assert_eq!(e.code(), Some("ValidationException"));
        assert_eq!(e.message(), Some(message));
    }
    let total = cases.len() + 1 + 2;
    assert_eq!(total, 19);

    // The run reports every bad row on itself and goes on with the good one.
    let (summary, err) = controller_run(&env, 1);
    assert_eq!(summary["rows_scanned"], cases.len() + 2, "{summary}");
    assert_eq!(summary["rows_failed"], cases.len() + 1, "{summary}");
    assert_eq!(summary["jobs_enqueued"], 1, "{summary}");
    let rows = table_json(&env);
    for (tag, _, message) in &cases {
        let key = format!("{}/{repo}:{tag}", stack.src);
        assert_eq!(invalid_row(&rows, &key), *message, "{key}");
        assert!(err.contains(message.as_str()), "the run logs it: {err}");
    }
    assert_eq!(
        invalid_row(&rows, "Bad:Ref"),
        r#"source: invalid image reference "Bad:Ref": repository names must be lowercase ("Bad" is not)"#
    );
    assert_eq!(entry(&rows, &good)["state"], "queued");

    let (w, _) = consume(&env, "5s", "2s");
    assert_eq!(w["completed"], 1, "{w}");
    assert_synced(&env, &good, &digest);
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 0);

    // Nothing was lost: the hand-typed fields are as they were typed.
    let item = ddb
        .get_item()
        .table_name(&table)
        .key("source", s(&format!("{}/{repo}:n1", stack.src)))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["destinations"], n("3"));
    assert_eq!(item["error"], s(must_be_list), "the reason is on the row");
}

// ------------------------------------------------------------------ E

#[tokio::test]
async fn e_import_refuses_bad_files_whole_and_bad_rows_alone() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "bi-import").await;
    let repo = unique("bi-import");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}:v1", stack.dst);
    let other = format!("{}/{repo}:v2", stack.src);
    let dir = temp_dir("bi-import");
    // The good row comes first in every file: a file that is not a mirror
    // file is refused whole, and in one that is, a bad row alone.
    let head = format!("mirrors:\n  - source: {src}\n    destinations: [{good}]\n");
    let huge = format!("{}/{}:v2", stack.src, "a".repeat(1 << 20));
    let huge_short = format!("{}… ({} characters)", &huge[..60], huge.len());

    // (file name, content, the error; {p} is the file's path)
    let whole: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "unclosed.yaml",
            format!("{head}  - source: {other}\n    destinations: [{good}\n").into(),
            "{p}: did not find expected ',' or ']' at line 6 column 1, while parsing a flow sequence at line 5 column 19".into(),
        ),
        (
            "tab.yaml",
            format!("{head}\t- source: {other}\n").into(),
            "{p}: found character that cannot start any token at line 4 column 1, while scanning for the next token".into(),
        ),
        (
            "typo.yaml",
            format!("{head}  - source: {other}\n    destination: [{good}]\n").into(),
            "{p}: mirrors[1]: unknown field `destination`, expected one of `source`, `destinations`, `tags`, `repositories`, `strip`, `enabled`, `overwrite`, `expires`, `platforms` at line 5 column 5".into(),
        ),
        (
            "nosource.yaml",
            format!("{head}  - destinations: [{good}]\n").into(),
            "{p}: mirrors[1]: missing field `source` at line 4 column 5".into(),
        ),
        (
            "sourcelist.yaml",
            format!("{head}  - source: [{other}]\n    destinations: [{good}]\n").into(),
            "{p}: mirrors[1].source: invalid type: sequence, expected a string at line 4 column 13".into(),
        ),
        (
            "destnumber.yaml",
            format!("{head}  - source: {other}\n    destinations: 5\n").into(),
            "{p}: mirrors[1]: `destinations` must be a list of image references or one comma-separated string at line 4 column 5".into(),
        ),
        (
            "destmap.yaml",
            format!("{head}  - source: {other}\n    destinations: {{a: b}}\n").into(),
            "{p}: mirrors[1]: `destinations` must be a list of image references or one comma-separated string at line 4 column 5".into(),
        ),
        (
            "enabled.yaml",
            format!("{head}  - source: {other}\n    destinations: [{good}]\n    enabled: maybe\n").into(),
            r#"{p}: mirrors[1].enabled: invalid type: string "maybe", expected a boolean at line 6 column 14"#.into(),
        ),
        (
            "mirrorsmap.yaml",
            b"mirrors: {}\n".to_vec(),
            "{p}: mirrors: invalid type: map, expected a sequence at line 1 column 10".into(),
        ),
        (
            "scalar.yaml",
            b"hello\n".to_vec(),
            r#"{p}: invalid type: string "hello", expected a mapping with a `mirrors:` list of {source, destinations}"#.into(),
        ),
        (
            "binary.yaml",
            b"\xff\xfe\x00mirrors".to_vec(),
            "reading {p}: stream did not contain valid UTF-8".into(),
        ),
    ];
    let yaml: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "duplicate.yaml",
            format!("{head}  - source: {other}\n    destinations: [{good}, {good}]\n").into(),
            format!("{{p}}: mirror 2 ({other}): destination {good} is listed twice"),
        ),
        (
            "itself.yaml",
            format!("{head}  - source: {other}\n    destinations: [{other}]\n").into(),
            format!("{{p}}: mirror 2 ({other}): destination {other} is the source itself"),
        ),
        (
            "twice.yaml",
            format!("{head}  - source: {src}\n    destinations: [{good}]\n").into(),
            format!("{{p}}: mirror 2 ({src}): the source is listed twice"),
        ),
        (
            "empty.yaml",
            format!("{head}  - source: {other}\n    destinations: []\n").into(),
            format!("{{p}}: mirror 2 ({other}): mirror {other} has no destinations"),
        ),
        (
            "badref.yaml",
            format!("{head}  - source: {other}\n    destinations: [{good}, 'x::y']\n").into(),
            format!(
                r#"{{p}}: mirror 2 ({other}): destination 2: invalid image reference "x::y": it contains "::" (one ':' separates the tag, or a registry host's port)"#
            ),
        ),
        (
            "huge.yaml",
            format!("{head}  - source: {huge}\n    destinations: [{good}]\n").into(),
            format!(
                "{{p}}: mirror 2 ({huge_short}): source: invalid image reference {}: it is far too long (a repository name is at most 255 characters)",
                quoted(&huge)
            ),
        ),
    ];
    let csv_head = format!("source,destinations\n{src},{good}\n");
    let csv: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "nodest.csv",
            format!("{csv_head}{other}\n").into(),
            format!("{{p}}: line 3 ({other}): mirror {other} has no destinations"),
        ),
        (
            "baddest.csv",
            format!("{csv_head}{other},{}/{repo}/X:1\n", stack.dst).into(),
            format!(
                r#"{{p}}: line 3 ({other}): destination 1: invalid image reference "{}/{repo}/X:1": repository names must be lowercase ("X" is not)"#,
                stack.dst
            ),
        ),
        (
            "twice.csv",
            format!("{csv_head}{src},{}/{repo}:other\n", stack.dst).into(),
            format!("{{p}}: line 3 ({src}): the source is listed twice"),
        ),
        (
            "semicolon.csv",
            format!("{csv_head}{other};{good}\n").into(),
            format!(
                r#"{{p}}: line 3 ({other};{good}): source: invalid image reference "{other};{good}": it contains the character ';', which is not allowed in an image reference"#
            ),
        ),
        (
            "itself.csv",
            format!("{csv_head}{other},{other}\n").into(),
            format!("{{p}}: line 3 ({other}): destination {other} is the source itself"),
        ),
    ];
    // A row of 10,000 destinations: it would outgrow a DynamoDB item.
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("{}/{repo}-{i}:v2", stack.dst))
        .collect();
    let base = 64 + 2 * other.len();
    let per: usize = many.iter().map(|d| 2 * d.len() + 400).sum();
    let big: Vec<(&str, Vec<u8>, String)> = vec![(
        "toolarge.csv",
        format!("{csv_head}{other},{}\n", many.join(",")).into(),
        format!(
            "{{p}}: line 3 ({other}): the row is too large for the table: with each destination's status recorded, \
             its 10000 destinations need about {} KB, and a DynamoDB item holds at most 400 KB \
             (about {} destinations like these fit)",
            (base + per) / 1024,
            (400 * 1024 - base) / (per / 10_000)
        ),
    )];
    let mut count = 0;
    for (name, content, message) in &whole {
        let p = write(&dir, name, content);
        let (code, out, err) = run("mirrorfleet-controller", &["table", "import", &p], &env);
        assert_eq!(code, 1, "{name}: {out}");
        assert_error_line(&err, &message.replace("{p}", &p));
        count += 1;
    }
    // A file that does not exist.
    let missing = dir.join("missing.yaml");
    let (code, _, err) = run(
        "mirrorfleet-controller",
        &["table", "import", missing.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 1);
    assert_error_line(
        &err,
        &format!(
            "reading {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
    assert!(table_json(&env).is_empty(), "a refused file was imported");
    // A bad row is refused alone: the good one goes in, the exit code says
    // not everything did.
    for (name, content, message) in yaml.iter().chain(&csv).chain(&big) {
        let p = write(&dir, name, content);
        let (code, out, err) = run("mirrorfleet-controller", &["table", "import", &p], &env);
        assert_eq!(code, 1, "{name}: {out}");
        assert_eq!(out.trim_end(), "imported 1 mirror; refused 1", "{name}");
        assert_error_line(&err, &message.replace("{p}", &p));
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error: ")).count(),
            1,
            "{name}: {err}"
        );
        count += 1;
    }
    assert_eq!(count + 1, 24);
    let keys: Vec<String> = table_json(&env)
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec![src.clone()], "only the good row went in");

    // The good file imports and syncs.
    let p = write(&dir, "good.yaml", &head);
    let (code, out, err) = run("mirrorfleet-controller", &["table", "import", &p], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim_end(), "imported 1 mirror");
    controller_run(&env, 0);
    let (w, _) = consume(&env, "5s", "2s");
    assert_eq!(w["completed"], 1, "{w}");
    assert_synced(&env, &good, &digest);
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// In a large file, the few bad rows are reported, each by its position and
/// source, and every other row goes in.
#[tokio::test]
async fn e_import_of_1000_rows_reports_the_3_bad_ones_and_imports_the_rest() {
    let stack = Stack::get();
    let (env, _queue, _dlq) = setup(&stack, "bi-import-1k").await;
    let repo = unique("bi-import-1k");
    let dir = temp_dir("bi-import-1k");
    let src = |form: &str, i: usize| format!("{}/{repo}-{form}-{i}:v1", stack.src);
    let dst = |form: &str, i: usize| format!("{}/{repo}-{form}-{i}:v1", stack.dst);
    let mut imported = std::collections::BTreeSet::new();
    for form in ["yaml", "csv"] {
        let mut rows: Vec<(String, String)> =
            (1..=1000).map(|i| (src(form, i), dst(form, i))).collect();
        // Row 100 names a destination that is no reference, row 500 repeats
        // row 1's source, and row 900 mirrors its source onto itself.
        rows[99].1 = "x::y".to_string();
        rows[499].0 = src(form, 1);
        rows[899].1 = rows[899].0.clone();
        let (name, text, at) = if form == "yaml" {
            let mut text = String::from("mirrors:\n");
            for (s, d) in &rows {
                text.push_str(&format!("  - source: {s}\n    destinations: ['{d}']\n"));
            }
            // YAML rows are counted from 1.
            (
                "big.yaml",
                text,
                (|n| format!("mirror {n}")) as fn(usize) -> String,
            )
        } else {
            let mut text = String::from("source,destinations\n");
            for (s, d) in &rows {
                text.push_str(&format!("{s},{d}\n"));
            }
            // CSV rows are file lines, after the header.
            (
                "big.csv",
                text,
                (|n| format!("line {}", n + 1)) as fn(usize) -> String,
            )
        };
        let p = write(&dir, name, &text);
        let (code, out, err) = run("mirrorfleet-controller", &["table", "import", &p], &env);
        assert_eq!(code, 1, "{name}: {out}\n{err}");
        assert_eq!(out.trim_end(), "imported 997 mirrors; refused 3", "{name}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        let (s100, s500, s900) = (&rows[99].0, &rows[499].0, &rows[899].0);
        assert_eq!(
            errors,
            vec![
                format!(
                    r#"error: {p}: {} ({s100}): destination 1: invalid image reference "x::y": it contains "::" (one ':' separates the tag, or a registry host's port)"#,
                    at(100)
                ),
                format!(
                    "error: {p}: {} ({s500}): the source is listed twice",
                    at(500)
                ),
                format!(
                    "error: {p}: {} ({s900}): destination {s900} is the source itself",
                    at(900)
                ),
            ],
            "{name}"
        );
        for (i, (s, _)) in rows.iter().enumerate() {
            if ![99, 499, 899].contains(&i) {
                imported.insert(s.clone());
            }
        }
    }
    let keys: std::collections::BTreeSet<String> = table_json(&env)
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2 * 997);
    assert_eq!(keys, imported, "the good rows, and only those, went in");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------ F

#[tokio::test]
async fn f_malformed_messages_reach_the_dlq_with_the_reason_and_good_jobs_run() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "bi-jobs").await;
    let table = table_name(&env);
    let ddb = moto_dynamodb(&stack);
    let repo = unique("bi-jobs");
    let digest = push_image(&stack, &repo, "v1").await;
    push_image(&stack, &repo, "v2").await;
    push_image(&stack, &repo, "v3").await;
    let (src, good) = (
        format!("{}/{repo}:v1", stack.src),
        format!("{}/{repo}:v1", stack.dst),
    );
    let (deleted, deleted_dest) = (
        format!("{}/{repo}:v2", stack.src),
        format!("{}/{repo}:v2", stack.dst),
    );
    let (broken, broken_dest) = (
        format!("{}/{repo}:v3", stack.src),
        format!("{}/{repo}:v3", stack.dst),
    );
    for (s, d) in [
        (&src, &good),
        (&deleted, &deleted_dest),
        (&broken, &broken_dest),
    ] {
        add_row(&env, &[s, d]);
    }
    let (s, _) = controller_run(&env, 0);
    assert_eq!(s["jobs_enqueued"], 3, "{s}");
    // While those jobs wait: one row is deleted, one is broken by hand.
    let (code, _, err) = run("mirrorfleet-controller", &["table", "rm", &deleted], &env);
    assert_eq!(code, 0, "{err}");
    ddb.put_item()
        .table_name(&table)
        .item("source", Av::S(broken.clone()))
        .item("destinations", Av::N("3".into()))
        .send()
        .await
        .unwrap();

    let d = format!("{}/{repo}:x", stack.dst);
    // (message body, the reason the worker logs)
    let cases: Vec<(String, String)> = vec![
        (
            "not json".into(),
            "the message is not a mirrorfleet job (invalid JSON: expected ident at line 1 column 2)".into(),
        ),
        (
            "{".into(),
            "the message is not a mirrorfleet job (invalid JSON: EOF while parsing an object at line 1 column 1)".into(),
        ),
        (
            "[1,2]".into(),
            "the message is not a mirrorfleet job (it is JSON a list, not an object)".into(),
        ),
        (
            format!(r#"{{"version":9,"source":"{src}","destinations":["{d}"]}}"#),
            "job version 9 is not understood by this worker (it reads version 1); upgrade the workers".into(),
        ),
        (
            format!(r#"{{"version":"1","source":"{src}","destinations":["{d}"]}}"#),
            "the job's `version` must be a whole number, not a string".into(),
        ),
        (
            format!(r#"{{"source":"{src}","destinations":["{d}"]}}"#),
            "the job has no `version` field".into(),
        ),
        (
            format!(r#"{{"version":1,"destinations":["{d}"]}}"#),
            "the job has no `source` field".into(),
        ),
        (
            format!(r#"{{"version":1,"source":"{src}"}}"#),
            "the job has no `destinations` field".into(),
        ),
        (
            format!(r#"{{"version":1,"source":"{src}","destinations":"{d}"}}"#),
            "the job's `destinations` must be a list of strings, not a string".into(),
        ),
        (
            format!(r#"{{"version":1,"source":["{src}"],"destinations":["{d}"]}}"#),
            "the job's `source` must be a string, not a list".into(),
        ),
        (
            format!(r#"{{"version":1,"source":"{src}","destinations":[]}}"#),
            "the job has no destinations".into(),
        ),
        (
            format!(r#"{{"version":1,"source":"Bad:Ref:","destinations":["{d}"]}}"#),
            r#"the job's source is invalid: invalid image reference "Bad:Ref:": the tag after ':' is empty"#.into(),
        ),
        (
            format!(r#"{{"version":1,"source":"{src}","destinations":["{d}","x::y"]}}"#),
            r#"the job's destination 2 is invalid: invalid image reference "x::y": it contains "::" (one ':' separates the tag, or a registry host's port)"#.into(),
        ),
        (
            format!(
                r#"{{"version":1,"source":"{src}","source_digest":"sha256:1","destinations":["{d}"]}}"#
            ),
            r#"the job's source_digest is invalid: invalid digest "sha256:1": a sha256 digest has 64 hexadecimal characters after the ':', this one has 1"#.into(),
        ),
        (
            format!(r#"{{"version":1,"source":"{src}","destinations":[{{"a":1}}]}}"#),
            "the job's `destinations` must be a list of strings, not a list holding other values".into(),
        ),
    ];
    let sqs = moto_sqs(&stack);
    for (body, _) in &cases {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(cases.len() + 2, 17);

    let (w, logs) = consume(&env, "3s", "4s");
    // Each bad message is released at once and received 3 times, then dead-lettered.
    let bad = cases.len() as u64 + 1;
    assert_eq!(w["malformed"], 3 * bad, "{w}");
    assert_eq!(w["completed"], 2, "the good job and the deleted row's: {w}");
    assert_eq!(w["failed"], 0, "{w}");
    let mut reasons = logged(
        &logs,
        "malformed job; released for the dead-letter queue",
        "reason",
    );
    reasons.sort();
    reasons.dedup();
    let mut want: Vec<String> = cases.iter().map(|(_, r)| r.clone()).collect();
    want.sort();
    assert_eq!(reasons, want);
    assert_eq!(
        logged(&logs, "the row is invalid; job released", "reason"),
        vec!["`destinations` must be a list, a string set or a comma-separated string"; 3]
    );
    assert_eq!(
        logged(&logs, "the row was deleted; dropping its job", "source"),
        vec![deleted.clone()]
    );
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, bad);

    assert_synced(&env, &good, &digest);
    // The deleted row's job copied nothing and did not bring the row back.
    assert!(Skopeo::plain().raw(&deleted_dest).is_err());
    assert!(Skopeo::plain().raw(&broken_dest).is_err());
    let rows = table_json(&env);
    assert!(!rows.iter().any(|r| r["source"] == deleted), "{rows:#?}");
    assert_eq!(
        invalid_row(&rows, &broken),
        "`destinations` must be a list, a string set or a comma-separated string"
    );
}

// ------------------------------------------------------------------ G

#[tokio::test]
async fn g_run_reports_unreadable_sources_on_their_rows_and_goes_on() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "bi-run").await;
    let env = with(&env, "MIRRORFLEET_SRC_CREDS", WRONG_CREDS);
    let env = with(&env, "MIRRORFLEET_DEST_CREDS", WRONG_CREDS);
    let repo = unique("bi-run");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}:v1", stack.dst);
    let locked = format!("{}/{repo}:v1", stack.basic);
    add_row(&env, &[&src, &good, &locked]);

    // (source, its row error); each mirrors to one destination.
    let missing = format!("{}/{repo}:nope", stack.src);
    let cases = [
        (
            missing.clone(),
            format!("source image {missing} was not found (check the tag exists)"),
        ),
        (
            format!("{NO_SUCH_HOST}/{repo}:v1"),
            format!("cannot read the source: {}", no_such_host(&repo, "v1")),
        ),
        (
            format!("{REFUSED}/{repo}:v1"),
            format!(
                "cannot read the source: {}",
                connection_refused(&repo, "v1")
            ),
        ),
        (
            format!("{}/{repo}:v2", stack.basic),
            format!("cannot read the source: {}", login_refused(&stack)),
        ),
    ];
    for (i, (s, _)) in cases.iter().enumerate() {
        add_row(&env, &[s, &format!("{}/{repo}:c{i}", stack.dst)]);
    }
    // A huge row through `table add`: 10,000 destinations would outgrow a
    // DynamoDB item once their statuses are recorded, so it is refused.
    let huge_src = format!("{}/{repo}:huge", stack.src);
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("{}/{repo}-{i}:huge", stack.dst))
        .collect();
    let mut args = vec!["table", "add", huge_src.as_str()];
    args.extend(many.iter().map(String::as_str));
    let (code, _, err) = run("mirrorfleet-controller", &args, &env);
    assert_eq!(code, 1);
    let base = 64 + 2 * huge_src.len();
    let per: usize = many.iter().map(|d| 2 * d.len() + 400).sum();
    assert_error_line(
        &err,
        &format!(
            "the row is too large for the table: with each destination's status recorded, its 10000 destinations \
             need about {} KB, and a DynamoDB item holds at most 400 KB (about {} destinations like these fit)",
            (base + per) / 1024,
            (400 * 1024 - base) / (per / 10_000)
        ),
    );
    // The same typed by hand with short names (it fits in an item): the run
    // reports the missing source on the row without probing 10,000 destinations.
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("{}/h:{i}", stack.dst))
        .collect();
    moto_dynamodb(&stack)
        .put_item()
        .table_name(table_name(&env))
        .item("source", Av::S(huge_src.clone()))
        .item(
            "destinations",
            Av::L(many.iter().map(|d| Av::S(d.clone())).collect()),
        )
        .send()
        .await
        .unwrap();

    let (s, _) = controller_run(&env, 1);
    assert_eq!(s["rows_scanned"], 6, "{s}");
    assert_eq!(s["rows_failed"], 5, "{s}");
    assert_eq!(s["jobs_enqueued"], 1, "{s}");
    let rows = table_json(&env);
    assert_eq!(rows.len(), 2 + cases.len() + 10_000);
    for (i, (_, message)) in cases.iter().enumerate() {
        let e = entry(&rows, &format!("{}/{repo}:c{i}", stack.dst));
        let error = e["row_error"].as_str().unwrap();
        if message.contains(NO_SUCH_HOST) {
            assert!(error.starts_with(message.as_str()), "{error}");
        } else {
            assert_eq!(error, message);
        }
        assert_eq!(e["state"], "new");
    }
    for d in [&many[0], &many[9_999]] {
        assert_eq!(
            entry(&rows, d)["row_error"],
            format!("source image {huge_src} was not found (check the tag exists)")
        );
    }

    // The good destination syncs; the one whose login is refused fails three
    // times and its job ends in the dead-letter queue, reason on the row.
    let (w, logs) = consume(&env, "3s", "6s");
    assert_eq!(w["failed"], 3, "{w}");
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 1);
    assert!(
        logged(&logs, "destination failed", "error").contains(&login_refused(&stack)),
        "the worker logs the reason"
    );
    assert_synced(&env, &good, &digest);
    let rows = table_json(&env);
    let e = entry(&rows, &locked);
    assert_eq!(e["state"], "failed");
    assert_eq!(e["status"]["error"], login_refused(&stack));
    assert_eq!(e["status"]["attempts"], 3);
    assert_eq!(cases.len() + 3, 7);
}

// ------------------------------------------------------------------ H

#[tokio::test]
async fn h_sync_refuses_bad_files_and_reports_failing_rows_on_themselves() {
    let stack = Stack::get();
    let env = with(
        &env(&stack, "unused", "unused"),
        "MIRRORFLEET_DEST_CREDS",
        WRONG_CREDS,
    );
    let repo = unique("bi-sync");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}:v1", stack.dst);
    let dir = temp_dir("bi-sync");
    let file = dir.join("mirrors.yaml");
    let p = file.to_str().unwrap().to_string();
    let state = dir.join("mirrors.yaml.state.db");
    let head = format!("mirrors:\n  - source: {src}\n    destinations: [{good}]\n");
    let other = format!("{}/{repo}:v2", stack.src);
    let huge = format!("{}/{}:v2", stack.src, "a".repeat(1 << 20));
    let huge_short = format!("{}… ({} characters)", &huge[..60], huge.len());

    // Refused whole, exit 2: (file content, the error).
    let cases: Vec<(String, String)> = vec![
        (
            format!(
                "{head}  - source: {other}\n    destinations: ['{}/{repo}/App:1']\n",
                stack.dst
            ),
            format!(
                r#"{p}: mirror 2 ({other}): destination 1: invalid image reference "{}/{repo}/App:1": repository names must be lowercase ("App" is not)"#,
                stack.dst
            ),
        ),
        (
            format!("{head}  - source: {other}\n    destinations: [{other}]\n"),
            format!("{p}: mirror 2 ({other}): destination {other} is the source itself"),
        ),
        (
            format!("{head}  - source: {other}\n    destinations: 5\n"),
            format!(
                "{p}: mirrors[1]: `destinations` must be a list of image references or one comma-separated string at line 4 column 5"
            ),
        ),
        (
            format!("{head}  - source: {huge}\n    destinations: [{good}]\n"),
            format!(
                "{p}: mirror 2 ({huge_short}): source: invalid image reference {}: it is far too long (a repository name is at most 255 characters)",
                quoted(&huge)
            ),
        ),
        (
            format!("{head}  - source: {other}\n    destinations: [{good}\n"),
            format!(
                "{p}: did not find expected ',' or ']' at line 6 column 1, while parsing a flow sequence at line 5 column 19"
            ),
        ),
    ];
    for (content, message) in &cases {
        std::fs::write(&file, content).unwrap();
        let (code, out, err) = run("mirrorfleet-controller", &["sync", &p], &env);
        assert_eq!(code, 2, "invalid configuration: {out}");
        assert_error_line(&err, message);
        assert!(!state.exists(), "a refused file left a state file");
    }
    let absent = dir.join("absent.yaml");
    let (code, _, err) = run(
        "mirrorfleet-controller",
        &["sync", absent.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 2);
    assert_error_line(
        &err,
        &format!(
            "cannot read {}: No such file or directory (os error 2)",
            absent.display()
        ),
    );
    assert!(
        Skopeo::plain().raw(&good).is_err(),
        "a refused file was synced"
    );

    // A corrupt state file is refused, not silently replaced.
    std::fs::write(&file, &head).unwrap();
    std::fs::write(&state, "{not json").unwrap();
    let (code, _, err) = run("mirrorfleet-controller", &["sync", &p], &env);
    assert_eq!(code, 2);
    assert_error_line(
        &err,
        &format!(
            "{}: not a readable state database (move it away to start over; the next run finds what is in sync again): file is not a database",
            state.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "{not json");
    std::fs::remove_file(&state).unwrap();
    // So is an old-format state file that is not JSON, before a database
    // is made beside it.
    let old = dir.join("mirrors.yaml.state.json");
    std::fs::write(&old, "{not json").unwrap();
    let (code, _, err) = run("mirrorfleet-controller", &["sync", &p], &env);
    assert_eq!(code, 2);
    assert_error_line(
        &err,
        &format!(
            "{}: key must be a string at line 1 column 2 (an old state file, to be imported: move it away to start over)",
            old.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "{not json");
    assert!(!state.exists(), "a database was made beside a bad old file");
    std::fs::remove_file(&old).unwrap();

    // Rows that fail at run time are reported on themselves; the rest syncs.
    let missing = format!("{}/{repo}:nope", stack.src);
    let refused = format!("{REFUSED}/{repo}:v1");
    let nowhere = format!("{NO_SUCH_HOST}/{repo}:v1");
    let locked = format!("{}/{repo}:v1", stack.basic);
    let huge_src = format!("{}/{repo}:huge", stack.src);
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("{}/{repo}-{i}:huge", stack.dst))
        .collect();
    std::fs::write(
        &file,
        format!(
            "mirrors:\n  - source: {src}\n    destinations: [{good}, {refused}, {nowhere}, {locked}]\n  \
             - source: {missing}\n    destinations: [{}/{repo}:nope]\n  \
             - source: {huge_src}\n    destinations: '{}'\n",
            stack.dst,
            many.join(",")
        ),
    )
    .unwrap();
    let (code, out, err) = run("mirrorfleet-controller", &["sync", &p], &env);
    assert_eq!(code, 1, "rows failed: {err}");
    let st: Value = local_state(&file);
    let missing_error = format!("source image {missing} was not found (check the tag exists)");
    assert_eq!(st["errors"][&missing], missing_error);
    assert_eq!(
        st["errors"][&huge_src],
        format!("source image {huge_src} was not found (check the tag exists)")
    );
    let status = &st["status"][&src];
    assert_eq!(status[&good]["state"], "synced");
    assert_eq!(status[&good]["dest_digest"], digest);
    for (dest, message) in [
        (&refused, connection_refused(&repo, "v1")),
        (&nowhere, no_such_host(&repo, "v1")),
        (&locked, login_refused(&stack)),
    ] {
        assert_eq!(status[dest]["state"], "failed", "{dest}");
        let error = status[dest]["error"].as_str().unwrap();
        assert!(error.starts_with(&message), "{dest}: {error}");
        assert!(out.contains(error), "the status table shows it: {dest}");
    }
    assert_eq!(status[&locked]["error"], login_refused(&stack));
    assert_eq!(status[&refused]["error"], connection_refused(&repo, "v1"));
    assert!(out.contains(&missing_error), "{out}");
    assert_eq!(Skopeo::plain().digest(&good).unwrap(), digest);
    assert_eq!(cases.len() + 3 + 5, 13);
    std::fs::remove_dir_all(&dir).unwrap();
}
