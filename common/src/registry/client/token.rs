//! The auth handshake: the registry's challenge, bearer tokens per scope
//! (cached until `expires_in`), basic credentials, and ECR's tokens.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use url::Url;

use crate::error::{Error, Result};
use crate::registry::auth::{Challenge, Credentials, Token, TokenResponse};
use crate::retry::{self, Backoff, Class};

use super::send::is_transient;
use super::{CredentialSource, Registry, Scope};

impl Registry {
    pub(super) async fn credentials(&self) -> Result<Credentials> {
        match &self.creds {
            CredentialSource::Static(c) => Ok(c.clone()),
            CredentialSource::Ecr { host, access } => {
                Ok(self.ecr.credentials(host, access).await?)
            }
            CredentialSource::Secret { id, secrets } => Ok(secrets
                .credentials(id, &self.host)
                .await
                .map_err(crate::registry::settings::SettingsError::from)?),
        }
    }

    pub(super) fn known_challenge(&self) -> Option<Challenge> {
        self.challenge
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub(super) fn learn_challenge(&self, headers: &HeaderMap) {
        if let Some(c) = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Challenge::parse)
        {
            match self.challenge.lock() {
                Ok(mut g) => *g = Some(c),
                Err(poisoned) => *poisoned.into_inner() = Some(c),
            }
        }
    }

    /// The Authorization header for `scope`, if the registry asked for one.
    pub(super) async fn authorization(&self, scope: &Scope, force: bool) -> Result<Auth> {
        match self.known_challenge() {
            None => Ok(Auth::default()),
            Some(Challenge::Basic) => {
                let creds = self.credentials().await?;
                Ok(Auth {
                    header: creds.basic_header(),
                    ecr: matches!(self.creds, CredentialSource::Ecr { .. }).then_some(creds),
                    bearer: false,
                })
            }
            Some(Challenge::Bearer { realm, service }) => {
                let key = scope.key();
                let mut tokens = self.tokens.lock().await;
                if !force && let Some(t) = tokens.get(&key).filter(|t| t.fresh()) {
                    return Ok(Auth::bearer(format!("Bearer {}", t.value.expose())));
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                let header = format!("Bearer {}", token.value.expose());
                tokens.insert(key, token);
                Ok(Auth::bearer(header))
            }
        }
    }

    pub(super) async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<Token> {
        self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
        let auth_err = |message: String| Error::Auth {
            registry: self.host.clone(),
            message,
        };
        let mut url = Url::parse(realm)
            .map_err(|_| auth_err(format!("its token service address {realm:?} is not a URL")))?;
        let creds = self.credentials().await?;
        let mut backoff = Backoff::default();
        loop {
            let req = match &creds {
                Credentials::IdentityToken(tok) => {
                    // OAuth2 refresh-token grant, as Docker does for identity tokens.
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", tok.expose())
                        .append_pair("client_id", "mirrorfleet")
                        .append_pair("scope", &scope.params().join(" "));
                    if let Some(s) = service {
                        form.append_pair("service", s);
                    }
                    self.http
                        .post(url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(form.finish())
                }
                other => {
                    url.query_pairs_mut().clear();
                    {
                        let mut q = url.query_pairs_mut();
                        if let Some(s) = service {
                            q.append_pair("service", s);
                        }
                        for p in scope.params() {
                            q.append_pair("scope", &p);
                        }
                    }
                    let mut r = self.http.get(url.clone());
                    if let Some(h) = other.basic_header() {
                        r = r.header(AUTHORIZATION, h);
                    }
                    r
                }
            };
            let result = req.send().await;
            let busy = match &result {
                Ok(resp) => retry::classify(resp.status()) == Class::Retry,
                Err(e) => is_transient(e),
            };
            if busy && backoff.wait(None).await {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(registry = %self.host, attempt = backoff.attempt(), "token service busy; retried");
                continue;
            }
            let resp = result.map_err(|e| {
                auth_err(format!(
                    "its token service is unreachable: {}",
                    crate::error::error_line(&e)
                ))
            })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(auth_err(format!(
                    "the token service refused {} (HTTP {}); check the username and password",
                    creds.describe(),
                    status.as_u16()
                )));
            }
            if !status.is_success() {
                return Err(auth_err(format!(
                    "the token service answered HTTP {}",
                    status.as_u16()
                )));
            }
            let body: TokenResponse = resp
                .json()
                .await
                .map_err(|e| auth_err(format!("the token service's answer is not JSON: {e}")))?;
            return body
                .into_token()
                .ok_or_else(|| auth_err("the token service returned no token".into()));
        }
    }

    /// Drop the ECR token a refused request carried. A request sent before
    /// the registry's challenge was known carried none, and must not throw
    /// away the token the other requests share.
    /// A secret's credentials were refused: read the secret again next time
    /// (it may have been rotated).
    pub(super) async fn invalidate_credentials(&self, auth: &Auth) {
        match (&self.creds, &auth.ecr) {
            (CredentialSource::Ecr { host, access }, Some(used)) => {
                self.ecr.invalidate(host, access, used).await;
            }
            (CredentialSource::Secret { id, secrets }, _) => secrets.forget(id).await,
            _ => {}
        }
    }
}

/// The credentials one request carried.
#[derive(Debug, Default)]
pub(super) struct Auth {
    pub(super) header: Option<String>,
    /// The ECR token in `header`, so only its refusal invalidates it.
    pub(super) ecr: Option<Credentials>,
    /// A bearer token issued for the request's scope.
    pub(super) bearer: bool,
}

impl Auth {
    pub(super) fn bearer(header: String) -> Auth {
        Auth {
            header: Some(header),
            ecr: None,
            bearer: true,
        }
    }
}

/// Whether a 401's challenge says the token lacks the scope
/// (`error="insufficient_scope"`), rather than that the login is bad.
pub(super) fn insufficient_scope(h: &HeaderMap) -> bool {
    h.get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("insufficient_scope"))
}
