//! ECR registry hosts in every endpoint form (commercial, China, GovCloud,
//! FIPS, dual-stack) and repository names as ECR accepts them.

/// An ECR registry host, parsed. The forms AWS documents:
/// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` and the dual-stack
/// `<account>.dkr-ecr[-fips].<region>.on.aws`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrHost {
    pub account: String,
    pub region: String,
    /// A FIPS endpoint: the ECR API client uses FIPS endpoints too.
    pub fips: bool,
    /// A dual-stack (IPv4 and IPv6) endpoint: so does the API client.
    pub dual_stack: bool,
}

impl EcrHost {
    pub fn parse(host: &str) -> Option<EcrHost> {
        let host = host.split(':').next()?.to_ascii_lowercase();
        let (rest, dual_stack) = if let Some(r) = host
            .strip_suffix(".amazonaws.com")
            .or_else(|| host.strip_suffix(".amazonaws.com.cn"))
        {
            (r, false)
        } else {
            (host.strip_suffix(".on.aws")?, true)
        };
        let mut parts = rest.split('.');
        let account = parts.next()?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let service = if dual_stack {
            parts.next()?
        } else {
            if parts.next()? != "dkr" {
                return None;
            }
            parts.next()?
        };
        let fips = match (service, dual_stack) {
            ("ecr", false) | ("dkr-ecr", true) => false,
            ("ecr-fips", false) | ("dkr-ecr-fips", true) => true,
            _ => return None,
        };
        let region = parts.next()?;
        let region_ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if parts.next().is_some() || !region_ok {
            return None;
        }
        Some(EcrHost {
            account: account.to_string(),
            region: region.to_string(),
            fips,
            dual_stack,
        })
    }

    /// The ARN partition of the host's region.
    pub fn partition(&self) -> &'static str {
        if self.region.starts_with("cn-") {
            "aws-cn"
        } else if self.region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        }
    }

    /// Whether `other` names the same registry (account and region), in
    /// whichever endpoint form.
    pub fn same_registry(&self, other: &EcrHost) -> bool {
        self.account == other.account && self.region == other.region
    }

    /// The registry's one name whatever the endpoint form
    /// (`<account>.dkr.ecr.<region>`): rows are indexed under it.
    pub fn canonical(&self) -> String {
        format!("{}.dkr.ecr.{}", self.account, self.region)
    }

    /// Every host name this registry is reached by: standard and FIPS, in
    /// its partition's domain and dual-stack.
    pub fn spellings(&self) -> Vec<String> {
        let domain = if self.region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let (a, r) = (&self.account, &self.region);
        vec![
            format!("{a}.dkr.ecr.{r}.{domain}"),
            format!("{a}.dkr.ecr-fips.{r}.{domain}"),
            format!("{a}.dkr-ecr.{r}.on.aws"),
            format!("{a}.dkr-ecr-fips.{r}.on.aws"),
        ]
    }
}

/// Whether two registry hosts are the same registry: the same ECR account
/// and region in any endpoint form (standard, FIPS, dual-stack), or else the
/// same host name.
pub fn same_registry(a: &str, b: &str) -> bool {
    match (EcrHost::parse(a), EcrHost::parse(b)) {
        (Some(x), Some(y)) => x.same_registry(&y),
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// One name per registry, for indexing rows by it: ECR's account and region
/// (`<account>.dkr.ecr.<region>`) whatever the endpoint form, else the host
/// name in lowercase.
pub fn canonical_registry(host: &str) -> String {
    match EcrHost::parse(host) {
        Some(h) => h.canonical(),
        None => host.to_ascii_lowercase(),
    }
}

/// Every host name the registry `host` is reached by (ECR's endpoint
/// forms), or just `host`.
pub fn registry_spellings(host: &str) -> Vec<String> {
    EcrHost::parse(host).map_or_else(|| vec![host.to_string()], |h| h.spellings())
}

/// ECR's repository name rule (`CreateRepository`): 2 to 256 characters,
/// lowercase path components separated by single `.`, `_` or `-`, so `__`,
/// `--` and a trailing separator are refused, which the distribution
/// grammar allows.
pub fn valid_repository_name(name: &str) -> bool {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.split(['.', '_', '-']).all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    };
    (2..=256).contains(&name.len()) && name.split('/').all(component_ok)
}

/// The SDK flags an ECR host's endpoint form asks for: (FIPS, dual-stack).
pub fn endpoint_flags(host: &EcrHost) -> (bool, bool) {
    (host.fips, host.dual_stack)
}
