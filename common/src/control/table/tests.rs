use super::csv::*;
use super::file::*;
use super::*;
use crate::control::select::{RepoRules, TagRules};
use crate::oci::reference::Reference;

#[test]
fn platforms_parse_as_a_list_or_a_string_and_carry_into_expanded_rows() {
    let text = "mirrors:\n  - source: a.example.com/x:1\n    destinations: [b.example.com/x:1]\n    platforms: [linux/arm64, linux/amd64, linux/arm64]\n  - source: a.example.com/y\n    tags: {latest: 1}\n    destinations: [b.example.com/m/]\n    platforms: 'linux/arm/v7, linux/amd64'\n";
    let m = MirrorFile::parse(text, "m.yaml").unwrap();
    let shown =
        |m: &Mirror| -> Vec<String> { m.platforms.iter().map(ToString::to_string).collect() };
    assert_eq!(shown(&m[0]), ["linux/amd64", "linux/arm64"]);
    let images = m[1].expand(&["1.0".into()]).unwrap();
    assert_eq!(shown(&images[0]), ["linux/amd64", "linux/arm/v7"]);
    // The export reads back the same.
    assert_eq!(
        MirrorFile::parse(&MirrorFile::render(&m), "m.yaml").unwrap(),
        m
    );
    let bad = "mirrors:\n  - source: a.example.com/x:1\n    destinations: [b.example.com/x:1]\n    platforms: [amd64]\n";
    assert_eq!(
        MirrorFile::parse(bad, "m.yaml").unwrap_err().to_string(),
        "m.yaml: mirror 1 (a.example.com/x:1): `platforms`: \"amd64\" is not a platform: write os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7"
    );
    assert!(
        render_csv(&m[..1])
            .unwrap_err()
            .to_string()
            .contains("`platforms`")
    );
}

#[test]
fn strip_drops_a_leading_path_under_prefixes() {
    let parse = |yaml: &str| MirrorFile::parse(&format!("mirrors:\n{yaml}"), "m.yaml");
    let dests = |m: &Mirror, repo: Option<&str>, tag: &str| -> Vec<String> {
        let m = match repo {
            Some(r) => m.for_repository(r).unwrap(),
            None => m.clone(),
        };
        m.expand(&[tag.into()]).unwrap()[0]
            .destinations
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let repo_row = &parse("  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/mirror/, e.example.com/copy/x]\n    strip: /team/\n").unwrap()[0];
    assert_eq!(
        dests(repo_row, None, "1"),
        ["e.example.com/mirror/app:1", "e.example.com/copy/x:1"]
    );
    let image = repo_row.expand(&["1".into()]).unwrap().remove(0);
    assert!(repo_row.covers(&image.source, &image.destinations[0]));
    assert!(!repo_row.covers(
        &image.source,
        &"e.example.com/mirror/team/app:1".parse().unwrap()
    ));

    let ns = &parse(
        "  - source: r.example.com/team/*\n    destinations: [e.example.com/m/]\n    strip: team\n",
    )
    .unwrap()[0];
    assert_eq!(dests(ns, Some("team/a/b"), "1"), ["e.example.com/m/a/b:1"]);
    let deeper = &parse("  - source: r.example.com/team/*\n    destinations: [e.example.com/m/]\n    strip: team/legacy\n").unwrap()[0];
    assert_eq!(
        dests(deeper, Some("team/legacy/a"), "1"),
        ["e.example.com/m/a:1"]
    );
    assert_eq!(
        dests(deeper, Some("team/new"), "1"),
        ["e.example.com/m/team/new:1"]
    );
    let all = &parse(
        "  - source: r.example.com/*\n    destinations: [e.example.com/m/]\n    strip: library\n",
    )
    .unwrap()[0];
    assert_eq!(dests(all, Some("library/x"), "1"), ["e.example.com/m/x:1"]);
    assert_eq!(
        dests(all, Some("libraryx/y"), "1"),
        ["e.example.com/m/libraryx/y:1"]
    );
    // Round trip.
    let rows = vec![repo_row.clone(), ns.clone(), all.clone()];
    assert_eq!(
        MirrorFile::parse(&MirrorFile::render(&rows), "m.yaml").unwrap(),
        rows
    );

    for (yaml, message) in [
        (
            "  - source: r.example.com/a:1\n    destinations: [e.example.com/a:1]\n    strip: a\n",
            "`strip` needs a row that picks tags or repositories, with prefix destinations (ending in /)",
        ),
        (
            "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/]\n    strip: teem\n",
            "`strip`: teem is not a leading part of the source path team/app",
        ),
        (
            "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/]\n    strip: tea\n",
            "`strip`: tea is not a leading part of the source path team/app",
        ),
        (
            "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/]\n    strip: team/app\n",
            "`strip`: team/app is the whole repository path; use a repository destination (without /) instead",
        ),
        (
            "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/x]\n    strip: team\n",
            "`strip` applies to prefix destinations (ending in /), and this row has none",
        ),
    ] {
        let e = parse(yaml).unwrap_err().to_string();
        assert!(e.ends_with(message), "{e}");
    }
}

#[test]
fn repository_rows_expand_to_one_image_per_tag() {
    let text = "mirrors:\n  - source: registry.example.com/team/app\n    tags: {semver: '>=1.1', latest: 2}\n    destinations: [r.example.com/mirror/, s.example.com/copy/app]\n";
    let m = MirrorFile::parse(text, "m.yaml").unwrap();
    let row = &m[0];
    assert_eq!(row.source.to_string(), "registry.example.com/team/app");
    assert!(row.destinations.is_empty());
    assert_eq!(
        row.destination_names(),
        ["r.example.com/mirror/", "s.example.com/copy/app"]
    );
    let images = row.expand(&["1.2.0".into(), "1.1.0".into()]).unwrap();
    let pairs: Vec<(String, Vec<String>)> = images
        .iter()
        .map(|i| {
            (
                i.source.to_string(),
                i.destinations.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            (
                "registry.example.com/team/app:1.2.0".to_string(),
                vec![
                    "r.example.com/mirror/team/app:1.2.0".to_string(),
                    "s.example.com/copy/app:1.2.0".to_string()
                ]
            ),
            (
                "registry.example.com/team/app:1.1.0".to_string(),
                vec![
                    "r.example.com/mirror/team/app:1.1.0".to_string(),
                    "s.example.com/copy/app:1.1.0".to_string()
                ]
            ),
        ]
    );
    // A worker acts only on pairs the row still asks for.
    let src: Reference = "registry.example.com/team/app:1.2.0".parse().unwrap();
    let ok: Reference = "r.example.com/mirror/team/app:1.2.0".parse().unwrap();
    let other: Reference = "r.example.com/mirror/team/app:9.9.9".parse().unwrap();
    let old: Reference = "registry.example.com/team/app:1.0.0".parse().unwrap();
    let old_dest: Reference = "s.example.com/copy/app:1.0.0".parse().unwrap();
    assert!(row.covers(&src, &ok));
    assert!(!row.covers(&src, &other));
    assert!(!row.covers(&old, &old_dest), "1.0.0 is outside the range");
    // The YAML form survives export and import.
    assert_eq!(
        MirrorFile::parse(&MirrorFile::render(&m), "again").unwrap(),
        m
    );
    assert!(
        render_csv(&m)
            .unwrap_err()
            .to_string()
            .contains("CSV cannot hold")
    );
}

#[test]
fn registry_wide_rows_select_repositories_under_their_namespace() {
    let text = "mirrors:\n  - source: registry.example.com/team/*\n    repositories: {exclude: ['team/tmp-*']}\n    tags: {latest: 1}\n    destinations: r.example.com/mirror/\n  - source: registry.example.com/*\n    destinations: [s.example.com/all/]\n";
    let m = MirrorFile::parse(text, "m.yaml").unwrap();
    assert_eq!(m[0].key(), "registry.example.com/team/*");
    assert_eq!(m[1].key(), "registry.example.com/*");
    assert!(m[0].selects_repository("team/app"));
    assert!(m[0].selects_repository("team/sub/app"));
    assert!(!m[0].selects_repository("team/tmp-1"), "excluded");
    assert!(!m[0].selects_repository("teamx/app"), "another namespace");
    assert!(!m[0].selects_repository("other/app"));
    assert!(m[1].selects_repository("anything/at/all"));
    let repo = m[0].for_repository("team/app").unwrap();
    let images = repo.expand(&["2.0".into()]).unwrap();
    assert_eq!(
        images[0].destinations[0].to_string(),
        "r.example.com/mirror/team/app:2.0"
    );
    let src: Reference = "registry.example.com/team/app:2.0".parse().unwrap();
    assert!(m[0].covers(&src, &images[0].destinations[0]));
    let tmp: Reference = "registry.example.com/team/tmp-1:2.0".parse().unwrap();
    let tmp_dest: Reference = "r.example.com/mirror/team/tmp-1:2.0".parse().unwrap();
    assert!(!m[0].covers(&tmp, &tmp_dest));
    assert_eq!(
        MirrorFile::parse(&MirrorFile::render(&m), "again").unwrap(),
        m
    );

    let err = Mirror::with_selection(
        "registry.example.com/team/*",
        &["r.example.com/one/repo".into()],
        TagRules::default(),
        None,
    )
    .unwrap_err();
    assert_eq!(
        err,
        "destination r.example.com/one/repo: a registry-wide row mirrors many repositories, so its destinations are prefixes ending in /"
    );
    let err = Mirror::with_selection(
        "team/*",
        &["r.example.com/m/".into()],
        TagRules::default(),
        None,
    )
    .unwrap_err();
    assert!(err.contains("name a registry host before /*"), "{err}");
    let err = Mirror::with_selection(
        "registry.example.com/team/app",
        &["r.example.com/m/".into()],
        TagRules::default(),
        Some(RepoRules::default()),
    )
    .unwrap_err();
    assert!(
        err.contains("`repositories` needs a registry-wide source"),
        "{err}"
    );
}

#[test]
fn repository_rows_refuse_what_cannot_work() {
    let cases = [
        (
            "registry.example.com/team/app:1.0",
            vec!["r.example.com/m/"],
            "source: invalid image reference \"registry.example.com/team/app:1.0\": a row with a `tags` rule names a repository without a tag or digest; the rule picks the tags",
        ),
        (
            "registry.example.com/team/app",
            vec!["registry.example.com/team/app"],
            "destination registry.example.com/team/app is the source itself",
        ),
        (
            "registry.example.com/team/app",
            vec!["r.example.com/m/", "r.example.com/m/"],
            "destination r.example.com/m/ is listed twice",
        ),
        (
            "registry.example.com/team/app",
            vec!["r.example.com/m:1"],
            "destination 1: invalid image reference \"r.example.com/m:1\": a row with a `tags` rule names a repository without a tag or digest; the rule picks the tags",
        ),
        (
            "registry.example.com/team/app",
            vec![],
            "mirror registry.example.com/team/app has no destinations",
        ),
    ];
    for (source, dests, want) in cases {
        let dests: Vec<String> = dests.into_iter().map(String::from).collect();
        let err = Mirror::with_tags(source, &dests, TagRules::default()).unwrap_err();
        assert_eq!(err, want);
    }
    let bad = TagRules {
        latest: Some(0),
        ..Default::default()
    };
    let err = Mirror::with_tags("a.example.com/x", &["b.example.com/y".into()], bad).unwrap_err();
    assert_eq!(err, "tags.latest must be at least 1");
}

#[test]
fn parses_yaml_with_both_destination_forms() {
    let text = "mirrors:\n  - source: golang:1.17\n    destinations:\n      - 127.0.0.1:5002/golang:1.17\n      - 127.0.0.1:5003/golang:1.17\n  - source: quay.io/a/b:1\n    destinations: 'r.example.com/b:1, s.example.com/b:1'\n    overwrite: false\n";
    let m = MirrorFile::parse(text, "m.yaml").unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].source.to_string(), "docker.io/library/golang:1.17");
    assert_eq!(m[1].destinations.len(), 2);
    assert_eq!(m[1].overwrite, Some(false));
    let again = MirrorFile::parse(&MirrorFile::render(&m), "x").unwrap();
    assert_eq!(again, m);
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let text = "mirrors:\n  - source: golang:1.17\n    destinations: [a.example.com/g:1]\n    overwrte: false\n";
    let err = MirrorFile::parse(text, "m.yaml").unwrap_err().to_string();
    assert!(err.contains("overwrte") && err.contains("line 4"), "{err}");
}

#[test]
fn invalid_rows_say_why() {
    let cases = [
        (
            "mirrors:\n  - source: Bad\n    destinations: [a.example.com/x:1]\n",
            "lowercase",
        ),
        (
            "mirrors:\n  - source: golang:1\n    destinations: []\n",
            "no destinations",
        ),
        (
            "mirrors:\n  - source: golang:1\n    destinations: ''\n",
            "no destinations",
        ),
        (
            "mirrors:\n  - source: golang:1\n    destinations: [golang:1]\n",
            "the source itself",
        ),
        (
            "mirrors:\n  - source: golang:1\n    destinations: [a.example.com/g:1, a.example.com/g:1]\n",
            "listed twice",
        ),
        (
            "mirrors:\n  - source: golang:1\n    destinations: [a.example.com/g:1]\n  - source: docker.io/library/golang:1\n    destinations: [b.example.com/g:1]\n",
            "listed twice",
        ),
        (
            "mirrors:\n  - source: golang:1\n    destinations: [a.example.com/G:1]\n",
            "destination",
        ),
        (
            "mirrors:\n  - destinations: [a.example.com/g:1]\n",
            "source",
        ),
        ("mirrors: {}\n", "mirrors"),
        (
            "mirrors:\n  - source: golang:1\n    destinations: 5\n",
            "`destinations` must be a list of image references or one comma-separated string",
        ),
        ("hello\n", "expected a mapping with a `mirrors:` list"),
    ];
    for (text, want) in cases {
        let err = MirrorFile::parse(text, "m.yaml").unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn csv_round_trip() {
    let m = parse_csv(
        "source,destinations\n# comment\ngolang:1.17,a.example.com/g:1.17,b.example.com/g:1.17\n\n",
    )
    .strict("m.csv")
    .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].destinations.len(), 2);
    assert_eq!(
        parse_csv(&render_csv(&m).unwrap()).strict("m.csv").unwrap(),
        m
    );
    assert_eq!(
        parse_csv("golang:1\n")
            .strict("m.csv")
            .unwrap_err()
            .to_string(),
        "m.csv: line 1 (golang:1): mirror docker.io/library/golang:1 has no destinations"
    );
}

#[test]
fn bad_rows_are_refused_alone_in_file_order() {
    let text = "mirrors:\n  - source: a:1\n    destinations: [b.example.com/a:1]\n  \
                - source: a:2\n    destinations: []\n  \
                - source: a:1\n    destinations: [c.example.com/a:1]\n  \
                - source: a:3\n    destinations: [b.example.com/a:3]\n";
    let mut parsed = MirrorFile::parse_rows(text, "m.yaml").unwrap();
    let reasons = |p: &Parsed| {
        p.refused
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reasons(&parsed),
        [
            "mirror 2 (a:2): mirror docker.io/library/a:2 has no destinations",
            "mirror 3 (docker.io/library/a:1): the source is listed twice"
        ]
    );
    // A store's own limit refuses more, and the reports stay in file order.
    parsed.refuse_where(|m| match m.source.tag() {
        Some("1") => Err("too large".into()),
        _ => Ok(()),
    });
    assert_eq!(
        reasons(&parsed),
        [
            "mirror 1 (docker.io/library/a:1): too large",
            "mirror 2 (a:2): mirror docker.io/library/a:2 has no destinations",
            "mirror 3 (docker.io/library/a:1): the source is listed twice"
        ]
    );
    let mirrors = parsed.into_mirrors();
    assert_eq!(mirrors.len(), 1);
    assert_eq!(mirrors[0].key(), "docker.io/library/a:3");
    // Local mode reads all or nothing: the first bad row is the error.
    assert_eq!(
        MirrorFile::parse(text, "m.yaml").unwrap_err().to_string(),
        "m.yaml: mirror 2 (a:2): mirror docker.io/library/a:2 has no destinations"
    );
    // A document that is not a mirror file is refused whole.
    assert!(MirrorFile::parse_rows("mirrors: {}\n", "m.yaml").is_err());
}
