//! The IAM policies of `cloudformation/mirrorfleet.yaml`, read from the
//! template itself, so the test doubles allow exactly what a deployed role
//! may do and a permission removed from the template fails a test.
//!
//! Only `Allow` statements exist in the template; a request is allowed when
//! some statement names its action and a resource pattern matching its ARN
//! (`*` any run of characters, `?` one), as IAM evaluates them. Values are
//! resolved for one account and region: `!Sub` with the pseudo parameters
//! and the template's parameters (defaults unless given), `!Ref` of a
//! parameter; anything else (a `!GetAtt` of a table or queue) stays
//! unresolved and matches nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_norway::Value;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// The template in this repository.
pub fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloudformation/mirrorfleet.yaml")
}

/// One `Allow` statement, resolved.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sid: Option<String>,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

/// What one role may do.
#[derive(Debug, Clone)]
pub struct Policy {
    pub role: String,
    pub statements: Vec<Statement>,
}

impl Policy {
    /// The policy of `role` (a resource name such as `WorkerRole`) in the
    /// template at `path`: its inline policies, its managed policies, and
    /// the managed policies that attach themselves to it (those with a
    /// `Condition` only when `conditional` is set).
    pub fn for_role(
        path: &Path,
        role: &str,
        params: &BTreeMap<String, String>,
        conditional: bool,
    ) -> Result<Policy> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let doc: Value = serde_norway::from_str(&text)?;
        let ctx = Ctx::new(&doc, params);
        let resources = doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .context("no Resources")?;
        let r = resources
            .get(role)
            .with_context(|| format!("no resource {role}"))?;
        let props = &r["Properties"];
        let mut statements = Vec::new();
        if let Some(policies) = props.get("Policies").and_then(Value::as_sequence) {
            for p in policies {
                statements.extend(ctx.statements(&p["PolicyDocument"])?);
            }
        }
        let mut managed: BTreeSet<String> = BTreeSet::new();
        if let Some(arns) = props.get("ManagedPolicyArns").and_then(Value::as_sequence) {
            for a in arns {
                if let Some(name) = ref_name(a) {
                    managed.insert(name);
                }
            }
        }
        for (name, res) in resources {
            let Some(name) = name.as_str() else { continue };
            if res["Type"].as_str() != Some("AWS::IAM::ManagedPolicy") {
                continue;
            }
            let attached = res["Properties"]
                .get("Roles")
                .and_then(Value::as_sequence)
                .is_some_and(|roles| roles.iter().any(|x| ref_name(x).as_deref() == Some(role)));
            let has_condition = res.get("Condition").is_some();
            if managed.contains(name) || (attached && (!has_condition || conditional)) {
                statements.extend(ctx.statements(&res["Properties"]["PolicyDocument"])?);
            }
        }
        if statements.is_empty() {
            bail!("{role} has no policy statements in {}", path.display());
        }
        Ok(Policy {
            role: role.to_string(),
            statements,
        })
    }

    /// The policy of `role` in this repository's template, with its defaults.
    pub fn of(role: &str) -> Policy {
        Policy::for_role(&template_path(), role, &BTreeMap::new(), false)
            .unwrap_or_else(|e| panic!("{role}: {e:#}"))
    }

    /// A policy that allows every call (the test harness's own reads).
    pub fn everything() -> Policy {
        Policy {
            role: "harness".into(),
            statements: vec![Statement {
                sid: None,
                actions: vec!["*".into()],
                resources: vec!["*".into()],
            }],
        }
    }

    /// Whether `action` (`ecr:PutImage`) on `resource` (an ARN, or `*`) is allowed.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        self.statements.iter().any(|s| {
            s.actions
                .iter()
                .any(|a| wildcard(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
                && s.resources.iter().any(|r| wildcard(r, resource))
        })
    }

    /// Every action the role names, for one service prefix (`ecr`).
    pub fn actions(&self, service: &str) -> BTreeSet<String> {
        let prefix = format!("{service}:");
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter())
            .filter(|a| a.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// The same policy less one action everywhere: what a template with
    /// that permission deleted would grant.
    pub fn without(&self, action: &str) -> Policy {
        let mut p = self.clone();
        for s in &mut p.statements {
            s.actions.retain(|a| a != action);
        }
        p
    }

    /// The ARN IAM checks for an ECR repository.
    pub fn repository_arn(repository: &str) -> String {
        format!("arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repository}")
    }
}

struct Ctx<'a> {
    params: BTreeMap<String, String>,
    doc: &'a Value,
}

impl<'a> Ctx<'a> {
    fn new(doc: &'a Value, given: &BTreeMap<String, String>) -> Ctx<'a> {
        let mut params = BTreeMap::new();
        if let Some(ps) = doc.get("Parameters").and_then(Value::as_mapping) {
            for (k, v) in ps {
                if let (Some(k), Some(d)) = (k.as_str(), v.get("Default")) {
                    let d = match d {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => String::new(),
                    };
                    params.insert(k.to_string(), d);
                }
            }
        }
        params.extend(given.clone());
        params.insert("AWS::Partition".into(), "aws".into());
        params.insert("AWS::Region".into(), REGION.into());
        params.insert("AWS::AccountId".into(), ACCOUNT.into());
        params.insert("AWS::StackName".into(), "mirrorfleet".into());
        params.insert("AWS::URLSuffix".into(), "amazonaws.com".into());
        Ctx { params, doc }
    }

    fn statements(&self, doc: &Value) -> Result<Vec<Statement>> {
        let list = match &doc["Statement"] {
            Value::Sequence(s) => s.clone(),
            v @ Value::Mapping(_) => vec![v.clone()],
            _ => bail!("a policy document without statements"),
        };
        let mut out = Vec::new();
        for s in &list {
            if s["Effect"].as_str() != Some("Allow") {
                bail!("only Allow statements are understood: {s:?}");
            }
            out.push(Statement {
                sid: s["Sid"].as_str().map(str::to_string),
                actions: self.strings(&s["Action"]),
                resources: self.strings(&s["Resource"]),
            });
        }
        Ok(out)
    }

    /// A string, a list of them, or an intrinsic function, resolved.
    fn strings(&self, v: &Value) -> Vec<String> {
        match v {
            Value::Sequence(items) => items.iter().flat_map(|i| self.strings(i)).collect(),
            _ => vec![self.resolve(v)],
        }
    }

    fn resolve(&self, v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Tagged(t) => {
                let tag = t.tag.to_string();
                match (tag.trim_start_matches('!'), &t.value) {
                    ("Sub", Value::String(s)) => self.sub(s),
                    ("Ref", Value::String(name)) => match self.params.get(name) {
                        Some(p) => p.clone(),
                        None => format!("unresolved:Ref:{name}"),
                    },
                    (other, _) => format!("unresolved:{other}"),
                }
            }
            _ => "unresolved".into(),
        }
    }

    /// `${Name}` replaced by a parameter or pseudo parameter.
    fn sub(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let name = &after[..end];
            match self.params.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    // A resource's own attribute: keep it unresolvable.
                    let _ = self.doc;
                    out.push_str(&format!("unresolved:{name}"));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

fn ref_name(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "Ref" => {
            t.value.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// IAM's pattern match: `*` any run of characters, `?` exactly one.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_iam() {
        assert!(wildcard(
            "arn:aws:ecr:*:1:repository/*",
            "arn:aws:ecr:x:1:repository/a/b"
        ));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("ecr:Batch*", "ecr:BatchGetImage"));
        assert!(!wildcard(
            "arn:aws:ecr:r:1:repository/mirror/*",
            "arn:aws:ecr:r:1:repository/other"
        ));
        assert!(wildcard("a?c", "abc") && !wildcard("a?c", "ac"));
    }

    #[test]
    fn reads_the_templates_roles() {
        let worker = Policy::of("WorkerRole");
        let repo = Policy::repository_arn("some/repo");
        assert!(worker.allows("ecr:PutImage", &repo));
        assert!(worker.allows("ecr:GetAuthorizationToken", "*"));
        assert!(!worker.allows("ecr:DeleteRepository", &repo));
        assert!(!worker.without("ecr:PutImage").allows("ecr:PutImage", &repo));
        let prefixed = Policy::for_role(
            &template_path(),
            "WorkerRole",
            &BTreeMap::from([("RepositoryPrefix".to_string(), "mirror/".to_string())]),
            false,
        )
        .unwrap();
        assert!(prefixed.allows("ecr:PutImage", &Policy::repository_arn("mirror/a")));
        assert!(!prefixed.allows("ecr:PutImage", &Policy::repository_arn("other/a")));
        let controller = Policy::of("ControllerRole");
        assert!(controller.allows("ecr:DescribeImages", &repo));
        assert!(!controller.allows("ecr:PutImage", &repo));
    }
}
