use super::repos::*;
use super::tags::*;
use serde::Deserialize;

fn rules(
    include: &[&str],
    exclude: &[&str],
    semver: Option<&str>,
    latest: Option<usize>,
) -> TagRules {
    TagRules {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        semver: semver.map(str::to_string),
        latest,
    }
}

#[test]
fn tag_rules_pick_and_order() {
    // (what, include, exclude, semver, latest, listing, expected)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        Option<&'a str>,
        Option<usize>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: &[Case<'_>] = &[
        (
            "no rule takes everything in listing order",
            &[],
            &[],
            None,
            None,
            &["b", "1.0", "a"],
            &["b", "1.0", "a"],
        ),
        (
            "include is unanchored",
            &["1\\.2"],
            &[],
            None,
            None,
            &["v1.2.3", "11.2", "1.3", "x1.2y"],
            &["v1.2.3", "11.2", "x1.2y"],
        ),
        (
            "an anchored include takes only the exact tag",
            &["^latest$"],
            &[],
            None,
            None,
            &["latest", "latest-dev", "not-latest"],
            &["latest"],
        ),
        (
            "a tag matching any include is taken",
            &["^v?\\d+\\.\\d+\\.\\d+$", "^latest$"],
            &[],
            None,
            None,
            &["1.2.3", "latest", "v2.0.0", "1.2", "edge"],
            &["1.2.3", "latest", "v2.0.0"],
        ),
        (
            "exclude drops matches anywhere in the tag",
            &[],
            &["-rc", "-alpha"],
            None,
            None,
            &["1.0", "1.1-rc1", "1.1-alpha.2", "1.1"],
            &["1.0", "1.1"],
        ),
        (
            "exclude wins over include",
            &["^1\\."],
            &["-rc"],
            None,
            None,
            &["1.0", "1.0-rc1", "2.0"],
            &["1.0"],
        ),
        (
            "space-separated comparators all hold; newest first; non-semver dropped",
            &[],
            &[],
            Some(">=1.20 <2"),
            None,
            &["1.19.9", "1.20", "latest", "1.20.3", "2.0.0", "1.21.0", "2"],
            &["1.21.0", "1.20.3", "1.20"],
        ),
        (
            "comma-separated comparators all hold",
            &[],
            &[],
            Some(">=1.20, <2"),
            None,
            &["1.19.9", "1.20.1", "2.0.0"],
            &["1.20.1"],
        ),
        (
            "|| separates alternatives",
            &[],
            &[],
            Some("<1 || >=3.1"),
            None,
            &["0.9.0", "1.0.0", "2.5.0", "3.0.0", "3.1.0", "4.0.0"],
            &["4.0.0", "3.1.0", "0.9.0"],
        ),
        (
            "a leading v is dropped from tags and ranges",
            &[],
            &[],
            Some(">=v1.2"),
            None,
            &["v1.1.9", "v1.2.0", "v1.10.0", "vv1.3.0"],
            &["v1.10.0", "v1.2.0"],
        ),
        (
            "short tags are full versions; a bare partial version means any patch",
            &[],
            &[],
            Some("1.20"),
            None,
            &["1", "1.20", "1.20.7", "1.21", "1.2"],
            &["1.20.7", "1.20"],
        ),
        (
            "a bare full version is exact, not a caret",
            &[],
            &[],
            Some("1.2.3"),
            None,
            &["1.2.3", "1.2.4", "1.3.0", "v1.2.3"],
            &["1.2.3", "v1.2.3"],
        ),
        (
            "pre-releases stay out of a range that names none",
            &[],
            &[],
            Some(">=1.0"),
            None,
            &["1.0.0", "2.0.0-rc1", "1.5-alpine", "1.5"],
            &["1.5", "1.0.0"],
        ),
        (
            "a range naming a pre-release takes pre-releases of that version only",
            &[],
            &[],
            Some(">=2.0.0-rc.0"),
            None,
            &["2.0.0-rc.1", "2.0.0-beta", "2.1.0-rc.1", "2.0.0", "2.1.0"],
            &["2.1.0", "2.0.0", "2.0.0-rc.1"],
        ),
        (
            "a hyphen range is inclusive, partial upper bound included",
            &[],
            &[],
            Some("1.2 - 1.4"),
            None,
            &["1.1.9", "1.2.0", "1.4.9", "1.5.0"],
            &["1.4.9", "1.2.0"],
        ),
        (
            "a space after an operator is allowed",
            &[],
            &[],
            Some(">= 1.2 < 2"),
            None,
            &["1.1", "1.2", "2.0"],
            &["1.2"],
        ),
        (
            "tilde and caret",
            &[],
            &[],
            Some("~1.2 || ^3.1"),
            None,
            &["1.2.9", "1.3.0", "3.1.0", "3.9.0", "4.0.0"],
            &["3.9.0", "3.1.0", "1.2.9"],
        ),
        (
            "wildcards",
            &[],
            &[],
            Some("1.x || *"),
            None,
            &["1.0.0", "5.0.0", "5.0.0-rc1", "nightly"],
            &["5.0.0", "1.0.0"],
        ),
        (
            "latest: semver tags newest first, then other tags last listed first",
            &[],
            &[],
            None,
            Some(10),
            &["latest", "1.0", "edge", "2.0", "stable", "1.5"],
            &["2.0", "1.5", "1.0", "stable", "edge", "latest"],
        ),
        (
            "latest N cuts after the semver tags",
            &[],
            &[],
            None,
            Some(4),
            &["latest", "1.0", "edge", "2.0", "stable", "1.5"],
            &["2.0", "1.5", "1.0", "stable"],
        ),
        (
            "equal versions keep listing order",
            &[],
            &[],
            None,
            Some(4),
            &["1.2.0", "1.2", "v1.2.0", "1.1", "v1.2"],
            &["1.2.0", "1.2", "v1.2.0", "v1.2"],
        ),
        (
            "pre-releases sort below their release",
            &[],
            &[],
            None,
            Some(3),
            &["1.2.4-rc1", "1.2.3", "1.2.3-rc1", "1.2.2"],
            &["1.2.4-rc1", "1.2.3", "1.2.3-rc1"],
        ),
        (
            "latest with only non-semver tags: last listed first",
            &[],
            &[],
            None,
            Some(2),
            &["a", "b", "c"],
            &["c", "b"],
        ),
        (
            "latest counts what include, exclude and semver left",
            &["^v?1\\."],
            &["-rc"],
            Some("<1.9"),
            Some(2),
            &["1.0", "1.5", "1.8", "1.8.1-rc1", "1.9", "2.0", "1.7"],
            &["1.8", "1.7"],
        ),
        (
            "a tag listed twice counts once",
            &[],
            &[],
            None,
            Some(2),
            &["1.0", "2.0", "2.0", "1.0"],
            &["2.0", "1.0"],
        ),
        (
            "semver drops tags with leading zeros or four numbers",
            &[],
            &[],
            Some(">=1"),
            None,
            &["01.2.3", "1.2.3.4", "2024.01.15", "1.2.3"],
            &["1.2.3"],
        ),
    ];
    for (what, include, exclude, semver, latest, listing, expected) in cases {
        let compiled = rules(include, exclude, *semver, *latest)
            .compile()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(compiled.apply(listing), *expected, "{what}");
    }
}

#[test]
fn matches_leaves_latest_out() {
    let compiled = rules(&[], &["-rc"], Some(">=2"), Some(1))
        .compile()
        .unwrap();
    assert!(compiled.matches("v2.1"));
    assert!(compiled.matches("3.0.0"));
    assert!(!compiled.matches("2.1-rc1"));
    assert!(!compiled.matches("1.9"));
    assert!(!compiled.matches("latest"));
    assert!(TagRules::default().is_empty());
    assert!(TagRules::default().compile().unwrap().matches("anything"));
}

#[test]
fn tag_versions() {
    let cases = [
        ("1.2.3", Some("1.2.3")),
        ("v1.2.3", Some("1.2.3")),
        ("1.20", Some("1.20.0")),
        ("1", Some("1.0.0")),
        ("v1.20-alpine", Some("1.20.0-alpine")),
        ("1.2.3-rc.1", Some("1.2.3-rc.1")),
        ("01.2", None),
        ("1.2.3.4", None),
        ("1..2", None),
        ("v", None),
        ("V1.2", None),
        ("latest", None),
        ("1.2-", None),
    ];
    for (tag, want) in cases {
        let got = tag_version(tag).map(|v| v.to_string());
        assert_eq!(got.as_deref(), want, "{tag}");
    }
}

#[test]
fn invalid_rules_name_the_field() {
    let cases = [
        (
            rules(&["^v", "("], &[], None, None),
            "tags.include[1]: invalid regular expression \"(\": unclosed group",
        ),
        (
            rules(&[], &["[a"], None, None),
            "tags.exclude[0]: invalid regular expression \"[a\": unclosed character class",
        ),
        (
            rules(&[], &[], Some(">=x"), None),
            "tags.semver: invalid version range \">=x\": unexpected character 'x' while parsing major version number",
        ),
        (
            rules(&[], &[], Some(" "), None),
            "tags.semver: invalid version range \" \": the range is empty",
        ),
        (
            rules(&[], &[], Some(">=1 ||"), None),
            "tags.semver: invalid version range \">=1 ||\": an alternative around \"||\" is empty",
        ),
        (
            rules(&[], &[], Some(">= <2"), None),
            "tags.semver: invalid version range \">= <2\": \">=\" is not followed by a version",
        ),
        (
            rules(&[], &[], Some("1.2 -"), None),
            "tags.semver: invalid version range \"1.2 -\": \"1.2 -\" is not followed by a version",
        ),
        (
            rules(&[], &[], Some(">=1 - 2"), None),
            "tags.semver: invalid version range \">=1 - 2\": both ends of a hyphen range are plain versions",
        ),
        (
            rules(&[], &[], Some("latest"), None),
            "tags.semver: invalid version range \"latest\": unexpected character 'l' while parsing major version number",
        ),
        (
            rules(&[], &[], None, Some(0)),
            "tags.latest must be at least 1",
        ),
    ];
    for (rules, want) in cases {
        let err = rules.compile().map(|_| ()).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
}

fn repo_rules(include: &[&str], exclude: &[&str]) -> RepoRules {
    RepoRules {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn repository_globs() {
    // (include, exclude, repositories taken, repositories left)
    type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (&[], &[], &["a", "team/app", "x/y/z"], &[]),
        (
            &["team/*"],
            &[],
            &["team/app", "team/a.b"],
            &["team", "team/a/b", "teams/app", "x/team/app"],
        ),
        (&["*"], &[], &["app", "my-app"], &["team/app"]),
        (
            &["base/**"],
            &[],
            &["base/a", "base/a/b", "base/a/b/c"],
            &["base", "basement/a", "x/base/a"],
        ),
        (&["**"], &[], &["a", "a/b/c"], &[]),
        (
            &["**/app"],
            &[],
            &["app", "x/app", "x/y/app"],
            &["myapp", "x/myapp", "app/x"],
        ),
        (
            &["a/**/b"],
            &[],
            &["a/b", "a/x/b", "a/x/y/b"],
            &["a/xb", "ab", "a/b/c"],
        ),
        (
            &["team/*/api"],
            &[],
            &["team/x/api"],
            &["team/api", "team/x/y/api"],
        ),
        (
            &["*-svc"],
            &[],
            &["pay-svc", "-svc"],
            &["team/pay-svc", "pay-svc2"],
        ),
        (&["app-?"], &[], &["app-1", "app-x"], &["app-", "app-12"]),
        (&["a?b"], &[], &["axb"], &["a/b", "ab"]),
        (&["lib.x/*"], &[], &["lib.x/a"], &["libzx/a", "lib.xx/a"]),
        (
            &["team/*", "base/**"],
            &["team/tmp-*"],
            &["team/app", "base/tmp-1/x"],
            &["team/tmp-1", "other/app"],
        ),
        (
            &[],
            &["**/cache"],
            &["app", "team/app"],
            &["cache", "team/cache"],
        ),
        (&["team/*"], &["team/*"], &[], &["team/app"]),
    ];
    for (include, exclude, taken, left) in cases {
        let r = repo_rules(include, exclude);
        r.validate().unwrap();
        for repo in *taken {
            assert!(
                r.matches(repo),
                "{include:?} - {exclude:?} should take {repo}"
            );
        }
        for repo in *left {
            assert!(
                !r.matches(repo),
                "{include:?} - {exclude:?} should leave {repo}"
            );
        }
    }
}

#[test]
fn repository_filter_keeps_listing_order() {
    let r = repo_rules(&["team/*"], &["team/tmp-*"]);
    let got = r.filter(&["team/b", "team/tmp-1", "other/a", "team/a", "team/b"]);
    assert_eq!(got, ["team/b", "team/a"]);
}

#[test]
fn invalid_repository_patterns() {
    let cases = [
        (
            repo_rules(&[""], &[]),
            "repositories.include[0]: invalid pattern \"\": a pattern cannot be empty",
        ),
        (
            repo_rules(&["team/*"], &["/team/tmp-*"]),
            "repositories.exclude[0]: invalid pattern \"/team/tmp-*\": a repository path does not start with '/'",
        ),
        (
            repo_rules(&["a", "team/"], &[]),
            "repositories.include[1]: invalid pattern \"team/\": a repository path does not end with '/' (\"team/**\" takes everything under team/)",
        ),
    ];
    for (rules, want) in cases {
        assert_eq!(rules.validate().unwrap_err().to_string(), want);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    #[serde(default)]
    tags: TagRules,
    #[serde(default)]
    repositories: RepoRules,
}

#[test]
fn parses_the_documented_yaml() {
    let yaml = r#"
tags:
  include: ["^v?\\d+\\.\\d+\\.\\d+$", "^latest$"]
  exclude: ["-rc", "-alpha"]
  semver: ">=1.20 <2"
  latest: 10
repositories:
  include: ["team/*", "base/**"]
  exclude: ["team/tmp-*"]
"#;
    let row: Row = serde_norway::from_str(yaml).unwrap();
    assert_eq!(
        row.tags,
        rules(
            &["^v?\\d+\\.\\d+\\.\\d+$", "^latest$"],
            &["-rc", "-alpha"],
            Some(">=1.20 <2"),
            Some(10)
        )
    );
    assert_eq!(
        row.repositories,
        repo_rules(&["team/*", "base/**"], &["team/tmp-*"])
    );
    let tags = row.tags.compile().unwrap();
    let got = tags.apply(&[
        "latest",
        "v1.19.0",
        "1.20.0",
        "v1.21.1",
        "1.21.2-rc1",
        "1.22",
        "2.0.0",
    ]);
    assert_eq!(got, ["v1.21.1", "1.20.0"]);
    row.repositories.validate().unwrap();
    assert!(row.repositories.matches("base/x/y"));
}

#[test]
fn parses_one_pattern_and_absent_rules() {
    let row: Row = serde_norway::from_str("tags:\n  include: '^v'\n  exclude:\n").unwrap();
    assert_eq!(row.tags, rules(&["^v"], &[], None, None));
    assert!(row.repositories.is_empty());
    // Unquoted, YAML would read 1.20 as the float 1.2; the text is kept.
    let row: Row = serde_norway::from_str("tags:\n  semver: 1.20\n").unwrap();
    assert_eq!(row.tags.semver.as_deref(), Some("1.20"));
    let empty: TagRules = serde_norway::from_str("{}").unwrap();
    assert!(empty.is_empty());
    assert_eq!(serde_norway::to_string(&empty).unwrap().trim(), "{}");
}

#[test]
fn refuses_unknown_keys_and_bad_types() {
    let cases = [
        ("tags:\n  latests: 3\n", "unknown field `latests`"),
        (
            "repositories:\n  includes: [a]\n",
            "unknown field `includes`",
        ),
        ("tags:\n  latest: -1\n", "invalid type: integer `-1`"),
        (
            "tags:\n  include: 5\n",
            "expected a pattern or a list of patterns",
        ),
    ];
    for (yaml, want) in cases {
        let err = serde_norway::from_str::<Row>(yaml).unwrap_err().to_string();
        assert!(err.contains(want), "{yaml:?}: {err}");
    }
}
