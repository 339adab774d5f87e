//! The metadata filter index held in memory: postings per (field, value) and live-node sets.

use super::*;

/// Metadata filters in memory: for each (field, canonical value), the nodes that have it,
/// sorted. Lists may hold nodes that are no longer live; searches intersect with the live set.
#[derive(Debug, Default)]
pub(crate) struct FieldIndex {
    pub(crate) postings: HashMap<(String, String), Vec<u32>>,
}

impl FieldIndex {
    pub(crate) fn add(&mut self, node: u32, metadata: &Map<String, Value>) {
        for pair in indexed_pairs(metadata) {
            let list = self.postings.entry(pair).or_default();
            if let Err(at) = list.binary_search(&node) {
                list.insert(at, node);
            }
        }
    }

    pub(crate) fn remove(&mut self, node: u32, metadata: &Map<String, Value>) {
        for pair in indexed_pairs(metadata) {
            if let Some(list) = self.postings.get_mut(&pair) {
                if let Ok(at) = list.binary_search(&node) {
                    list.remove(at);
                }
            }
        }
    }

    /// Nodes passing `filter`, sorted and deduplicated.
    pub(crate) fn matching(&self, filter: &Filter) -> Vec<u32> {
        let mut result: Option<Vec<u32>> = None;
        for clause in &filter.clauses {
            let mut nodes = Vec::new();
            for value in &clause.values {
                if let Some(value_key) = scalar_key(value) {
                    if let Some(list) = self.postings.get(&(clause.field.clone(), value_key)) {
                        nodes.extend_from_slice(list);
                    }
                }
            }
            if clause.values.len() > 1 {
                nodes.sort_unstable();
                nodes.dedup();
            }
            result = Some(match result {
                None => nodes,
                Some(previous) => intersect(&previous, &nodes),
            });
        }
        result.unwrap_or_default()
    }
}

/// A set of node numbers as a bitset.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSet {
    pub(crate) words: Vec<u64>,
}

impl NodeSet {
    pub(crate) fn insert(&mut self, node: u32) {
        let word = node as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (node % 64);
    }
    pub(crate) fn remove(&mut self, node: u32) {
        if let Some(w) = self.words.get_mut(node as usize / 64) {
            *w &= !(1 << (node % 64));
        }
    }
    #[inline]
    pub(crate) fn contains(&self, node: u32) -> bool {
        self.words
            .get(node as usize / 64)
            .is_some_and(|w| w & (1 << (node % 64)) != 0)
    }
}
