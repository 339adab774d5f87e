//! A collection's write journal: every write acknowledged through a served collection (an
//! upsert or a delete) is appended here and fsynced before it is applied to a generation, so a
//! write survives a crash of the process and reaches every later generation, whichever process
//! builds it and whenever it switches. The only module that reads or writes the journal's files.
//!
//! ```text
//! STORE/collections/NAME/journal/LOCK                       held (flock) by the one writer process
//! STORE/collections/NAME/journal/00000000000000000001.log   segment: records from seq 1
//! ```
//!
//! **Records.** Sequence numbers start at 1 and increase by one per write, across segments. A
//! record is `u32 LE payload length | u32 LE CRC-32 of the payload | payload`, the payload
//! `u64 LE seq | u32 LE header length | header JSON | f32 LE values of every vector`. A record
//! cut short by a crash can only be the last of the newest segment: the writer cuts it off when
//! it opens, readers stop before it (it was never acknowledged).
//!
//! **Watermarks.** Each generation records the last sequence number it has applied; opening it
//! applies the records after that. A build reads a generation's documents as its snapshot plus
//! the records after the snapshot's sequence number, and replays the records that arrive while
//! it runs into the new generation before it switches.
//!
//! **Segments** roll over at [`SEGMENT_BYTES`]; a build that commits a generation removes the
//! segments every record of which that generation already holds (never the newest).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::corpus::Document;
use crate::error::{IndexError, Result};
use crate::identity::ModelIdentity;
use crate::store::UpsertDocument;

/// A segment rolls over once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const LOCK_FILE: &str = "LOCK";
const SEGMENT_EXTENSION: &str = "log";

/// A vector of a journaled upsert: its space and the model that embedded it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JournalVector {
    pub space: String,
    pub fingerprint: String,
    pub values: Vec<f32>,
}

/// One acknowledged write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JournalOp {
    Upsert {
        document: Document,
        vectors: Vec<JournalVector>,
    },
    Delete {
        id: String,
    },
}

impl JournalOp {
    /// The journal entry of an upsert whose vectors are those of `spaces` (name → model).
    pub(crate) fn upsert(
        document: &Document,
        vectors: &[(String, Vec<f32>)],
        spaces: &BTreeMap<String, ModelIdentity>,
    ) -> Self {
        Self::Upsert {
            document: document.clone(),
            vectors: vectors
                .iter()
                .map(|(space, values)| JournalVector {
                    space: space.clone(),
                    fingerprint: spaces
                        .get(space)
                        .map(|m| m.fingerprint.clone())
                        .unwrap_or_default(),
                    values: values.clone(),
                })
                .collect(),
        }
    }

    /// The document id the write is about.
    #[cfg(test)]
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Upsert { document, .. } => &document.id,
            Self::Delete { id } => id,
        }
    }
}

/// A write and its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JournalRecord {
    pub seq: u64,
    pub op: JournalOp,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Header {
    Upsert {
        id: String,
        title: String,
        text: String,
        metadata: Map<String, Value>,
        /// (space, model fingerprint, dimension) of each vector, in payload order.
        vectors: Vec<(String, String, usize)>,
    },
    Delete {
        id: String,
    },
}

fn encode(seq: u64, op: &JournalOp) -> Vec<u8> {
    let (header, values): (Header, Vec<&[f32]>) = match op {
        JournalOp::Upsert { document, vectors } => (
            Header::Upsert {
                id: document.id.clone(),
                title: document.title.clone(),
                text: document.text.clone(),
                metadata: document.metadata.clone(),
                vectors: vectors
                    .iter()
                    .map(|v| (v.space.clone(), v.fingerprint.clone(), v.values.len()))
                    .collect(),
            },
            vectors.iter().map(|v| v.values.as_slice()).collect(),
        ),
        JournalOp::Delete { id } => (Header::Delete { id: id.clone() }, Vec::new()),
    };
    let header = serde_json::to_vec(&header).expect("journal header serializes");
    let floats: usize = values.iter().map(|v| v.len()).sum();
    let mut payload = Vec::with_capacity(12 + header.len() + floats * 4);
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header);
    for vector in values {
        for x in vector {
            payload.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

fn decode(payload: &[u8], what: &dyn Fn() -> String) -> Result<JournalRecord> {
    let corrupt = |reason: String| IndexError::CorruptRecord {
        what: what(),
        reason,
    };
    if payload.len() < 12 {
        return Err(corrupt(format!("record of {} bytes", payload.len())));
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let header_len = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")) as usize;
    let header_end = 12usize
        .checked_add(header_len)
        .filter(|&end| end <= payload.len())
        .ok_or_else(|| corrupt(format!("header of {header_len} bytes overruns the record")))?;
    let header: Header = serde_json::from_slice(&payload[12..header_end])
        .map_err(|e| corrupt(format!("record {seq}: {e}")))?;
    let op = match header {
        Header::Delete { id } => JournalOp::Delete { id },
        Header::Upsert {
            id,
            title,
            text,
            metadata,
            vectors,
        } => {
            let mut floats = payload[header_end..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
            let expected: usize = vectors.iter().map(|(_, _, dim)| dim).sum();
            if payload.len() - header_end != expected * 4 {
                return Err(corrupt(format!(
                    "record {seq}: {} bytes of vectors, expected {}",
                    payload.len() - header_end,
                    expected * 4
                )));
            }
            let vectors = vectors
                .into_iter()
                .map(|(space, fingerprint, dim)| JournalVector {
                    space,
                    fingerprint,
                    values: floats.by_ref().take(dim).collect(),
                })
                .collect();
            JournalOp::Upsert {
                document: Document {
                    id,
                    title,
                    text,
                    metadata,
                },
                vectors,
            }
        }
    };
    Ok(JournalRecord { seq, op })
}

/// Segments of a journal directory, ascending by their first sequence number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(IndexError::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| IndexError::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXTENSION) {
            continue;
        }
        if let Some(first) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.{SEGMENT_EXTENSION}"))
}

/// The records of one segment and the length of its valid prefix. A record cut short (or
/// failing its checksum) at the end is tolerated where `newest` (the writer may be appending,
/// or crashed while appending); anywhere else it is corruption.
fn read_segment(path: &Path, first: u64, newest: bool) -> Result<(Vec<JournalRecord>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| IndexError::io(path, e))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut expected = first;
    while offset < bytes.len() {
        let what = || format!("journal {} at byte {offset}", path.display());
        let rest = &bytes[offset..];
        let complete = rest.len() >= 8 && {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            rest.len() - 8 >= len
                && crc32fast::hash(&rest[8..8 + len])
                    == u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"))
        };
        if !complete {
            if newest {
                break;
            }
            return Err(IndexError::CorruptRecord {
                what: what(),
                reason: "a record is cut short or fails its checksum".into(),
            });
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let record = decode(&rest[8..8 + len], &what)?;
        if record.seq != expected {
            return Err(IndexError::CorruptRecord {
                what: what(),
                reason: format!("sequence number {}, expected {expected}", record.seq),
            });
        }
        expected += 1;
        records.push(record);
        offset += 8 + len;
    }
    Ok((records, offset as u64))
}

/// Records after a sequence number, and the last sequence number of the journal.
#[derive(Debug, Default)]
pub(crate) struct JournalTail {
    pub records: Vec<JournalRecord>,
    pub last_seq: u64,
}

/// Every complete record of the journal in `dir` with a sequence number above `after` (a
/// missing journal has none). Fails when records after `after` were already removed (the
/// reader is a generation that is no longer current).
pub(crate) fn read_after(dir: &Path, after: u64) -> Result<JournalTail> {
    let segments = segments(dir)?;
    let mut tail = JournalTail {
        records: Vec::new(),
        last_seq: after,
    };
    let Some((oldest, _)) = segments.first() else {
        return Ok(tail);
    };
    if *oldest > after + 1 {
        return Err(IndexError::Superseded {
            what: format!(
                "journal {}: records {}..{} were removed",
                dir.display(),
                after + 1,
                oldest - 1
            ),
        });
    }
    for (i, (first, path)) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map(|(n, _)| *n);
        if next_first.is_some_and(|n| n <= after + 1) {
            continue;
        }
        let (records, _) = read_segment(path, *first, next_first.is_none())?;
        tail.last_seq = records.last().map_or(first.saturating_sub(1), |r| r.seq);
        tail.records
            .extend(records.into_iter().filter(|r| r.seq > after));
    }
    tail.last_seq = tail.last_seq.max(after);
    Ok(tail)
}

/// Segments a served generation lets pile up before it writes a fresh snapshot of itself and
/// removes them (see `Collection`'s journal checkpoint): about 64 MiB of writes.
pub const CHECKPOINT_SEGMENTS: usize = 4;

/// How many segment files the journal in `dir` has.
pub(crate) fn segment_count(dir: &Path) -> Result<usize> {
    Ok(segments(dir)?.len())
}

/// Removes the segments (never the newest) whose records are all at or below `through`.
/// Returns how many were removed.
pub(crate) fn trim(dir: &Path, through: u64) -> Result<usize> {
    let segments = segments(dir)?;
    let mut removed = 0;
    for window in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&window[0], &window[1]);
        if *next_first <= through + 1 {
            fs::remove_file(path).map_err(|e| IndexError::io(path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        crate::fsync_dir(dir)?;
    }
    Ok(removed)
}

/// The appending side of a collection's journal. One process at a time holds it (the `LOCK`
/// file); inside a process every generation of the collection shares one (see
/// [`Journal::writer`]).
pub(crate) struct Journal {
    dir: PathBuf,
    state: Mutex<WriterState>,
    _lock: File,
}

pub(crate) struct WriterState {
    dir: PathBuf,
    file: File,
    bytes: u64,
    last_seq: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

static WRITERS: LazyLock<Mutex<HashMap<PathBuf, Weak<Journal>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl Journal {
    /// The writer of the journal in `dir` (created if missing), shared inside this process;
    /// [`IndexError::InUse`] when another process holds it.
    pub(crate) fn writer(dir: &Path) -> Result<Arc<Journal>> {
        fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let key = dir.canonicalize().map_err(|e| IndexError::io(dir, e))?;
        let mut writers = WRITERS.lock().expect("journal registry");
        if let Some(journal) = writers.get(&key).and_then(Weak::upgrade) {
            return Ok(journal);
        }
        let journal = Arc::new(Self::open(&key)?);
        writers.retain(|_, w| w.strong_count() > 0);
        writers.insert(key, Arc::downgrade(&journal));
        Ok(journal)
    }

    fn open(dir: &Path) -> Result<Self> {
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| IndexError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(IndexError::InUse {
                    path: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(IndexError::io(&lock_path, e)),
        }
        let segments = segments(dir)?;
        let (first, path) = match segments.last() {
            Some((first, path)) => (*first, path.clone()),
            None => (1, segment_path(dir, 1)),
        };
        let (records, valid) = if path.exists() {
            read_segment(&path, first, true)?
        } else {
            (Vec::new(), 0)
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| IndexError::io(&path, e))?;
        // A record cut short by a crash was never acknowledged: cut it off.
        file.set_len(valid).map_err(|e| IndexError::io(&path, e))?;
        file.sync_all().map_err(|e| IndexError::io(&path, e))?;
        crate::fsync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(WriterState {
                dir: dir.to_path_buf(),
                file,
                bytes: valid,
                last_seq: records.last().map_or(first - 1, |r| r.seq),
            }),
            _lock: lock,
        })
    }

    /// Exclusive access for one write: read the last sequence number, append, apply, all while
    /// no other writer of this process appends.
    pub(crate) fn begin(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WriterState {
    /// The sequence number of the last record written.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends `ops` and syncs them to disk; returns the sequence number of the last. Nothing
    /// is acknowledged before this returns.
    pub(crate) fn append(&mut self, ops: &[JournalOp]) -> Result<u64> {
        if ops.is_empty() {
            return Ok(self.last_seq);
        }
        if self.bytes >= SEGMENT_BYTES {
            self.roll_over()?;
        }
        let mut bytes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            bytes.extend_from_slice(&encode(self.last_seq + 1 + i as u64, op));
        }
        let path = self.dir.clone();
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Leave no half record behind for the next append to follow.
            let _ = self.file.set_len(self.bytes);
            return Err(IndexError::io(&path, e));
        }
        self.bytes += bytes.len() as u64;
        self.last_seq += ops.len() as u64;
        Ok(self.last_seq)
    }

    fn roll_over(&mut self) -> Result<()> {
        let path = segment_path(&self.dir, self.last_seq + 1);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| IndexError::io(&path, e))?;
        crate::fsync_dir(&self.dir)?;
        self.bytes = 0;
        Ok(())
    }
}

/// Embeds documents for a space while journaled writes are replayed into a generation whose
/// model for that space is not the one that embedded them.
pub trait SpaceEmbedder {
    /// One vector per text, in order (any length; normalised and checked by the store).
    fn embed_documents(
        &mut self,
        space: &str,
        texts: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, String>;
}

/// A journaled write made ready for one generation: vectors for each of its spaces.
#[derive(Debug, Clone)]
pub(crate) enum Replay {
    Upsert(UpsertDocument),
    Delete(String),
}

/// `records` as writes for a generation with `spaces`: a vector journaled with the space's
/// model is reused, any other is embedded with `embedder`. Without an embedder, stops at the
/// first record that needs one. Returns the writes and the sequence number of the last record
/// they cover.
pub(crate) fn resolve(
    records: &[JournalRecord],
    spaces: &BTreeMap<String, ModelIdentity>,
    embedder: Option<&mut dyn SpaceEmbedder>,
    after: u64,
) -> Result<(Vec<Replay>, u64)> {
    let mut out = Vec::with_capacity(records.len());
    // (index in `out`, space) of every vector to embed.
    let mut wanted: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut covered = after;
    for record in records {
        match &record.op {
            JournalOp::Delete { id } => out.push(Replay::Delete(id.clone())),
            JournalOp::Upsert { document, vectors } => {
                let mut found = BTreeMap::new();
                let mut missing = Vec::new();
                for (space, identity) in spaces {
                    match vectors
                        .iter()
                        .find(|v| v.space == *space && v.fingerprint == identity.fingerprint)
                    {
                        Some(v) => {
                            found.insert(space.clone(), v.values.clone());
                        }
                        None => missing.push(space.as_str()),
                    }
                }
                if !missing.is_empty() && embedder.is_none() {
                    break;
                }
                for space in missing {
                    wanted.entry(space).or_default().push(out.len());
                }
                out.push(Replay::Upsert(UpsertDocument {
                    document: document.clone(),
                    vectors: found,
                }));
            }
        }
        covered = record.seq;
    }
    if let Some(embedder) = embedder {
        for (space, indices) in wanted {
            let texts: Vec<String> = indices
                .iter()
                .map(|&i| match &out[i] {
                    Replay::Upsert(u) => u.document.embedding_text(),
                    Replay::Delete(_) => unreachable!("only upserts are embedded"),
                })
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedder.embed_documents(space, &refs).map_err(|message| {
                IndexError::Embedding {
                    space: space.to_string(),
                    message,
                }
            })?;
            if vectors.len() != indices.len() {
                return Err(IndexError::Embedding {
                    space: space.to_string(),
                    message: format!("{} vectors for {} texts", vectors.len(), indices.len()),
                });
            }
            for (&i, vector) in indices.iter().zip(vectors) {
                if let Replay::Upsert(u) = &mut out[i] {
                    u.vectors.insert(space.to_string(), vector);
                }
            }
        }
    }
    Ok((out, covered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str, values: Vec<f32>) -> JournalOp {
        JournalOp::Upsert {
            document: Document {
                id: id.into(),
                title: "t".into(),
                text: "x".into(),
                metadata: Map::new(),
            },
            vectors: vec![JournalVector {
                space: "base".into(),
                fingerprint: "fp".into(),
                values,
            }],
        }
    }

    #[test]
    fn records_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let journal = Journal::writer(&path).unwrap();
            let mut w = journal.begin();
            assert_eq!(w.last_seq(), 0);
            assert_eq!(w.append(&[upsert("a", vec![1.0, 2.0])]).unwrap(), 1);
            let delete = JournalOp::Delete { id: "a".into() };
            assert_eq!(w.append(&[delete, upsert("b", vec![3.0])]).unwrap(), 3);
        }
        let tail = read_after(&path, 1).unwrap();
        assert_eq!(tail.last_seq, 3);
        assert_eq!(tail.records.len(), 2);
        assert_eq!(tail.records[0].op, JournalOp::Delete { id: "a".into() });
        assert_eq!(tail.records[1].op, upsert("b", vec![3.0]));
        let journal = Journal::writer(&path).unwrap();
        assert_eq!(journal.begin().last_seq(), 3);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let journal = Journal::writer(&path).unwrap();
            journal.begin().append(&[upsert("a", vec![1.0])]).unwrap();
        }
        let segment = segment_path(&path, 1);
        let mut bytes = fs::read(&segment).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&encode(2, &upsert("b", vec![2.0]))[..10]);
        fs::write(&segment, &bytes).unwrap();
        assert_eq!(read_after(&path, 0).unwrap().last_seq, 1);
        let journal = Journal::writer(&path).unwrap();
        assert_eq!(fs::metadata(&segment).unwrap().len() as usize, whole);
        assert_eq!(journal.begin().append(&[upsert("c", vec![])]).unwrap(), 2);
        let tail = read_after(&path, 0).unwrap();
        assert_eq!(
            tail.records.iter().map(|r| r.op.id()).collect::<Vec<_>>(),
            ["a", "c"]
        );
    }

    #[test]
    fn trimmed_segments_are_reported_to_late_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let journal = Journal::writer(&path).unwrap();
        {
            let mut w = journal.begin();
            w.append(&[upsert("a", vec![1.0])]).unwrap();
            w.bytes = SEGMENT_BYTES;
            w.append(&[upsert("b", vec![1.0])]).unwrap();
        }
        assert_eq!(segments(&path).unwrap().len(), 2);
        assert_eq!(trim(&path, 0).unwrap(), 0);
        assert_eq!(trim(&path, 1).unwrap(), 1);
        assert_eq!(read_after(&path, 1).unwrap().records.len(), 1);
        assert!(matches!(
            read_after(&path, 0),
            Err(IndexError::Superseded { .. })
        ));
        // The newest segment is never removed, so sequence numbers never restart.
        assert_eq!(trim(&path, 10).unwrap(), 0);
    }

    #[test]
    fn another_process_holding_the_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        fs::create_dir_all(&path).unwrap();
        let other = File::create(path.join(LOCK_FILE)).unwrap();
        other.lock().unwrap();
        assert!(matches!(
            Journal::writer(&path),
            Err(IndexError::InUse { .. })
        ));
    }
}
