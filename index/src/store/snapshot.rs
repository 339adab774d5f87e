//! A generation's documents as committed (`documents.snapshot`), with the journal sequence
//! number they include. The next build reads a collection's documents as this snapshot plus the
//! journal's later records, without opening the database a running server holds.

use std::io::{BufRead, BufWriter, Write};

use super::*;

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: u32,
    journal_seq: u64,
    documents: usize,
}

const SNAPSHOT_FORMAT: u32 = 1;

/// Writes the snapshot of generation directory `dir`: `documents` as of journal record
/// `journal_seq`. Atomic (temporary file, fsync, rename).
pub(crate) fn write_snapshot(
    dir: &Path,
    journal_seq: u64,
    documents: &[StoredDocument],
) -> Result<()> {
    let path = dir.join(keys::SNAPSHOT_FILE);
    let tmp = path.with_extension("tmp");
    let file = fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    let mut out = BufWriter::new(file);
    let header = SnapshotHeader {
        format: SNAPSHOT_FORMAT,
        journal_seq,
        documents: documents.len(),
    };
    write_line(&mut out, &header).map_err(|e| IndexError::io(&tmp, e))?;
    for document in documents {
        write_line(&mut out, document).map_err(|e| IndexError::io(&tmp, e))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| IndexError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| IndexError::io(&path, e))?;
    crate::fsync_dir(dir)
}

/// The snapshot of generation directory `dir`: (journal sequence number, documents); `None`
/// when the generation has none (built before snapshots existed).
pub(crate) fn read_snapshot(dir: &Path) -> Result<Option<(u64, Vec<StoredDocument>)>> {
    let path = dir.join(keys::SNAPSHOT_FILE);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IndexError::io(&path, e)),
    };
    let corrupt = |line: usize, reason: String| IndexError::CorruptRecord {
        what: format!("{}:{line}", path.display()),
        reason,
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let header: SnapshotHeader = match lines.next() {
        Some(line) => {
            let line = line.map_err(|e| IndexError::io(&path, e))?;
            serde_json::from_str(&line).map_err(|e| corrupt(1, e.to_string()))?
        }
        None => return Err(corrupt(1, "empty file".into())),
    };
    if header.format != SNAPSHOT_FORMAT {
        return Err(corrupt(1, format!("format {}", header.format)));
    }
    let mut documents = Vec::with_capacity(header.documents);
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| IndexError::io(&path, e))?;
        documents.push(serde_json::from_str(&line).map_err(|e| corrupt(i + 2, e.to_string()))?);
    }
    if documents.len() != header.documents {
        return Err(corrupt(
            documents.len() + 2,
            format!(
                "{} documents, the header says {}",
                documents.len(),
                header.documents
            ),
        ));
    }
    Ok(Some((header.journal_seq, documents)))
}

fn write_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_refuse_truncation() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_snapshot(dir.path()).unwrap().is_none());
        let document = StoredDocument {
            id: "p1".into(),
            title: "Boot".into(),
            text: "blue\nleather".into(),
            metadata: Map::new(),
            hash: "00".into(),
        };
        write_snapshot(dir.path(), 7, std::slice::from_ref(&document)).unwrap();
        let (seq, documents) = read_snapshot(dir.path()).unwrap().unwrap();
        assert_eq!((seq, documents), (7, vec![document]));
        let path = dir.path().join(keys::SNAPSHOT_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.lines().next().unwrap()).unwrap();
        let error = read_snapshot(dir.path()).unwrap_err().to_string();
        assert!(error.contains("the header says 1"), "{error}");
    }
}
