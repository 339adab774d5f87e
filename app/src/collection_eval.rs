//! Judged queries evaluated by searching a built collection, in any space it serves: its vector
//! spaces (the HNSW graphs as served), `lexical` (BM25) and `hybrid:<space>` (fused). The model
//! evaluation of [`crate::eval_job`] embeds a corpus and searches it exactly; this one answers
//! "what does the served collection return", which is the only way to measure lexical and
//! hybrid spaces. `attune eval --collection` and the pipeline report run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attune_eval::data::{read_qrels, read_queries};
use attune_eval::{DataReport, EvalError};
use attune_index::{Fusion, Retrieval, ServedCollection};
use attune_model::Device;

use crate::embedder::{EmbedderError, ModelEmbedder};
use crate::relevance::{evaluate_over_index, IndexEvaluation, RelevanceError, SpaceQueries};

/// What to evaluate a collection on.
#[derive(Debug, Clone)]
pub struct CollectionEvalInputs {
    /// Queries (BEIR `queries.jsonl`).
    pub queries: PathBuf,
    /// Judgments (BEIR qrels TSV); queries without a relevant judgment are left out.
    pub qrels: PathBuf,
    /// Spaces, baseline first.
    pub spaces: Vec<Retrieval>,
    /// How hybrid spaces fuse.
    pub fusion: Fusion,
    /// Cutoff of every metric and depth of retrieval.
    pub k: usize,
    /// Device the query models run on.
    pub device: Device,
}

/// Why a collection evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectionEvalError {
    /// Queries or qrels could not be read.
    #[error(transparent)]
    Data(#[from] EvalError),
    /// A space's model could not be loaded or failed.
    #[error("space {space:?}: {source}")]
    Model {
        /// The vector space.
        space: String,
        /// What went wrong.
        #[source]
        source: Box<EmbedderError>,
    },
    /// A search or the scoring failed.
    #[error(transparent)]
    Relevance(#[from] RelevanceError),
    /// No query has a relevant judgment.
    #[error("{0}: no query has a relevant judgment")]
    NothingJudged(PathBuf),
}

/// Evaluates `inputs.spaces` of `collection` on the judged queries (see the module docs).
pub fn evaluate_collection(
    collection: &dyn ServedCollection,
    inputs: &CollectionEvalInputs,
) -> Result<IndexEvaluation, CollectionEvalError> {
    for space in &inputs.spaces {
        space
            .check(collection)
            .map_err(|e| CollectionEvalError::Relevance(e.into()))?;
    }
    let qrels = read_qrels(&inputs.qrels)?;
    let queries: Vec<(String, String)> = read_queries(&inputs.queries, &mut DataReport::default())?
        .into_iter()
        .filter(|q| qrels.get(&q.id).is_some_and(|j| j.values().any(|g| *g > 0)))
        .map(|q| (q.id, q.text))
        .collect();
    if queries.is_empty() {
        return Err(CollectionEvalError::NothingJudged(inputs.qrels.clone()));
    }
    let (ids, texts): (Vec<String>, Vec<String>) = queries.into_iter().unzip();
    let embedded = embed_queries(collection, &inputs.spaces, &texts, &inputs.device)?;
    let space_queries: Vec<SpaceQueries<'_>> = inputs
        .spaces
        .iter()
        .map(|retrieval| SpaceQueries {
            retrieval,
            texts: &texts,
            embedded: retrieval.dense_space().map(|space| {
                let (embedder, vectors) = &embedded[space];
                (embedder.identity(), vectors.as_slice())
            }),
            fusion: &inputs.fusion,
        })
        .collect();
    Ok(evaluate_over_index(
        collection,
        &space_queries,
        &ids,
        &qrels,
        inputs.k,
    )?)
}

/// A vector space's model and the queries it embedded, in query order.
type EmbeddedQueries = (ModelEmbedder, Vec<Vec<f32>>);

/// The queries embedded once per vector space the spaces use, by the model the space was built
/// with (from the identity the collection records).
fn embed_queries(
    collection: &dyn ServedCollection,
    spaces: &[Retrieval],
    texts: &[String],
    device: &Device,
) -> Result<BTreeMap<String, EmbeddedQueries>, CollectionEvalError> {
    let identities = collection.spaces();
    let mut out = BTreeMap::new();
    for space in spaces.iter().filter_map(Retrieval::dense_space) {
        if out.contains_key(space) {
            continue;
        }
        let failed = |source: EmbedderError| CollectionEvalError::Model {
            space: space.to_string(),
            source: Box::new(source),
        };
        let identity = &identities[space];
        let embedder = ModelEmbedder::for_identity(Path::new(&identity.source), device, identity)
            .map_err(failed)?;
        let vectors = texts
            .iter()
            .map(|text| embedder.embed_query(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed(e.into()))?;
        out.insert(space.to_string(), (embedder, vectors));
    }
    Ok(out)
}
