//! One collection's generation in Qdrant, searched and written ([`QdrantCollection`]), and the
//! build of a new generation ([`build`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};
use tantivy::tokenizer::TextAnalyzer;

use super::client::{Client, Method};
use super::journal::QdrantJournal;
use super::payload::{self, point_id};
use super::{GenerationInfo, Names, QdrantStore};
use crate::build::{
    target_documents, BuildEvent, BuildReport, BuildSettings, BuildSource, SpaceSpec, SpecEmbedder,
};
use crate::corpus::Document;
use crate::error::{IndexError, Result};
use crate::filter::value_of_key;
use crate::identity::ModelIdentity;
use crate::journal::{resolve, JournalOp, JournalRecord, Replay, SpaceEmbedder};
use crate::lexical::{LexicalSettings, LEXICAL_SPACE};
use crate::retrieval::LexicalRequest;
use crate::store::{
    content_hash, hex, now_unix, CollectionStats, Facet, FacetValue, SearchHit, SearchRequest,
    SpaceStats, StoredDocument, UpsertDocument, UpsertReport,
};
use crate::vector_store::{check_search, unit_vector, upsert_vectors, ServedCollection};

/// BM25's term-frequency saturation.
const BM25_K1: f32 = 1.2;
/// BM25's length normalisation.
const BM25_B: f32 = 0.75;
/// Points written per request.
const WRITE_BATCH: usize = 256;
/// Distinct values a facet counts at most.
const FACET_VALUES: usize = 1_000;

/// The lexical space's analyzer and BM25 weights: each document is a sparse vector of
/// saturated, length-normalised term frequencies; Qdrant multiplies by each term's IDF.
struct Lexicon {
    settings: LexicalSettings,
    analyzer: Mutex<TextAnalyzer>,
    mean_length: f32,
}

impl std::fmt::Debug for Lexicon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lexicon")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Lexicon {
    fn new(settings: &LexicalSettings, mean_length: f32) -> Result<Self> {
        Ok(Self {
            settings: settings.clone(),
            analyzer: Mutex::new(settings.analyzer()?),
            mean_length: mean_length.max(1.0),
        })
    }

    /// Term ids of `text` with their counts, and the token count.
    fn terms(&self, text: &str) -> (BTreeMap<u32, u32>, usize) {
        let mut analyzer = self.analyzer.lock().expect("analyzer lock");
        let mut stream = analyzer.token_stream(text);
        let mut counts = BTreeMap::new();
        let mut length = 0;
        while stream.advance() {
            *counts.entry(term_id(&stream.token().text)).or_insert(0) += 1;
            length += 1;
        }
        (counts, length)
    }

    fn document_text(&self, document: &Document) -> String {
        let mut parts = vec![document.title.clone(), document.text.clone()];
        parts.extend(self.settings.metadata_values(&document.metadata));
        parts.join("\n")
    }

    fn length(&self, document: &Document) -> usize {
        self.terms(&self.document_text(document)).1
    }

    fn document_vector(&self, document: &Document) -> Value {
        let (counts, length) = self.terms(&self.document_text(document));
        let norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length as f32 / self.mean_length);
        let (indices, values): (Vec<u32>, Vec<f32>) = counts
            .into_iter()
            .map(|(term, tf)| (term, tf as f32 * (BM25_K1 + 1.0) / (tf as f32 + norm)))
            .unzip();
        json!({"indices": indices, "values": values})
    }

    fn query_vector(&self, text: &str) -> Value {
        let (counts, _) = self.terms(text);
        let (indices, values): (Vec<u32>, Vec<f32>) = counts
            .into_iter()
            .map(|(term, tf)| (term, tf as f32))
            .unzip();
        json!({"indices": indices, "values": values})
    }
}

/// FNV-1a: a term's id in the sparse vector.
fn term_id(term: &str) -> u32 {
    term.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// One collection at one generation in Qdrant.
#[derive(Debug)]
pub struct QdrantCollection {
    client: Client,
    name: String,
    info: GenerationInfo,
    /// The Qdrant collection of this generation.
    physical: String,
    journal: QdrantJournal,
    lexicon: Option<Lexicon>,
    /// Every journal record up to this one is applied to this generation.
    applied: Mutex<u64>,
    /// Metadata fields with a payload index (filters and facets).
    indexed: Mutex<BTreeSet<String>>,
}

impl QdrantCollection {
    pub(crate) fn open(store: &QdrantStore, name: &str, info: GenerationInfo) -> Result<Self> {
        let names = store.names();
        let client = store.client().clone();
        let physical = names.generation(name, info.generation);
        let described = client.expect(Method::Get, &format!("/collections/{physical}"), None)?;
        let indexed = described["payload_schema"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, _)| {
                key.strip_prefix("m.")
                    .map(|f| f.trim_matches('"').to_string())
            })
            .collect();
        let lexicon = match &info.lexical {
            Some(settings) => Some(Lexicon::new(settings, info.mean_length)?),
            None => None,
        };
        Ok(Self {
            journal: QdrantJournal::open(&client, &names.journal(name))?,
            client,
            name: name.to_string(),
            physical,
            lexicon,
            applied: Mutex::new(info.journal_seq),
            indexed: Mutex::new(indexed),
            info,
        })
    }

    fn space(&self, space: &str) -> Result<&ModelIdentity> {
        self.info
            .spaces
            .get(space)
            .ok_or_else(|| self.unknown_space(space))
    }

    fn unknown_space(&self, space: &str) -> IndexError {
        IndexError::UnknownSpace {
            collection: self.name.clone(),
            space: space.to_string(),
            available: self
                .info
                .spaces
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn check_model(&self, space: &str, model: &ModelIdentity) -> Result<()> {
        let identity = self.space(space)?;
        if !identity.same_model(model) {
            return Err(IndexError::ModelMismatch {
                collection: self.name.clone(),
                space: space.to_string(),
                stored: identity.fingerprint.clone(),
                given: model.fingerprint.clone(),
            });
        }
        Ok(())
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            client: &self.client,
            physical: &self.physical,
            spaces: &self.info.spaces,
            lexicon: self.lexicon.as_ref(),
        }
    }

    /// Payload indexes for the metadata fields of `documents` that have none yet.
    fn index_fields<'d>(&self, documents: impl Iterator<Item = &'d Document>) -> Result<()> {
        let mut indexed = self.indexed.lock().expect("fields lock");
        let mut wanted = BTreeMap::new();
        for document in documents {
            for (field, value) in &document.metadata {
                if !indexed.contains(field) && !wanted.contains_key(field) {
                    if let Some(schema) = field_schema(value) {
                        wanted.insert(field.clone(), schema);
                    }
                }
            }
        }
        create_field_indexes(&self.client, &self.physical, &wanted)?;
        indexed.extend(wanted.into_keys());
        Ok(())
    }

    /// Points of `ids` with payloads (and the vector of `space`), by document id.
    fn points(&self, ids: &[&str], space: Option<&str>) -> Result<BTreeMap<String, Value>> {
        let point_ids: Vec<String> = ids.iter().map(|id| point_id(id)).collect();
        let vectors: Vec<&str> = space.into_iter().collect();
        Ok(
            payload::retrieve(&self.client, &self.physical, &point_ids, true, &vectors)?
                .into_iter()
                .filter(|p| p["payload"]["live"] == json!(true))
                .filter_map(|p| Some((p["payload"]["id"].as_str()?.to_string(), p)))
                .collect(),
        )
    }

    fn query(&self, body: Value) -> Result<Vec<Value>> {
        let result = self.client.expect(
            Method::Post,
            &format!("/collections/{}/points/query", self.physical),
            Some(&body),
        )?;
        Ok(result["points"].as_array().cloned().unwrap_or_default())
    }

    fn hits(points: Vec<Value>) -> Vec<SearchHit> {
        points
            .into_iter()
            .map(|p| SearchHit {
                id: p["payload"]["id"].as_str().unwrap_or_default().to_string(),
                score: p["score"].as_f64().unwrap_or(0.0) as f32,
                title: p["payload"]["title"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                metadata: payload::metadata(&p["payload"]),
            })
            .collect()
    }

    fn ids(points: Vec<Value>) -> Vec<(String, f32)> {
        points
            .into_iter()
            .map(|p| {
                let id = p["payload"]["id"].as_str().unwrap_or_default().to_string();
                (id, p["score"].as_f64().unwrap_or(0.0) as f32)
            })
            .collect()
    }

    fn vector_query(&self, request: &SearchRequest<'_>, fields: Value) -> Result<Vec<Value>> {
        check_search(request.filter, request.k)?;
        self.check_model(request.space, request.model)?;
        let identity = self.space(request.space)?;
        let what = || "the query vector".to_string();
        let query = unit_vector(request.vector, identity, &what)?;
        let ef = request
            .ef
            .unwrap_or(self.info.hnsw.ef_search)
            .max(request.k);
        self.query(json!({
            "query": query, "using": request.space, "limit": request.k,
            "filter": payload::filter_json(request.filter, Vec::new())?,
            "params": {"hnsw_ef": ef}, "with_payload": fields,
        }))
    }

    fn lexical_query(&self, request: &LexicalRequest<'_>, fields: Value) -> Result<Vec<Value>> {
        check_search(request.filter, request.k)?;
        let Some(lexicon) = &self.lexicon else {
            return Err(self.unknown_space(LEXICAL_SPACE));
        };
        let query = lexicon.query_vector(request.text);
        if query["indices"].as_array().is_none_or(Vec::is_empty) {
            return Ok(Vec::new());
        }
        self.query(json!({
            "query": query, "using": LEXICAL_SPACE, "limit": request.k,
            "filter": payload::filter_json(request.filter, Vec::new())?, "with_payload": fields,
        }))
    }

    fn count(&self, live: bool) -> Result<usize> {
        let filter = json!({"must": [{"key": "live", "match": {"value": live}}]});
        payload::count(&self.client, &self.physical, &filter)
    }

    fn facet(&self, field: &str, max_values: usize) -> Result<Facet> {
        let body = json!({"key": payload::metadata_key(field)?, "limit": FACET_VALUES,
                          "exact": true, "filter": {"must": [payload::live()]}});
        let result = self.client.expect(
            Method::Post,
            &format!("/collections/{}/facet", self.physical),
            Some(&body),
        )?;
        let mut values: Vec<FacetValue> = result["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|hit| {
                let value = hit["value"].clone();
                let key = crate::filter::scalar_key(&value)?;
                Some(FacetValue {
                    value: value_of_key(&key)?,
                    count: hit["count"].as_u64()? as usize,
                })
            })
            .collect();
        values.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.value.to_string().cmp(&b.value.to_string()))
        });
        let distinct = values.len();
        values.truncate(max_values);
        Ok(Facet {
            field: field.to_string(),
            distinct,
            values,
        })
    }
}

/// The payload index of a metadata value's type: keyword, integer, float or bool (arrays by
/// their first element); `None` for objects and nulls.
fn field_schema(value: &Value) -> Option<&'static str> {
    match value {
        Value::String(_) => Some("keyword"),
        Value::Bool(_) => Some("bool"),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some("integer"),
        Value::Number(_) => Some("float"),
        Value::Array(items) => items.first().and_then(field_schema),
        _ => None,
    }
}

fn create_field_indexes(
    client: &Client,
    physical: &str,
    fields: &BTreeMap<String, &str>,
) -> Result<()> {
    for (field, schema) in fields {
        client.expect(
            Method::Put,
            &format!("/collections/{physical}/index?wait=true"),
            Some(&json!({"field_name": payload::metadata_key(field)?, "field_schema": schema})),
        )?;
    }
    Ok(())
}

/// Writes documents and tombstones into one generation's Qdrant collection.
struct Writer<'a> {
    client: &'a Client,
    physical: &'a str,
    spaces: &'a BTreeMap<String, ModelIdentity>,
    lexicon: Option<&'a Lexicon>,
}

impl Writer<'_> {
    /// The point of a live document with its unit vectors by space.
    fn point(&self, document: &Document, vectors: &[(String, Vec<f32>)], seq: u64) -> Value {
        let mut named: serde_json::Map<String, Value> =
            vectors.iter().map(|(s, v)| (s.clone(), json!(v))).collect();
        if let Some(lexicon) = self.lexicon {
            named.insert(LEXICAL_SPACE.into(), lexicon.document_vector(document));
        }
        let hash = hex(&content_hash(&document.embedding_text()));
        json!({"id": point_id(&document.id), "vector": named,
               "payload": payload::document_payload(document, &hash, seq)})
    }

    /// Applies journaled writes (each with its sequence number): a point is replaced only by
    /// a write with a larger number.
    fn apply(&self, replays: Vec<(u64, Replay)>) -> Result<()> {
        let mut points = Vec::with_capacity(replays.len());
        for (seq, replay) in replays {
            points.push(match replay {
                Replay::Delete(id) => {
                    let point = json!({"id": point_id(&id), "vector": {},
                                       "payload": payload::tombstone_payload(&id, seq)});
                    (seq, point)
                }
                Replay::Upsert(upsert) => {
                    let vectors = upsert_vectors(&upsert, self.spaces)?;
                    (seq, self.point(&upsert.document, &vectors, seq))
                }
            });
        }
        for chunk in points.chunks(WRITE_BATCH) {
            payload::upsert_newer(self.client, self.physical, chunk)?;
        }
        Ok(())
    }

    /// Resolves and applies the journal records `records` (after `after`); returns how many
    /// were applied and the last record covered.
    fn replay(
        &self,
        records: &[JournalRecord],
        embedder: Option<&mut dyn SpaceEmbedder>,
        after: u64,
    ) -> Result<(usize, u64)> {
        let (replays, covered) = resolve(records, self.spaces, embedder, after)?;
        let count = replays.len();
        let numbered = records.iter().map(|r| r.seq).zip(replays).collect();
        self.apply(numbered)?;
        Ok((count, covered))
    }
}

impl ServedCollection for QdrantCollection {
    fn name(&self) -> &str {
        &self.name
    }

    fn generation(&self) -> u64 {
        self.info.generation
    }

    fn spaces(&self) -> BTreeMap<String, ModelIdentity> {
        self.info.spaces.clone()
    }

    fn len(&self) -> usize {
        self.count(true).unwrap_or_else(|e| {
            tracing::warn!("counting collection {:?}: {e}", self.name);
            0
        })
    }

    fn document(&self, id: &str) -> Result<Option<StoredDocument>> {
        Ok(self
            .points(&[id], None)?
            .remove(id)
            .and_then(|p| payload::stored_document(&p["payload"])))
    }

    fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>> {
        self.space(space)?;
        Ok(self.points(&[id], Some(space))?.remove(id).and_then(|p| {
            p["vector"][space]
                .as_array()
                .map(|v| v.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
        }))
    }

    fn score_ids(&self, space: &str, query: &[f32], ids: &[&str]) -> Result<Vec<(String, f32)>> {
        self.space(space)?;
        let points = self.points(ids, Some(space))?;
        let mut out = Vec::with_capacity(points.len());
        for id in ids {
            if let Some(values) = points.get(*id).and_then(|p| p["vector"][space].as_array()) {
                let vector: Vec<f32> = values
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                    .collect();
                out.push((id.to_string(), crate::distance::dot(query, &vector)));
            }
        }
        Ok(out)
    }

    fn facets(&self, max_values: usize) -> Vec<Facet> {
        let fields: Vec<String> = self
            .indexed
            .lock()
            .expect("fields lock")
            .iter()
            .cloned()
            .collect();
        fields
            .iter()
            .filter_map(|field| match self.facet(field, max_values) {
                Ok(facet) if facet.distinct > 0 => Some(facet),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!("facet {field:?} of collection {:?}: {e}", self.name);
                    None
                }
            })
            .collect()
    }

    fn lexical(&self) -> Option<LexicalSettings> {
        self.info.lexical.clone()
    }

    fn lexical_search(&self, request: &LexicalRequest<'_>) -> Result<Vec<SearchHit>> {
        Ok(Self::hits(
            self.lexical_query(request, json!(["id", "title", "m"]))?,
        ))
    }

    fn lexical_search_ids(&self, request: &LexicalRequest<'_>) -> Result<Vec<(String, f32)>> {
        Ok(Self::ids(self.lexical_query(request, json!(["id"]))?))
    }

    fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<SearchHit>> {
        Ok(Self::hits(
            self.vector_query(request, json!(["id", "title", "m"]))?,
        ))
    }

    fn search_ids(&self, request: &SearchRequest<'_>) -> Result<Vec<(String, f32)>> {
        Ok(Self::ids(self.vector_query(request, json!(["id"]))?))
    }

    fn upsert(
        &self,
        documents: &[UpsertDocument],
        models: &BTreeMap<String, ModelIdentity>,
    ) -> Result<UpsertReport> {
        for space in self.info.spaces.keys() {
            let Some(model) = models.get(space) else {
                return Err(IndexError::InvalidDocument {
                    id: String::new(),
                    message: format!("no model given for space {space:?}"),
                });
            };
            self.check_model(space, model)?;
        }
        let mut prepared = Vec::with_capacity(documents.len());
        for upsert in documents {
            prepared.push(upsert_vectors(upsert, &self.info.spaces)?);
        }
        let ids: Vec<&str> = documents.iter().map(|d| d.document.id.as_str()).collect();
        let before = self.points(&ids, None)?;
        let ops: Vec<JournalOp> = documents
            .iter()
            .zip(&prepared)
            .map(|(u, vectors)| JournalOp::upsert(&u.document, vectors, &self.info.spaces))
            .collect();
        let seqs = self.journal.append(&ops)?;
        self.index_fields(documents.iter().map(|d| &d.document))?;
        let mut report = UpsertReport::default();
        let writer = self.writer();
        let mut points = Vec::with_capacity(documents.len());
        for ((upsert, vectors), seq) in documents.iter().zip(&prepared).zip(seqs) {
            let point = writer.point(&upsert.document, vectors, seq);
            match before.get(&upsert.document.id) {
                None => report.added += 1,
                Some(old) if old["payload"]["hash"] == point["payload"]["hash"] => {
                    report.unchanged += 1
                }
                Some(_) => report.updated += 1,
            }
            points.push((seq, point));
        }
        for chunk in points.chunks(WRITE_BATCH) {
            payload::upsert_newer(&self.client, &self.physical, chunk)?;
        }
        Ok(report)
    }

    fn delete(&self, id: &str) -> Result<bool> {
        if self.points(&[id], None)?.is_empty() {
            return Ok(false);
        }
        let seq = self
            .journal
            .append(&[JournalOp::Delete { id: id.to_string() }])?[0];
        self.writer()
            .apply(vec![(seq, Replay::Delete(id.to_string()))])?;
        Ok(true)
    }

    fn catch_up(&self, embedder: Option<&mut dyn SpaceEmbedder>) -> Result<usize> {
        let mut applied = self.applied.lock().expect("journal lock");
        let records = self.journal.read_after(*applied)?;
        let documents = records.iter().filter_map(|r| match &r.op {
            JournalOp::Upsert { document, .. } => Some(document),
            JournalOp::Delete { .. } => None,
        });
        self.index_fields(documents)?;
        let (count, covered) = self.writer().replay(&records, embedder, *applied)?;
        *applied = covered;
        Ok(count)
    }

    fn stats(&self) -> Result<CollectionStats> {
        let documents = self.count(true)?;
        let tombstones = self.count(false)?;
        Ok(CollectionStats {
            name: self.name.clone(),
            generation: self.info.generation,
            documents,
            hnsw: self.info.hnsw,
            spaces: self
                .info
                .spaces
                .iter()
                .map(|(name, model)| SpaceStats {
                    name: name.clone(),
                    model: model.clone(),
                    graph_points: documents,
                    tombstones,
                    delta: 0,
                })
                .collect(),
            disk_bytes: 0,
            database_bytes: 0,
            lexical: self.info.lexical.clone(),
        })
    }
}

/// The collection's live documents at generation `generation` (with the journal's records up
/// to `until` applied that it may lack).
fn read_documents(
    store: &QdrantStore,
    name: &str,
    info: &GenerationInfo,
    journal: &QdrantJournal,
    until: u64,
) -> Result<BTreeMap<String, StoredDocument>> {
    let physical = store.names().generation(name, info.generation);
    let filter = json!({"must": [payload::live()]});
    let mut documents: BTreeMap<String, StoredDocument> =
        payload::scroll(store.client(), &physical, &filter, false, None)?
            .iter()
            .filter_map(|p| payload::stored_document(&p["payload"]))
            .map(|d| (d.id.clone(), d))
            .collect();
    for record in journal.read_after(info.journal_seq)? {
        if record.seq > until {
            break;
        }
        match record.op {
            JournalOp::Delete { id } => {
                documents.remove(&id);
            }
            JournalOp::Upsert { document, .. } => {
                let hash = hex(&content_hash(&document.embedding_text()));
                let stored = StoredDocument {
                    id: document.id.clone(),
                    title: document.title,
                    text: document.text,
                    metadata: document.metadata,
                    hash,
                };
                documents.insert(stored.id.clone(), stored);
            }
        }
    }
    Ok(documents)
}

/// The Qdrant collection of a new generation: one dense vector per space (cosine), the sparse
/// lexical vector (IDF by Qdrant) when asked, the generation's manifest as its metadata.
fn create_generation(client: &Client, physical: &str, info: &GenerationInfo) -> Result<()> {
    let settings = client.settings();
    let vectors: serde_json::Map<String, Value> = info
        .spaces
        .iter()
        .map(|(space, identity)| {
            (
                space.clone(),
                json!({"size": identity.dim, "distance": "Cosine"}),
            )
        })
        .collect();
    let mut body = json!({
        "vectors": vectors,
        "shard_number": settings.shard_number,
        "replication_factor": settings.replication_factor,
        "write_consistency_factor": settings.write_consistency_factor,
        "hnsw_config": {"m": info.hnsw.m, "ef_construct": info.hnsw.ef_construction},
        "metadata": {"attune": info},
    });
    if info.lexical.is_some() {
        body["sparse_vectors"] = json!({LEXICAL_SPACE: {"modifier": "idf"}});
    }
    super::create_collection(client, physical, &body)?;
    client.expect(
        Method::Put,
        &format!("/collections/{physical}/index?wait=true"),
        Some(&json!({"field_name": "live", "field_schema": "bool"})),
    )?;
    Ok(())
}

/// A document's unit vectors, by space.
type UnitVectors = Vec<(String, Vec<f32>)>;

/// Vectors of `chunk` in each space: reused from the previous generation where the space's
/// model and the document's content are unchanged, embedded otherwise. Counts embedded texts.
fn chunk_vectors(
    client: &Client,
    previous: Option<(&str, &GenerationInfo)>,
    old: &BTreeMap<String, StoredDocument>,
    chunk: &[Document],
    spaces: &mut [SpaceSpec<'_>],
    embedded: &mut BTreeMap<String, usize>,
) -> Result<Vec<UnitVectors>> {
    let hashes: Vec<String> = chunk
        .iter()
        .map(|d| hex(&content_hash(&d.embedding_text())))
        .collect();
    let mut out: Vec<UnitVectors> = vec![Vec::new(); chunk.len()];
    for spec in spaces.iter_mut() {
        let identity = spec.embedder.identity().clone();
        let reusable = previous.filter(|(_, info)| {
            info.spaces
                .get(&spec.name)
                .is_some_and(|m| m.same_model(&identity))
        });
        let mut reused: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        if let Some((physical, _)) = reusable {
            let unchanged: Vec<usize> = (0..chunk.len())
                .filter(|&i| old.get(&chunk[i].id).is_some_and(|d| d.hash == hashes[i]))
                .collect();
            let ids: Vec<String> = unchanged.iter().map(|&i| point_id(&chunk[i].id)).collect();
            let points = payload::retrieve(client, physical, &ids, true, &[spec.name.as_str()])?;
            let by_id: BTreeMap<&str, &Value> = points
                .iter()
                .filter_map(|p| Some((p["payload"]["id"].as_str()?, p)))
                .collect();
            for i in unchanged {
                let vector = by_id
                    .get(chunk[i].id.as_str())
                    .and_then(|p| p["vector"][&spec.name].as_array());
                if let Some(values) = vector {
                    reused.insert(
                        i,
                        values
                            .iter()
                            .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                            .collect(),
                    );
                }
            }
        }
        let missing: Vec<usize> = (0..chunk.len())
            .filter(|i| !reused.contains_key(i))
            .collect();
        let texts: Vec<String> = missing.iter().map(|&i| chunk[i].embedding_text()).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let fresh = if refs.is_empty() {
            Vec::new()
        } else {
            spec.embedder
                .embed_documents(&refs)
                .map_err(|e| IndexError::Embedding {
                    space: spec.name.clone(),
                    message: e.to_string(),
                })?
        };
        if fresh.len() != missing.len() {
            return Err(IndexError::Embedding {
                space: spec.name.clone(),
                message: format!("{} vectors for {} texts", fresh.len(), missing.len()),
            });
        }
        *embedded.entry(spec.name.clone()).or_insert(0) += missing.len();
        reused.extend(missing.into_iter().zip(fresh));
        for (i, vector) in reused {
            let what = || {
                format!(
                    "vector of document {:?} in space {:?}",
                    chunk[i].id, spec.name
                )
            };
            out[i].push((spec.name.clone(), unit_vector(&vector, &identity, &what)?));
        }
    }
    Ok(out)
}

/// Builds a new generation of `name` and switches the alias to it (see the module docs of
/// [`super`]).
pub(crate) fn build(
    store: &QdrantStore,
    name: &str,
    source: BuildSource<'_>,
    spaces: &mut [SpaceSpec<'_>],
    settings: &BuildSettings,
    progress: &mut dyn FnMut(BuildEvent),
    started: Instant,
) -> Result<BuildReport> {
    let names: Names = store.names();
    let client = store.client();
    let journal = QdrantJournal::open(client, &names.journal(name))?;
    let base_seq = journal.last_seq()?;
    let previous = store.aliased_generation(name)?;
    let previous_info = previous
        .map(|g| store.generation_info(name, g))
        .transpose()?;
    let old = match &previous_info {
        Some(info) => read_documents(store, name, info, &journal, base_seq)?,
        None => BTreeMap::new(),
    };
    let (target, removed, kept) = target_documents(&source, &old, name)?;
    let generation = previous.map_or(1, |g| g + 1);
    let physical = names.generation(name, generation);
    // What an interrupted build left under this name is started over.
    store.drop_qdrant_collection(&physical)?;
    progress(BuildEvent::Planned {
        documents: target.len(),
        to_embed: target.len(),
        resumed: false,
        generation,
    });
    let identities: BTreeMap<String, ModelIdentity> = spaces
        .iter()
        .map(|s| (s.name.clone(), s.embedder.identity().clone()))
        .collect();
    let lexicon = lexicon_for(settings.lexical.as_ref(), &target)?;
    let mut info = GenerationInfo {
        generation,
        spaces: identities.clone(),
        hnsw: settings.hnsw,
        lexical: settings.lexical.clone(),
        mean_length: lexicon.as_ref().map_or(1.0, |l| l.mean_length),
        journal_seq: base_seq,
        committed_unix: now_unix(),
    };
    create_generation(client, &physical, &info)?;
    let previous_physical = previous.map(|g| names.generation(name, g));
    let writer = Writer {
        client,
        physical: &physical,
        spaces: &identities,
        lexicon: lexicon.as_ref(),
    };
    let fill = Fill {
        writer: &writer,
        previous: previous_physical.as_deref().zip(previous_info.as_ref()),
        old: &old,
        seq: base_seq,
        batch_size: settings.batch_size.max(1),
    };
    let embedded = fill.write(&target, spaces, progress)?;
    let embed_seconds = started.elapsed().as_secs_f64();
    let graph_started = Instant::now();
    index_generation(client, &physical, &target, &identities, progress)?;
    let graph_seconds = graph_started.elapsed().as_secs_f64();
    let replayed = switch(&writer, &journal, &names.alias(name), &mut info, spaces)?;
    // Past the commit point. Generations before the previous one serve nobody now (those an
    // earlier clean-up failed to drop among them), and the journal records both kept
    // generations hold are needed by no reader.
    let cleanup_errors = crate::build::cleanup_failures([
        previous.map_or(Ok(()), |kept| store.drop_generations_before(name, kept)),
        previous_info
            .as_ref()
            .map_or(Ok(()), |kept| journal.trim(kept.journal_seq).map(drop)),
    ]);
    let (added, updated, unchanged) = change_counts(&target, &old);
    let documents = payload::count(client, &physical, &json!({"must": [payload::live()]}))?;
    Ok(BuildReport {
        collection: name.to_string(),
        generation,
        previous_generation: previous,
        resumed: false,
        documents,
        added,
        updated,
        unchanged,
        deleted: removed.len(),
        removed,
        kept,
        replayed,
        embedded,
        duplicate_ids: source.duplicate_ids(),
        embed_seconds,
        graph_seconds,
        lexical_seconds: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        cleanup_errors,
    })
}

/// The lexical space of a new generation of `target`, with its mean document length.
fn lexicon_for(settings: Option<&LexicalSettings>, target: &[Document]) -> Result<Option<Lexicon>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let probe = Lexicon::new(settings, 1.0)?;
    let total: usize = target.iter().map(|d| probe.length(d)).sum();
    Ok(Some(Lexicon::new(
        settings,
        total as f32 / target.len().max(1) as f32,
    )?))
}

/// Writes a new generation's documents with their vectors.
struct Fill<'a> {
    writer: &'a Writer<'a>,
    /// The previous generation's Qdrant collection and manifest, whose vectors are reused.
    previous: Option<(&'a str, &'a GenerationInfo)>,
    old: &'a BTreeMap<String, StoredDocument>,
    /// The journal position the documents reflect (their points' `seq`).
    seq: u64,
    batch_size: usize,
}

impl Fill<'_> {
    /// Writes `target` in batches; returns the texts embedded per space.
    fn write(
        &self,
        target: &[Document],
        spaces: &mut [SpaceSpec<'_>],
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<BTreeMap<String, usize>> {
        let client = self.writer.client;
        let mut embedded = BTreeMap::new();
        let mut done = 0;
        for chunk in target.chunks(self.batch_size) {
            let vectors = chunk_vectors(
                client,
                self.previous,
                self.old,
                chunk,
                spaces,
                &mut embedded,
            )?;
            let points: Vec<Value> = chunk
                .iter()
                .zip(&vectors)
                .map(|(document, vectors)| self.writer.point(document, vectors, self.seq))
                .collect();
            for part in points.chunks(WRITE_BATCH) {
                payload::upsert(client, self.writer.physical, part)?;
            }
            done += chunk.len();
            progress(BuildEvent::Embedded { done });
        }
        Ok(embedded)
    }
}

/// Payload indexes for the metadata fields of `target`, then Qdrant's HNSW graphs.
fn index_generation(
    client: &Client,
    physical: &str,
    target: &[Document],
    spaces: &BTreeMap<String, ModelIdentity>,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<()> {
    let mut fields = BTreeMap::new();
    for document in target {
        for (field, value) in &document.metadata {
            if let (false, Some(schema)) = (fields.contains_key(field), field_schema(value)) {
                fields.insert(field.clone(), schema);
            }
        }
    }
    create_field_indexes(client, physical, &fields)?;
    for space in spaces.keys() {
        progress(BuildEvent::Graph {
            space: space.clone(),
            points: target.len(),
        });
    }
    wait_until_indexed(client, physical)
}

/// Replays the writes acknowledged while the build ran, records the journal position in the
/// generation's manifest, switches `alias` to it, then replays the writes that landed on the
/// old generation meanwhile. Returns how many writes were replayed.
fn switch(
    writer: &Writer<'_>,
    journal: &QdrantJournal,
    alias: &str,
    info: &mut GenerationInfo,
    spaces: &mut [SpaceSpec<'_>],
) -> Result<usize> {
    let (client, physical) = (writer.client, writer.physical);
    let mut embedder = SpecEmbedder(spaces);
    let records = journal.read_after(info.journal_seq)?;
    let (mut replayed, covered) = writer.replay(&records, Some(&mut embedder), info.journal_seq)?;
    info.journal_seq = covered;
    client.expect(
        Method::Patch,
        &format!("/collections/{physical}"),
        Some(&json!({"metadata": {"attune": info}})),
    )?;
    client.expect(
        Method::Post,
        "/collections/aliases",
        Some(&json!({"actions": [{"delete_alias": {"alias_name": alias}},
                                 {"create_alias": {"collection_name": physical, "alias_name": alias}}]})),
    )?;
    let late = journal.read_after(covered)?;
    replayed += writer.replay(&late, Some(&mut embedder), covered)?.0;
    Ok(replayed)
}

/// (added, updated, unchanged) documents of `target` against the collection's `old` ones.
fn change_counts(
    target: &[Document],
    old: &BTreeMap<String, StoredDocument>,
) -> (usize, usize, usize) {
    let (mut added, mut updated, mut unchanged) = (0, 0, 0);
    for document in target {
        match old.get(&document.id) {
            None => added += 1,
            Some(before) if before.hash == hex(&content_hash(&document.embedding_text())) => {
                unchanged += 1
            }
            Some(_) => updated += 1,
        }
    }
    (added, updated, unchanged)
}

/// Longest wait for Qdrant to index a new generation before the build gives up on it.
const INDEXING_LIMIT: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Waits until Qdrant has built the new generation's HNSW graphs (the collection is green), so
/// the switch never puts an unindexed generation behind searches.
fn wait_until_indexed(client: &Client, physical: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let info = client.expect(Method::Get, &format!("/collections/{physical}"), None)?;
        if info["status"] == "green" {
            return Ok(());
        }
        if started.elapsed() > INDEXING_LIMIT {
            return Err(client.error(
                &format!("indexing {physical}"),
                format!("still {} after {INDEXING_LIMIT:?}", info["status"]),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
