//! Prometheus metrics: requests and latency per endpoint and space, embedding batch sizes,
//! documents per collection. Rendered by `GET /metrics` in the text exposition format.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The server's metrics, in a registry of their own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch_texts: HistogramVec,
    batch_requests: HistogramVec,
    documents: IntGaugeVec,
    generation: IntGaugeVec,
    drift: GaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "attune_http_requests_total",
                "HTTP requests answered, by endpoint (route pattern), space, fusion of a hybrid space \
                 (rrf, weighted, or empty) and status code.",
            ),
            &["endpoint", "space", "fusion", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "attune_http_request_duration_seconds",
                "Time from request to response, by endpoint, space and fusion of a hybrid space.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["endpoint", "space", "fusion"],
        )?;
        let batch_texts = HistogramVec::new(
            HistogramOpts::new(
                "attune_embedding_batch_texts",
                "Texts per forward pass of a model's inference thread.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            &["model"],
        )?;
        let batch_requests = HistogramVec::new(
            HistogramOpts::new(
                "attune_embedding_batch_requests",
                "Requests gathered by one wake-up of a model's inference thread.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["model"],
        )?;
        let documents = IntGaugeVec::new(
            Opts::new(
                "attune_collection_documents",
                "Live documents in the served generation of each collection.",
            ),
            &["collection"],
        )?;
        let generation = IntGaugeVec::new(
            Opts::new(
                "attune_collection_generation",
                "Generation number served for each collection.",
            ),
            &["collection"],
        )?;
        let drift = GaugeVec::new(
            Opts::new(
                "attune_query_drift",
                "Query drift over the sliding window of served searches, per collection and \
                 vector space: measure novel_share (queries whose nearest reference query is \
                 below the similarity threshold), weak_top_share (top-1 score below its \
                 threshold), unseen_word_share (words in no reference query), window_queries, and \
                 retraining_recommended \
                 (1 when a share is past its threshold).",
            ),
            &["collection", "space", "measure"],
        )?;
        registry.register(Box::new(drift.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch_texts.clone()))?;
        registry.register(Box::new(batch_requests.clone()))?;
        registry.register(Box::new(documents.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            batch_texts,
            batch_requests,
            documents,
            generation,
            drift,
        })
    }

    /// Sets one drift measure of a collection's space.
    pub fn drift(&self, collection: &str, space: &str, measure: &str, value: f64) {
        self.drift
            .with_label_values(&[collection, space, measure])
            .set(value);
    }

    /// Records one answered request (`fusion`: `rrf`, `weighted` or empty).
    pub fn request(&self, endpoint: &str, space: &str, fusion: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[endpoint, space, fusion, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[endpoint, space, fusion])
            .observe(seconds);
    }

    /// Records one forward pass of `texts` texts.
    pub fn batch(&self, model: &str, texts: usize) {
        self.batch_texts
            .with_label_values(&[model])
            .observe(texts as f64);
    }

    /// Records how many requests one wake-up of the inference thread gathered.
    pub fn queue_depth(&self, model: &str, requests: usize) {
        self.batch_requests
            .with_label_values(&[model])
            .observe(requests as f64);
    }

    /// Sets a collection's gauges.
    pub fn collection(&self, name: &str, documents: usize, generation: u64) {
        self.documents
            .with_label_values(&[name])
            .set(documents as i64);
        self.generation
            .with_label_values(&[name])
            .set(generation as i64);
    }

    /// Drops the drift gauges of a collection's space.
    pub fn forget_drift(&self, collection: &str, space: &str) {
        for measure in crate::drift::MEASURES {
            let _ = self
                .drift
                .remove_label_values(&[collection, space, measure]);
        }
    }

    /// Drops a collection's gauges.
    pub fn forget_collection(&self, name: &str) {
        let _ = self.documents.remove_label_values(&[name]);
        let _ = self.generation.remove_label_values(&[name]);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into a Vec cannot fail");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_help_type_and_samples() {
        let metrics = Metrics::new().unwrap();
        metrics.request(
            "/v1/collections/{collection}/search",
            "tuned",
            "",
            200,
            0.003,
        );
        metrics.request(
            "/v1/collections/{collection}/search",
            "hybrid:tuned",
            "rrf",
            200,
            0.004,
        );
        metrics.batch("m", 5);
        metrics.collection("shop", 12, 3);
        let text = metrics.render();
        assert!(text.contains("# TYPE attune_http_requests_total counter"));
        assert!(text.contains(
            "attune_http_requests_total{endpoint=\"/v1/collections/{collection}/search\",fusion=\"\",space=\"tuned\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "attune_http_requests_total{endpoint=\"/v1/collections/{collection}/search\",fusion=\"rrf\",space=\"hybrid:tuned\",status=\"200\"} 1"
        ));
        assert!(text.contains("attune_embedding_batch_texts_sum{model=\"m\"} 5"));
        assert!(text.contains("attune_collection_documents{collection=\"shop\"} 12"));
        metrics.forget_collection("shop");
        assert!(!metrics.render().contains("collection=\"shop\""));
    }
}
