//! A blob download in progress, shared by every request for that blob on this node.
//!
//! The engine reports which byte ranges of its output file are verified and written; a
//! request streams the file in order, waiting for the next range to land. The download
//! runs on its own task, so a client that goes away does not stop it.

use std::{fs::File, ops::Range, os::unix::fs::FileExt, sync::Arc};

use bytes::Bytes;
use dfget::{Progress, Via};
use tokio::sync::watch;

/// Why a download ended without the blob, as the HTTP answer it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Status for the client.
    pub status: u16,
    /// OCI error code.
    pub code: &'static str,
    /// Reason.
    pub message: String,
}

/// What readers see.
#[derive(Debug, Clone, Default)]
pub struct FlightState {
    /// The file being written, once the size is known.
    pub file: Option<Arc<File>>,
    /// Blob size, once known.
    pub total: Option<u64>,
    /// Verified byte ranges of `file`, sorted and merged.
    pub covered: Vec<Range<u64>>,
    /// Set when the download has ended: `Ok` as soon as the blob is whole and verified.
    pub outcome: Option<Result<(), Failure>>,
    /// The download has ended and the node cache has taken (or failed to take) the blob.
    pub settled: bool,
    /// The way the download takes, once decided (before `total` is set).
    pub via: Option<Via>,
}

impl FlightState {
    /// End of the verified run starting at `pos` (`pos` itself if nothing is there yet).
    pub fn available_from(&self, pos: u64) -> u64 {
        self.covered
            .iter()
            .find(|r| r.start <= pos && pos < r.end)
            .map_or(pos, |r| r.end)
    }

    fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        self.covered.push(range);
        self.covered.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.covered.len());
        for r in self.covered.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.covered = merged;
    }
}

/// One download; readers subscribe to its state.
#[derive(Debug)]
pub struct Flight {
    state: watch::Sender<FlightState>,
    /// Ranges readers started waiting for, not yet handed to the engine.
    urgent: parking_lot::Mutex<Vec<Range<u64>>>,
}

impl Default for Flight {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(FlightState::default()),
            urgent: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

impl Flight {
    /// A new receiver of the state.
    pub fn subscribe(&self) -> watch::Receiver<FlightState> {
        self.state.subscribe()
    }

    /// A reader needs bytes `range` now (a Range request): if they are not all verified yet,
    /// the download fetches their pieces before any other.
    pub fn want(&self, range: Range<u64>) {
        let missing = {
            let s = self.state.borrow();
            s.outcome.is_none() && s.available_from(range.start) < range.end
        };
        if missing {
            self.urgent.lock().push(range);
        }
    }

    /// Records the end of the download.
    pub fn finish(&self, outcome: Result<(), Failure>) {
        self.state.send_modify(|s| {
            s.outcome = Some(outcome);
            s.settled = true;
        });
    }

    /// The blob is whole and verified: readers may send its last bytes. The flight is not
    /// [`FlightState::settled`] until [`Flight::finish`] (after the node cache took it).
    pub fn release(&self) {
        self.state.send_modify(|s| s.outcome = Some(Ok(())));
    }
}

impl Progress for Flight {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}

    fn via(&self, via: &Via) {
        self.state.send_modify(|s| s.via = Some(via.clone()));
    }

    fn started(&self, file: &Arc<File>, total: u64) {
        self.state.send_modify(|s| {
            s.file = Some(file.clone());
            s.total = Some(total);
            s.covered.clear();
        });
    }

    fn written(&self, range: Range<u64>) {
        self.state.send_modify(|s| s.insert(range));
    }

    fn take_urgent(&self) -> Vec<Range<u64>> {
        std::mem::take(&mut *self.urgent.lock())
    }
}

/// Largest chunk one read hands to the client.
const CHUNK: u64 = 1 << 20;

/// Streams bytes `range` of the flight's blob in order, as they become available. With
/// `whole` (a response of the whole blob, not a Range), the blob's last byte waits for the
/// whole-blob check.
pub fn stream(
    rx: watch::Receiver<FlightState>,
    range: Range<u64>,
    whole: bool,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold((rx, range.start), move |(mut rx, pos)| {
        let end = range.end;
        async move {
            if pos >= end {
                return Ok(None);
            }
            loop {
                let (file, avail, outcome) = {
                    let s = rx.borrow_and_update();
                    let avail = match s.outcome {
                        // Complete: every byte is there.
                        Some(Ok(())) => s.total.unwrap_or(end),
                        // Every piece is checked as it lands, but the blob as a whole only
                        // at the end: a whole-blob response's last byte waits for that, so
                        // no runtime ever gets a complete blob that does not match its
                        // digest. (A Range reader, a lazy mount reading a file's tail,
                        // gets verified pieces at once and checks its chunks itself.)
                        _ if whole => {
                            let run = s.available_from(pos);
                            s.total.map_or(run, |t| run.min(t.saturating_sub(1)))
                        }
                        _ => s.available_from(pos),
                    };
                    (s.file.clone(), avail, s.outcome.clone())
                };
                if avail > pos
                    && let Some(file) = file
                {
                    let len = (avail.min(end) - pos).min(CHUNK);
                    let data = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len as usize];
                        file.read_exact_at(&mut buf, pos).map(|()| buf)
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    return Ok(Some((Bytes::from(data), (rx, pos + len))));
                }
                if let Some(Err(f)) = outcome {
                    return Err(std::io::Error::other(format!(
                        "download failed mid-stream: {}",
                        f.message
                    )));
                }
                if rx.changed().await.is_err() {
                    return Err(std::io::Error::other("download abandoned"));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    #[test]
    fn ranges_merge_and_runs_are_found() {
        let mut s = FlightState::default();
        s.insert(10..20);
        s.insert(0..5);
        assert_eq!(s.available_from(0), 5);
        assert_eq!(s.available_from(5), 5);
        s.insert(5..10);
        assert_eq!(s.covered, vec![0..20]);
        assert_eq!(s.available_from(3), 20);
        s.insert(30..40);
        assert_eq!(s.available_from(20), 20);
        assert_eq!(s.available_from(35), 40);
    }

    #[tokio::test]
    async fn a_reader_gets_bytes_in_order_as_pieces_land_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let content: Vec<u8> = (0..100u8).collect();
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        file.set_len(100).unwrap();
        let flight = Arc::new(Flight::default());
        let reader = tokio::spawn({
            let rx = flight.subscribe();
            async move {
                let mut out = Vec::new();
                let mut s = std::pin::pin!(stream(rx, 10..90, false));
                while let Some(chunk) = s.next().await {
                    out.extend_from_slice(&chunk.unwrap());
                }
                out
            }
        });
        flight.started(&file, 100);
        for r in [50..100, 0..25, 25..50] {
            file.write_all_at(&content[r.start as usize..r.end as usize], r.start)
                .unwrap();
            flight.written(r);
            tokio::task::yield_now().await;
        }
        flight.finish(Ok(()));
        assert_eq!(reader.await.unwrap(), &content[10..90]);
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_the_whole_blob_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, [7u8; 64]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        for verdict in [true, false] {
            let flight = Arc::new(Flight::default());
            flight.started(&file, 64);
            // Every byte written and its piece verified, the whole blob not yet checked.
            flight.written(0..64);
            let mut s = Box::pin(stream(flight.subscribe(), 0..64, true));
            let first = s.next().await.unwrap().unwrap();
            assert_eq!(first.len(), 63, "all but the last byte");
            let held = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
            assert!(held.is_err(), "the last byte went out before the check");
            // A Range reader of the same bytes is not held back.
            let mut ranged = Box::pin(stream(flight.subscribe(), 0..64, false));
            assert_eq!(ranged.next().await.unwrap().unwrap().len(), 64);
            if verdict {
                flight.release();
                assert_eq!(s.next().await.unwrap().unwrap().len(), 1);
                assert!(s.next().await.is_none());
            } else {
                flight.finish(Err(Failure {
                    status: 502,
                    code: "DIGEST",
                    message: "blob does not match its digest".into(),
                }));
                let err = s.next().await.unwrap().unwrap_err();
                assert!(err.to_string().contains("digest"), "{err}");
            }
        }
    }

    #[tokio::test]
    async fn a_failed_download_ends_the_stream_with_an_error() {
        let flight = Flight::default();
        let rx = flight.subscribe();
        flight.finish(Err(Failure {
            status: 502,
            code: "UNAVAILABLE",
            message: "peers gone".into(),
        }));
        let mut s = std::pin::pin!(stream(rx, 0..10, true));
        let err = s.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("peers gone"), "{err}");
    }
}
