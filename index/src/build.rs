//! Batch re-index jobs: embed a corpus into a new generation while the current one keeps
//! serving, then switch atomically.
//!
//! A job is resumable and incremental. Vectors are reused, not recomputed, when the content
//! hash of a document's embedded text and the space's model are unchanged: from the generation
//! being built (work done before a crash) or from the current generation's graph files (an
//! unchanged document). Only what is left is embedded, longest texts first so each batch pads
//! little, in batches that are committed to sled as they finish.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;

use crate::corpus::Corpus;
use crate::distance::normalize;
use crate::error::{IndexError, Result};
use crate::graph::{Graph, HnswParams, DEAD_LABEL};
use crate::identity::ModelIdentity;
use crate::keys;
use crate::store::{
    build_space_graph, content_hash, hex, now_unix, validate_name, CollectionManifest,
    CompactionPolicy, DocumentWrite, GenerationDb, Store,
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildSettings {
    /// Documents embedded and committed together. Default 512.
    pub batch_size: usize,
    /// HNSW parameters of the new generation.
    pub hnsw: HnswParams,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            batch_size: 512,
            hnsw: HnswParams::default(),
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
    /// Ids not in the previous generation.
    pub added: usize,
    /// Ids whose embedded text changed.
    pub updated: usize,
    /// Ids whose embedded text is unchanged (their metadata is refreshed).
    pub unchanged: usize,
    /// Ids of the previous generation missing from the corpus.
    pub deleted: usize,
    /// Documents embedded, per space.
    pub embedded: BTreeMap<String, usize>,
    /// Ids that appeared more than once in the corpus (the last line won).
    pub duplicate_ids: usize,
    /// Seconds embedding (model time plus writes).
    pub embed_seconds: f64,
    /// Seconds building graphs.
    pub graph_seconds: f64,
    /// Seconds in total.
    pub seconds: f64,
}

/// Embeds `corpus` into a new generation of `collection` (created if missing) for every space
/// in `spaces`, builds their graphs, and switches to it. Spaces of the previous generation that
/// are not given are not carried over.
pub fn build_collection(
    store: &Store,
    collection: &str,
    corpus: &Corpus,
    spaces: &mut [SpaceSpec<'_>],
    settings: &BuildSettings,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport> {
    let started = Instant::now();
    validate_name(collection)?;
    settings.hnsw.validate()?;
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
    for spec in spaces.iter() {
        validate_name(&spec.name)?;
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

    let mut manifest = match store.manifest(collection) {
        Ok(manifest) => manifest,
        Err(IndexError::UnknownCollection { .. }) => CollectionManifest {
            name: collection.to_string(),
            current: None,
            building: None,
            previous: None,
            hnsw: settings.hnsw,
            spaces: BTreeMap::new(),
            documents: 0,
            committed_unix: 0,
        },
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
    let dir = store.generation_dir(collection, generation);
    std::fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
    let db = GenerationDb::open(&dir)?;

    // Spaces of an interrupted build with another model (or no longer asked for) start over.
    let stored_spaces = db.spaces()?;
    for (name, identity) in &stored_spaces {
        match requested.get(name) {
            Some(wanted) if wanted.same_model(identity) => {}
            Some(_) => db.clear_space(name)?,
            None => db.drop_space(name)?,
        }
    }
    db.set_spaces(&requested)?;

    // What the previous generation offers: vectors by content hash, per space with the same
    // model, and its documents' hashes (for the summary).
    let previous = manifest.current;
    let mut reusable: BTreeMap<String, (Graph, HashMap<[u8; 16], u32>)> = BTreeMap::new();
    let mut previous_hashes: Option<HashMap<String, [u8; 16]>> = None;
    if let Some(current) = previous {
        let current_dir = store.generation_dir(collection, current);
        for (name, identity) in &manifest.spaces {
            let path = current_dir.join(format!("{name}.{}", keys::GRAPH_EXTENSION));
            let graph = match Graph::read(&path) {
                Ok(graph) => graph,
                Err(e) => {
                    tracing::warn!("{e}; its vectors are not reused");
                    continue;
                }
            };
            if previous_hashes.is_none() {
                previous_hashes = Some(
                    (0..graph.len() as u32)
                        .filter(|&slot| graph.label(slot) != DEAD_LABEL)
                        .map(|slot| (graph.id(slot).to_string(), *graph.hash(slot)))
                        .collect(),
                );
            }
            if requested
                .get(name)
                .is_some_and(|wanted| wanted.same_model(identity))
                && graph.identity() == identity.fingerprint
            {
                let by_hash = (0..graph.len() as u32)
                    .map(|slot| (*graph.hash(slot), slot))
                    .collect();
                reusable.insert(name.clone(), (graph, by_hash));
            }
        }
    }

    // Plan: per document, which spaces need embedding; write what can be reused right away.
    let hashes: Vec<[u8; 16]> = corpus
        .documents
        .iter()
        .map(|d| content_hash(&d.embedding_text()))
        .collect();
    let mut report = BuildReport {
        collection: collection.to_string(),
        generation,
        previous_generation: previous,
        resumed,
        duplicate_ids: corpus.duplicates.len(),
        ..BuildReport::default()
    };
    for (document, hash) in corpus.documents.iter().zip(&hashes) {
        match previous_hashes.as_ref().and_then(|p| p.get(&document.id)) {
            None => report.added += 1,
            Some(old) if old == hash => report.unchanged += 1,
            Some(_) => report.updated += 1,
        }
    }
    let mut to_embed: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut reuse_batch: Vec<(usize, SpaceVectors)> = Vec::new();
    for (index, (document, hash)) in corpus.documents.iter().zip(&hashes).enumerate() {
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
            match reusable.get(&spec.name) {
                Some((graph, by_hash)) if by_hash.contains_key(hash) => {
                    let slot = by_hash[hash];
                    reused.push((spec.name.clone(), graph.vector(slot as usize).to_vec()));
                }
                _ => missing.push(space_index),
            }
        }
        let record_current = built
            .as_ref()
            .is_some_and(|(_, doc)| doc.same_as(document, hash));
        if !missing.is_empty() {
            to_embed.push((index, missing));
            if !reused.is_empty() {
                reuse_batch.push((index, reused));
            }
        } else if !reused.is_empty() || !record_current {
            reuse_batch.push((index, reused));
        }
    }
    progress(BuildEvent::Planned {
        documents: corpus.documents.len(),
        to_embed: to_embed.len(),
        resumed,
        generation,
    });

    let embed_started = Instant::now();
    for chunk in reuse_batch.chunks(4_096) {
        let writes = chunk
            .iter()
            .map(|(index, vectors)| document_write(corpus, &hashes, *index, vectors))
            .collect::<Vec<_>>();
        db.write(&writes)?;
    }

    // Longest texts first: batches of similar lengths pad little, and the slowest work is
    // done while the estimate is still rough.
    let texts: Vec<String> = corpus
        .documents
        .iter()
        .map(|d| d.embedding_text())
        .collect();
    to_embed.sort_by_key(|(index, _)| std::cmp::Reverse(texts[*index].len()));
    for spec in spaces.iter() {
        report.embedded.insert(spec.name.clone(), 0);
    }
    let mut done = 0;
    for batch in to_embed.chunks(settings.batch_size) {
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
            let dim = spec.embedder.identity().dim;
            for (&i, mut vector) in members.iter().zip(embedded) {
                let id = &corpus.documents[batch[i].0].id;
                if vector.len() != dim {
                    return Err(IndexError::DimensionMismatch {
                        what: format!("vector of document {id:?} in space {:?}", spec.name),
                        expected: dim,
                        found: vector.len(),
                    });
                }
                if !normalize(&mut vector) {
                    return Err(IndexError::InvalidVector {
                        what: format!("vector of document {id:?} in space {:?}", spec.name),
                    });
                }
                vectors[i].push((spec.name.clone(), vector));
            }
            *report.embedded.get_mut(&spec.name).expect("space") += members.len();
        }
        let writes = batch
            .iter()
            .zip(&vectors)
            .map(|((index, _), vectors)| document_write(corpus, &hashes, *index, vectors))
            .collect::<Vec<_>>();
        db.write(&writes)?;
        done += batch.len();
        progress(BuildEvent::Embedded { done });
    }
    report.embed_seconds = embed_started.elapsed().as_secs_f64();

    // Documents of an interrupted build that the corpus no longer has.
    let wanted: std::collections::HashSet<&str> =
        corpus.documents.iter().map(|d| d.id.as_str()).collect();
    for (id, _) in db.live()? {
        if !wanted.contains(id.as_str()) {
            db.delete(&id)?;
        }
    }
    db.sweep()?;
    report.deleted = previous_hashes.as_ref().map_or(0, |p| {
        p.keys().filter(|id| !wanted.contains(id.as_str())).count()
    });
    report.documents = db.live()?.len();

    let graph_started = Instant::now();
    let corpus_hashes: HashMap<&str, [u8; 16]> = corpus
        .documents
        .iter()
        .map(|d| d.id.as_str())
        .zip(hashes.iter().copied())
        .collect();
    for (name, identity) in &requested {
        progress(BuildEvent::Graph {
            space: name.clone(),
            points: report.documents,
        });
        let previous = reusable.remove(name).map(|(graph, _)| graph);
        let carried = match previous {
            Some(graph) => carry_over(graph, &db, &corpus_hashes, &settings.hnsw)?,
            None => None,
        };
        let graph = match carried {
            Some(graph) => graph,
            None => build_space_graph(&db, name, identity, &settings.hnsw)?,
        };
        graph.write(&dir.join(format!("{name}.{}", keys::GRAPH_EXTENSION)))?;
    }
    report.graph_seconds = graph_started.elapsed().as_secs_f64();
    db.flush()?;
    drop(db);

    // The switch: one atomic manifest write.
    manifest.previous = manifest.current;
    manifest.current = Some(generation);
    manifest.building = None;
    manifest.hnsw = settings.hnsw;
    manifest.spaces = requested;
    manifest.documents = report.documents;
    manifest.committed_unix = now_unix();
    store.write_manifest(&manifest)?;
    store.remove_stale_generations(&manifest)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The previous generation's graph of a space, relabeled for the new generation, when it covers
/// every document of the new one with unchanged content and was built with the same
/// parameters. Documents that are gone become tombstones, up to the default compaction
/// policy's share. This saves rebuilding the graph of an unchanged or shrunk corpus. `None`
/// when the graph has to be rebuilt.
fn carry_over(
    graph: Graph,
    db: &GenerationDb,
    corpus_hashes: &HashMap<&str, [u8; 16]>,
    params: &HnswParams,
) -> Result<Option<Graph>> {
    if graph.params(params.ef_search) != *params {
        return Ok(None);
    }
    // The new generation holds exactly the corpus, written with these hashes.
    let nodes: HashMap<String, u32> = db.live()?.into_iter().collect();
    let mut labels = Vec::with_capacity(graph.len());
    let mut covered = 0;
    for slot in 0..graph.len() as u32 {
        let id = graph.id(slot);
        let unchanged =
            graph.label(slot) != DEAD_LABEL && corpus_hashes.get(id) == Some(graph.hash(slot));
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

/// The write of corpus document `index` with its new vectors.
fn document_write<'a>(
    corpus: &'a Corpus,
    hashes: &[[u8; 16]],
    index: usize,
    vectors: &'a SpaceVectors,
) -> DocumentWrite<'a> {
    DocumentWrite {
        document: &corpus.documents[index],
        hash: hashes[index],
        vectors: vectors
            .iter()
            .map(|(space, vector)| (space.as_str(), vector.as_slice()))
            .collect(),
    }
}

/// Vectors of one document by space name.
type SpaceVectors = Vec<(String, Vec<f32>)>;
