//! Batch re-index jobs: embed a corpus into a new generation while the current one keeps
//! serving, then switch atomically.
//!
//! A corpus build merges by default: the collection's documents that the corpus lacks (written
//! through the API, say) are kept; a replace build removes them and names them in its report.
//! A build can also re-embed the collection's own documents with new models, without a corpus.
//! Writes acknowledged through a served collection while a build runs reach the new generation
//! through the collection's journal (see [`crate::journal`]).
//!
//! A job is resumable and incremental. Vectors are reused, not recomputed, when the content
//! hash of a document's embedded text and the space's model are unchanged: from the generation
//! being built (work done before a crash) or from the current generation's graph files (an
//! unchanged document). Only what is left is embedded, longest texts first so each batch pads
//! little, in batches that are committed to sled as they finish.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;

use crate::corpus::{Corpus, Document};
use crate::error::{IndexError, Result};
use crate::graph::{Graph, HnswParams, DEAD_LABEL};
use crate::identity::ModelIdentity;
use crate::journal::{self, JournalOp, Replay, SpaceEmbedder};
use crate::keys;
use crate::lexical::{LexicalIndex, LexicalSettings, LEXICAL_SPACE};
use crate::store::{
    build_space_graph, content_hash, hex, now_unix, read_snapshot, validate_name, write_snapshot,
    CollectionManifest, CompactionPolicy, DocumentWrite, GenerationDb, Store, StoredDocument,
};

/// Turns document texts into vectors for one space. Implemented by the binary over
/// `attune-model`'s encoder; tests use deterministic fakes.
pub trait Embedder {
    /// The model's identity (fingerprint and dimension).
    fn identity(&self) -> &ModelIdentity;
    /// One vector per text, in order, `identity().dim` long (normalised by the store).
    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A space to build and the embedder of its model.
pub struct SpaceSpec<'a> {
    /// Space name (`base`, `tuned`, ...).
    pub name: String,
    /// Its model.
    pub embedder: &'a mut dyn Embedder,
}

/// Settings of a re-index job.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSettings {
    /// Documents embedded and committed together. Default 512.
    pub batch_size: usize,
    /// HNSW parameters of the new generation.
    pub hnsw: HnswParams,
    /// The generation's lexical space (BM25 over title, text and the named metadata fields);
    /// `None` builds none. Default: one with [`LexicalSettings::default`].
    pub lexical: Option<LexicalSettings>,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            batch_size: 512,
            hnsw: HnswParams::default(),
            lexical: Some(LexicalSettings::default()),
        }
    }
}

/// Progress of a job, for progress bars.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildEvent {
    /// The plan: documents in the corpus, how many need embedding in at least one space, and
    /// whether an interrupted build of this collection is being resumed.
    Planned {
        /// Documents in the corpus.
        documents: usize,
        /// Documents to embed (in one space or more).
        to_embed: usize,
        /// True when continuing an interrupted build.
        resumed: bool,
        /// The generation being built.
        generation: u64,
    },
    /// `done` of `to_embed` documents embedded and committed.
    Embedded {
        /// Documents done so far.
        done: usize,
    },
    /// Building the graph of a space.
    Graph {
        /// Space name.
        space: String,
        /// Points in it.
        points: usize,
    },
    /// Building the lexical space.
    Lexical {
        /// Documents in it.
        documents: usize,
    },
}

/// What a job did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BuildReport {
    /// Collection.
    pub collection: String,
    /// The generation now served.
    pub generation: u64,
    /// The generation served before, if any.
    pub previous_generation: Option<u64>,
    /// True when an interrupted build was continued.
    pub resumed: bool,
    /// Documents in the new generation.
    pub documents: usize,
    /// Ids the collection did not have.
    pub added: usize,
    /// Ids whose embedded text changed.
    pub updated: usize,
    /// Ids whose embedded text is unchanged (their metadata is refreshed).
    pub unchanged: usize,
    /// Documents removed because the corpus lacks them (replace builds only).
    pub deleted: usize,
    /// Their ids, sorted.
    pub removed: Vec<String>,
    /// Documents of the collection that the corpus lacks, kept (merge builds).
    pub kept: usize,
    /// Writes acknowledged through a served collection while the build ran, applied on top.
    pub replayed: usize,
    /// Documents embedded, per space.
    pub embedded: BTreeMap<String, usize>,
    /// Ids that appeared more than once in the corpus (the last line won).
    pub duplicate_ids: usize,
    /// Seconds embedding (model time plus writes).
    pub embed_seconds: f64,
    /// Seconds building graphs.
    pub graph_seconds: f64,
    /// Seconds spent building the lexical space (0 without one).
    pub lexical_seconds: f64,
    /// Seconds in total.
    pub seconds: f64,
    /// Clean-up after the switch that failed, one message each (older generations, journal
    /// records no reader needs). The new generation is served all the same, and the next
    /// build retries the clean-up. Empty when it all went.
    pub cleanup_errors: Vec<String>,
}

/// The messages of the clean-up steps after a switch that failed, each also logged. Past the
/// commit point a failure must not fail the build: its generation is already served.
pub(crate) fn cleanup_failures(steps: impl IntoIterator<Item = Result<()>>) -> Vec<String> {
    steps
        .into_iter()
        .filter_map(|step| step.err())
        .map(|error| {
            tracing::warn!(%error, "clean-up after a switch failed; the next build retries");
            error.to_string()
        })
        .collect()
}

/// Where a build's documents come from.
#[derive(Debug, Clone, Copy)]
pub enum BuildSource<'a> {
    /// A corpus, merged into the collection's documents or replacing them.
    Corpus {
        /// The corpus.
        corpus: &'a Corpus,
        /// What happens to documents of the collection the corpus lacks.
        mode: BuildMode,
    },
    /// The collection's own documents (to re-embed them with other models); the collection
    /// must exist.
    Collection,
}

impl BuildSource<'_> {
    /// Document ids the corpus repeated (0 for a re-embed of the collection).
    pub(crate) fn duplicate_ids(&self) -> usize {
        match self {
            BuildSource::Corpus { corpus, .. } => corpus.duplicates.len(),
            BuildSource::Collection => 0,
        }
    }
}

/// What a corpus build does with documents of the collection that the corpus lacks (written
/// through the API, or by an earlier corpus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BuildMode {
    /// Keep them; the corpus's documents are upserted. The default: a build never drops a
    /// document it was not told to.
    #[default]
    Merge,
    /// Delete them, so the collection equals the corpus; the report names each one.
    Replace,
}

impl std::fmt::Display for BuildMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Merge => "merge",
            Self::Replace => "replace",
        })
    }
}

impl std::str::FromStr for BuildMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "merge" => Ok(Self::Merge),
            "replace" => Ok(Self::Replace),
            other => Err(format!("unknown build mode {other:?} (merge, replace)")),
        }
    }
}

attune_core::serde_via_str!(BuildMode);

/// The collection's documents when a build starts: the current generation's snapshot plus the
/// journal's later records, and the vectors those records carry.
struct Base {
    documents: BTreeMap<String, StoredDocument>,
    /// The last journal record included.
    seq: u64,
    /// Journaled vectors by (model fingerprint, content hash).
    vectors: HashMap<(String, [u8; 16]), Vec<f32>>,
}

/// Reads the collection's documents without opening the database of the generation a server
/// may hold: its snapshot and the journal (a generation from before snapshots existed is read
/// from its database, which then must not be in use). A server that checkpoints its journal
/// between the two reads (a newer snapshot, older segments removed) makes it read again.
fn read_base(store: &Store, manifest: &CollectionManifest) -> Result<Base> {
    let mut attempts = 0;
    loop {
        match read_base_once(store, manifest) {
            Err(IndexError::Superseded { .. }) if attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

fn read_base_once(store: &Store, manifest: &CollectionManifest) -> Result<Base> {
    let journal_dir = store.journal_dir(&manifest.name);
    let mut base = Base {
        documents: BTreeMap::new(),
        seq: 0,
        vectors: HashMap::new(),
    };
    let Some(current) = manifest.current else {
        base.seq = journal::read_after(&journal_dir, 0)?.last_seq;
        return Ok(base);
    };
    let dir = store.generation_dir(&manifest.name, current);
    let (seq, documents) = match read_snapshot(&dir)? {
        Some(snapshot) => snapshot,
        None => {
            let db = GenerationDb::open(&dir)?;
            (db.journal_seq()?, db.live_documents()?)
        }
    };
    base.documents = documents.into_iter().map(|d| (d.id.clone(), d)).collect();
    let tail = journal::read_after(&journal_dir, seq)?;
    base.seq = tail.last_seq;
    for record in tail.records {
        match record.op {
            JournalOp::Delete { id } => {
                base.documents.remove(&id);
            }
            JournalOp::Upsert { document, vectors } => {
                let hash = content_hash(&document.embedding_text());
                for vector in vectors {
                    base.vectors
                        .insert((vector.fingerprint, hash), vector.values);
                }
                base.documents
                    .insert(document.id.clone(), StoredDocument::new(&document, &hash));
            }
        }
    }
    Ok(base)
}

/// The documents the new generation holds (before writes that arrive during the build) and
/// the ids a replace build removes.
pub(crate) fn target_documents(
    source: &BuildSource<'_>,
    current: &BTreeMap<String, StoredDocument>,
    collection: &str,
) -> Result<(Vec<Document>, Vec<String>, usize)> {
    match source {
        BuildSource::Collection => {
            if current.is_empty() {
                return Err(IndexError::InvalidSetting(format!(
                    "collection {collection:?} has no documents to re-embed; build it from a corpus"
                )));
            }
            Ok((
                current.values().map(StoredDocument::to_document).collect(),
                Vec::new(),
                0,
            ))
        }
        BuildSource::Corpus { corpus, mode } => {
            let wanted: std::collections::HashSet<&str> =
                corpus.documents.iter().map(|d| d.id.as_str()).collect();
            let others = current.values().filter(|d| !wanted.contains(d.id.as_str()));
            let mut documents = corpus.documents.clone();
            match mode {
                BuildMode::Merge => {
                    let before = documents.len();
                    documents.extend(others.map(StoredDocument::to_document));
                    let kept = documents.len() - before;
                    Ok((documents, Vec::new(), kept))
                }
                BuildMode::Replace => Ok((documents, others.map(|d| d.id.clone()).collect(), 0)),
            }
        }
    }
}

/// Spaces being built, as the embedder of journaled writes that need their models.
pub(crate) struct SpecEmbedder<'s, 'a>(pub(crate) &'s mut [SpaceSpec<'a>]);

impl SpaceEmbedder for SpecEmbedder<'_, '_> {
    fn embed_documents(
        &mut self,
        space: &str,
        texts: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, String> {
        let spec = self
            .0
            .iter_mut()
            .find(|s| s.name == space)
            .ok_or_else(|| format!("no space {space:?} in this build"))?;
        spec.embedder
            .embed_documents(texts)
            .map_err(|e| e.to_string())
    }
}

/// Replays the journal records after `after` into the generation being built (writes
/// acknowledged while it was built: newer than the corpus). Returns how many were applied and
/// the last record covered.
fn replay_journal(
    db: &GenerationDb,
    journal_dir: &std::path::Path,
    after: u64,
    requested: &BTreeMap<String, ModelIdentity>,
    spaces: &mut [SpaceSpec<'_>],
) -> Result<(usize, u64)> {
    let tail = journal::read_after(journal_dir, after)?;
    let mut embedder = SpecEmbedder(spaces);
    let (replays, covered) =
        journal::resolve(&tail.records, requested, Some(&mut embedder), after)?;
    let count = replays.len();
    for replay in replays {
        match replay {
            Replay::Delete(id) => {
                db.delete(&id)?;
            }
            Replay::Upsert(upsert) => {
                let vectors = crate::vector_store::upsert_vectors(&upsert, requested)?;
                let hash = content_hash(&upsert.document.embedding_text());
                db.write(&[DocumentWrite {
                    document: &upsert.document,
                    hash,
                    vectors: vectors
                        .iter()
                        .map(|(s, v)| (s.as_str(), v.as_slice()))
                        .collect(),
                }])?;
            }
        }
    }
    db.set_journal_seq(covered)?;
    Ok((count, covered))
}

/// Embeds documents into a new generation of `collection` (created if missing) for every space
/// in `spaces`, builds their graphs, and switches to it. The documents are those of `source`;
/// writes acknowledged through a served collection while the build runs are applied on top
/// before the switch (and any later ones by whoever opens the new generation). Spaces of the
/// previous generation that are not given are not carried over.
pub fn build_collection(
    store: &Store,
    collection: &str,
    source: BuildSource<'_>,
    spaces: &mut [SpaceSpec<'_>],
    settings: &BuildSettings,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport> {
    let started = Instant::now();
    let requested = check_inputs(collection, spaces, settings)?;
    let (mut manifest, generation, resumed) =
        start_generation(store, collection, &source, settings)?;
    // Read after the building marker is written: a server checkpoints its journal only while
    // no build is marked (see `Collection::checkpoint_journal_if_due`).
    let base = read_base(store, &manifest)?;
    let (documents, removed, kept) = target_documents(&source, &base.documents, collection)?;
    let dir = store.generation_dir(collection, generation);
    std::fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
    let db = GenerationDb::open(&dir)?;

    // Spaces of an interrupted build with another model (or no longer asked for) start over.
    for (name, identity) in &db.spaces()? {
        match requested.get(name) {
            Some(wanted) if wanted.same_model(identity) => {}
            Some(_) => db.clear_space(name)?,
            None => db.drop_space(name)?,
        }
    }
    db.set_spaces(&requested)?;

    let previous = manifest.current;
    let reusable = reusable_graphs(store, &manifest, &requested)?;
    let hashes: Vec<[u8; 16]> = documents
        .iter()
        .map(|d| content_hash(&d.embedding_text()))
        .collect();
    let mut report = BuildReport {
        collection: collection.to_string(),
        generation,
        previous_generation: previous,
        resumed,
        duplicate_ids: source.duplicate_ids(),
        kept,
        deleted: removed.len(),
        removed,
        ..BuildReport::default()
    };
    for (document, hash) in documents.iter().zip(&hashes) {
        match base.documents.get(&document.id) {
            None => report.added += 1,
            Some(old) if old.hash == hex(hash) => report.unchanged += 1,
            Some(_) => report.updated += 1,
        }
    }
    let plan = plan(&db, &documents, &hashes, spaces, &reusable, &base)?;
    progress(BuildEvent::Planned {
        documents: documents.len(),
        to_embed: plan.to_embed.len(),
        resumed,
        generation,
    });

    let embed_started = Instant::now();
    for chunk in plan.reuse.chunks(4_096) {
        let writes = chunk
            .iter()
            .map(|(index, vectors)| document_write(&documents, &hashes, *index, vectors))
            .collect::<Vec<_>>();
        db.write(&writes)?;
    }
    embed_documents(
        &db,
        &documents,
        &hashes,
        plan.to_embed,
        spaces,
        settings.batch_size,
        &mut report,
        progress,
    )?;
    report.embed_seconds = embed_started.elapsed().as_secs_f64();

    // Documents of an interrupted build that the target no longer has.
    let wanted: std::collections::HashSet<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    for (id, _) in db.live()? {
        if !wanted.contains(id.as_str()) {
            db.delete(&id)?;
        }
    }
    // Writes acknowledged while this build ran: newer than its documents.
    let journal_dir = store.journal_dir(collection);
    let (replayed, seq) = replay_journal(&db, &journal_dir, base.seq, &requested, spaces)?;
    report.replayed = replayed;
    db.sweep()?;
    report.documents = db.live()?.len();

    let graph_started = Instant::now();
    write_graphs(
        &db,
        &dir,
        &requested,
        reusable,
        settings,
        report.documents,
        progress,
    )?;
    report.graph_seconds = graph_started.elapsed().as_secs_f64();
    // Writes acknowledged while the graphs were built (searched exactly until compaction);
    // any after this are applied by whoever opens the new generation.
    let (late, seq) = replay_journal(&db, &journal_dir, seq, &requested, spaces)?;
    report.replayed += late;
    db.sweep()?;
    let live = db.live_documents()?;
    report.documents = live.len();
    write_snapshot(&dir, seq, &live)?;
    db.flush()?;
    if let Some(settings) = &settings.lexical {
        let lexical_started = Instant::now();
        progress(BuildEvent::Lexical {
            documents: live.len(),
        });
        build_lexical(&db, &dir, settings, &live)?;
        report.lexical_seconds = lexical_started.elapsed().as_secs_f64();
    }
    drop(db);

    // The switch: one atomic manifest write.
    manifest.previous = manifest.current;
    manifest.current = Some(generation);
    manifest.building = None;
    manifest.hnsw = settings.hnsw;
    manifest.spaces = requested;
    manifest.lexical = settings.lexical.clone();
    manifest.documents = report.documents;
    manifest.committed_unix = now_unix();
    store.write_manifest(&manifest)?;
    report.cleanup_errors = cleanup_failures([
        store.remove_stale_generations(&manifest),
        journal::trim(&journal_dir, seq).map(drop),
    ]);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes the generation's lexical index from its live documents, at the journal position the
/// generation has applied (the position a collection checks when it opens it).
pub(crate) fn build_lexical(
    db: &GenerationDb,
    dir: &std::path::Path,
    settings: &LexicalSettings,
    live: &[StoredDocument],
) -> Result<LexicalIndex> {
    let nodes: HashMap<String, u32> = db.live()?.into_iter().collect();
    let index = LexicalIndex::create(Some(&dir.join(keys::LEXICAL_DIR)), settings)?;
    let documents = live
        .iter()
        .filter_map(|document| Some((*nodes.get(&document.id)?, document)));
    index.fill(documents, db.journal_seq()?)?;
    Ok(index)
}

/// Writes the graph of each space: the current generation's, relabelled, where it still
/// covers every document (see [`carry_over`]), otherwise built from the stored vectors.
fn write_graphs(
    db: &GenerationDb,
    dir: &std::path::Path,
    requested: &BTreeMap<String, ModelIdentity>,
    mut reusable: BTreeMap<String, ReusableGraph>,
    settings: &BuildSettings,
    points: usize,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<()> {
    let live_hashes: HashMap<String, String> = db
        .live_documents()?
        .into_iter()
        .map(|d| (d.id, d.hash))
        .collect();
    for (name, identity) in requested {
        progress(BuildEvent::Graph {
            space: name.clone(),
            points,
        });
        let carried = match reusable.remove(name) {
            Some((graph, _)) => carry_over(graph, db, &live_hashes, &settings.hnsw)?,
            None => None,
        };
        let graph = match carried {
            Some(graph) => graph,
            None => build_space_graph(db, name, identity, &settings.hnsw)?,
        };
        graph.write(&dir.join(format!("{name}.{}", keys::GRAPH_EXTENSION)))?;
    }
    Ok(())
}

/// Checks the names and settings of a build; returns each space's model.
pub(crate) fn check_inputs(
    collection: &str,
    spaces: &[SpaceSpec<'_>],
    settings: &BuildSettings,
) -> Result<BTreeMap<String, ModelIdentity>> {
    validate_name(collection)?;
    settings.hnsw.validate()?;
    if let Some(lexical) = &settings.lexical {
        lexical.validate()?;
    }
    if settings.batch_size == 0 {
        return Err(IndexError::InvalidSetting(
            "batch size must be at least 1".into(),
        ));
    }
    if spaces.is_empty() {
        return Err(IndexError::InvalidSetting(
            "a build needs at least one space".into(),
        ));
    }
    let mut requested: BTreeMap<String, ModelIdentity> = BTreeMap::new();
    for spec in spaces {
        validate_name(&spec.name)?;
        if spec.name == LEXICAL_SPACE {
            return Err(IndexError::InvalidName {
                name: spec.name.clone(),
                reason:
                    "\"lexical\" names a collection's BM25 space; give the dense space another name",
            });
        }
        if requested
            .insert(spec.name.clone(), spec.embedder.identity().clone())
            .is_some()
        {
            return Err(IndexError::InvalidSetting(format!(
                "space {:?} is given twice",
                spec.name
            )));
        }
    }
    Ok(requested)
}

/// The collection's manifest with the generation being built marked in it (an interrupted one
/// is resumed): (manifest, generation, resumed). A new collection gets a manifest here, unless
/// the source is the collection itself.
fn start_generation(
    store: &Store,
    collection: &str,
    source: &BuildSource<'_>,
    settings: &BuildSettings,
) -> Result<(CollectionManifest, u64, bool)> {
    let mut manifest = match store.manifest(collection) {
        Ok(manifest) => manifest,
        Err(IndexError::UnknownCollection { .. }) if !matches!(source, BuildSource::Collection) => {
            CollectionManifest {
                name: collection.to_string(),
                current: None,
                building: None,
                previous: None,
                hnsw: settings.hnsw,
                spaces: BTreeMap::new(),
                lexical: None,
                documents: 0,
                committed_unix: 0,
            }
        }
        Err(e) => return Err(e),
    };
    let resumed = manifest
        .building
        .is_some_and(|b| store.generation_dir(collection, b).exists());
    let generation = match manifest.building {
        Some(b) if resumed => b,
        _ => {
            let next = store
                .generation_numbers(collection)?
                .last()
                .copied()
                .unwrap_or(0)
                .max(manifest.current.unwrap_or(0))
                + 1;
            manifest.building = Some(next);
            store.write_manifest(&manifest)?;
            next
        }
    };
    Ok((manifest, generation, resumed))
}

/// A graph of the current generation whose vectors can be reused, and its slots by content
/// hash.
type ReusableGraph = (Graph, HashMap<[u8; 16], u32>);

/// The current generation's graphs of the spaces whose model is unchanged.
fn reusable_graphs(
    store: &Store,
    manifest: &CollectionManifest,
    requested: &BTreeMap<String, ModelIdentity>,
) -> Result<BTreeMap<String, ReusableGraph>> {
    let mut reusable = BTreeMap::new();
    let Some(current) = manifest.current else {
        return Ok(reusable);
    };
    let current_dir = store.generation_dir(&manifest.name, current);
    for (name, identity) in &manifest.spaces {
        if !requested
            .get(name)
            .is_some_and(|wanted| wanted.same_model(identity))
        {
            continue;
        }
        let path = current_dir.join(format!("{name}.{}", keys::GRAPH_EXTENSION));
        let graph = match Graph::read(&path) {
            Ok(graph) => graph,
            Err(e) => {
                tracing::warn!("{e}; its vectors are not reused");
                continue;
            }
        };
        if graph.identity() == identity.fingerprint {
            let by_hash = (0..graph.len() as u32)
                .map(|slot| (*graph.hash(slot), slot))
                .collect();
            reusable.insert(name.clone(), (graph, by_hash));
        }
    }
    Ok(reusable)
}

/// What a build must do per document.
struct Plan {
    /// (document index, indices of the spaces to embed it in).
    to_embed: Vec<(usize, Vec<usize>)>,
    /// (document index, reused vectors): written before any embedding.
    reuse: Vec<(usize, SpaceVectors)>,
}

/// Per document, which spaces need embedding and which vectors can be reused: from the
/// generation being built (an interrupted build), the current generation's graphs, or the
/// journal.
fn plan(
    db: &GenerationDb,
    documents: &[Document],
    hashes: &[[u8; 16]],
    spaces: &[SpaceSpec<'_>],
    reusable: &BTreeMap<String, ReusableGraph>,
    base: &Base,
) -> Result<Plan> {
    let mut plan = Plan {
        to_embed: Vec::new(),
        reuse: Vec::new(),
    };
    for (index, (document, hash)) in documents.iter().zip(hashes).enumerate() {
        let built = match db.node_of(&document.id)? {
            Some(node) => db.document(node)?.map(|doc| (node, doc)),
            None => None,
        };
        let same_record = built.as_ref().is_some_and(|(_, doc)| doc.hash == hex(hash));
        let mut missing = Vec::new();
        let mut reused = Vec::new();
        for (space_index, spec) in spaces.iter().enumerate() {
            if same_record {
                let node = built.as_ref().expect("built").0;
                if db
                    .vector(&spec.name, node)?
                    .is_some_and(|(stored_hash, _)| stored_hash == *hash)
                {
                    continue;
                }
            }
            let fingerprint = &spec.embedder.identity().fingerprint;
            match reusable.get(&spec.name) {
                Some((graph, by_hash)) if by_hash.contains_key(hash) => {
                    let slot = by_hash[hash];
                    reused.push((spec.name.clone(), graph.vector(slot as usize).to_vec()));
                }
                _ => match base.vectors.get(&(fingerprint.clone(), *hash)) {
                    Some(vector) => reused.push((spec.name.clone(), vector.clone())),
                    None => missing.push(space_index),
                },
            }
        }
        let record_current = built
            .as_ref()
            .is_some_and(|(_, doc)| doc.same_as(document, hash));
        if !missing.is_empty() {
            plan.to_embed.push((index, missing));
            if !reused.is_empty() {
                plan.reuse.push((index, reused));
            }
        } else if !reused.is_empty() || !record_current {
            plan.reuse.push((index, reused));
        }
    }
    Ok(plan)
}

/// Embeds the planned documents batch by batch (longest texts first, so batches pad little)
/// and commits each batch.
#[allow(clippy::too_many_arguments)]
fn embed_documents(
    db: &GenerationDb,
    documents: &[Document],
    hashes: &[[u8; 16]],
    mut to_embed: Vec<(usize, Vec<usize>)>,
    spaces: &mut [SpaceSpec<'_>],
    batch_size: usize,
    report: &mut BuildReport,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<()> {
    let texts: Vec<String> = documents.iter().map(|d| d.embedding_text()).collect();
    to_embed.sort_by_key(|(index, _)| std::cmp::Reverse(texts[*index].len()));
    for spec in spaces.iter() {
        report.embedded.insert(spec.name.clone(), 0);
    }
    let mut done = 0;
    for batch in to_embed.chunks(batch_size) {
        let mut vectors: Vec<Vec<(String, Vec<f32>)>> = vec![Vec::new(); batch.len()];
        for (space_index, spec) in spaces.iter_mut().enumerate() {
            let members: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].1.contains(&space_index))
                .collect();
            if members.is_empty() {
                continue;
            }
            let batch_texts: Vec<&str> = members
                .iter()
                .map(|&i| texts[batch[i].0].as_str())
                .collect();
            let embedded =
                spec.embedder
                    .embed_documents(&batch_texts)
                    .map_err(|e| IndexError::Embedding {
                        space: spec.name.clone(),
                        message: e.to_string(),
                    })?;
            if embedded.len() != members.len() {
                return Err(IndexError::Embedding {
                    space: spec.name.clone(),
                    message: format!("{} vectors for {} texts", embedded.len(), members.len()),
                });
            }
            let identity = spec.embedder.identity().clone();
            for (&i, vector) in members.iter().zip(embedded) {
                let id = &documents[batch[i].0].id;
                let what = || format!("vector of document {id:?} in space {:?}", spec.name);
                let unit = crate::vector_store::unit_vector(&vector, &identity, &what)?;
                vectors[i].push((spec.name.clone(), unit));
            }
            *report.embedded.get_mut(&spec.name).expect("space") += members.len();
        }
        let writes = batch
            .iter()
            .zip(&vectors)
            .map(|((index, _), vectors)| document_write(documents, hashes, *index, vectors))
            .collect::<Vec<_>>();
        db.write(&writes)?;
        done += batch.len();
        progress(BuildEvent::Embedded { done });
    }
    Ok(())
}

/// The previous generation's graph of a space, relabeled for the new generation, when it covers
/// every document of the new one with unchanged content and was built with the same
/// parameters. Documents that are gone become tombstones, up to the default compaction
/// policy's share. This saves rebuilding the graph of an unchanged or shrunk corpus. `None`
/// when the graph has to be rebuilt.
fn carry_over(
    graph: Graph,
    db: &GenerationDb,
    live_hashes: &HashMap<String, String>,
    params: &HnswParams,
) -> Result<Option<Graph>> {
    if graph.params(params.ef_search) != *params {
        return Ok(None);
    }
    // The new generation's live documents and the hex hashes of their embedded texts.
    let nodes: HashMap<String, u32> = db.live()?.into_iter().collect();
    let mut labels = Vec::with_capacity(graph.len());
    let mut covered = 0;
    for slot in 0..graph.len() as u32 {
        let id = graph.id(slot);
        let unchanged = graph.label(slot) != DEAD_LABEL
            && live_hashes
                .get(id)
                .is_some_and(|h| *h == hex(graph.hash(slot)));
        let label = match nodes.get(id) {
            Some(&node) if unchanged => {
                covered += 1;
                node
            }
            _ => DEAD_LABEL,
        };
        labels.push(label);
    }
    let dead = graph.len() - covered;
    if covered != nodes.len() || CompactionPolicy::default().due(dead, graph.len()) {
        return Ok(None);
    }
    Ok(Some(graph.relabeled(labels)))
}

/// The write of document `index` with its new vectors.
fn document_write<'a>(
    documents: &'a [Document],
    hashes: &[[u8; 16]],
    index: usize,
    vectors: &'a SpaceVectors,
) -> DocumentWrite<'a> {
    DocumentWrite {
        document: &documents[index],
        hash: hashes[index],
        vectors: vectors
            .iter()
            .map(|(space, vector)| (space.as_str(), vector.as_slice()))
            .collect(),
    }
}

/// Vectors of one document by space name.
type SpaceVectors = Vec<(String, Vec<f32>)>;
