//! One space of an open collection: its frozen HNSW graph, the delta of points added since,
//! and the tombstones of points deleted since; built from the stored vectors.

use super::*;

/// One space of an open collection: its graph, the points added since, and where each node's
/// vector is.
pub(crate) struct SpaceIndex {
    pub(crate) identity: ModelIdentity,
    pub(crate) graph: Graph,
    /// node → graph slot (`u32::MAX`: not in the graph), indexed by node number.
    pub(crate) slot_of_node: Vec<u32>,
    /// Live nodes not in the graph, with their vectors (row-major).
    pub(crate) delta_nodes: Vec<u32>,
    pub(crate) delta_vectors: Vec<f32>,
    /// node → position in `delta_nodes`.
    pub(crate) delta_position: HashMap<u32, usize>,
    /// Graph points whose node is no longer live.
    pub(crate) tombstones: usize,
}

impl SpaceIndex {
    /// The graph slot of `node`, if the graph has it.
    #[inline]
    pub(crate) fn slot(&self, node: u32) -> Option<u32> {
        self.slot_of_node
            .get(node as usize)
            .copied()
            .filter(|&slot| slot != u32::MAX)
    }

    pub(crate) fn new(identity: ModelIdentity, graph: Graph) -> Self {
        let len = graph
            .labels()
            .iter()
            .filter(|&&n| n != DEAD_LABEL)
            .map(|&n| n as usize + 1)
            .max()
            .unwrap_or(0);
        let mut slot_of_node = vec![u32::MAX; len];
        for (slot, &node) in graph.labels().iter().enumerate() {
            if node != DEAD_LABEL {
                slot_of_node[node as usize] = slot as u32;
            }
        }
        Self {
            identity,
            graph,
            slot_of_node,
            delta_nodes: Vec::new(),
            delta_vectors: Vec::new(),
            delta_position: HashMap::new(),
            tombstones: 0,
        }
    }

    /// Adds a point outside the graph.
    pub(crate) fn push_delta(&mut self, node: u32, vector: &[f32]) {
        self.delta_position.insert(node, self.delta_nodes.len());
        self.delta_nodes.push(node);
        self.delta_vectors.extend_from_slice(vector);
    }

    /// The vector of `node`, from the graph or the delta.
    pub(crate) fn vector_of(&self, node: u32) -> Option<&[f32]> {
        let dim = self.identity.dim;
        match self.slot(node) {
            Some(slot) => Some(self.graph.vector(slot as usize)),
            None => self
                .delta_position
                .get(&node)
                .map(|&i| &self.delta_vectors[i * dim..(i + 1) * dim]),
        }
    }

    pub(crate) fn changes(&self) -> usize {
        self.tombstones + self.delta_nodes.len()
    }
}

pub(crate) fn mark_removed(space: &mut SpaceIndex, node: u32) {
    if space.slot(node).is_some() {
        space.tombstones += 1;
    } else if let Some(i) = space.delta_position.remove(&node) {
        let dim = space.identity.dim;
        space.delta_nodes.swap_remove(i);
        let last = space.delta_vectors.len() - dim;
        if i * dim != last {
            let (head, tail) = space.delta_vectors.split_at_mut(last);
            head[i * dim..(i + 1) * dim].copy_from_slice(tail);
        }
        space.delta_vectors.truncate(last);
        if let Some(&moved) = space.delta_nodes.get(i) {
            space.delta_position.insert(moved, i);
        }
    }
}

/// Builds the graph of `space` from the live vectors stored in `db`.
pub(crate) fn build_space_graph(
    db: &GenerationDb,
    space: &str,
    identity: &ModelIdentity,
    params: &HnswParams,
) -> Result<Graph> {
    let ids: HashMap<u32, String> = db
        .live()?
        .into_iter()
        .map(|(id, node)| (node, id))
        .collect();
    let mut points = Vec::with_capacity(ids.len());
    for (node, hash, vector) in db.all_vectors(space)? {
        if let Some(id) = ids.get(&node) {
            if vector.len() != identity.dim {
                return Err(IndexError::DimensionMismatch {
                    what: format!("stored vector of document {id:?} in space {space:?}"),
                    expected: identity.dim,
                    found: vector.len(),
                });
            }
            points.push(GraphPoint {
                node,
                hash,
                id: id.clone(),
                vector,
            });
        }
    }
    if points.len() != ids.len() {
        return Err(IndexError::CorruptRecord {
            what: format!("space {space:?}"),
            reason: format!("{} live documents but {} vectors", ids.len(), points.len()),
        });
    }
    Graph::build(points, identity.dim, &identity.fingerprint, params)
}
