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

/// Where a template is deployed: its pseudo parameters.
#[derive(Debug, Clone)]
pub struct Place {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub url_suffix: String,
}

impl Default for Place {
    fn default() -> Place {
        Place {
            partition: "aws".into(),
            region: REGION.into(),
            account: ACCOUNT.into(),
            url_suffix: "amazonaws.com".into(),
        }
    }
}

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
    /// `Condition: StringEquals: aws:RequestedRegion`, where given.
    pub regions: Option<Vec<String>>,
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
        Policy::for_role_in(path, role, params, conditional, &Place::default())
    }

    /// As [`Policy::for_role`], for a stack deployed at `place`.
    pub fn for_role_in(
        path: &Path,
        role: &str,
        params: &BTreeMap<String, String>,
        conditional: bool,
        place: &Place,
    ) -> Result<Policy> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let doc: Value = serde_norway::from_str(&text)?;
        let ctx = Ctx::new(&doc, params, place);
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
                regions: None,
            }],
        }
    }

    /// Whether `action` (`ecr:PutImage`) on `resource` (an ARN, or `*`) is
    /// allowed, requested in the ARN's region (else the default one).
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        let region = match resource.split(':').nth(3) {
            Some(r) if !r.is_empty() => r,
            _ => REGION,
        };
        self.allows_in(action, resource, region)
    }

    /// Whether `action` on `resource` is allowed in a request to `region`.
    pub fn allows_in(&self, action: &str, resource: &str, region: &str) -> bool {
        self.statements.iter().any(|s| {
            s.actions
                .iter()
                .any(|a| wildcard(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
                && s.resources.iter().any(|r| wildcard(r, resource))
                && s.regions
                    .as_ref()
                    .is_none_or(|rs| rs.iter().any(|r| r == region))
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
        Policy::repository_arn_in(&Place::default(), repository)
    }

    /// The ARN of an ECR repository in another account, region or partition.
    pub fn repository_arn_in(place: &Place, repository: &str) -> String {
        format!(
            "arn:{}:ecr:{}:{}:repository/{repository}",
            place.partition, place.region, place.account
        )
    }
}

/// A resolved template value.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    List(Vec<String>),
    Bool(bool),
}

impl Val {
    fn text(self) -> String {
        match self {
            Val::Str(s) => s,
            Val::List(l) => l.join(","),
            Val::Bool(b) => b.to_string(),
        }
    }

    fn list(self) -> Vec<String> {
        match self {
            Val::List(l) => l,
            other => vec![other.text()],
        }
    }

    fn truth(&self) -> bool {
        matches!(self, Val::Bool(true))
    }
}

struct Ctx<'a> {
    params: BTreeMap<String, Val>,
    doc: &'a Value,
}

impl<'a> Ctx<'a> {
    fn new(doc: &'a Value, given: &BTreeMap<String, String>, place: &Place) -> Ctx<'a> {
        let mut params = BTreeMap::new();
        if let Some(ps) = doc.get("Parameters").and_then(Value::as_mapping) {
            for (k, v) in ps {
                let Some(k) = k.as_str() else { continue };
                let text = match (given.get(k), v.get("Default")) {
                    (Some(g), _) => g.clone(),
                    (None, Some(Value::String(s))) => s.clone(),
                    (None, Some(Value::Number(n))) => n.to_string(),
                    (None, Some(Value::Bool(b))) => b.to_string(),
                    _ => continue,
                };
                let kind = v["Type"].as_str().unwrap_or_default();
                let val = if kind == "CommaDelimitedList" || kind.starts_with("List<") {
                    Val::List(text.split(',').map(|p| p.trim().to_string()).collect())
                } else {
                    Val::Str(text)
                };
                params.insert(k.to_string(), val);
            }
        }
        for (k, v) in [
            ("AWS::Partition", place.partition.as_str()),
            ("AWS::Region", place.region.as_str()),
            ("AWS::AccountId", place.account.as_str()),
            ("AWS::StackName", "mirrorfleet"),
            ("AWS::URLSuffix", place.url_suffix.as_str()),
        ] {
            params.insert(k.into(), Val::Str(v.into()));
        }
        Ctx { params, doc }
    }

    fn statements(&self, doc: &Value) -> Result<Vec<Statement>> {
        let list = match &doc["Statement"] {
            Value::Sequence(s) => s.clone(),
            v @ Value::Mapping(_) => vec![v.clone()],
            _ => bail!("a policy document without statements"),
        };
        let mut out = Vec::new();
        for s in list.iter().filter_map(|s| self.pick(s)) {
            let s = &s;
            if s["Effect"].as_str() != Some("Allow") {
                bail!("only Allow statements are understood: {s:?}");
            }
            let regions = s["Condition"]["StringEquals"]
                .get("aws:RequestedRegion")
                .map(|r| self.eval(r).list());
            out.push(Statement {
                sid: s["Sid"].as_str().map(str::to_string),
                actions: self.eval(&s["Action"]).list(),
                resources: self.eval(&s["Resource"]).list(),
                regions,
            });
        }
        Ok(out)
    }

    /// A value with its intrinsic functions applied: `!Ref`, `!Sub` (with
    /// or without variables), `!Join`, `!Split`, `!Select`, `!If` and the
    /// condition functions. Anything else (a `!GetAtt` of a table or queue)
    /// stays unresolved and matches nothing.
    fn eval(&self, v: &Value) -> Val {
        match v {
            Value::String(s) => Val::Str(s.clone()),
            Value::Number(n) => Val::Str(n.to_string()),
            Value::Bool(b) => Val::Bool(*b),
            Value::Sequence(items) => {
                Val::List(items.iter().flat_map(|i| self.eval(i).list()).collect())
            }
            Value::Tagged(t) => {
                let tag = t.tag.to_string();
                let args = t.value.as_sequence().cloned().unwrap_or_default();
                let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
                match tag.trim_start_matches('!') {
                    "Ref" => {
                        let name = t.value.as_str().unwrap_or_default();
                        match (name, self.params.get(name)) {
                            ("AWS::NoValue", _) => Val::List(Vec::new()),
                            (_, Some(p)) => p.clone(),
                            _ => Val::Str(format!("unresolved:Ref:{name}")),
                        }
                    }
                    "Sub" => match &t.value {
                        Value::String(s) => Val::Str(self.sub(s, &BTreeMap::new())),
                        _ => {
                            let mut vars = BTreeMap::new();
                            if let Some(m) = arg(1).as_mapping() {
                                for (k, v) in m {
                                    if let Some(k) = k.as_str() {
                                        vars.insert(k.to_string(), self.eval(v).text());
                                    }
                                }
                            }
                            Val::Str(self.sub(arg(0).as_str().unwrap_or_default(), &vars))
                        }
                    },
                    "Join" => Val::Str(
                        self.eval(&arg(1))
                            .list()
                            .join(arg(0).as_str().unwrap_or_default()),
                    ),
                    "Split" => {
                        let sep = arg(0).as_str().unwrap_or(",").to_string();
                        let text = self.eval(&arg(1)).text();
                        Val::List(text.split(sep.as_str()).map(str::to_string).collect())
                    }
                    "Select" => {
                        let i: usize = self.eval(&arg(0)).text().parse().unwrap_or(usize::MAX);
                        let list = self.eval(&arg(1)).list();
                        Val::Str(list.get(i).cloned().unwrap_or_default())
                    }
                    "If" => {
                        let name = arg(0).as_str().unwrap_or_default().to_string();
                        if self.condition(&name) {
                            self.eval(&arg(1))
                        } else {
                            self.eval(&arg(2))
                        }
                    }
                    "Equals" => Val::Bool(self.eval(&arg(0)).text() == self.eval(&arg(1)).text()),
                    "Not" => Val::Bool(!self.eval(&arg(0)).truth()),
                    "And" => Val::Bool(args.iter().all(|a| self.eval(a).truth())),
                    "Or" => Val::Bool(args.iter().any(|a| self.eval(a).truth())),
                    "Condition" => Val::Bool(self.condition(t.value.as_str().unwrap_or_default())),
                    other => Val::Str(format!("unresolved:{other}")),
                }
            }
            _ => Val::Str("unresolved".into()),
        }
    }

    /// A statement written as `!If [Cond, A, B]`: the branch that holds
    /// (`None` for `AWS::NoValue`).
    fn pick(&self, v: &Value) -> Option<Value> {
        match v {
            Value::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "If" => {
                let args = t.value.as_sequence()?;
                let name = args.first()?.as_str()?;
                let branch = if self.condition(name) {
                    args.get(1)?
                } else {
                    args.get(2)?
                };
                self.pick(branch)
            }
            Value::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "Ref" => None,
            other => Some(other.clone()),
        }
    }

    /// A condition of the template's `Conditions`, evaluated.
    fn condition(&self, name: &str) -> bool {
        self.eval(&self.doc["Conditions"][name]).truth()
    }

    /// `${Name}` replaced by a variable, a parameter or a pseudo parameter.
    fn sub(&self, s: &str, vars: &BTreeMap<String, String>) -> String {
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
            match (vars.get(name), self.params.get(name)) {
                (Some(v), _) => out.push_str(v),
                (None, Some(v)) => out.push_str(&v.clone().text()),
                // A resource's own attribute: keep it unresolvable.
                _ => out.push_str(&format!("unresolved:{name}")),
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
