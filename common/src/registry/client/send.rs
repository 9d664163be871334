//! The one request path: auth, pacing, the concurrency limit, and retries
//! as [`crate::retry`] decides; statuses that remain become [`Error`]s.

use std::sync::atomic::Ordering;

use reqwest::header::AUTHORIZATION;
use reqwest::{Method, Response, StatusCode};

use crate::error::{Error, Result};
use crate::registry::auth::Credentials;
use crate::retry::{self, Backoff, Class};

use super::errors::{error_message, expired_token, read_error_text};
use super::token::insufficient_scope;
use super::{CredentialSource, Registry, Scope};

impl Registry {
    /// Send a request built by `build` (called again for each attempt), with
    /// auth, re-auth once on 401, and retries on transient failures. Returns
    /// 2xx, 3xx and 404 responses; other statuses become errors.
    pub(super) async fn send<F>(&self, scope: &Scope, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        self.send_via(&self.http, scope, build).await
    }

    /// [`Registry::send`] on `client` (the blob client, for blob bodies).
    pub(super) async fn send_via<F>(
        &self,
        client: &reqwest::Client,
        scope: &Scope,
        build: F,
    ) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let mut backoff = Backoff::default();
        let mut reauthed = false;
        let mut force_token = false;
        loop {
            // Every attempt counts against a quota, retries too, so each waits.
            let is_pull = match build(client).build() {
                Ok(r) if r.method() == Method::PUT && r.url().path().contains("/manifests/") => {
                    if let Some(b) = &self.manifest_puts {
                        b.take().await;
                    }
                    false
                }
                // Docker Hub counts manifest GETs as pulls; HEADs (which the
                // engine sends first) and blob GETs are free, so never slowed.
                Ok(r) if r.method() == Method::GET && r.url().path().contains("/manifests/") => {
                    self.pace_pull().await?;
                    true
                }
                _ => false,
            };
            let auth = self.authorization(scope, force_token).await?;
            force_token = false;
            let mut req = build(client);
            if let Some(a) = &auth.header {
                req = req.header(AUTHORIZATION, a);
            }
            let result = {
                let _permit = self.limit.acquire().await.ok_or(Error::Cancelled)?;
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let result = req.send().await;
                if let Ok(r) = &result {
                    self.note_pull_quota(r.headers());
                }
                match &result {
                    Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        self.limit.throttled();
                        tracing::debug!(registry = %self.host, limit = self.limit.limit(), "rate limited; fewer requests at once");
                    }
                    Ok(r) if r.status().is_success() => self.limit.succeeded(),
                    _ => {}
                }
                result
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) if is_transient(&e) && backoff.wait(None).await => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if e.is_timeout() {
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(registry = %self.host, error = %crate::error::error_line(&e), "transient error; retried");
                    continue;
                }
                Err(e) => return Err(self.transport_error(&e)),
            };
            let status = resp.status();
            match retry::classify(status) {
                Class::Success => return Ok(resp),
                Class::Final if status == StatusCode::NOT_FOUND => return Ok(resp),
                Class::Reauth if !reauthed => {
                    tracing::debug!(registry = %self.host, "credentials refused or expired; authenticating again");
                    reauthed = true;
                    force_token = true;
                    self.stats.reauths.fetch_add(1, Ordering::Relaxed);
                    self.learn_challenge(resp.headers());
                    self.invalidate_credentials(&auth).await;
                    continue;
                }
                Class::Reauth if auth.bearer && insufficient_scope(resp.headers()) => {
                    // A fresh token was issued and still refused for this
                    // repository: it is missing or private (Docker Hub
                    // answers so), not a bad login.
                    return Err(Error::RepositoryInaccessible {
                        registry: self.host.clone(),
                        repository: scope.repository().to_string(),
                        anonymous: matches!(
                            &self.creds,
                            CredentialSource::Static(Credentials::Anonymous)
                        ),
                    });
                }
                Class::Final if status == StatusCode::FORBIDDEN && !reauthed => {
                    let body = read_error_text(resp).await;
                    let (code, message) = error_message(&body);
                    if expired_token(code.as_deref(), &message) {
                        tracing::info!(registry = %self.host, "token expired; fetching a new one");
                        reauthed = true;
                        force_token = true;
                        self.stats.reauths.fetch_add(1, Ordering::Relaxed);
                        self.invalidate_credentials(&auth).await;
                        continue;
                    }
                    return Err(Error::Denied {
                        registry: self.host.clone(),
                        message,
                    });
                }
                Class::Retry => {
                    // A pull refused because the quota is used up: every
                    // retry would be refused too, until the window resets.
                    if is_pull
                        && status == StatusCode::TOO_MANY_REQUESTS
                        && let Some(e) = self.quota_exhausted()
                    {
                        return Err(e);
                    }
                    if backoff.wait(retry::retry_after(resp.headers())).await {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(registry = %self.host, status = status.as_u16(), "transient status; retried");
                        continue;
                    }
                    return Err(self.status_error(resp).await);
                }
                _ => return Err(self.status_error(resp).await),
            }
        }
    }

    pub(super) fn transport_error(&self, e: &reqwest::Error) -> Error {
        let mut message = crate::error::error_line(e);
        if !is_tls_failure(e) {
            return Error::Transport {
                registry: self.host.clone(),
                message,
            };
        }
        // rustls' words for an HTTP answer to a TLS hello.
        if message.contains("InvalidContentType") {
            message.push_str(
                " (the registry seems to speak plain HTTP; if it should, mark it with \
                 --plain-http or plain_http in the registry settings)",
            );
        }
        Error::Tls {
            registry: self.host.clone(),
            message,
        }
    }

    pub(super) async fn status_error(&self, resp: Response) -> Error {
        let status = resp.status();
        let body = read_error_text(resp).await;
        let (code, message) = error_message(&body);
        match status {
            StatusCode::UNAUTHORIZED => {
                let anonymous = matches!(
                    &self.creds,
                    CredentialSource::Static(Credentials::Anonymous)
                );
                Error::Auth {
                    registry: self.host.clone(),
                    message: if anonymous {
                        format!(
                            "the registry needs credentials and none were found ({message}); \
                             give them with --src-creds/--dest-creds, the registry settings file, \
                             or a Docker config login"
                        )
                    } else {
                        format!("the registry refused the credentials ({message})")
                    },
                }
            }
            StatusCode::FORBIDDEN => Error::Denied {
                registry: self.host.clone(),
                message,
            },
            _ => Error::Registry {
                registry: self.host.clone(),
                status: status.as_u16(),
                code,
                message,
            },
        }
    }
}

pub(super) fn is_transient(e: &reqwest::Error) -> bool {
    (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) && !is_tls_failure(e)
}

/// A refused certificate or a server that does not speak TLS: the same
/// again later, so not worth a retry.
pub(super) fn is_tls_failure(e: &reqwest::Error) -> bool {
    let chain = crate::error::error_line(e);
    e.is_connect()
        && (chain.contains("InvalidContentType")
            || chain.contains("certificate")
            || chain.contains("HandshakeFailure"))
}
