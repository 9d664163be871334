use super::host::*;
use super::mutability::*;

#[test]
fn parses_ecr_hosts() {
    let cases = [
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            ("us-east-1", false, false, "aws"),
        ),
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
            ("us-east-1", false, false, "aws"),
        ),
        (
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            ("us-gov-west-1", true, false, "aws-us-gov"),
        ),
        (
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            ("cn-north-1", false, false, "aws-cn"),
        ),
        (
            "123456789012.dkr-ecr.eu-west-1.on.aws",
            ("eu-west-1", false, true, "aws"),
        ),
        (
            "123456789012.dkr-ecr-fips.us-east-2.on.aws",
            ("us-east-2", true, true, "aws"),
        ),
    ];
    for (raw, (region, fips, dual, partition)) in cases {
        let h = EcrHost::parse(raw).unwrap_or_else(|| panic!("{raw}"));
        assert_eq!(h.account, "123456789012", "{raw}");
        assert_eq!(
            (h.region.as_str(), h.fips, h.dual_stack, h.partition()),
            (region, fips, dual, partition),
            "{raw}"
        );
        assert_eq!(endpoint_flags(&h), (fips, dual), "{raw}");
    }
    for bad in [
        "docker.io",
        "12345.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.amazonaws.com",
        "123456789012.dkr.ecr.us-east-1.example.com",
        "public.ecr.aws",
        "123456789012.api.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.us-east-1.on.aws",
        "123456789012.dkr-ecr.on.aws",
        "ecr.us-east-1.api.aws",
    ] {
        assert!(EcrHost::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn one_registry_in_every_endpoint_form() {
    let std = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    assert!(same_registry(
        std,
        "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"
    ));
    assert!(same_registry(std, "123456789012.dkr-ecr.us-east-1.on.aws"));
    assert!(!same_registry(
        std,
        "123456789012.dkr.ecr.us-east-2.amazonaws.com"
    ));
    assert!(!same_registry(
        std,
        "210987654321.dkr.ecr.us-east-1.amazonaws.com"
    ));
    assert!(same_registry(
        "registry.example.com",
        "Registry.example.com"
    ));
    assert!(!same_registry("registry.example.com", std));
}

#[test]
fn every_spelling_parses_back_to_the_same_registry() {
    for host in [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
        "123456789012.dkr-ecr-fips.us-gov-west-1.on.aws",
    ] {
        let parsed = EcrHost::parse(host).unwrap();
        let spellings = parsed.spellings();
        assert!(spellings.iter().any(|s| s == host), "{host}: {spellings:?}");
        for s in &spellings {
            let again = EcrHost::parse(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(again.canonical(), parsed.canonical(), "{s}");
        }
    }
}

#[test]
fn repository_names_follow_ecrs_rule() {
    for good in ["ab", "team/app", "a.b_c-d/e1", "mirror/library/golang"] {
        assert!(valid_repository_name(good), "{good}");
    }
    for bad in [
        "a", "a__b", "a--b", "a/", "/a", "a//b", "A-b", "a-", "-a", "a._b",
    ] {
        assert!(!valid_repository_name(bad), "{bad}");
    }
    assert!(!valid_repository_name(&"a".repeat(257)));
}

#[test]
fn exclusion_filters_flip_a_tags_mutability() {
    let sig = "sha256-0123.sig";
    let plain = TagMutability::from_ecr("IMMUTABLE", vec!["*".into()]);
    assert!(plain.is_immutable("1.0") && plain.is_immutable(sig));
    let with = TagMutability::from_ecr(
        "IMMUTABLE_WITH_EXCLUSION",
        vec!["sha256-*".into(), "latest".into()],
    );
    assert!(with.is_immutable("1.0"));
    assert!(!with.is_immutable(sig) && !with.is_immutable("latest"));
    let mutable = TagMutability::from_ecr("MUTABLE_WITH_EXCLUSION", vec!["v*-rc*".into()]);
    assert!(mutable.is_immutable("v1-rc2") && !mutable.is_immutable("v1"));
    assert!(!TagMutability::from_ecr("MUTABLE", vec![]).is_immutable("x"));
    for (p, t, want) in [
        ("*", "", true),
        ("a*", "abc", true),
        ("*c", "abc", true),
        ("a*c", "ac", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "acb", false),
        ("abc", "abcd", false),
        ("*.sig", "sha256-1.sig", true),
        ("*.sig", "sha256-1.att", false),
    ] {
        assert_eq!(wildcard_matches(p, t), want, "{p} {t}");
    }
}
