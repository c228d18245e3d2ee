//! The on-disk click spool: where clicks wait while the next hop is away
//! (click-logger: RabbitMQ unreachable or refusing; the gateway:
//! click-logger away and its in-memory buffer full). Append-only segment
//! files of length-prefixed protobuf records, fsync'd before an append
//! returns, bounded in total size, replayed oldest first. A segment is
//! deleted only after every record in it was accepted downstream, so a
//! crash during replay sends some clicks again (analytics dedupes by event
//! id) but never loses one.
//!
//! One process per directory: `open` takes an exclusive lock on a `.lock`
//! file in it, so two processes (or two gateways in one test process)
//! pointed at the same directory fail at start-up instead of replaying and
//! deleting each other's segments.

use std::{
    io,
    path::{Path, PathBuf},
};

use prost::Message;
use shortfleet_proto::v1::ClickEvent;
use tokio::{fs, io::AsyncWriteExt, sync::Mutex};

/// A segment is closed for appends past this size, so replay can start on it.
const SEGMENT_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
    #[error("spool I/O failed: {0}")]
    Io(#[from] io::Error),
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Held open for the spool's life: the lock on it is the directory's
    /// ownership (released by the OS when the process dies).
    _lock: std::fs::File,
}

/// The lock file's name; not a segment, so never replayed or counted.
const LOCK_FILE: &str = ".lock";

struct State {
    /// The segment being appended to, with its sequence number and size.
    open: Option<(u64, fs::File, u64)>,
    next_seq: u64,
    bytes: u64,
}

fn segment_name(seq: u64) -> String {
    format!("clicks-{seq:020}.spool")
}

fn segment_seq(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("clicks-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

/// Records of clicks already encoded: each a `u32` big-endian length, then
/// the click's protobuf bytes.
fn frame<'a>(bodies: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let mut out = Vec::with_capacity(bodies.clone().map(|b| 4 + b.len()).sum());
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Decodes records, returning them with the number of bytes left over. A
/// truncated tail (a crash mid-append, before the fsync that would have
/// acknowledged it) is left over, never an error.
pub fn decode(mut bytes: &[u8]) -> (Vec<ClickEvent>, usize) {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(body) = bytes.get(4..4 + len) else {
            break;
        };
        match ClickEvent::decode(body) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        bytes = &bytes[4 + len..];
    }
    (out, bytes.len())
}

impl Spool {
    pub async fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir).await?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another spool", dir.display()),
            ),
            std::fs::TryLockError::Error(e) => e,
        })?;
        // The bound beside the fill, so one alert fits every process's
        // configured bound.
        metrics::gauge!("shortfleet_spool_max_bytes").set(max_bytes as f64);
        let (mut bytes, mut last) = (0, 0);
        for path in segments(dir).await? {
            bytes += fs::metadata(&path).await?.len();
            last = last.max(segment_seq(&path).unwrap_or(0));
        }
        let spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State {
                open: None,
                next_seq: last + 1,
                bytes,
            }),
            _lock: lock,
        };
        spool.publish_gauge(bytes);
        Ok(spool)
    }

    pub async fn bytes(&self) -> u64 {
        self.state.lock().await.bytes
    }

    /// Appends a batch of clicks, each one `ClickEvent`'s bytes (read back
    /// as the events), durably (written and fsync'd) or not at all.
    pub async fn append<C: AsRef<[u8]>>(&self, clicks: &[C]) -> Result<(), SpoolError> {
        let record = frame(clicks.iter().map(AsRef::as_ref));
        self.append_records(&record, clicks.len()).await
    }

    async fn append_records(&self, record: &[u8], clicks: usize) -> Result<(), SpoolError> {
        let mut state = self.state.lock().await;
        if state.bytes + record.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full(state.bytes));
        }
        let state = &mut *state;
        let open = match state.open.take() {
            Some(open) if open.2 < SEGMENT_BYTES => open,
            _ => {
                let seq = state.next_seq;
                state.next_seq += 1;
                let file = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(segment_name(seq)))
                    .await?;
                (seq, file, 0)
            }
        };
        let (_, file, size) = state.open.insert(open);
        file.write_all(record).await?;
        file.sync_data().await?;
        *size += record.len() as u64;
        state.bytes += record.len() as u64;
        self.publish_gauge(state.bytes);
        metrics::counter!("shortfleet_clicks_spooled_total").increment(clicks as u64);
        Ok(())
    }

    /// The oldest segment with its events, closing the open one if it is the
    /// only one left. `None` when the spool is empty.
    pub async fn oldest(&self) -> io::Result<Option<(PathBuf, Vec<ClickEvent>)>> {
        let mut state = self.state.lock().await;
        let all = segments(&self.dir).await?;
        let Some(oldest) = all.first().cloned() else {
            return Ok(None);
        };
        if state
            .open
            .as_ref()
            .is_some_and(|(seq, _, _)| Some(*seq) == segment_seq(&oldest))
        {
            state.open = None;
        }
        drop(state);
        let bytes = fs::read(&oldest).await?;
        let (events, left_over) = decode(&bytes);
        if left_over > 0 {
            // Only an unacknowledged append (torn by a crash) or disk damage
            // leaves bytes behind; the segment is deleted after replay.
            tracing::warn!(
                segment = %oldest.display(),
                bytes = left_over,
                clicks = events.len(),
                "ignoring an undecodable spool tail"
            );
        }
        Ok(Some((oldest, events)))
    }

    /// Deletes a replayed segment.
    pub async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock().await;
        let len = fs::metadata(path).await.map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path).await?;
        state.bytes = state.bytes.saturating_sub(len);
        self.publish_gauge(state.bytes);
        Ok(())
    }

    fn publish_gauge(&self, bytes: u64) {
        metrics::gauge!("shortfleet_spool_bytes").set(bytes as f64);
    }
}

/// Segment files in replay order.
async fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir).await?;
    let mut found = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        if let Some(seq) = segment_seq(&path) {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_clicks_spooled_total",
        metrics::Unit::Count,
        "Clicks written to this process's on-disk spool."
    );
    metrics::describe_gauge!(
        "shortfleet_spool_bytes",
        metrics::Unit::Bytes,
        "Bytes in this process's on-disk click spool."
    );
    metrics::describe_gauge!(
        "shortfleet_spool_max_bytes",
        metrics::Unit::Bytes,
        "The bound of this process's on-disk click spool; past it clicks are refused (click-logger) or dropped and counted (gateway)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::EncodedClick;

    fn encoded(ids: &[u32]) -> Vec<EncodedClick> {
        ids.iter().map(|&i| EncodedClick::from(&event(i))).collect()
    }

    fn event(i: u32) -> ClickEvent {
        ClickEvent {
            event_id: format!("e{i}"),
            code: "abc1234".into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let events: Vec<_> = (0..3).map(event).collect();
        let mut bytes = frame(encoded(&[0, 1, 2]).iter().map(AsRef::as_ref));
        assert_eq!(decode(&bytes), (events.clone(), 0));
        bytes.truncate(bytes.len() - 2);
        let (decoded, left_over) = decode(&bytes);
        assert_eq!(decoded, events[..2].to_vec());
        assert!(left_over > 0);
    }

    #[tokio::test]
    async fn replays_oldest_first_and_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("sf-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, 1 << 20).await.unwrap();
        spool.append(&encoded(&[1, 2])).await.unwrap();
        spool.append(&encoded(&[3])).await.unwrap();
        assert!(spool.bytes().await > 0);
        // A restart finds what was spooled.
        assert!(
            Spool::open(&dir, 1 << 20).await.is_err(),
            "one spool per directory"
        );
        let bytes = spool.bytes().await;
        drop(spool);
        let reopened = Spool::open(&dir, 1 << 20).await.unwrap();
        assert_eq!(reopened.bytes().await, bytes);
        let (path, events) = reopened.oldest().await.unwrap().unwrap();
        assert_eq!(events, vec![event(1), event(2), event(3)]);
        reopened.remove(&path).await.unwrap();
        assert!(reopened.oldest().await.unwrap().is_none());
        assert_eq!(reopened.bytes().await, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn refuses_past_its_bound() {
        let dir = std::env::temp_dir().join(format!("sf-spool-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, 40).await.unwrap();
        spool.append(&encoded(&[1])).await.unwrap();
        assert!(matches!(
            spool.append(&encoded(&[2, 3, 4])).await,
            Err(SpoolError::Full(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
