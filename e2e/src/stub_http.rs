//! The one HTTP/1.1 request-head reader of the harness's stub servers (the faulty origin,
//! the lying server, the token server, the recording proxy), so each reads requests alike.

use std::io::{self, BufRead};

/// The head of one request: request line and headers, up to the blank line.
#[derive(Clone, Debug)]
pub(crate) struct RequestHead {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// Header names as sent and values trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Reads one head from `reader`: `Ok(None)` when the connection ends before the blank
    /// line (a client that closed between requests, or gave up mid-head).
    pub(crate) fn read(reader: &mut impl BufRead) -> io::Result<Option<Self>> {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(None);
            }
            if h.trim().is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h.as_str(), ""));
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Some(Self {
            method,
            target,
            headers,
        }))
    }

    /// The value of the first header called `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heads_one_after_another_and_stops_at_a_cut() {
        let wire = "GET /v2/a?x=1 HTTP/1.1\r\nHost: h\r\nRange:  bytes=0-9 \r\n\r\n\
                    HEAD /b HTTP/1.1\r\nhost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n";
        let mut r = io::Cursor::new(wire.as_bytes());
        let first = RequestHead::read(&mut r).unwrap().unwrap();
        assert_eq!(
            (first.method.as_str(), first.target.as_str()),
            ("GET", "/v2/a?x=1")
        );
        assert_eq!(first.header("range"), Some("bytes=0-9"));
        assert_eq!(first.header("if-range"), None);
        let second = RequestHead::read(&mut r).unwrap().unwrap();
        assert_eq!(second.method, "HEAD");
        assert_eq!(second.header("HOST"), Some("h"));
        assert!(RequestHead::read(&mut r).unwrap().is_none(), "cut mid-head");
        assert!(RequestHead::read(&mut r).unwrap().is_none(), "closed");
    }
}
