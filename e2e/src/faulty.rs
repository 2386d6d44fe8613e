//! [`FaultyOrigin`]: a stub registry for the origin faults a real registry cannot produce on
//! demand (a 503 or 429 with `Retry-After`, a body cut or stalled mid-way, a trickle). It
//! serves one blob at every path, like a registry's blob endpoint: `ETag`, `Range: bytes=N-`
//! and `If-Range` as distribution's registry answers them, and records every request.
//! [`FaultyOrigin::image`] also serves the rest of an image (manifest, config, other layers)
//! without faults, so a runtime can pull it while the largest layer meets the faults.

use std::{
    collections::VecDeque,
    io::{BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use crate::stub_http::RequestHead;
use crate::util::sha256_digest;

/// What the origin does to one GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (with an OCI error body) and this `Retry-After`, if any.
    Status {
        /// HTTP status.
        code: u16,
        /// `Retry-After` header value.
        retry_after: Option<String>,
    },
    /// Answer normally, send this many body bytes, then close the connection.
    CutAfter(u64),
    /// Answer normally, send this many body bytes, then send nothing while the client
    /// keeps the connection open.
    StallAfter(u64),
    /// Answer normally and send the body at this many bytes per second.
    Trickle(u64),
    /// Ignore `Range`: answer 200 with the whole body, as an origin without range support.
    IgnoreRange,
}

/// One request the origin received.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Request target.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `If-Range` header.
    pub if_range: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// A document served without faults at every path ending in `suffix`.
#[derive(Debug, Clone)]
struct Document {
    suffix: String,
    media_type: &'static str,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    documents: Vec<Document>,
    faults: VecDeque<Fault>,
    forever: Option<Fault>,
    requests: Vec<OriginRequest>,
    body_bytes: u64,
}

/// A stub origin serving one blob, with scripted faults for its GETs.
#[derive(Debug, Clone)]
pub struct FaultyOrigin {
    addr: SocketAddr,
    digest: String,
    state: Arc<Mutex<State>>,
}

impl FaultyOrigin {
    /// Serves `body`; the first GETs meet `faults` in order, later ones are served.
    ///
    /// # Panics
    /// Binding a loopback port fails.
    pub fn start(body: Vec<u8>, faults: Vec<Fault>) -> Self {
        Self::spawn(body, faults, None)
    }

    /// Serves `image` as `repo:tag` (and by manifest digest): its largest layer is the blob
    /// whose first GETs meet `faults` in order; the manifest, config and other layers are
    /// served as a registry serves them. Returns the origin and the faulted layer's digest.
    ///
    /// # Panics
    /// Binding a loopback port fails.
    pub fn image(
        repo: &str,
        tag: &str,
        image: &crate::TestImage,
        faults: Vec<Fault>,
    ) -> (Self, String) {
        let layers = image.layer_slices();
        let big = (0..layers.len())
            .max_by_key(|&i| layers[i].len())
            .expect("an image has layers");
        let manifest =
            crate::registry::image_manifest(&image.config, &layers).expect("serialising JSON");
        let origin = Self::start(layers[big].to_vec(), faults);
        let blob = |bytes: &[u8]| Document {
            suffix: format!("/v2/{repo}/blobs/{}", sha256_digest(bytes)),
            media_type: "application/octet-stream",
            bytes: bytes.to_vec(),
        };
        let mut documents = vec![blob(&image.config)];
        for (i, layer) in layers.iter().enumerate() {
            if i != big {
                documents.push(blob(layer));
            }
        }
        for reference in [tag.to_owned(), sha256_digest(&manifest)] {
            documents.push(Document {
                suffix: format!("/v2/{repo}/manifests/{reference}"),
                media_type: crate::registry::OCI_MANIFEST_MEDIA_TYPE,
                bytes: manifest.clone(),
            });
        }
        origin.lock().documents = documents;
        let digest = origin.digest.clone();
        (origin, digest)
    }

    /// Serves `body` to no GET: every one meets `fault`.
    ///
    /// # Panics
    /// Binding a loopback port fails.
    pub fn always(body: Vec<u8>, fault: Fault) -> Self {
        Self::spawn(body, Vec::new(), Some(fault))
    }

    fn spawn(body: Vec<u8>, faults: Vec<Fault>, forever: Option<Fault>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let origin = Self {
            addr,
            digest: sha256_digest(&body),
            state: Arc::new(Mutex::new(State {
                faults: faults.into(),
                forever,
                ..State::default()
            })),
        };
        let body = Arc::new(body);
        let server = origin.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (server, body) = (server.clone(), body.clone());
                thread::spawn(move || server.serve(conn, &body));
            }
        });
        origin
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The blob's URL in repository `repo` (`http://addr/v2/<repo>/blobs/<digest>`).
    pub fn blob_url(&self, repo: &str) -> String {
        format!("http://{}/v2/{repo}/blobs/{}", self.addr, self.digest)
    }

    /// The blob's digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.lock().requests.clone()
    }

    /// The GETs so far.
    pub fn gets(&self) -> Vec<OriginRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }

    /// Body bytes sent so far, over all responses.
    pub fn body_bytes_sent(&self) -> u64 {
        self.lock().body_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one connection (one request: every answer closes it).
    fn serve(&self, mut conn: TcpStream, body: &[u8]) {
        let Ok(clone) = conn.try_clone() else { return };
        let mut reader = BufReader::new(clone);
        let Ok(Some(head)) = RequestHead::read(&mut reader) else {
            return;
        };
        let range = head.header("range").map(str::to_owned);
        let if_range = head.header("if-range").map(str::to_owned);
        let (method, path) = (head.method, head.target);
        let (fault, document) = {
            let mut state = self.lock();
            state.requests.push(OriginRequest {
                method: method.clone(),
                path: path.clone(),
                range: range.clone(),
                if_range: if_range.clone(),
                at: Instant::now(),
            });
            let bare = path.split('?').next().unwrap_or_default();
            let document = state
                .documents
                .iter()
                .find(|d| bare.ends_with(&d.suffix))
                .cloned();
            let ping = bare == "/v2/" || bare == "/v2";
            if method == "GET" && document.is_none() && !ping {
                (
                    state.faults.pop_front().or_else(|| state.forever.clone()),
                    None,
                )
            } else if ping {
                (
                    None,
                    Some(Document {
                        suffix: String::new(),
                        media_type: "application/json",
                        bytes: b"{}".to_vec(),
                    }),
                )
            } else {
                (None, document)
            }
        };
        if let Some(doc) = document {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: {}\r\n\
                 Docker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                doc.bytes.len(),
                doc.media_type,
                sha256_digest(&doc.bytes)
            );
            if conn.write_all(head.as_bytes()).is_ok() && method != "HEAD" {
                let _ = conn.write_all(&doc.bytes);
            }
            return;
        }
        if let Some(Fault::Status { code, retry_after }) = &fault {
            let error =
                format!(r#"{{"errors":[{{"code":"UNAVAILABLE","message":"fault {code}"}}]}}"#);
            let retry_after = retry_after
                .as_ref()
                .map_or(String::new(), |v| format!("Retry-After: {v}\r\n"));
            let head = format!(
                "HTTP/1.1 {code} Fault\r\nContent-Type: application/json\r\n{retry_after}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                error.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(error.as_bytes());
            return;
        }
        let etag = format!("\"{}\"", self.digest);
        // `bytes=N-` (what a resume sends) and `bytes=N-M` are honoured unless If-Range
        // names another ETag (or the fault is to ignore them).
        let span = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(n, m)| {
                let n = n.parse::<usize>().ok()?;
                let m = if m.is_empty() {
                    body.len().checked_sub(1)?
                } else {
                    m.parse::<usize>().ok()?.min(body.len().checked_sub(1)?)
                };
                (n <= m).then_some((n, m))
            })
            .filter(|_| {
                if_range.as_ref().is_none_or(|v| *v == etag)
                    && !matches!(fault, Some(Fault::IgnoreRange))
            });
        let (status, part) = match span {
            Some((n, m)) => (
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {n}-{m}/{}",
                    body.len()
                ),
                &body[n..=m],
            ),
            None => ("200 OK".to_owned(), body),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
             ETag: {etag}\r\nDocker-Content-Digest: {}\r\nAccept-Ranges: bytes\r\n\
             Connection: close\r\n\r\n",
            part.len(),
            self.digest
        );
        if conn.write_all(head.as_bytes()).is_err() || method == "HEAD" {
            return;
        }
        let send = |conn: &mut TcpStream, bytes: &[u8]| {
            let ok = conn.write_all(bytes).is_ok();
            if ok {
                self.lock().body_bytes += bytes.len() as u64;
            }
            ok
        };
        match fault {
            Some(Fault::CutAfter(n)) => {
                let n = part.len().min(n as usize);
                send(&mut conn, &part[..n]);
                let _ = conn.flush();
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            Some(Fault::StallAfter(n)) => {
                let n = part.len().min(n as usize);
                send(&mut conn, &part[..n]);
                // Hold the connection open, silent, until the client gives up on it.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
                let mut sink = [0u8; 64];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            }
            Some(Fault::Trickle(rate)) => {
                // A tenth of the rate every 100 ms, until done or the client hangs up.
                let step = (rate / 10).max(1) as usize;
                for chunk in part.chunks(step) {
                    if !send(&mut conn, chunk) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
            Some(Fault::Status { .. } | Fault::IgnoreRange) | None => {
                send(&mut conn, part);
            }
        }
    }
}
