//! Reading a blob ahead of the client.
//!
//! A blob response is a stream of chunks read from disk (and, for a cached blob, each piece
//! re-hashed). Polled directly by hyper, the next chunk is read only once the previous one is
//! handed to the socket, so reading and sending take turns and each waits for the other.
//! [`read_ahead`] moves the reading into its own task, a bounded number of chunks ahead, so
//! the two overlap (on two cores: one reads and hashes while the other sends).

use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;

/// Chunks read ahead of the one being sent (each a piece or 1 MiB at most).
pub(crate) const DEPTH: usize = 1;

/// Runs `stream` in its own task, up to `depth` items ahead of the consumer. The task stops
/// after the first error (which is passed on) or as soon as the consumer is dropped (the
/// client went away), even while it waits for the next item.
pub(crate) fn read_ahead<S, T, E>(
    stream: S,
    depth: usize,
) -> impl Stream<Item = Result<T, E>> + Send
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                item = stream.next() => item,
            };
            let Some(item) = item else { return };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_stop_after_an_error() {
        let items: Vec<Result<u32, &str>> = vec![Ok(1), Ok(2), Err("disk"), Ok(4)];
        let got: Vec<_> = read_ahead(futures::stream::iter(items), 1).collect().await;
        assert_eq!(got, vec![Ok(1), Ok(2), Err("disk")]);
    }

    #[tokio::test]
    async fn reads_at_most_depth_ahead_and_stops_when_dropped() {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let source = futures::stream::iter(0..1000).then(move |i| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(i)
            }
        });
        let mut s = Box::pin(read_ahead(source, 2));
        assert_eq!(s.next().await, Some(Ok(0)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // One taken, two in the channel, one waiting to be sent.
        let ahead = produced.load(Ordering::SeqCst);
        assert!((3..=4).contains(&ahead), "produced {ahead}");
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            produced.load(Ordering::SeqCst),
            ahead,
            "kept reading after the drop"
        );
    }

    #[tokio::test]
    async fn a_dropped_consumer_stops_a_producer_that_waits() {
        // A flight stream waiting for bytes that never come: the task must still end (and
        // free what the stream holds) once the client is gone.
        let held = Arc::new(());
        let inside = held.clone();
        let source = futures::stream::once(async move {
            let _inside = inside;
            futures::future::pending::<()>().await;
            Ok::<u32, ()>(0)
        });
        let s = Box::pin(read_ahead(source, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(Arc::strong_count(&held), 2);
        drop(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the reading task outlived its client"
        );
    }
}
