//! HNSW graphs: built with hnsw_rs, then frozen into flat arrays for search and persistence.
//!
//! hnsw_rs builds the graph ([`Graph::build`]: parallel insertion, `M` links per upper layer and
//! `2M` on layer 0, cosine on unit vectors through [`UnitCosine`]). Its search allocates an `Arc`
//! per visited candidate and keeps visited points in a `HashMap`, and its on-disk form reloads into
//! an `Hnsw` that borrows its loader. So once built, the graph is copied into a [`Graph`]: vectors
//! in one contiguous array, layer-0 links in fixed-size slots, a visited list reused across
//! queries, and a self-contained file format ([`Graph::write`], [`Graph::read`]) that opens
//! without rebuilding. Filters (tombstones, metadata) are applied inside the layer-0 search:
//! filtered-out points are still traversed, but never returned.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use hnsw_rs::hnsw::Hnsw;
use serde::{Deserialize, Serialize};

use crate::distance::{dot, prefetch, UnitCosine};
use crate::error::{IndexError, Result};

/// Graph construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HnswParams {
    /// Links per point on upper layers (`M`); layer 0 keeps `2M`. Default 16; at most 128.
    pub m: usize,
    /// Candidate list size while inserting. Default 100: on 100k clustered vectors it builds
    /// 2.3× faster than 200 and gives the same recall at `ef_search` 64 (benches/README.md).
    pub ef_construction: usize,
    /// Candidate list size while searching, when a request does not give one (raised to `k`
    /// when smaller). Default 64: recall@10 ≥ 0.95 on scifact and on 100k clustered vectors
    /// (benches/README.md).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
        }
    }
}

impl HnswParams {
    /// Checks the ranges hnsw_rs accepts (it exits the process on `M > 256`).
    pub fn validate(&self) -> Result<()> {
        if !(2..=128).contains(&self.m) {
            return Err(IndexError::InvalidSetting(format!(
                "hnsw m must be between 2 and 128, got {}",
                self.m
            )));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err(IndexError::InvalidSetting(
                "hnsw ef_construction and ef_search must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One point to index: the store's node number, the content hash of the text it embeds, the
/// document's external id, and its unit vector.
#[derive(Debug, Clone)]
pub struct GraphPoint {
    /// The store's node number (stable for the life of a document version).
    pub node: u32,
    /// Content hash of the embedded text (see `store::content_hash`).
    pub hash: [u8; 16],
    /// External document id.
    pub id: String,
    /// Unit vector, `dim` long.
    pub vector: Vec<f32>,
}

/// A frozen HNSW graph over unit vectors. Points are numbered `0..len()` in the graph
/// ("slots"); `labels[slot]` is the store's node number.
#[derive(Debug, Clone)]
pub struct Graph {
    dim: usize,
    m: usize,
    ef_construction: usize,
    /// Model identity of the space this graph was built for.
    identity: String,
    labels: Vec<u32>,
    hashes: Vec<[u8; 16]>,
    ids: Vec<String>,
    vectors: Vec<f32>,
    levels: Vec<u8>,
    /// Layer 0: per slot, `[count, link_0 .. link_{2M-1}]`.
    links0: Vec<u32>,
    /// Per slot, the offset of its upper-layer lists in `upper`, or `u32::MAX`.
    upper_offsets: Vec<u32>,
    /// Upper layers: per slot with level L ≥ 1, L blocks of `[count, link_0 .. link_{M-1}]`.
    upper: Vec<u32>,
    entry: u32,
    max_level: u8,
}

/// A search result in graph slots: similarity is the dot product (cosine).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotHit {
    /// Graph slot.
    pub slot: u32,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

#[derive(Debug, Clone, Copy)]
struct Scored {
    dist: f32,
    slot: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.slot.cmp(&other.slot))
    }
}

/// Visited marks reused across searches on one thread: a slot is visited when its tag equals the
/// current epoch, so clearing is O(1) except once every 65,535 searches.
struct Visited {
    tags: Vec<u16>,
    epoch: u16,
}

impl Visited {
    fn start(&mut self, len: usize) {
        if self.tags.len() < len {
            self.tags.resize(len, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.iter_mut().for_each(|t| *t = 0);
            self.epoch = 1;
        }
    }

    /// Marks `slot`; returns true when it was not marked yet.
    #[inline]
    fn insert(&mut self, slot: u32) -> bool {
        let tag = &mut self.tags[slot as usize];
        if *tag == self.epoch {
            false
        } else {
            *tag = self.epoch;
            true
        }
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { tags: Vec::new(), epoch: 0 }) };
}

/// The label of a graph point whose document is gone (a tombstone carried into a new
/// generation); never a live node.
pub const DEAD_LABEL: u32 = u32::MAX;

const MAGIC: &[u8; 8] = b"ATTNHNSW";
const FORMAT_VERSION: u32 = 1;
/// hnsw_rs's layer limit.
const MAX_LAYERS: usize = 16;

impl Graph {
    /// Builds a graph over `points` with hnsw_rs (parallel insertion on the rayon pool), then
    /// freezes it. Vectors must be unit length and `dim` long.
    pub fn build(
        points: Vec<GraphPoint>,
        dim: usize,
        identity: &str,
        params: &HnswParams,
    ) -> Result<Self> {
        params.validate()?;
        for point in &points {
            if point.vector.len() != dim {
                return Err(IndexError::DimensionMismatch {
                    what: format!("vector of document {:?}", point.id),
                    expected: dim,
                    found: point.vector.len(),
                });
            }
        }
        let n = points.len();
        let mut graph = Graph {
            dim,
            m: params.m,
            ef_construction: params.ef_construction,
            identity: identity.to_string(),
            labels: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            vectors: Vec::with_capacity(n * dim),
            levels: vec![0; n],
            links0: vec![0; n * (1 + 2 * params.m)],
            upper_offsets: vec![u32::MAX; n],
            upper: Vec::new(),
            entry: 0,
            max_level: 0,
        };
        for point in points {
            graph.labels.push(point.node);
            graph.hashes.push(point.hash);
            graph.ids.push(point.id);
            graph.vectors.extend_from_slice(&point.vector);
        }
        if n == 0 {
            return Ok(graph);
        }
        let hnsw: Hnsw<f32, UnitCosine> =
            Hnsw::new(params.m, n, MAX_LAYERS, params.ef_construction, UnitCosine);
        let items: Vec<(&[f32], usize)> = (0..n).map(|slot| (graph.vector(slot), slot)).collect();
        if n < 2_000 {
            // Small graphs: serial insertion is as fast and deterministic.
            for item in &items {
                hnsw.insert_slice(*item);
            }
        } else {
            hnsw.parallel_insert_slice(&items);
        }
        graph.freeze(&hnsw);
        Ok(graph)
    }

    /// Copies hnsw_rs's adjacency into the flat arrays.
    fn freeze(&mut self, hnsw: &Hnsw<f32, UnitCosine>) {
        let m = self.m;
        let stride0 = 1 + 2 * m;
        let mut top: Option<(u8, u32)> = None;
        let mut upper_lists: Vec<(u32, Vec<Vec<u32>>)> = Vec::new();
        for point in hnsw.get_point_indexation() {
            let slot = point.get_origin_id() as u32;
            let level = point.get_point_id().0;
            self.levels[slot as usize] = level;
            // The first point reached on the highest layer is hnsw_rs's entry point; any point
            // on that layer is a valid entry.
            if top.is_none_or(|(top_level, _)| level > top_level) {
                top = Some((level, slot));
            }
            let neighbourhood = point.get_neighborhood_id();
            let base = slot as usize * stride0;
            let layer0 = neighbourhood.first().map(Vec::as_slice).unwrap_or(&[]);
            let count = layer0.len().min(2 * m);
            self.links0[base] = count as u32;
            for (i, neighbour) in layer0.iter().take(count).enumerate() {
                self.links0[base + 1 + i] = neighbour.d_id as u32;
            }
            if level > 0 {
                let lists = (1..=level as usize)
                    .map(|l| {
                        neighbourhood
                            .get(l)
                            .map(|ns| ns.iter().take(m).map(|nb| nb.d_id as u32).collect())
                            .unwrap_or_default()
                    })
                    .collect();
                upper_lists.push((slot, lists));
            }
        }
        upper_lists.sort_by_key(|(slot, _)| *slot);
        for (slot, lists) in upper_lists {
            self.upper_offsets[slot as usize] = self.upper.len() as u32;
            for list in lists {
                let start = self.upper.len();
                self.upper.resize(start + 1 + m, 0);
                self.upper[start] = list.len() as u32;
                self.upper[start + 1..start + 1 + list.len()].copy_from_slice(&list);
            }
        }
        if let Some((level, slot)) = top {
            self.max_level = level;
            self.entry = slot;
        }
        self.link_unreachable();
    }

    /// Makes every point reachable on layer 0 from the entry point.
    ///
    /// hnsw_rs's neighbour selection prunes links to near-duplicates, and with parallel
    /// insertion a point (or a small group of near-duplicates) can end up with no path from the
    /// entry: no search would ever return it. For each such point, a search for its own vector
    /// finds the nearest reachable points, and the first with a free layer-0 slot (or, failing
    /// that, the nearest, whose farthest link is replaced when its target has other incoming
    /// links) gets a link to it. Returns how many points were linked.
    fn link_unreachable(&mut self) -> usize {
        let n = self.len();
        if n == 0 {
            return 0;
        }
        let stride = 1 + 2 * self.m;
        let mut incoming = vec![0u32; n];
        for slot in 0..n as u32 {
            for &next in self.links0(slot) {
                incoming[next as usize] += 1;
            }
        }
        let mut reachable = vec![false; n];
        self.mark_reachable(self.entry, &mut reachable);
        let mut linked = 0;
        for slot in 0..n as u32 {
            if reachable[slot as usize] {
                continue;
            }
            let vector = self.vector(slot as usize).to_vec();
            let candidates = self.search(&vector, 8, 64, None);
            let free = candidates
                .iter()
                .find(|hit| self.links0[hit.slot as usize * stride] < 2 * self.m as u32);
            let (from, position) = match free {
                Some(hit) => {
                    let base = hit.slot as usize * stride;
                    let count = self.links0[base] as usize;
                    self.links0[base] += 1;
                    (hit.slot, base + 1 + count)
                }
                None => {
                    let Some(hit) = candidates.iter().find(|hit| {
                        let base = hit.slot as usize * stride;
                        let count = self.links0[base] as usize;
                        incoming[self.links0[base + count] as usize] > 1
                    }) else {
                        continue;
                    };
                    let base = hit.slot as usize * stride;
                    let count = self.links0[base] as usize;
                    incoming[self.links0[base + count] as usize] -= 1;
                    (hit.slot, base + count)
                }
            };
            debug_assert!(reachable[from as usize]);
            self.links0[position] = slot;
            incoming[slot as usize] += 1;
            linked += 1;
            self.mark_reachable(slot, &mut reachable);
        }
        if linked > 0 {
            tracing::debug!("linked {linked} unreachable points into the graph");
        }
        linked
    }

    /// Marks every point reachable on layer 0 from `start` (depth-first, iterative).
    fn mark_reachable(&self, start: u32, reachable: &mut [bool]) {
        if reachable[start as usize] {
            return;
        }
        reachable[start as usize] = true;
        let mut stack = vec![start];
        while let Some(slot) = stack.pop() {
            for &next in self.links0(slot) {
                if !reachable[next as usize] {
                    reachable[next as usize] = true;
                    stack.push(next);
                }
            }
        }
    }

    /// Number of points (slots).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the graph has no points.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model identity the graph was built for.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Construction parameters (`ef_search` is not part of a graph and is returned as given).
    pub fn params(&self, ef_search: usize) -> HnswParams {
        HnswParams {
            m: self.m,
            ef_construction: self.ef_construction,
            ef_search,
        }
    }

    /// The store node number of a slot.
    pub fn label(&self, slot: u32) -> u32 {
        self.labels[slot as usize]
    }

    /// All node numbers, by slot.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The same graph with new node numbers per slot ([`DEAD_LABEL`] for points whose
    /// document is gone): how a new generation takes over an unchanged graph.
    pub fn relabeled(mut self, labels: Vec<u32>) -> Self {
        assert_eq!(labels.len(), self.labels.len(), "one label per slot");
        self.labels = labels;
        self
    }

    /// The content hash recorded for a slot.
    pub fn hash(&self, slot: u32) -> &[u8; 16] {
        &self.hashes[slot as usize]
    }

    /// The external id recorded for a slot.
    pub fn id(&self, slot: u32) -> &str {
        &self.ids[slot as usize]
    }

    /// The unit vector of a slot.
    #[inline]
    pub fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }

    #[inline]
    fn links0(&self, slot: u32) -> &[u32] {
        let base = slot as usize * (1 + 2 * self.m);
        let count = self.links0[base] as usize;
        &self.links0[base + 1..base + 1 + count]
    }

    #[inline]
    fn upper_links(&self, slot: u32, level: u8) -> &[u32] {
        let offset = self.upper_offsets[slot as usize];
        if offset == u32::MAX || level > self.levels[slot as usize] {
            return &[];
        }
        let base = offset as usize + (level as usize - 1) * (1 + self.m);
        let count = self.upper[base] as usize;
        &self.upper[base + 1..base + 1 + count]
    }

    #[inline]
    fn distance(&self, query: &[f32], slot: u32) -> f32 {
        1.0 - dot(query, self.vector(slot as usize))
    }

    /// The `k` most similar slots for which `eligible` holds, best first, searching layer 0 with
    /// a candidate list of `max(ef, k)`. `eligible` is evaluated inside the search (filtered
    /// points are traversed, never returned), so filters do not need over-fetching.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        eligible: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<SlotHit> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        debug_assert_eq!(query.len(), self.dim);
        let ef = ef.max(k);
        let allowed = |slot: u32| eligible.is_none_or(|f| f(slot));

        // Greedy descent through the upper layers.
        let mut current = self.entry;
        let mut current_dist = self.distance(query, current);
        for level in (1..=self.max_level).rev() {
            let mut changed = true;
            while changed {
                changed = false;
                for &next in self.upper_links(current, level) {
                    let d = self.distance(query, next);
                    if d < current_dist {
                        current_dist = d;
                        current = next;
                        changed = true;
                    }
                }
            }
        }

        VISITED.with(|cell| {
            let mut visited = cell.borrow_mut();
            visited.start(self.len());
            let mut candidates: BinaryHeap<std::cmp::Reverse<Scored>> =
                BinaryHeap::with_capacity(ef * 4);
            let mut top: BinaryHeap<Scored> = BinaryHeap::with_capacity(ef + 1);
            let start = Scored {
                dist: current_dist,
                slot: current,
            };
            visited.insert(current);
            candidates.push(std::cmp::Reverse(start));
            let mut bound = f32::INFINITY;
            if allowed(current) {
                top.push(start);
                bound = current_dist;
            }
            while let Some(std::cmp::Reverse(candidate)) = candidates.pop() {
                if candidate.dist > bound && top.len() >= ef {
                    break;
                }
                // Mark the unvisited neighbours and prefetch all their vectors before computing
                // any distance, so the memory loads overlap instead of queueing one by one.
                let links = self.links0(candidate.slot);
                let mut fresh = [0u32; 256];
                let mut count = 0;
                for &next in links {
                    if visited.insert(next) {
                        prefetch(self.vector(next as usize));
                        fresh[count] = next;
                        count += 1;
                    }
                }
                for &next in &fresh[..count] {
                    let d = self.distance(query, next);
                    if top.len() < ef || d < bound {
                        candidates.push(std::cmp::Reverse(Scored {
                            dist: d,
                            slot: next,
                        }));
                        if allowed(next) {
                            top.push(Scored {
                                dist: d,
                                slot: next,
                            });
                            if top.len() > ef {
                                top.pop();
                            }
                            if let Some(worst) = top.peek() {
                                bound = worst.dist;
                            }
                        }
                    }
                }
            }
            let mut hits: Vec<Scored> = top.into_vec();
            hits.sort_unstable();
            hits.truncate(k);
            hits.into_iter()
                .map(|s| SlotHit {
                    slot: s.slot,
                    similarity: 1.0 - s.dist,
                })
                .collect()
        })
    }

    /// Writes the graph to `path` atomically: a temporary file, fsync, rename, fsync of the
    /// directory. The file ends with a CRC32 of everything before it.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("graph.tmp");
        let file = fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        let mut out = ChecksumWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        let write = |out: &mut ChecksumWriter<BufWriter<fs::File>>| -> std::io::Result<()> {
            out.write_all(MAGIC)?;
            for value in [
                FORMAT_VERSION,
                self.dim as u32,
                self.len() as u32,
                self.m as u32,
                self.ef_construction as u32,
                self.max_level as u32,
                self.entry,
                self.upper.len() as u32,
                self.identity.len() as u32,
            ] {
                out.write_all(&value.to_le_bytes())?;
            }
            out.write_all(self.identity.as_bytes())?;
            write_u32s(out, &self.labels)?;
            for hash in &self.hashes {
                out.write_all(hash)?;
            }
            for id in &self.ids {
                out.write_all(&(id.len() as u32).to_le_bytes())?;
                out.write_all(id.as_bytes())?;
            }
            write_f32s(out, &self.vectors)?;
            out.write_all(&self.levels)?;
            write_u32s(out, &self.links0)?;
            write_u32s(out, &self.upper_offsets)?;
            write_u32s(out, &self.upper)?;
            let crc = out.crc.clone().finalize();
            out.inner.write_all(&crc.to_le_bytes())?;
            out.inner.flush()?;
            out.inner.get_ref().sync_all()
        };
        write(&mut out).map_err(|e| IndexError::io(&tmp, e))?;
        drop(out);
        fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
        crate::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(())
    }

    /// Reads a graph written by [`Graph::write`]. A truncated, corrupted or foreign file is an
    /// [`IndexError::CorruptGraph`] naming it; callers rebuild from the stored vectors.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| IndexError::io(path, e))?;
        let corrupt = |reason: &str| IndexError::CorruptGraph {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not an attune graph file"));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored_crc = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored_crc {
            return Err(corrupt("checksum mismatch (truncated or modified)"));
        }
        let mut reader = Reader {
            bytes: body,
            at: MAGIC.len(),
        };
        let truncated = || corrupt("truncated");
        let mut header = [0u32; 9];
        for value in header.iter_mut() {
            *value = reader.u32().ok_or_else(truncated)?;
        }
        let [version, dim, n, m, ef_construction, max_level, entry, upper_len, identity_len] =
            header;
        if version != FORMAT_VERSION {
            return Err(corrupt(&format!(
                "format version {version}, expected {FORMAT_VERSION}"
            )));
        }
        let (dim, n, m) = (dim as usize, n as usize, m as usize);
        let identity = String::from_utf8(
            reader
                .take(identity_len as usize)
                .ok_or_else(truncated)?
                .to_vec(),
        )
        .map_err(|_| corrupt("identity is not UTF-8"))?;
        let labels = reader.u32s(n).ok_or_else(truncated)?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            hashes.push(
                <[u8; 16]>::try_from(reader.take(16).ok_or_else(truncated)?).expect("16 bytes"),
            );
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let len = reader.u32().ok_or_else(truncated)? as usize;
            let id = std::str::from_utf8(reader.take(len).ok_or_else(truncated)?)
                .map_err(|_| corrupt("document id is not UTF-8"))?;
            ids.push(id.to_string());
        }
        let vectors = reader.f32s(n * dim).ok_or_else(truncated)?;
        let levels = reader.take(n).ok_or_else(truncated)?.to_vec();
        let links0 = reader.u32s(n * (1 + 2 * m)).ok_or_else(truncated)?;
        let upper_offsets = reader.u32s(n).ok_or_else(truncated)?;
        let upper = reader.u32s(upper_len as usize).ok_or_else(truncated)?;
        if reader.at != body.len() {
            return Err(corrupt("trailing bytes"));
        }
        let graph = Graph {
            dim,
            m,
            ef_construction: ef_construction as usize,
            identity,
            labels,
            hashes,
            ids,
            vectors,
            levels,
            links0,
            upper_offsets,
            upper,
            entry,
            max_level: max_level as u8,
        };
        graph.check_links().map_err(|reason| corrupt(&reason))?;
        Ok(graph)
    }

    /// Structural checks after reading: every link points at a slot, every count fits its slot.
    fn check_links(&self) -> std::result::Result<(), String> {
        let n = self.len() as u32;
        if n > 0 && self.entry >= n {
            return Err("entry point out of range".into());
        }
        for slot in 0..n {
            let base = slot as usize * (1 + 2 * self.m);
            if self.links0[base] as usize > 2 * self.m {
                return Err(format!("slot {slot}: too many layer-0 links"));
            }
            if self.links0(slot).iter().any(|&l| l >= n) {
                return Err(format!("slot {slot}: link out of range"));
            }
            let offset = self.upper_offsets[slot as usize];
            let level = self.levels[slot as usize] as usize;
            if level > 0 {
                let end = offset as usize + level * (1 + self.m);
                if offset == u32::MAX || end > self.upper.len() {
                    return Err(format!("slot {slot}: upper links out of range"));
                }
                for l in 1..=level as u8 {
                    let base = offset as usize + (l as usize - 1) * (1 + self.m);
                    if self.upper[base] as usize > self.m {
                        return Err(format!("slot {slot}: too many links on layer {l}"));
                    }
                    if self.upper_links(slot, l).iter().any(|&x| x >= n) {
                        return Err(format!("slot {slot}: link out of range on layer {l}"));
                    }
                }
            }
        }
        Ok(())
    }
}

struct ChecksumWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_u32s(out: &mut impl Write, values: &[u32]) -> std::io::Result<()> {
    write_le(out, values, |v| v.to_le_bytes())
}

fn write_f32s(out: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    write_le(out, values, |v| v.to_le_bytes())
}

/// Writes 4-byte values little-endian, in chunks (no per-value write call).
fn write_le<T: Copy>(
    out: &mut impl Write,
    values: &[T],
    bytes: impl Fn(T) -> [u8; 4],
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(values.len().min(1 << 16) * 4);
    for chunk in values.chunks(1 << 16) {
        buffer.clear();
        chunk
            .iter()
            .for_each(|&v| buffer.extend_from_slice(&bytes(v)));
        out.write_all(&buffer)?;
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u32s(&mut self, n: usize) -> Option<Vec<u32>> {
        self.values(n, u32::from_le_bytes)
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        self.values(n, f32::from_le_bytes)
    }
    fn values<T>(&mut self, n: usize, from: impl Fn([u8; 4]) -> T) -> Option<Vec<T>> {
        let bytes = self.take(n.checked_mul(4)?)?;
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| from(c.try_into().expect("4 bytes")))
                .collect(),
        )
    }
}

/// Exact top-k by dot product over `vectors` (row-major, `dim` wide) for which `eligible`
/// holds: the ground truth for recall, and the search for small or heavily filtered sets.
pub fn exact_top_k(
    query: &[f32],
    vectors: &[f32],
    dim: usize,
    k: usize,
    eligible: Option<&dyn Fn(u32) -> bool>,
) -> Vec<SlotHit> {
    let mut top: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
    for (slot, vector) in vectors.chunks_exact(dim).enumerate() {
        let slot = slot as u32;
        if eligible.is_some_and(|f| !f(slot)) {
            continue;
        }
        let dist = 1.0 - dot(query, vector);
        if top.len() < k {
            top.push(Scored { dist, slot });
        } else if let Some(worst) = top.peek() {
            if (Scored { dist, slot }) < *worst {
                top.pop();
                top.push(Scored { dist, slot });
            }
        }
    }
    let mut hits = top.into_vec();
    hits.sort_unstable();
    hits.into_iter()
        .map(|s| SlotHit {
            slot: s.slot,
            similarity: 1.0 - s.dist,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` clustered unit vectors (see [`crate::fixtures`]), one `Vec` each.
    pub(crate) fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
        let spec = crate::fixtures::ClusterSpec {
            n,
            dim,
            clusters,
            seed,
            member_seed: seed + 1,
            ..Default::default()
        };
        crate::fixtures::clustered_unit_vectors(&spec)
            .chunks(dim)
            .map(<[f32]>::to_vec)
            .collect()
    }

    pub(crate) fn points(vectors: &[Vec<f32>]) -> Vec<GraphPoint> {
        vectors
            .iter()
            .enumerate()
            .map(|(i, v)| GraphPoint {
                node: i as u32 * 3,
                hash: [i as u8; 16],
                id: format!("doc-{i}"),
                vector: v.clone(),
            })
            .collect()
    }

    fn recall(graph: &Graph, data: &[f32], queries: &[Vec<f32>], k: usize, ef: usize) -> f64 {
        let mut found = 0usize;
        for q in queries {
            let truth: Vec<u32> = exact_top_k(q, data, graph.dim(), k, None)
                .iter()
                .map(|h| h.slot)
                .collect();
            let got = graph.search(q, k, ef, None);
            found += got.iter().filter(|h| truth.contains(&h.slot)).count();
        }
        found as f64 / (k * queries.len()) as f64
    }

    #[test]
    fn recall_against_exact_search_on_clustered_vectors() {
        let all = clustered(5_200, 64, 40, 7);
        let (data, queries) = all.split_at(5_000);
        let graph = Graph::build(points(data), 64, "m", &HnswParams::default()).unwrap();
        let flat: Vec<f32> = data.concat();
        let r = recall(&graph, &flat, queries, 10, HnswParams::default().ef_search);
        assert!(r >= 0.95, "recall@10 {r}");
        // A query equal to an indexed vector finds itself first (and does not panic).
        let hit = graph.search(&data[17], 1, 64, None);
        assert_eq!(hit[0].slot, 17);
        assert!((hit[0].similarity - 1.0).abs() < 1e-5);
    }

    #[test]
    fn filters_apply_inside_the_search() {
        let data = clustered(3_000, 32, 10, 3);
        let graph = Graph::build(points(&data), 32, "m", &HnswParams::default()).unwrap();
        let only_even = |slot: u32| slot.is_multiple_of(2);
        let flat: Vec<f32> = data.concat();
        let mut found = 0;
        for q in data.iter().step_by(97) {
            let hits = graph.search(q, 10, 64, Some(&only_even));
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.slot.is_multiple_of(2)));
            let truth = exact_top_k(q, &flat, 32, 10, Some(&only_even));
            found += hits
                .iter()
                .filter(|h| truth.iter().any(|t| t.slot == h.slot))
                .count();
        }
        let queries = data.iter().step_by(97).count();
        assert!(found as f64 / (10 * queries) as f64 >= 0.9);
        // A filter nothing passes returns nothing.
        assert!(graph.search(&data[0], 10, 64, Some(&|_| false)).is_empty());
    }

    #[test]
    fn file_round_trip_is_identical_and_corruption_is_detected() {
        let data = clustered(2_500, 16, 8, 5);
        let graph = Graph::build(points(&data), 16, "identity-1", &HnswParams::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.graph");
        graph.write(&path).unwrap();
        let read = Graph::read(&path).unwrap();
        assert_eq!(read.identity(), "identity-1");
        assert_eq!(read.labels(), graph.labels());
        assert_eq!(read.id(5), "doc-5");
        for q in data.iter().step_by(50) {
            assert_eq!(graph.search(q, 10, 64, None), read.search(q, 10, 64, None));
        }
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Graph::read(&path),
            Err(IndexError::CorruptGraph { .. })
        ));
        fs::write(&path, &bytes[..100]).unwrap();
        assert!(matches!(
            Graph::read(&path),
            Err(IndexError::CorruptGraph { .. })
        ));
    }

    #[test]
    fn points_cut_off_from_the_entry_are_linked_back() {
        let data = clustered(600, 16, 6, 11);
        let mut graph = Graph::build(points(&data), 16, "m", &HnswParams::default()).unwrap();
        // Cut every layer-0 link into two points, as pruning sometimes does.
        let victims: Vec<u32> = (0..graph.len() as u32)
            .filter(|&s| s != graph.entry)
            .step_by(251)
            .take(2)
            .collect();
        let stride = 1 + 2 * graph.m;
        for slot in 0..graph.len() {
            let base = slot * stride;
            let kept: Vec<u32> = graph
                .links0(slot as u32)
                .iter()
                .copied()
                .filter(|l| !victims.contains(l))
                .collect();
            graph.links0[base] = kept.len() as u32;
            graph.links0[base + 1..base + 1 + kept.len()].copy_from_slice(&kept);
        }
        let mut reachable = vec![false; graph.len()];
        graph.mark_reachable(graph.entry, &mut reachable);
        assert!(victims.iter().all(|&v| !reachable[v as usize]));
        assert_eq!(graph.link_unreachable(), victims.len());
        let mut reachable = vec![false; graph.len()];
        graph.mark_reachable(graph.entry, &mut reachable);
        assert!(reachable.iter().all(|&r| r));
        for &v in &victims {
            assert_eq!(graph.search(&data[v as usize], 1, 64, None)[0].slot, v);
        }
    }

    #[test]
    fn empty_and_tiny_graphs() {
        let empty = Graph::build(Vec::new(), 8, "m", &HnswParams::default()).unwrap();
        assert!(empty.search(&[0.0; 8], 5, 10, None).is_empty());
        let one = clustered(1, 8, 1, 1);
        let graph = Graph::build(points(&one), 8, "m", &HnswParams::default()).unwrap();
        assert_eq!(graph.search(&one[0], 5, 10, None).len(), 1);
        let bad = Graph::build(points(&one), 9, "m", &HnswParams::default());
        assert!(matches!(bad, Err(IndexError::DimensionMismatch { .. })));
    }
}
