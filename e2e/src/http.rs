//! A minimal synchronous HTTP client for tests.
//!
//! Built on async `reqwest` driven by a private current-thread runtime on a helper thread, so it
//! works the same from plain `#[test]`s and from inside `#[tokio::test]`s (where a blocking
//! client would panic). Proxies from the environment are ignored: everything is local.

use std::future::Future;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result};

pub use reqwest::Method;
pub use reqwest::header::HeaderMap;

/// A fully-read HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// A header value as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A request under construction: `http::Request::get(url).basic_auth("u", "p").send()?`.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    basic_auth: Option<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
    /// A CA (PEM) to trust on top of the built-in roots.
    ca_pem: Option<Vec<u8>>,
    /// Sign as a cluster member (`damselfly_common::control`) with this secret at send.
    signed_with: Option<String>,
    /// Connect from this local address (e.g. another loopback address, to play another host).
    local_address: Option<std::net::IpAddr>,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            basic_auth: None,
            body: None,
            timeout: Duration::from_secs(120),
            ca_pem: None,
            signed_with: None,
            local_address: None,
        }
    }

    /// Connects from `ip` (any of 127.0.0.0/8 plays another host on this machine).
    #[must_use]
    pub fn local_address(mut self, ip: std::net::IpAddr) -> Self {
        self.local_address = Some(ip);
        self
    }

    /// Signs the request as a member of the test cluster would (the control plane's
    /// `Authorization`, made with [`crate::TEST_CLUSTER_SECRET`]) when it is sent.
    #[must_use]
    pub fn signed(self) -> Self {
        self.signed_with_secret(crate::TEST_CLUSTER_SECRET)
    }

    /// Signs the request with the control key of `secret` when it is sent.
    #[must_use]
    pub fn signed_with_secret(mut self, secret: &str) -> Self {
        self.signed_with = Some(secret.to_owned());
        self
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::GET, url)
    }

    pub fn head(url: impl Into<String>) -> Self {
        Self::new(Method::HEAD, url)
    }

    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::POST, url)
    }

    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::PUT, url)
    }

    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Basic ...` when `credentials` is `Some`.
    #[must_use]
    pub fn basic_auth_opt(mut self, credentials: Option<(&str, &str)>) -> Self {
        self.basic_auth = credentials.map(|(user, pass)| (user.to_owned(), pass.to_owned()));
        self
    }

    #[must_use]
    pub fn basic_auth(self, user: &str, pass: &str) -> Self {
        self.basic_auth_opt(Some((user, pass)))
    }

    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Trusts the CA certificate(s) in `pem` too (for a service with a private CA).
    #[must_use]
    pub fn ca_pem(mut self, pem: Option<Vec<u8>>) -> Self {
        self.ca_pem = pem;
        self
    }

    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole body. Non-2xx statuses are not errors.
    pub fn send(self) -> Result<Response> {
        let description = format!("{} {}", self.method, self.url);
        let signature = match &self.signed_with {
            Some(secret) => {
                let key = damselfly_common::ControlKey::new(secret.as_bytes())?;
                let auth = key.sign_url(
                    self.method.as_str(),
                    &self.url,
                    self.body.as_deref().unwrap_or_default(),
                );
                Some(auth.context("signing: not a URL")?)
            }
            None => None,
        };
        block_on(async move {
            let mut builder = reqwest::Client::builder()
                .no_proxy()
                .timeout(self.timeout)
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .local_address(self.local_address);
            if let Some(pem) = &self.ca_pem {
                for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                    builder = builder.add_root_certificate(cert);
                }
            }
            let client = builder.build()?;
            let mut request = client.request(self.method, &self.url);
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            if let Some((user, pass)) = &self.basic_auth {
                request = request.basic_auth(user, Some(pass));
            }
            if let Some(auth) = &signature {
                request = request.header("authorization", auth);
            }
            if let Some(body) = self.body {
                request = request.body(body);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>(Response {
                status,
                headers,
                body,
            })
        })
        .with_context(|| description)
    }
}

/// `GET url`, optionally with Basic auth.
pub fn get(url: &str, basic_auth: Option<(&str, &str)>) -> Result<Response> {
    Request::get(url).basic_auth_opt(basic_auth).send()
}

/// Runs `future` to completion on a fresh current-thread runtime on a helper thread.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build a tokio runtime")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
