//! A collection's journal in Qdrant: one point per acknowledged write call (an upsert of up to
//! [`OPS_PER_RECORD`] documents, or a delete), numbered 1, 2, 3... Writers claim the next
//! number with Qdrant's `insert_only` and read the point back: a writer that finds another's
//! token there lost the race and tries the next number. The i-th write of record N has the
//! sequence number `N << 16 | i`, which orders every write of every server.
//!
//! Record numbers have no gaps: a writer tries number N + 1 only after seeing N taken. A build
//! removes the records that both generations it keeps already hold ([`QdrantJournal::trim`]),
//! never the newest one, so the numbering never starts over; a reader that still needs a
//! removed record (a generation no longer kept) gets [`IndexError::Superseded`].

use serde_json::{json, Value};

use super::client::{Client, Method};
use super::payload;
use crate::corpus::Document;
use crate::error::{IndexError, Result};
use crate::journal::{JournalOp, JournalRecord, JournalVector};

/// Writes in one journal record at most (a larger upsert takes several records).
pub(crate) const OPS_PER_RECORD: usize = 256;
/// Bits of a sequence number that number the write inside its record.
const OP_BITS: u32 = 16;
/// Mask of the low [`OP_BITS`] bits (the write inside a record); all set in a watermark
/// that covers its whole record.
const OP_MASK: u64 = (1 << OP_BITS) - 1;
/// Claims tried before an append gives up (each lost only to another writer's claim).
const CLAIM_ATTEMPTS: usize = 64;

/// The journal of one collection.
#[derive(Debug, Clone)]
pub(crate) struct QdrantJournal {
    client: Client,
    collection: String,
}

impl QdrantJournal {
    /// Opens (creating) the journal collection `collection`.
    pub(crate) fn open(client: &Client, collection: &str) -> Result<Self> {
        super::ensure_payload_collection(client, collection, &[("record", "integer")])?;
        Ok(Self {
            client: client.clone(),
            collection: collection.to_string(),
        })
    }

    /// The sequence number of the last write journaled (0 when none).
    pub(crate) fn last_seq(&self) -> Result<u64> {
        let last = self.last_record()?;
        Ok(if last == 0 {
            0
        } else {
            (last << OP_BITS) | OP_MASK
        })
    }

    fn last_record(&self) -> Result<u64> {
        let body = json!({"limit": 1, "with_payload": true,
                          "order_by": {"key": "record", "direction": "desc"}});
        let page = self.client.expect(
            Method::Post,
            &format!("/collections/{}/points/scroll", self.collection),
            Some(&body),
        )?;
        Ok(page["points"][0]["payload"]["record"].as_u64().unwrap_or(0))
    }

    /// Appends `ops` durably, in order; returns their sequence numbers.
    pub(crate) fn append(&self, ops: &[JournalOp]) -> Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(OPS_PER_RECORD) {
            let record = self.claim(chunk)?;
            seqs.extend((0..chunk.len() as u64).map(|i| (record << OP_BITS) | i));
        }
        Ok(seqs)
    }

    fn claim(&self, ops: &[JournalOp]) -> Result<u64> {
        let token = crate::store::hex(&rand::random::<[u8; 16]>());
        let encoded: Vec<Value> = ops.iter().map(encode).collect();
        let first = self.last_record()? + 1;
        for record in first..first + CLAIM_ATTEMPTS as u64 {
            let point = json!({"id": record, "vector": {},
                               "payload": {"record": record, "token": token, "ops": encoded}});
            self.client.expect(
                Method::Put,
                &format!(
                    "/collections/{}/points?wait=true&ordering=medium",
                    self.collection
                ),
                Some(&json!({"points": [point], "update_mode": "insert_only"})),
            )?;
            let ids = [record];
            let stored = payload::retrieve(&self.client, &self.collection, &ids, true, &[])?;
            if stored.first().map(|p| &p["payload"]["token"]) == Some(&json!(token)) {
                return Ok(record);
            }
        }
        Err(self.client.error(
            &format!("appending to the journal {}", self.collection),
            format!("{CLAIM_ATTEMPTS} record numbers in a row were taken by other writers"),
        ))
    }

    /// Removes the records before the one that holds sequence number `seq`: every write of
    /// them is at or below `seq`. The record of `seq` and every later one stay, so the newest
    /// record is never removed. Returns how many records were removed.
    pub(crate) fn trim(&self, seq: u64) -> Result<usize> {
        let filter = json!({"must": [{"key": "record", "range": {"lt": seq >> OP_BITS}}]});
        let removed = payload::count(&self.client, &self.collection, &filter)?;
        if removed > 0 {
            self.client.expect(
                Method::Post,
                &format!("/collections/{}/points/delete?wait=true", self.collection),
                Some(&json!({ "filter": filter })),
            )?;
        }
        Ok(removed)
    }

    /// The writes with sequence numbers above `after`, in order. Fails with
    /// [`IndexError::Superseded`] when records holding some of them were removed.
    pub(crate) fn read_after(&self, after: u64) -> Result<Vec<JournalRecord>> {
        let first = after >> OP_BITS;
        let filter = json!({"must": [{"key": "record", "range": {"gte": first}}]});
        let points = payload::scroll(
            &self.client,
            &self.collection,
            &filter,
            false,
            Some("record"),
        )?;
        // Records are numbered without gaps, so a first record past the first one needed
        // means the ones between were removed.
        let needed = if after & OP_MASK == OP_MASK {
            first + 1
        } else {
            first.max(1)
        };
        if let Some(oldest) = points.first().and_then(|p| p["payload"]["record"].as_u64()) {
            if oldest > needed {
                return Err(IndexError::Superseded {
                    what: format!(
                        "journal {}: records {needed}..{} were removed",
                        self.collection,
                        oldest - 1
                    ),
                });
            }
        }
        let mut out = Vec::new();
        for point in points {
            let record = point["payload"]["record"].as_u64().unwrap_or(0);
            let ops = point["payload"]["ops"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (i, op) in ops.iter().enumerate() {
                let seq = (record << OP_BITS) | i as u64;
                if seq > after {
                    let what = || format!("journal {} record {record}", self.collection);
                    out.push(JournalRecord {
                        seq,
                        op: decode(op).ok_or_else(|| IndexError::CorruptRecord {
                            what: what(),
                            reason: format!("write {i} cannot be decoded"),
                        })?,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn encode(op: &JournalOp) -> Value {
    match op {
        JournalOp::Upsert { document, vectors } => json!({
            "op": "upsert", "id": document.id, "title": document.title, "text": document.text,
            "metadata": document.metadata,
            "vectors": vectors.iter().map(|v| json!({"space": v.space,
                "fingerprint": v.fingerprint, "values": v.values})).collect::<Vec<_>>(),
        }),
        JournalOp::Delete { id } => json!({"op": "delete", "id": id}),
    }
}

fn decode(value: &Value) -> Option<JournalOp> {
    let id = value["id"].as_str()?.to_string();
    match value["op"].as_str()? {
        "delete" => Some(JournalOp::Delete { id }),
        "upsert" => {
            let vectors = value["vectors"]
                .as_array()?
                .iter()
                .map(|v| {
                    Some(JournalVector {
                        space: v["space"].as_str()?.to_string(),
                        fingerprint: v["fingerprint"].as_str()?.to_string(),
                        values: v["values"]
                            .as_array()?
                            .iter()
                            .map(|x| x.as_f64().map(|x| x as f32))
                            .collect::<Option<Vec<f32>>>()?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(JournalOp::Upsert {
                document: Document {
                    id,
                    title: value["title"].as_str()?.to_string(),
                    text: value["text"].as_str()?.to_string(),
                    metadata: value["metadata"].as_object()?.clone(),
                },
                vectors,
            })
        }
        _ => None,
    }
}
