//! Collection operations on an open generation: search (graph, delta, exact under selective
//! filters), upserts, deletes, facets, compaction and figures.

use super::*;

/// When a space's graph is rebuilt: once `tombstones + delta ≥ max(min_changes, ratio × graph
/// points)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionPolicy {
    /// Changes (deleted or replaced points in the graph, plus points outside it) below which the
    /// graph is never rebuilt. Default 1,024.
    pub min_changes: usize,
    /// Fraction of the graph's points. Default 0.1.
    pub ratio: f64,
}

impl CompactionPolicy {
    /// True when a graph of `graph_points` with `changes` tombstones and outside points is due
    /// for a rebuild.
    pub fn due(&self, changes: usize, graph_points: usize) -> bool {
        let threshold = (self.ratio * graph_points as f64).ceil() as usize;
        changes > 0 && changes >= threshold.max(self.min_changes)
    }
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            min_changes: 1_024,
            ratio: 0.1,
        }
    }
}

pub(crate) struct State {
    /// The last journal record applied to this generation.
    pub(crate) applied: u64,
    pub(crate) spaces: BTreeMap<String, SpaceIndex>,
    pub(crate) live: NodeSet,
    pub(crate) fields: FieldIndex,
    pub(crate) documents: usize,
    /// The lexical space, when the generation has one.
    pub(crate) lexical: Option<LexicalIndex>,
}

/// One filterable metadata field of a collection and its most frequent values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facet {
    /// Top-level metadata field.
    pub field: String,
    /// Distinct values in the collection (`values` may hold fewer).
    pub distinct: usize,
    /// Values, most frequent first.
    pub values: Vec<FacetValue>,
}

/// A value of a [`Facet`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FacetValue {
    /// The value as stored (string, number or boolean).
    pub value: Value,
    /// Live documents with it.
    pub count: usize,
}

/// A search over one space.
#[derive(Debug, Clone)]
pub struct SearchRequest<'a> {
    /// The space to search.
    pub space: &'a str,
    /// The query vector (normalised here).
    pub vector: &'a [f32],
    /// The model that embedded the query; must be the space's model.
    pub model: &'a ModelIdentity,
    /// Results wanted.
    pub k: usize,
    /// Candidate list size; `None` uses the collection's `ef_search`.
    pub ef: Option<usize>,
    /// Metadata filter, applied inside the search.
    pub filter: &'a Filter,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    /// External id.
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
    /// Title.
    pub title: String,
    /// Metadata.
    pub metadata: Map<String, Value>,
}

/// Filtered searches whose filter passes at most this many live documents (or few enough that
/// scanning them costs less than the graph walk, see `Collection::search`) are answered exactly:
/// a walk under a selective filter must skip almost every point it visits.
pub const EXACT_FILTER_LIMIT: usize = 2_048;

/// Per-space figures of an open collection.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceStats {
    /// Space name.
    pub name: String,
    /// Its model.
    pub model: ModelIdentity,
    /// Points in the graph (live or not).
    pub graph_points: usize,
    /// Graph points deleted or replaced since the graph was built.
    pub tombstones: usize,
    /// Live points outside the graph (searched exactly until compaction).
    pub delta: usize,
}

/// Figures of an open collection.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionStats {
    /// Collection name.
    pub name: String,
    /// Generation served.
    pub generation: u64,
    /// Live documents.
    pub documents: usize,
    /// HNSW parameters.
    pub hnsw: HnswParams,
    /// Spaces.
    pub spaces: Vec<SpaceStats>,
    /// Bytes on disk of the served generation (sled database and graph files).
    pub disk_bytes: u64,
    /// Bytes of sled's database alone.
    pub database_bytes: u64,
    /// The lexical space's settings, when the collection has one.
    pub lexical: Option<LexicalSettings>,
}

/// What an upsert did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpsertReport {
    /// New ids.
    pub added: usize,
    /// Ids whose content changed (new vectors).
    pub updated: usize,
    /// Ids whose content was unchanged (metadata or title may have changed; no new vectors).
    pub unchanged: usize,
    /// Spaces whose graph was rebuilt afterwards.
    pub compacted: Vec<String>,
}

/// An upsert: a document and its vectors by space.
#[derive(Debug, Clone)]
pub struct UpsertDocument {
    /// The document.
    pub document: Document,
    /// One vector per space of the collection.
    pub vectors: BTreeMap<String, Vec<f32>>,
}

/// The current generation of a collection, open for search and updates. Searches take a read
/// lock; updates a write lock. Blocking (sled, graph walks): call it off async threads.
pub struct Collection {
    name: String,
    generation: u64,
    dir: PathBuf,
    db: GenerationDb,
    journal_dir: PathBuf,
    store: Store,
    /// The journal's writer, opened by the first write.
    journal: std::sync::Mutex<Option<Arc<Journal>>>,
    _lease: GenerationLease,
    hnsw: HnswParams,
    policy: CompactionPolicy,
    state: RwLock<State>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Collection {
    pub(crate) fn open(
        store: &Store,
        manifest: CollectionManifest,
        generation: u64,
        policy: CompactionPolicy,
    ) -> Result<Self> {
        let lease = GenerationLease::acquire(store, &manifest.name, generation)?;
        let dir = store.generation_dir(&manifest.name, generation);
        let db = GenerationDb::open(&dir)?;
        let mut live = NodeSet::default();
        let live_nodes = db.live()?;
        for (_, node) in &live_nodes {
            live.insert(*node);
        }
        let mut spaces = BTreeMap::new();
        for (name, identity) in db.spaces()? {
            let path = dir.join(format!("{name}.{}", keys::GRAPH_EXTENSION));
            let graph = match Graph::read(&path) {
                Ok(graph)
                    if graph.identity() == identity.fingerprint && graph.dim() == identity.dim =>
                {
                    Some(graph)
                }
                Ok(_) => {
                    tracing::warn!("{}: built for another model; rebuilding", path.display());
                    None
                }
                Err(e) => {
                    tracing::warn!("{e}; rebuilding it from the stored vectors");
                    None
                }
            };
            let index = match graph {
                Some(graph) => {
                    let mut index = SpaceIndex::new(identity, graph);
                    index.tombstones = index
                        .graph
                        .labels()
                        .iter()
                        .filter(|&&node| !live.contains(node))
                        .count();
                    for (_, node) in &live_nodes {
                        if index.slot(*node).is_none() {
                            let Some((_, vector)) = db.vector(&name, *node)? else {
                                return Err(IndexError::CorruptRecord {
                                    what: format!("space {name:?}"),
                                    reason: format!("live node {node} has no vector"),
                                });
                            };
                            index.push_delta(*node, &vector);
                        }
                    }
                    index
                }
                None => {
                    let graph = build_space_graph(&db, &name, &identity, &manifest.hnsw)?;
                    graph.write(&path)?;
                    SpaceIndex::new(identity, graph)
                }
            };
            spaces.insert(name, index);
        }
        let fields = db.load_fields()?;
        let applied = db.journal_seq()?;
        let lexical = match &manifest.lexical {
            Some(settings) => Some(open_lexical(&db, &dir, settings, applied)?),
            None => None,
        };
        let collection = Self {
            name: manifest.name.clone(),
            generation,
            dir,
            db,
            journal_dir: store.journal_dir(&manifest.name),
            store: store.clone(),
            journal: std::sync::Mutex::new(None),
            _lease: lease,
            hnsw: manifest.hnsw,
            policy,
            state: RwLock::new(State {
                applied,
                spaces,
                live,
                documents: live_nodes.len(),
                fields,
                lexical,
            }),
        };
        // Writes acknowledged since this generation last applied the journal (on another
        // generation, or before a crash), as far as no embedding is needed; the server embeds
        // the rest through `catch_up`.
        collection.catch_up(None)?;
        collection.compact_if_needed()?;
        Ok(collection)
    }

    /// Collection name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Generation being served.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// HNSW parameters.
    pub fn hnsw(&self) -> HnswParams {
        self.hnsw
    }

    /// Spaces and their models.
    pub fn spaces(&self) -> BTreeMap<String, ModelIdentity> {
        let state = self.state.read().expect("collection lock");
        state
            .spaces
            .iter()
            .map(|(name, index)| (name.clone(), index.identity.clone()))
            .collect()
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.state.read().expect("collection lock").documents
    }

    /// True when the collection has no live document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn unknown_space(&self, state: &State, space: &str) -> IndexError {
        IndexError::UnknownSpace {
            collection: self.name.clone(),
            space: space.to_string(),
            available: state.spaces.keys().cloned().collect::<Vec<_>>().join(", "),
        }
    }

    /// The stored document `id`, if live.
    pub fn document(&self, id: &str) -> Result<Option<StoredDocument>> {
        match self.db.node_of(id)? {
            Some(node) => self.db.document(node),
            None => Ok(None),
        }
    }

    /// The stored vector of document `id` in `space`, if live.
    pub fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>> {
        {
            let state = self.state.read().expect("collection lock");
            if !state.spaces.contains_key(space) {
                return Err(self.unknown_space(&state, space));
            }
        }
        match self.db.node_of(id)? {
            Some(node) => Ok(self.db.vector(space, node)?.map(|(_, v)| v)),
            None => Ok(None),
        }
    }

    /// Ids of all live documents (unordered).
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self.db.live()?.into_iter().map(|(id, _)| id).collect())
    }

    /// The filterable metadata fields of the live documents: per field, its values with how
    /// many documents have each, most frequent first (ties by value), at most `max_values` per
    /// field. Fields are sorted by name. Array fields count each element.
    pub fn facets(&self, max_values: usize) -> Vec<Facet> {
        let state = self.state.read().expect("collection lock");
        let mut by_field: BTreeMap<&str, Vec<FacetValue>> = BTreeMap::new();
        for ((field, key), nodes) in &state.fields.postings {
            let count = nodes.iter().filter(|&&n| state.live.contains(n)).count();
            if count == 0 {
                continue;
            }
            if let Some(value) = value_of_key(key) {
                by_field
                    .entry(field.as_str())
                    .or_default()
                    .push(FacetValue { value, count });
            }
        }
        by_field
            .into_iter()
            .map(|(field, mut values)| {
                values.sort_by(|a, b| {
                    b.count
                        .cmp(&a.count)
                        .then_with(|| a.value.to_string().cmp(&b.value.to_string()))
                });
                let distinct = values.len();
                values.truncate(max_values);
                Facet {
                    field: field.to_string(),
                    distinct,
                    values,
                }
            })
            .collect()
    }

    /// Top-k documents of a space for a query vector, best first.
    pub fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<SearchHit>> {
        let nodes = self.search_nodes(request)?;
        self.hits(nodes)
    }

    /// The settings of the lexical space, if the generation has one.
    pub fn lexical(&self) -> Option<LexicalSettings> {
        let state = self.state.read().expect("collection lock");
        state.lexical.as_ref().map(|l| l.settings().clone())
    }

    /// The `k` best live documents of the lexical space (BM25) that pass the filter.
    pub fn lexical_search(&self, request: &LexicalRequest<'_>) -> Result<Vec<SearchHit>> {
        let nodes = self.lexical_search_nodes(request)?;
        self.hits(nodes)
    }

    /// [`Collection::lexical_search`] returning node numbers and scores only.
    pub(crate) fn lexical_search_nodes(
        &self,
        request: &LexicalRequest<'_>,
    ) -> Result<Vec<(u32, f32)>> {
        crate::vector_store::check_search(request.filter, request.k)?;
        let state = self.state.read().expect("collection lock");
        let lexical = state
            .lexical
            .as_ref()
            .ok_or_else(|| self.unknown_space(&state, crate::LEXICAL_SPACE))?;
        let live = &state.live;
        if request.filter.is_empty() {
            return lexical.search(request.text, request.k, &|node| live.contains(node));
        }
        let mut allowed = NodeSet::default();
        for node in state.fields.matching(request.filter) {
            if live.contains(node) {
                allowed.insert(node);
            }
        }
        lexical.search(request.text, request.k, &|node| allowed.contains(node))
    }

    /// The cosine of `query` (unit length) with each live document of `ids` in `space`, from
    /// the vectors held in memory (graph and delta).
    pub fn score_ids(
        &self,
        space: &str,
        query: &[f32],
        ids: &[&str],
    ) -> Result<Vec<(String, f32)>> {
        let nodes: Vec<(&str, Option<u32>)> = ids
            .iter()
            .map(|id| Ok((*id, self.db.node_of(id)?)))
            .collect::<Result<_>>()?;
        let state = self.state.read().expect("collection lock");
        let index = state
            .spaces
            .get(space)
            .ok_or_else(|| self.unknown_space(&state, space))?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, node) in nodes {
            let Some(node) = node.filter(|&n| state.live.contains(n)) else {
                continue;
            };
            if let Some(vector) = index.vector_of(node) {
                out.push((id.to_string(), dot(query, vector)));
            }
        }
        Ok(out)
    }

    /// (id, score) of (node, score) pairs, in their order; nodes deleted meanwhile are skipped.
    pub(crate) fn ids_of(&self, nodes: Vec<(u32, f32)>) -> Result<Vec<(String, f32)>> {
        let mut out = Vec::with_capacity(nodes.len());
        for (node, score) in nodes {
            if let Some(id) = self.db.id_of(node)? {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    /// Search hits of (node, score) pairs, in their order; nodes deleted meanwhile are skipped.
    fn hits(&self, nodes: Vec<(u32, f32)>) -> Result<Vec<SearchHit>> {
        let mut hits = Vec::with_capacity(nodes.len());
        for (node, score) in nodes {
            if let Some(doc) = self.db.document(node)? {
                hits.push(SearchHit {
                    id: doc.id,
                    score,
                    title: doc.title,
                    metadata: doc.metadata,
                });
            }
        }
        Ok(hits)
    }

    /// [`Collection::search`] returning node numbers and scores only.
    pub(crate) fn search_nodes(&self, request: &SearchRequest<'_>) -> Result<Vec<(u32, f32)>> {
        crate::vector_store::check_search(request.filter, request.k)?;
        let state = self.state.read().expect("collection lock");
        let space = state
            .spaces
            .get(request.space)
            .ok_or_else(|| self.unknown_space(&state, request.space))?;
        if !space.identity.same_model(request.model) {
            return Err(IndexError::ModelMismatch {
                collection: self.name.clone(),
                space: request.space.to_string(),
                stored: space.identity.fingerprint.clone(),
                given: request.model.fingerprint.clone(),
            });
        }
        if request.vector.len() != space.identity.dim {
            return Err(IndexError::DimensionMismatch {
                what: "query vector".into(),
                expected: space.identity.dim,
                found: request.vector.len(),
            });
        }
        let mut query = request.vector.to_vec();
        if !normalize(&mut query) {
            return Err(IndexError::InvalidVector {
                what: "query vector".into(),
            });
        }
        let ef = request.ef.unwrap_or(self.hnsw.ef_search).max(request.k);
        let graph = &space.graph;
        let live = &state.live;
        let mut results: Vec<(u32, f32)> = Vec::with_capacity(request.k * 2);
        if request.filter.is_empty() {
            let eligible = |slot: u32| live.contains(graph.label(slot));
            let use_filter = space.tombstones > 0;
            let hits = graph.search(
                &query,
                request.k,
                ef,
                if use_filter { Some(&eligible) } else { None },
            );
            results.extend(hits.iter().map(|h| (graph.label(h.slot), h.similarity)));
            for (i, node) in space.delta_nodes.iter().enumerate() {
                if live.contains(*node) {
                    let v =
                        &space.delta_vectors[i * space.identity.dim..(i + 1) * space.identity.dim];
                    results.push((*node, dot(&query, v)));
                }
            }
        } else {
            let matching: Vec<u32> = state
                .fields
                .matching(request.filter)
                .into_iter()
                .filter(|&node| live.contains(node))
                .collect();
            // A graph walk under a filter passing m of n points visits about ef·2M·n/m points;
            // scanning the m points exactly costs m. Scan when that is cheaper.
            let walk_cost = ef as f64 * 2.0 * self.hnsw.m as f64 * graph.len() as f64;
            let m = matching.len() as f64;
            if matching.len() <= EXACT_FILTER_LIMIT || m * m <= walk_cost {
                for node in matching {
                    if let Some(vector) = space.vector_of(node) {
                        results.push((node, dot(&query, vector)));
                    }
                }
            } else {
                let mut allowed = NodeSet::default();
                for &node in &matching {
                    allowed.insert(node);
                }
                let eligible = |slot: u32| allowed.contains(graph.label(slot));
                let hits = graph.search(&query, request.k, ef, Some(&eligible));
                results.extend(hits.iter().map(|h| (graph.label(h.slot), h.similarity)));
                for (i, node) in space.delta_nodes.iter().enumerate() {
                    if allowed.contains(*node) {
                        let v = &space.delta_vectors
                            [i * space.identity.dim..(i + 1) * space.identity.dim];
                        results.push((*node, dot(&query, v)));
                    }
                }
            }
        }
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if results.len() > request.k {
            results.select_nth_unstable_by(request.k - 1, order);
            results.truncate(request.k);
        }
        results.sort_by(order);
        Ok(results)
    }

    /// Inserts or replaces documents. Every space of the collection needs a vector per
    /// document, from the space's model (`models`). A document whose embedded text is unchanged
    /// keeps its vectors (the ones given are ignored); one whose text changed gets a new node and
    /// its old vectors become tombstones. Rebuilds graphs when the compaction policy says so.
    /// Durable when it returns: journaled (so later generations get it too), then applied.
    pub fn upsert(
        &self,
        documents: &[UpsertDocument],
        models: &BTreeMap<String, ModelIdentity>,
    ) -> Result<UpsertReport> {
        let mut state = self.state.write().expect("collection lock");
        for (name, space) in &state.spaces {
            match models.get(name) {
                None => {
                    return Err(IndexError::InvalidDocument {
                        id: String::new(),
                        message: format!("no model given for space {name:?}"),
                    })
                }
                Some(model) if !space.identity.same_model(model) => {
                    return Err(IndexError::ModelMismatch {
                        collection: self.name.clone(),
                        space: name.clone(),
                        stored: space.identity.fingerprint.clone(),
                        given: model.fingerprint.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        // Validate and normalise everything before the first write.
        let prepared = prepare_upserts(&state, documents.iter())?;
        let journal = self.journal()?;
        let mut writer = journal.begin();
        self.sync_with_journal(&mut state, writer.last_seq())?;
        let identities = identities(&state);
        let ops: Vec<JournalOp> = prepared
            .iter()
            .map(|(document, _, vectors)| JournalOp::upsert(document, vectors, &identities))
            .collect();
        let seq = writer.append(&ops)?;
        let mut report = self.apply_upserts(&mut state, &prepared)?;
        self.applied(&mut state, seq)?;
        self.checkpoint_journal_if_due(&state, &writer)?;
        drop(writer);
        drop(state);
        report.compacted = self.compact_if_needed()?;
        Ok(report)
    }

    /// Deletes document `id`; returns false when there was none. It never appears in results
    /// afterwards. Durable when it returns, like [`Collection::upsert`].
    pub fn delete(&self, id: &str) -> Result<bool> {
        let mut state = self.state.write().expect("collection lock");
        let journal = self.journal()?;
        let mut writer = journal.begin();
        self.sync_with_journal(&mut state, writer.last_seq())?;
        if self.db.node_of(id)?.is_none() {
            return Ok(false);
        }
        let seq = writer.append(&[JournalOp::Delete { id: id.to_string() }])?;
        self.apply_delete(&mut state, id)?;
        self.applied(&mut state, seq)?;
        self.checkpoint_journal_if_due(&state, &writer)?;
        drop(writer);
        drop(state);
        self.compact_if_needed()?;
        Ok(true)
    }

    /// Applies the writes acknowledged on other generations (or before a crash) since this
    /// generation last applied the journal. A vector journaled with another model than a
    /// space's is embedded with `embedder`; without one, stops before the first such write.
    /// Returns how many writes were applied.
    pub fn catch_up(&self, embedder: Option<&mut dyn SpaceEmbedder>) -> Result<usize> {
        let mut state = self.state.write().expect("collection lock");
        let applied = self.apply_journal(&mut state, embedder)?;
        drop(state);
        if applied > 0 {
            self.compact_if_needed()?;
        }
        Ok(applied)
    }

    /// Once the journal holds [`journal::CHECKPOINT_SEGMENTS`] segments, writes this
    /// generation's documents as its snapshot (at the journal position it has applied, which is
    /// the writer's last: the caller holds both locks) and removes the segments it covers, so a
    /// collection that takes writes but is never rebuilt keeps a bounded journal. A build marks
    /// itself in the manifest before it reads the snapshot; one that read the older snapshot
    /// just before the checkpoint reads again (see `build::read_base`).
    fn checkpoint_journal_if_due(
        &self,
        state: &State,
        writer: &journal::WriterState,
    ) -> Result<()> {
        if journal::segment_count(&self.journal_dir)? < journal::CHECKPOINT_SEGMENTS {
            return Ok(());
        }
        // Only the current generation, and only while no build runs: a newer generation (or one
        // being built) still needs the records after its own position.
        let manifest = self.store.manifest(&self.name)?;
        if manifest.current != Some(self.generation) || manifest.building.is_some() {
            return Ok(());
        }
        debug_assert_eq!(state.applied, writer.last_seq());
        write_snapshot(&self.dir, state.applied, &self.db.live_documents()?)?;
        journal::trim(&self.journal_dir, state.applied)?;
        Ok(())
    }

    fn journal(&self) -> Result<Arc<Journal>> {
        let mut slot = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(journal) = slot.as_ref() {
            return Ok(journal.clone());
        }
        let journal = Journal::writer(&self.journal_dir)?;
        *slot = Some(journal.clone());
        Ok(journal)
    }

    /// Before a write at journal position `last`: applies what this generation lacks, or
    /// refuses the write when that needs embedding (the server catches up first).
    fn sync_with_journal(&self, state: &mut State, last: u64) -> Result<()> {
        if state.applied < last {
            self.apply_journal(state, None)?;
        }
        if state.applied < last {
            return Err(IndexError::behind_journal(&self.name, self.generation));
        }
        Ok(())
    }

    fn apply_journal(
        &self,
        state: &mut State,
        embedder: Option<&mut dyn SpaceEmbedder>,
    ) -> Result<usize> {
        let tail = journal::read_after(&self.journal_dir, state.applied)?;
        if tail.records.is_empty() {
            return Ok(0);
        }
        let (replays, covered) =
            journal::resolve(&tail.records, &identities(state), embedder, state.applied)?;
        let count = replays.len();
        for replay in replays {
            match replay {
                Replay::Upsert(upsert) => {
                    let prepared = prepare_upserts(state, std::iter::once(&upsert))?;
                    self.apply_upserts(state, &prepared)?;
                }
                Replay::Delete(id) => {
                    self.apply_delete(state, &id)?;
                }
            }
        }
        self.applied(state, covered)?;
        Ok(count)
    }

    /// Records journal position `seq` as applied and makes the generation durable; then
    /// commits the lexical space at that position (derived data: rebuilt on open when a crash
    /// comes between the two).
    fn applied(&self, state: &mut State, seq: u64) -> Result<()> {
        self.db.set_journal_seq(seq)?;
        self.db.flush()?;
        state.applied = seq;
        if let Some(lexical) = &state.lexical {
            lexical.commit(seq)?;
        }
        Ok(())
    }

    /// Writes validated upserts to the database and the in-memory indexes.
    fn apply_upserts(
        &self,
        state: &mut State,
        prepared: &[PreparedUpsert],
    ) -> Result<UpsertReport> {
        let writes: Vec<DocumentWrite<'_>> = prepared
            .iter()
            .map(|(document, hash, vectors)| DocumentWrite {
                document,
                hash: *hash,
                vectors: vectors
                    .iter()
                    .map(|(s, v)| (s.as_str(), v.as_slice()))
                    .collect(),
            })
            .collect();
        // Unchanged content keeps its stored vectors: drop them from the write.
        let mut filtered = Vec::with_capacity(writes.len());
        let mut old_metadata = Vec::with_capacity(writes.len());
        for mut write in writes {
            let old = match self.db.node_of(&write.document.id)? {
                Some(node) => self.db.document(node)?,
                None => None,
            };
            if old.as_ref().is_some_and(|doc| doc.hash == hex(&write.hash)) {
                write.vectors.clear();
            }
            old_metadata.push(old.map(|doc| doc.metadata));
            filtered.push(write);
        }
        let outcomes = self.db.write(&filtered)?;
        let mut report = UpsertReport::default();
        for ((write, outcome), old) in filtered.iter().zip(outcomes).zip(old_metadata) {
            if let Some(lexical) = &state.lexical {
                let node = match outcome {
                    WriteOutcome::Kept { node }
                    | WriteOutcome::Added { node }
                    | WriteOutcome::Replaced { node, .. } => node,
                };
                lexical.put(node, &StoredDocument::new(write.document, &write.hash))?;
            }
            let new_node = match outcome {
                WriteOutcome::Kept { node } => {
                    report.unchanged += 1;
                    if let Some(old) = old {
                        state.fields.remove(node, &old);
                    }
                    state.fields.add(node, &write.document.metadata);
                    continue;
                }
                WriteOutcome::Added { node } => {
                    report.added += 1;
                    state.documents += 1;
                    node
                }
                WriteOutcome::Replaced { node, old } => {
                    report.updated += 1;
                    state.live.remove(old);
                    for space in state.spaces.values_mut() {
                        mark_removed(space, old);
                    }
                    node
                }
            };
            state.live.insert(new_node);
            state.fields.add(new_node, &write.document.metadata);
            for (space_name, vector) in &write.vectors {
                if let Some(space) = state.spaces.get_mut(*space_name) {
                    space.push_delta(new_node, vector);
                }
            }
        }
        Ok(report)
    }

    /// Removes `id` from the database and the in-memory indexes; false when it was not live.
    fn apply_delete(&self, state: &mut State, id: &str) -> Result<bool> {
        let Some(node) = self.db.delete(id)? else {
            return Ok(false);
        };
        if let Some(lexical) = &state.lexical {
            lexical.remove(id)?;
        }
        state.live.remove(node);
        state.documents = state.documents.saturating_sub(1);
        for space in state.spaces.values_mut() {
            mark_removed(space, node);
        }
        Ok(true)
    }

    /// Rebuilds the graph of every space whose tombstones and delta pass the policy; returns
    /// their names.
    pub fn compact_if_needed(&self) -> Result<Vec<String>> {
        let due: Vec<String> = {
            let state = self.state.read().expect("collection lock");
            state
                .spaces
                .iter()
                .filter(|(_, space)| self.policy.due(space.changes(), space.graph.len()))
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in &due {
            self.compact(name)?;
        }
        Ok(due)
    }

    /// Rebuilds the graph of `space` from the live stored vectors and persists it.
    pub fn compact(&self, space: &str) -> Result<()> {
        let mut state = self.state.write().expect("collection lock");
        let identity = state
            .spaces
            .get(space)
            .ok_or_else(|| self.unknown_space(&state, space))?
            .identity
            .clone();
        self.db.sweep()?;
        state.fields = self.db.load_fields()?;
        let graph = build_space_graph(&self.db, space, &identity, &self.hnsw)?;
        graph.write(&self.dir.join(format!("{space}.{}", keys::GRAPH_EXTENSION)))?;
        state
            .spaces
            .insert(space.to_string(), SpaceIndex::new(identity, graph));
        Ok(())
    }

    /// Figures for `attune index stats`.
    pub fn stats(&self) -> Result<CollectionStats> {
        let state = self.state.read().expect("collection lock");
        Ok(CollectionStats {
            name: self.name.clone(),
            generation: self.generation,
            documents: state.documents,
            hnsw: self.hnsw,
            spaces: state
                .spaces
                .iter()
                .map(|(name, space)| SpaceStats {
                    name: name.clone(),
                    model: space.identity.clone(),
                    graph_points: space.graph.len(),
                    tombstones: space.tombstones,
                    delta: space.delta_nodes.len(),
                })
                .collect(),
            disk_bytes: dir_bytes(&self.dir)?,
            database_bytes: dir_bytes(&self.dir.join(keys::DATABASE_DIR))?,
            lexical: state.lexical.as_ref().map(|l| l.settings().clone()),
        })
    }
}

/// The lexical index of a generation: the one on disk when it reflects journal position
/// `applied`, else rebuilt from the stored documents (missing, unreadable, or behind after a
/// crash between a write and its lexical commit).
fn open_lexical(
    db: &GenerationDb,
    dir: &Path,
    settings: &LexicalSettings,
    applied: u64,
) -> Result<LexicalIndex> {
    let path = dir.join(keys::LEXICAL_DIR);
    match LexicalIndex::open(&path, settings)? {
        Some((index, Some(stamp))) if stamp == applied && index.settings() == settings => {
            return Ok(index)
        }
        Some(_) => tracing::warn!(
            "{}: not at journal position {applied}; rebuilding it from the stored documents",
            path.display()
        ),
        None => tracing::warn!(
            "{}: missing or unreadable; rebuilding it from the stored documents",
            path.display()
        ),
    }
    crate::build::build_lexical(db, dir, settings, &db.live_documents()?)
}

/// A validated upsert: the document, the hash of its embedded text, a unit vector per space.
type PreparedUpsert = (Document, [u8; 16], Vec<SpaceVector>);

/// Checks and normalises upserts against the spaces of `state` (nothing is written).
fn prepare_upserts<'a>(
    state: &State,
    upserts: impl Iterator<Item = &'a UpsertDocument>,
) -> Result<Vec<PreparedUpsert>> {
    upserts
        .map(|upsert| {
            let spaces = state
                .spaces
                .iter()
                .map(|(name, space)| (name, &space.identity));
            let vectors = crate::vector_store::upsert_vectors(upsert, spaces)?;
            let document = upsert.document.clone();
            let hash = content_hash(&document.embedding_text());
            Ok((document, hash, vectors))
        })
        .collect()
}

/// The model of each space of `state`.
fn identities(state: &State) -> BTreeMap<String, ModelIdentity> {
    state
        .spaces
        .iter()
        .map(|(name, space)| (name.clone(), space.identity.clone()))
        .collect()
}
