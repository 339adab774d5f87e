//! Evaluating one model on one BEIR dataset: embed (corpus from the cache when possible), retrieve
//! exactly, score. Timings separate embedding from everything after it.

use std::collections::HashMap;
use std::time::Instant;

use attune_model::{Encoder, TextKind};
use serde::Serialize;

use crate::cache::{CacheKey, EmbeddingCache};
use crate::data::{BeirDataset, Run, ScoredDoc};
use crate::error::Result;
use crate::metrics::{evaluate, Evaluation, MetricsSettings};
use crate::retrieval::{exact_top_k, id_order_ranks, EmbeddingMatrix, ExactSearchSettings};

/// How a model is evaluated.
#[derive(Debug, Clone, Default)]
pub struct EvalSettings {
    /// Metric definitions and cutoffs. The retrieval depth is the deepest cutoff.
    pub metrics: MetricsSettings,
    /// Block sizes of the exact search.
    pub search: ExactSearchSettings,
    /// Where corpus embeddings are cached; `None` embeds every time.
    pub cache: Option<EmbeddingCache>,
}

/// Seconds spent in each step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Embedding the corpus (or reading it from the cache).
    pub corpus_embedding_s: f64,
    /// Whether the corpus embeddings came from the cache.
    pub corpus_from_cache: bool,
    /// Embedding the queries.
    pub query_embedding_s: f64,
    /// Matrix products and top-k selection.
    pub retrieval_s: f64,
    /// Computing the metrics from the rankings.
    pub metrics_s: f64,
}

impl Timings {
    /// Everything after the embeddings exist: retrieval plus metrics.
    pub fn scoring_s(&self) -> f64 {
        self.retrieval_s + self.metrics_s
    }
}

/// One model's results on one dataset.
#[derive(Debug, Clone)]
pub struct ModelEvaluation {
    /// The metrics.
    pub evaluation: Evaluation,
    /// The rankings (top `depth` documents per query).
    pub run: Run,
    /// Where the time went.
    pub timings: Timings,
    /// Corpus documents truncated to the model's sequence length (0 when read from the cache).
    pub truncated_documents: usize,
}

/// The cache key of a corpus under an encoder: model fingerprint, document prefix, sequence
/// length, the Matryoshka dimension when the encoder truncates, and the texts.
pub fn corpus_cache_key(encoder: &Encoder, fingerprint: &str, texts: &[String]) -> CacheKey {
    let mut tag = whole_vector_tag(encoder);
    // Truncated (Matryoshka) vectors are another cache entry; whole ones keep their old key.
    if let Some(dim) = encoder.settings().truncate_dim {
        tag.push_str(&format!("|dimension={dim}"));
    }
    CacheKey::new(fingerprint, &tag, texts)
}

/// The settings part of a cache key for the encoder's whole (untruncated) vectors; narrowed
/// products (bf16, f16) are another entry, f32 ones keep their old key.
fn whole_vector_tag(encoder: &Encoder) -> String {
    let mut tag = format!(
        "document|prefix={:?}|max_seq_length={}",
        encoder.prefix(TextKind::Document),
        encoder.max_seq_length()
    );
    if let Some(precision) = encoder.narrowed_precision() {
        tag.push_str(&format!("|precision={precision}"));
    }
    tag
}

/// The cached corpus matrix of `encoder`: its own entry or, for a truncating (Matryoshka)
/// encoder, the same model's whole vectors cut to its dimension (rows are re-normalised by the
/// caller, which gives exactly the truncated encoder's vectors). So evaluating one model at
/// several dimensions embeds the corpus once.
fn load_cached(
    cache: &EmbeddingCache,
    encoder: &Encoder,
    fingerprint: &str,
    texts: &[String],
) -> Result<Option<EmbeddingMatrix>> {
    let fits = |m: &EmbeddingMatrix, dim: usize| m.rows == texts.len() && m.dim == dim;
    let own = cache.load(&corpus_cache_key(encoder, fingerprint, texts))?;
    if let Some(matrix) = own.filter(|m| fits(m, encoder.dimension())) {
        return Ok(Some(matrix));
    }
    let Some(dim) = encoder.settings().truncate_dim else {
        return Ok(None);
    };
    let whole = cache.load(&CacheKey::new(
        fingerprint,
        &whole_vector_tag(encoder),
        texts,
    ))?;
    Ok(whole
        .filter(|m| m.rows == texts.len() && m.dim >= dim)
        .map(|m| EmbeddingMatrix {
            rows: m.rows,
            dim,
            data: m
                .data
                .chunks_exact(m.dim)
                .flat_map(|row| &row[..dim])
                .copied()
                .collect(),
        }))
}

/// Scales each row to unit length (rows of zeros stay zero), so dot products are cosines.
fn normalize_rows(matrix: &mut EmbeddingMatrix) {
    if matrix.dim == 0 {
        return;
    }
    for row in matrix.data.chunks_mut(matrix.dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// Embeds the corpus (or loads it from the cache) and the queries of `data` with `encoder`,
/// retrieves the top documents of each query by cosine, and scores the rankings.
/// `fingerprint` identifies the model for the cache ([`attune_model::ModelDir::fingerprint`]);
/// `on_corpus_batch` is called with the number of documents of each embedded batch.
pub fn evaluate_model(
    encoder: &Encoder,
    fingerprint: &str,
    data: &BeirDataset,
    settings: &EvalSettings,
    on_corpus_batch: &mut dyn FnMut(usize),
) -> Result<ModelEvaluation> {
    let mut timings = Timings::default();
    let texts = data.document_texts();
    let key = corpus_cache_key(encoder, fingerprint, &texts);

    let start = Instant::now();
    let cached = match &settings.cache {
        Some(cache) => load_cached(cache, encoder, fingerprint, &texts)?,
        None => None,
    };
    let mut truncated_documents = 0;
    let mut corpus = match cached {
        Some(matrix) => {
            timings.corpus_from_cache = true;
            on_corpus_batch(texts.len());
            matrix
        }
        None => {
            let out = encoder.embed_with_progress(&texts, TextKind::Document, on_corpus_batch)?;
            truncated_documents = out.truncated;
            let matrix = EmbeddingMatrix::from_rows(&out.embeddings, encoder.dimension())?;
            if let Some(cache) = &settings.cache {
                cache.store(&key, &matrix)?;
            }
            matrix
        }
    };
    timings.corpus_embedding_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let query_texts: Vec<&str> = data.queries.iter().map(|q| q.text.as_str()).collect();
    let embedded = encoder.embed(&query_texts, TextKind::Query)?;
    let mut queries = EmbeddingMatrix::from_rows(&embedded.embeddings, encoder.dimension())?;
    timings.query_embedding_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    normalize_rows(&mut corpus);
    normalize_rows(&mut queries);
    let ids: Vec<&str> = data.corpus.iter().map(|d| d.id.as_str()).collect();
    let hits = exact_top_k(
        &queries,
        &corpus,
        settings.metrics.depth(),
        &id_order_ranks(&ids),
        encoder.device(),
        &settings.search,
    )?;
    let run: Run = data
        .queries
        .iter()
        .zip(hits)
        .map(|(query, hits)| {
            let ranked = hits
                .into_iter()
                .map(|h| ScoredDoc {
                    doc_id: ids[h.doc as usize].to_string(),
                    score: f64::from(h.score),
                })
                .collect();
            (query.id.clone(), ranked)
        })
        .collect();
    timings.retrieval_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let evaluation = evaluate(&run, &data.qrels, &settings.metrics)?;
    timings.metrics_s = start.elapsed().as_secs_f64();

    Ok(ModelEvaluation {
        evaluation,
        run,
        timings,
        truncated_documents,
    })
}

/// Query id → text, for reports.
pub fn query_texts(data: &BeirDataset) -> HashMap<String, String> {
    data.queries
        .iter()
        .map(|q| (q.id.clone(), q.text.clone()))
        .collect()
}
