//! Building and checking a row's mirror: its source, its destinations
//! (images, or repository and registry targets), and its rules.

use crate::control::select::{RepoRules, TagRules};
use crate::control::table::Mirror;
use crate::control::table::Select;
use crate::control::table::Target;
use crate::control::table::leads_namespace;
use crate::oci::manifest::PlatformSpec;
use crate::oci::reference::Reference;

impl Mirror {
    /// Validate and normalise a mirror from its raw parts.
    pub fn new(source: &str, destinations: &[String]) -> Result<Mirror, String> {
        let source: Reference = source
            .trim()
            .parse()
            .map_err(|e: crate::oci::reference::ReferenceError| format!("source: {e}"))?;
        let mut dests: Vec<Reference> = Vec::new();
        for (i, d) in destinations
            .iter()
            .flat_map(|d| d.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .enumerate()
        {
            if d.ends_with('/') {
                return Err(format!(
                    "destination {}: {d} is a prefix, which only a row that picks tags can use \
                     (a source without a tag plus a `tags` rule, e.g. --include-tags '.*', or a source ending in /*)",
                    i + 1
                ));
            }
            let r: Reference = d
                .parse()
                .map_err(|e: crate::oci::reference::ReferenceError| {
                    format!("destination {}: {e}", i + 1)
                })?;
            if r.same_location(&source) {
                return Err(format!("destination {r} is the source itself"));
            }
            if dests.contains(&r) {
                return Err(format!("destination {r} is listed twice"));
            }
            dests.push(r);
        }
        if dests.is_empty() {
            return Err(format!("mirror {source} has no destinations"));
        }
        Ok(Mirror {
            source,
            destinations: dests,
            enabled: true,
            overwrite: None,
            expires: None,
            select: None,
            platforms: Vec::new(),
        })
    }

    /// A repository row: `source` without a tag, `tags` picking which of its
    /// tags to mirror, each target a repository or a prefix ending in `/`.
    pub fn with_tags(source: &str, targets: &[String], tags: TagRules) -> Result<Mirror, String> {
        Mirror::with_selection(source, targets, tags, None)
    }

    /// A repository row, or with `repositories` (or a source ending in `/*`)
    /// a registry-wide row whose targets must be prefixes.
    pub fn with_selection(
        source: &str,
        targets: &[String],
        tags: TagRules,
        repositories: Option<RepoRules>,
    ) -> Result<Mirror, String> {
        let wide = source.trim().ends_with("/*");
        if repositories.is_some() && !wide {
            return Err(format!(
                "`repositories` needs a registry-wide source ending in /* (not {source:?})"
            ));
        }
        let repositories = wide.then(|| repositories.unwrap_or_default());
        let source = if wide {
            Reference::parse_namespace(source)
        } else {
            Reference::parse_repository(source.trim())
        }
        .map_err(|e| format!("source: {e}"))?;
        tags.compile().map_err(|e| e.to_string())?;
        if let Some(r) = &repositories {
            r.validate().map_err(|e| e.to_string())?;
        }
        let mut parsed: Vec<Target> = Vec::new();
        for (i, raw) in targets
            .iter()
            .flat_map(|d| d.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .enumerate()
        {
            let t = Target::parse(raw).map_err(|e| format!("destination {}: {e}", i + 1))?;
            if wide && !matches!(t, Target::Prefix { .. }) {
                return Err(format!(
                    "destination {t}: a registry-wide row mirrors many repositories, so its destinations are prefixes ending in /"
                ));
            }
            if matches!(&t, Target::Repository(r) if r.name() == source.name()) {
                return Err(format!("destination {t} is the source itself"));
            }
            if parsed.contains(&t) {
                return Err(format!("destination {t} is listed twice"));
            }
            parsed.push(t);
        }
        if parsed.is_empty() {
            return Err(format!("mirror {source} has no destinations"));
        }
        Ok(Mirror {
            source,
            destinations: Vec::new(),
            enabled: true,
            overwrite: None,
            expires: None,
            select: Some(Select {
                tags,
                targets: parsed,
                repositories,
                strip: None,
            }),
            platforms: Vec::new(),
        })
    }

    /// Set the platform subset from what a user wrote: each entry one
    /// platform or a comma-separated list.
    pub fn set_platforms(&mut self, raw: &[String]) -> Result<(), String> {
        let mut out: Vec<PlatformSpec> = raw
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().map_err(|e| format!("`platforms`: {e}")))
            .collect::<Result<_, String>>()?;
        out.sort();
        out.dedup();
        self.platforms = out;
        Ok(())
    }

    /// Set the leading path removed before sources are placed under prefix
    /// destinations. It must lead the row's source path (a registry-wide
    /// row over a whole registry takes any), so a typo is caught here
    /// rather than mirroring everything under the full path.
    pub fn set_strip(&mut self, raw: Option<&str>) -> Result<(), String> {
        let raw = raw
            .map(|r| r.trim().trim_matches('/'))
            .filter(|r| !r.is_empty());
        let Some(strip) = raw else {
            if let Some(sel) = &mut self.select {
                sel.strip = None;
            }
            return Ok(());
        };
        let source_path = self.source.repository().to_string();
        let Some(sel) = &mut self.select else {
            return Err("`strip` needs a row that picks tags or repositories, with prefix destinations (ending in /)".into());
        };
        if !sel
            .targets
            .iter()
            .any(|t| matches!(t, Target::Prefix { .. }))
        {
            return Err(
                "`strip` applies to prefix destinations (ending in /), and this row has none"
                    .into(),
            );
        }
        let leads = |path: &str| {
            path == strip
                || path
                    .strip_prefix(strip)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let wide = sel.repositories.is_some();
        // On `registry/*` any path goes: repositories outside it keep theirs.
        let fits = (wide && source_path.is_empty())
            || leads(&source_path)
            || (wide && leads_namespace(strip, &source_path));
        if !fits {
            return Err(format!(
                "`strip`: {strip} is not a leading part of the source path {source_path}"
            ));
        }
        if !wide && source_path == strip {
            return Err(format!(
                "`strip`: {strip} is the whole repository path; use a repository destination (without /) instead"
            ));
        }
        sel.strip = Some(strip.to_string());
        Ok(())
    }

    /// The platform subset as recorded in a status (`None`: every platform).
    pub fn platforms_key(&self) -> Option<String> {
        let list: Vec<String> = self.platforms.iter().map(ToString::to_string).collect();
        (!list.is_empty()).then(|| list.join(","))
    }

    /// The row's key as users write it: the source, with `/*` for a
    /// registry-wide row.
    pub fn key(&self) -> String {
        let wide = matches!(
            &self.select,
            Some(Select {
                repositories: Some(_),
                ..
            })
        );
        match (wide, self.source.repository().is_empty()) {
            (true, true) => format!("{}/*", self.source.registry()),
            (true, false) => format!("{}/*", self.source.name()),
            (false, _) => self.source.to_string(),
        }
    }

    /// For a registry-wide row: whether `repo` (a full path from the
    /// catalog) is one it mirrors.
    pub fn selects_repository(&self, repo: &str) -> bool {
        let Some(Select {
            repositories: Some(rules),
            ..
        }) = &self.select
        else {
            return false;
        };
        let ns = self.source.repository();
        (ns.is_empty()
            || repo
                .strip_prefix(ns)
                .is_some_and(|rest| rest.starts_with('/')))
            && rules.matches(repo)
    }

    /// For a registry-wide row: the repository row for one of its
    /// repositories (same tag rule and targets).
    pub fn for_repository(&self, repo: &str) -> Result<Mirror, String> {
        let Some(sel) = &self.select else {
            return Err(format!("{} is not a registry-wide row", self.key()));
        };
        let source = Reference::parse_repository(&format!("{}/{repo}", self.source.registry()))
            .map_err(|e| e.to_string())?;
        Ok(Mirror {
            source,
            select: Some(Select {
                repositories: None,
                ..sel.clone()
            }),
            ..self.clone()
        })
    }

    /// What the row names as destinations, as written (targets for a
    /// repository row).
    pub fn destination_names(&self) -> Vec<String> {
        match &self.select {
            Some(sel) => sel.targets.iter().map(ToString::to_string).collect(),
            None => self.destinations.iter().map(ToString::to_string).collect(),
        }
    }

    /// One image mirror per tag of a repository row (tags as listed by the
    /// registry, already picked by the rule). An image row expands to itself.
    pub fn expand(&self, tags: &[String]) -> Result<Vec<Mirror>, String> {
        let Some(sel) = &self.select else {
            return Ok(vec![self.clone()]);
        };
        let mut out = Vec::with_capacity(tags.len());
        for tag in tags {
            let source = self.source.with_tag(tag).map_err(|e| e.to_string())?;
            let destinations = sel
                .targets
                .iter()
                .map(|t| t.destination(&source, sel.strip.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Mirror {
                source,
                destinations,
                select: None,
                ..self.clone()
            });
        }
        Ok(out)
    }

    /// Whether copying `source` to `dest` is still what this row asks for
    /// (a worker checks before acting on a queued job). For a repository row
    /// the tag must still pass the rule's filters (not `latest`, which
    /// depends on the other tags).
    pub fn covers(&self, source: &Reference, dest: &Reference) -> bool {
        let Some(sel) = &self.select else {
            return self.destinations.contains(dest);
        };
        if sel.repositories.is_some() {
            return source.registry() == self.source.registry()
                && self.selects_repository(source.repository())
                && self
                    .for_repository(source.repository())
                    .is_ok_and(|m| m.covers(source, dest));
        }
        let tag_ok = source.name() == self.source.name()
            && source
                .tag()
                .is_some_and(|t| sel.tags.compile().is_ok_and(|c| c.matches(t)));
        tag_ok
            && sel.targets.iter().any(|t| {
                t.destination(source, sel.strip.as_deref())
                    .is_ok_and(|d| &d == dest)
            })
    }
}
