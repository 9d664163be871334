//! A gate in front of moto that enforces IAM as a deployed role meets it,
//! since moto itself checks nothing.
//!
//! Gated calls, each needing its action on its resource:
//! - ECR's control plane (`X-Amz-Target` `AmazonEC2ContainerRegistry_*`), on
//!   the repository's ARN in the request's region (the SigV4 credential
//!   scope), so a statement limited by `aws:RequestedRegion` holds;
//! - `ssm:GetParameter` on the parameter's ARN;
//! - `secretsmanager:GetSecretValue` on the secret (its ARN, or its name);
//! - `sts:AssumeRole` on the role's ARN (the query protocol's form body).
//!
//! `DescribeImages` by `imageIds` can be answered from the registry behind
//! an ECR double ([`AwsGate::answer_images_from`]), as ECR answers from its
//! own store.
//!
//! DynamoDB calls are logged (action and table) and passed through, so a
//! test can count what a run asked for.
//!
//! A refused JSON call gets `AccessDeniedException` as the AWS JSON protocol
//! answers it; a refused `AssumeRole` gets STS's XML `AccessDenied`. Other
//! services pass through. Keys handed out by an allowed `AssumeRole` act as
//! that role from then on: their calls are checked against the policy the
//! test gave for it (none: refused), with resources in the role's account.
//!
//! moto 5.2.5 keeps a repository's tag-mutability exclusion filters but
//! leaves them out of `DescribeRepositories`; the gate puts back what it saw
//! created, as ECR returns them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::iam::{ACCOUNT, Place, Policy, REGION};
use crate::images::ImageSource;
use crate::serve::{Body, json, serve, upstream_request};

/// One gated call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `ecr:PutImage`, `sts:AssumeRole`, ...
    pub action: String,
    pub resource: String,
    /// The role the caller acted as: the gate's own policy's, or an assumed one.
    pub role: String,
    pub allowed: bool,
}

/// Who signs with which key.
#[derive(Default)]
struct Identities {
    /// Policies of roles a caller may assume, by role ARN, with the
    /// external id each role's trust policy asks for.
    assumable: BTreeMap<String, (Policy, Option<String>)>,
    /// Access key ids STS handed out, with the role each acts as.
    keys: BTreeMap<String, String>,
}

/// A front on moto that enforces the role's IAM (see the module doc).
pub struct AwsGate {
    /// `http://127.0.0.1:PORT`: the `AWS_ENDPOINT_URL` for the process.
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    ids: Arc<Mutex<Identities>>,
    hold: Arc<Hold>,
    images: Arc<Mutex<Option<ImageSource>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for AwsGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsGate").field("url", &self.url).finish()
    }
}

impl Drop for AwsGate {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl AwsGate {
    pub fn start(moto: &str, policy: Policy) -> Result<AwsGate> {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
        let ids: Arc<Mutex<Identities>> = Arc::default();
        let hold = Arc::new(Hold::default());
        let images: Arc<Mutex<Option<ImageSource>>> = Arc::default();
        let (c, i, held, im) = (calls.clone(), ids.clone(), hold.clone(), images.clone());
        let moto = moto.trim_end_matches('/').to_string();
        let (addrs, stop) = serve(1, move |_| {
            let http = reqwest::Client::builder()
                .http1_only()
                .build()
                .expect("a plain reqwest client builds");
            let policy = Arc::new(policy);
            move |_: usize, req: Request<Incoming>| {
                let gate = Gate {
                    http: http.clone(),
                    policy: policy.clone(),
                    moto: moto.clone(),
                    calls: c.clone(),
                    ids: i.clone(),
                    images: im.clone(),
                };
                let hold = held.clone();
                async move {
                    hold.wait(&req).await;
                    gate.handle(req).await
                }
            }
        })?;
        Ok(AwsGate {
            url: format!("http://{}", addrs[0]),
            calls,
            ids,
            hold,
            images,
            stop: Some(stop),
        })
    }

    /// Callers may assume `role_arn` (where their own policy allows it and
    /// they present `external_id`, if given, as its trust policy asks), and
    /// then act with `policy`: the role's policy in its own account.
    pub fn assumable(&self, role_arn: &str, policy: Policy, external_id: Option<&str>) {
        self.ids.lock().unwrap().assumable.insert(
            role_arn.to_string(),
            (policy, external_id.map(str::to_string)),
        );
    }

    /// Every gated call so far, in order.
    pub fn log(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Gated calls so far (`ecr:GetAuthorizationToken`), with whether each was allowed.
    pub fn calls(&self) -> Vec<(String, bool)> {
        self.log()
            .into_iter()
            .map(|c| (c.action, c.allowed))
            .collect()
    }

    /// Answer `DescribeImages` by `imageIds` from the registry holding an
    /// ECR double's data, as ECR answers from its own ([`crate::images`]).
    pub fn answer_images_from(&self, source: ImageSource) {
        *self.images.lock().unwrap() = Some(source);
    }

    pub fn count(&self, action: &str) -> usize {
        self.log().iter().filter(|c| c.action == action).count()
    }

    /// Hold every call whose `X-Amz-Target` ends with `target` after the
    /// first `after` of them, never answering (a stalled SQS send).
    pub fn hold_after(&self, target: &str, after: usize) {
        *self.hold.rule.lock().unwrap() = Some((target.to_string(), after));
    }

    /// Calls held so far.
    pub fn held(&self) -> usize {
        self.hold.held.load(Ordering::Relaxed) as usize
    }
}

/// Which calls the gate holds without answering.
#[derive(Default)]
struct Hold {
    rule: Mutex<Option<(String, usize)>>,
    seen: AtomicU64,
    held: AtomicU64,
}

impl Hold {
    async fn wait(&self, req: &Request<Incoming>) {
        let Some((target, after)) = self.rule.lock().unwrap().clone() else {
            return;
        };
        let matches = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.ends_with(&target));
        if matches && self.seen.fetch_add(1, Ordering::Relaxed) as usize >= after {
            self.held.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
    }
}

/// What one request asks for.
struct Asked {
    action: String,
    resource: String,
    /// Answered in the AWS query protocol's XML (STS), else JSON.
    xml: bool,
    /// The `ExternalId` an `AssumeRole` presents.
    external_id: Option<String>,
}

struct Gate {
    http: reqwest::Client,
    policy: Arc<Policy>,
    moto: String,
    calls: Arc<Mutex<Vec<Call>>>,
    ids: Arc<Mutex<Identities>>,
    images: Arc<Mutex<Option<ImageSource>>>,
}

impl Gate {
    async fn handle(self, req: Request<Incoming>) -> std::io::Result<Response<Body>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (key, region) = signer(&header("authorization"));
        let target = header("x-amz-target");
        // The caller: its own role, or a role it assumed through the gate.
        let (policy, account) = {
            let ids = self.ids.lock().unwrap();
            match ids.keys.get(&key) {
                Some(role) => (
                    ids.assumable.get(role).map(|(p, _)| Arc::new(p.clone())),
                    account_of(role),
                ),
                None => (Some(self.policy.clone()), ACCOUNT.to_string()),
            }
        };
        let place = Place {
            region: region.clone(),
            account,
            ..Place::default()
        };
        let ecr_op = target
            .strip_prefix("AmazonEC2ContainerRegistry_V20150921.")
            .map(str::to_string);
        if let Some(op) = &ecr_op {
            remember_exclusions(op, &serde_json::from_slice(&body).unwrap_or_default());
        }
        // DynamoDB is counted, not gated: the template names its table by
        // `!GetAtt`, which the policy evaluator leaves unresolved.
        if let Some(op) = target.strip_prefix("DynamoDB_20120810.") {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let table = v["TableName"].as_str().map(str::to_string).or_else(|| {
                let items = v.get("RequestItems")?.as_object()?;
                items.keys().next().cloned()
            });
            self.calls.lock().unwrap().push(Call {
                action: format!("dynamodb:{op}"),
                resource: table.unwrap_or_default(),
                role: policy
                    .as_ref()
                    .map_or("unknown", |p| p.role.as_str())
                    .to_string(),
                allowed: true,
            });
        }
        let mut assumed_role = None;
        if let Some(asked) = asked(&target, &body, &place) {
            let allowed = policy
                .as_ref()
                .is_some_and(|p| p.allows_in(&asked.action, &asked.resource, &region))
                && self.trusted(&asked);
            let role = policy.as_ref().map_or("unknown", |p| p.role.as_str());
            self.calls.lock().unwrap().push(Call {
                action: asked.action.clone(),
                resource: asked.resource.clone(),
                role: role.to_string(),
                allowed,
            });
            if !allowed {
                return Ok(refusal(&asked, role, &place));
            }
            if asked.action == "sts:AssumeRole" {
                assumed_role = Some(asked.resource);
            }
        }
        let images = self.images.lock().unwrap().clone();
        if ecr_op.as_deref() == Some("DescribeImages")
            && let Some(source) = images
        {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v.get("imageIds").is_some() {
                let answer = crate::images::describe(
                    &self.http,
                    &source,
                    &self.moto,
                    &region,
                    &place.account,
                    &v,
                );
                return Ok(answer.await);
            }
        }
        let url = format!(
            "{}{}",
            self.moto,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        // The body was read whole: reqwest sets its length.
        let out = upstream_request(&self.http, &parts, url, &["content-length"])?;
        let upstream = out.body(body).send().await.map_err(std::io::Error::other)?;
        let mut builder = Response::builder().status(upstream.status().as_u16());
        for (k, v) in upstream.headers() {
            if matches!(
                k.as_str(),
                "transfer-encoding" | "connection" | "content-length"
            ) {
                continue;
            }
            builder = builder.header(k, v);
        }
        let mut bytes = upstream.bytes().await.map_err(std::io::Error::other)?;
        if ecr_op.as_deref() == Some("DescribeRepositories") {
            bytes = restore_exclusions(&bytes);
        }
        if let Some(role) = assumed_role
            && let Some(key) = between(&String::from_utf8_lossy(&bytes), "<AccessKeyId>", "</")
        {
            self.ids.lock().unwrap().keys.insert(key, role);
        }
        builder = builder.header("content-length", bytes.len());
        Ok(builder
            .body(
                Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("relayed parts are valid"))
    }
}

impl Gate {
    /// For `AssumeRole`: the role trusts the caller, which STS decides by
    /// the role's trust policy (here: a role the test named, with its
    /// external id if it asks for one).
    fn trusted(&self, asked: &Asked) -> bool {
        if asked.action != "sts:AssumeRole" {
            return true;
        }
        let ids = self.ids.lock().unwrap();
        match ids.assumable.get(&asked.resource) {
            Some((_, None)) => true,
            Some((_, Some(want))) => asked.external_id.as_deref() == Some(want.as_str()),
            None => false,
        }
    }
}

/// The access key id and region of a SigV4 `Authorization` header.
fn signer(authorization: &str) -> (String, String) {
    let scope = between(authorization, "Credential=", ",").unwrap_or_default();
    let mut parts = scope.split('/');
    let key = parts.next().unwrap_or_default().to_string();
    let region = parts.nth(1).unwrap_or(REGION).to_string();
    (key, region)
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(text[from..from + len].to_string())
}

/// The account of a role ARN (`arn:aws:iam::ACCOUNT:role/name`).
fn account_of(role_arn: &str) -> String {
    role_arn.split(':').nth(4).unwrap_or(ACCOUNT).to_string()
}

/// The action and resource a request asks for, where the gate checks it.
fn asked(target: &str, body: &[u8], place: &Place) -> Option<Asked> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let json = |action: String, resource: String| Asked {
        action,
        resource,
        xml: false,
        external_id: None,
    };
    if let Some(op) = target.strip_prefix("AmazonEC2ContainerRegistry_V20150921.") {
        // Repository-level actions name their repository; the others are `*`.
        // Listing every repository is checked against `repository/*`.
        let resource = match v.get("repositoryName").and_then(|r| r.as_str()) {
            Some(r) => Policy::repository_arn_in(place, r),
            None if op == "DescribeRepositories" => {
                Policy::repository_arn_in(place, v["repositoryNames"][0].as_str().unwrap_or("*"))
            }
            None => "*".to_string(),
        };
        return Some(json(format!("ecr:{op}"), resource));
    }
    match target {
        "AmazonSSM.GetParameter" => {
            let name = v["Name"].as_str().unwrap_or_default();
            let slash = if name.starts_with('/') { "" } else { "/" };
            let arn = format!(
                "arn:{}:ssm:{}:{}:parameter{slash}{name}",
                place.partition, place.region, place.account
            );
            return Some(json("ssm:GetParameter".into(), arn));
        }
        "secretsmanager.GetSecretValue" => {
            let id = v["SecretId"].as_str().unwrap_or_default().to_string();
            return Some(json("secretsmanager:GetSecretValue".into(), id));
        }
        _ => {}
    }
    // The query protocol: a form body.
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    if form.get("Action").map(String::as_str) == Some("AssumeRole") {
        return Some(Asked {
            action: "sts:AssumeRole".into(),
            resource: form.get("RoleArn").cloned().unwrap_or_default(),
            xml: true,
            external_id: form.get("ExternalId").cloned(),
        });
    }
    None
}

/// The refusal AWS sends for a call no policy allows.
fn refusal(asked: &Asked, role: &str, place: &Place) -> Response<Body> {
    let message = format!(
        "User: arn:aws:sts::{account}:assumed-role/{role}/mirrorfleet is not authorized to perform: \
         {action} on resource: {resource} because no identity-based policy allows the {action} action",
        account = place.account,
        action = asked.action,
        resource = asked.resource,
    );
    if asked.xml {
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>AccessDenied</Code><Message>{message}</Message></Error>\
             <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
        );
        return Response::builder()
            .status(403)
            .header("content-type", "text/xml")
            .header("content-length", body.len())
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("a refusal is a valid response");
    }
    json(
        400,
        &[("x-amzn-errortype", "AccessDeniedException")],
        serde_json::json!({"__type": "AccessDeniedException", "message": message}).to_string(),
    )
}

/// Exclusion filters seen created, by repository, for every gate of the process.
static EXCLUSIONS: Mutex<BTreeMap<String, serde_json::Value>> = Mutex::new(BTreeMap::new());

fn remember_exclusions(op: &str, request: &serde_json::Value) {
    if !matches!(op, "CreateRepository" | "PutImageTagMutability") {
        return;
    }
    if let (Some(repo), Some(filters)) = (
        request["repositoryName"].as_str(),
        request.get("imageTagMutabilityExclusionFilters"),
    ) {
        EXCLUSIONS
            .lock()
            .unwrap()
            .insert(repo.to_string(), filters.clone());
    }
}

/// Record filters for a repository created straight in moto by a test.
pub fn note_exclusions(repo: &str, filters: &[&str]) {
    let list: Vec<serde_json::Value> = filters
        .iter()
        .map(|f| serde_json::json!({"filterType": "WILDCARD", "filter": f}))
        .collect();
    EXCLUSIONS
        .lock()
        .unwrap()
        .insert(repo.to_string(), serde_json::Value::Array(list));
}

fn restore_exclusions(body: &Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.clone();
    };
    let known = EXCLUSIONS.lock().unwrap().clone();
    if let Some(repos) = v["repositories"].as_array_mut() {
        for r in repos {
            let name = r["repositoryName"].as_str().unwrap_or_default().to_string();
            if r.get("imageTagMutabilityExclusionFilters").is_none()
                && let Some(f) = known.get(&name)
            {
                r["imageTagMutabilityExclusionFilters"] = f.clone();
            }
        }
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}
