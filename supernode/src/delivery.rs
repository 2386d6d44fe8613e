//! A piece's bytes as a response body that says when the connection has taken the last of
//! them.
//!
//! The scheduler counts a seed piece against its budget of open offers while the piece is on
//! the supernode's uplink (`TaskScheduler::handle_seed_delivered`). The handler returns before
//! a byte is written, so the body itself reports: hyper takes it a chunk at a time, as its
//! write buffer drains into the socket, and drops it once it has taken the last chunk. A body
//! dropped before that (the connection closed) reports nothing.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// How much of the piece hyper takes at a time. Hyper asks for the next chunk only once its
/// write buffer (about 400 KiB) has room, so the report comes when at most about this much
/// plus that buffer and the kernel's socket buffer are still to go: a fraction of a 1-4 MiB
/// piece, against a report round trip after the whole piece has arrived.
pub const CHUNK: usize = 256 * 1024;

/// The response body of one piece; see the module docs.
pub struct DeliveryBody {
    rest: Bytes,
    on_taken: Option<Box<dyn FnOnce() + Send>>,
}

impl DeliveryBody {
    /// `data`, calling `on_taken` once the connection has taken all of it.
    pub fn new(data: Bytes, on_taken: impl FnOnce() + Send + 'static) -> Self {
        Self {
            rest: data,
            on_taken: Some(Box::new(on_taken)),
        }
    }

    fn report(&mut self) {
        if self.rest.is_empty()
            && let Some(f) = self.on_taken.take()
        {
            f();
        }
    }
}

impl http_body::Body for DeliveryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.report();
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(CHUNK);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

impl Drop for DeliveryBody {
    fn drop(&mut self) {
        self.report();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use http_body::Body;

    use super::*;

    async fn frame(body: &mut DeliveryBody) -> Option<Bytes> {
        futures::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|f| f.unwrap().into_data().unwrap())
    }

    fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            m.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test]
    async fn reports_once_after_the_last_chunk_is_taken() {
        let data = Bytes::from(vec![7u8; 2 * CHUNK + 5]);
        let (taken, f) = counter();
        let mut body = DeliveryBody::new(data.clone(), f);
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut got = Vec::new();
        while let Some(chunk) = frame(&mut body).await {
            assert_eq!(taken.load(Ordering::SeqCst), 0, "reported before the end");
            assert!(chunk.len() <= CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        drop(body);
        assert_eq!(taken.load(Ordering::SeqCst), 1, "reported twice");
    }

    #[tokio::test]
    async fn reports_when_dropped_after_the_last_chunk() {
        // hyper drops a body whose `is_end_stream` is true without asking for more.
        let (taken, f) = counter();
        let mut body = DeliveryBody::new(Bytes::from_static(b"abc"), f);
        assert_eq!(frame(&mut body).await, Some(Bytes::from_static(b"abc")));
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(taken.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_midway_reports_nothing() {
        let (taken, f) = counter();
        let mut body = DeliveryBody::new(Bytes::from(vec![1u8; CHUNK + 1]), f);
        assert!(frame(&mut body).await.is_some());
        drop(body);
        assert_eq!(taken.load(Ordering::SeqCst), 0);
    }
}
