//! A recording HTTP proxy in front of a server (a registry): every request's method, target
//! and `Authorization` header are kept, so a test can say what that server was sent —
//! whose credentials it saw, which blobs it was asked for.

use std::{
    io::{BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, PoisonError},
    thread,
};

use crate::stub_http::RequestHead;

/// One request the proxy passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<String>,
}

/// A running recording proxy on a loopback port; it lives as long as the test process.
#[derive(Debug, Clone)]
pub struct RecordingProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl RecordingProxy {
    /// Starts a proxy forwarding every request to `upstream`, one request per connection
    /// (it asks the upstream to close after answering and passes the answer on as it is).
    ///
    /// # Panics
    /// Binding a loopback port fails.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                thread::spawn(move || {
                    let _ = forward(conn, upstream, &log);
                });
            }
        });
        Self { addr, seen }
    }

    /// `host:port`, as a registry is named in `?ns=`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests whose `Authorization` is HTTP Basic for `user` (any password).
    pub fn requests_by(&self, user: &str) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.basic_user().as_deref() == Some(user))
            .collect()
    }
}

impl SeenRequest {
    /// The user name of a Basic `Authorization`, if that is what it carried.
    pub fn basic_user(&self) -> Option<String> {
        use base64::Engine as _;
        let encoded = self.authorization.as_deref()?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':').map(|(user, _)| user.to_owned())
    }
}

fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    log: &Mutex<Vec<SeenRequest>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(request) = RequestHead::read(&mut reader)? else {
        return Ok(());
    };
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    let authorization = request.header("authorization").map(str::to_owned);
    let body_len: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let RequestHead { method, target, .. } = request;
    head.push_str("Connection: close\r\n\r\n");
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(SeenRequest {
            method,
            target,
            authorization,
        });
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(head.as_bytes())?;
    let mut body = vec![0; body_len];
    reader.read_exact(&mut body)?;
    up.write_all(&body)?;
    let mut client = client;
    std::io::copy(&mut up, &mut client)?;
    client.shutdown(std::net::Shutdown::Both)
}
