//! Embedding on dedicated threads per model, fed by bounded queues (the shape of
//! text-embeddings-inference's backend thread). With dynamic batching on, a thread takes every
//! request that queued while its previous forward pass ran and embeds them together, so
//! concurrent requests share one pass; actix's threads only enqueue and await the reply.
//!
//! Two lanes share the model's weights: [`Lane::Interactive`] (searches) runs on every core at
//! normal priority; [`Lane::Bulk`] (evaluations, visibility, upserts, `/v1/embeddings`, catching
//! up) runs on `bulk_threads` threads at the lowest OS priority, so however much bulk work is
//! queued, a search waits for the cores only as long as the scheduler takes to hand them over.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use attune_index::ModelIdentity;
use attune_model::{plan_batches, Encoder, EncoderSettings, Mode, TextKind, TokenizedText};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::settings::InferenceSettings;

/// One embedded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The vector (unit length when the model normalises).
    pub vector: Vec<f32>,
    /// Tokens embedded, special tokens included, after truncation.
    pub tokens: usize,
    /// True when the text was longer than the token limit and was cut.
    pub truncated: bool,
}

/// Which queue, and so which thread, embeds a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Searches: one short text, waited for by a user.
    Interactive,
    /// Everything else: many texts, or work nobody waits on interactively.
    Bulk,
}

/// A request to the inference thread.
struct Job {
    texts: Vec<String>,
    kind: TextKind,
    max_tokens: usize,
    reply: oneshot::Sender<Result<Vec<Embedded>, String>>,
}

/// The queue in front of one model's inference thread. Dropping it stops the thread once the
/// queued jobs are answered.
pub struct InferenceQueue {
    sender: Option<SyncSender<Job>>,
    bulk: Option<SyncSender<Job>>,
    identity: ModelIdentity,
    label: String,
    max_seq_length: usize,
}

impl std::fmt::Debug for InferenceQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceQueue")
            .field("model", &self.label)
            .finish_non_exhaustive()
    }
}

impl InferenceQueue {
    /// Starts the inference thread of `encoder`. `label` names the model in metrics and logs.
    pub fn start(
        encoder: Encoder,
        identity: ModelIdentity,
        label: String,
        settings: &InferenceSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (sender, receiver) = mpsc::sync_channel(settings.queue_capacity);
        let (bulk, bulk_receiver) = mpsc::sync_channel(settings.queue_capacity);
        let max_seq_length = encoder.max_seq_length();
        let encoder = Arc::new(encoder);
        let worker = |lane: &str| Worker {
            encoder: encoder.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            label: label.clone(),
            lane: lane.to_string(),
        };
        // Detached: each thread ends by itself once its queue is closed and drained.
        let interactive = worker("interactive");
        std::thread::Builder::new()
            .name(format!("attune-inference-{label}"))
            .spawn(move || interactive.run(receiver))
            .expect("spawn the inference thread");
        let bulk_worker = worker("bulk");
        let threads = settings.bulk_threads.max(1);
        std::thread::Builder::new()
            .name(format!("attune-bulk-{label}"))
            .spawn(move || {
                // The bulk lane's forward passes run inside a pool of its own whose threads have
                // the lowest priority: the kernels split their work over the current pool, and
                // batches computed side by side get threads at their caller's priority.
                match rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("attune-bulk-{i}"))
                    .start_handler(|_| lower_thread_priority())
                    .build()
                {
                    Ok(pool) => pool.install(|| bulk_worker.run(bulk_receiver)),
                    Err(e) => {
                        tracing::warn!(
                            "bulk inference pool: {e}; bulk work runs at normal priority"
                        );
                        bulk_worker.run(bulk_receiver)
                    }
                }
            })
            .expect("spawn the bulk inference thread");
        Self {
            sender: Some(sender),
            bulk: Some(bulk),
            identity,
            label,
            max_seq_length,
        }
    }

    /// The model's identity.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The model's name in metrics and responses (its directory name).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The model's own truncation length in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Embeds `texts` in the interactive lane (see [`InferenceQueue::embed_in`]).
    pub async fn embed(
        &self,
        texts: Vec<String>,
        kind: TextKind,
        max_tokens: usize,
    ) -> Result<Vec<Embedded>, ApiError> {
        self.embed_in(Lane::Interactive, texts, kind, max_tokens)
            .await
    }

    /// Embeds `texts` with the prefix of `kind`, each cut to `max_tokens` tokens (at most the
    /// model's max_seq_length), in `lane`. Waits for the inference thread without blocking the
    /// caller's thread; a full queue is [`ApiError::Unavailable`].
    pub async fn embed_in(
        &self,
        lane: Lane,
        texts: Vec<String>,
        kind: TextKind,
        max_tokens: usize,
    ) -> Result<Vec<Embedded>, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            texts,
            kind,
            max_tokens: max_tokens.clamp(2, self.max_seq_length),
            reply,
        };
        let sender = match lane {
            Lane::Interactive => &self.sender,
            Lane::Bulk => &self.bulk,
        }
        .as_ref()
        .expect("sender lives until drop");
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Unavailable(format!(
                    "the inference queue of model {} is full; retry shortly",
                    self.label
                )))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::Unavailable(format!(
                    "the inference thread of model {} has stopped",
                    self.label
                )))
            }
        }
        match answer.await {
            Ok(Ok(embedded)) => Ok(embedded),
            Ok(Err(message)) => Err(ApiError::Internal(format!(
                "embedding with model {}: {message}",
                self.label
            ))),
            Err(_) => Err(ApiError::Unavailable(format!(
                "the inference thread of model {} stopped before answering",
                self.label
            ))),
        }
    }
}

impl Drop for InferenceQueue {
    /// Closes the queue without waiting: the thread answers what is queued, then ends. (Dropping
    /// can happen on an actix worker, which must not block on a forward pass.)
    fn drop(&mut self) {
        drop(self.sender.take());
        drop(self.bulk.take());
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19; on Linux the nice value
/// is per thread). Best effort: a failure leaves the thread as it was.
fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread's own id.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if result != 0 {
        tracing::warn!("could not lower the priority of a bulk inference thread");
    }
}

struct Worker {
    encoder: Arc<Encoder>,
    settings: InferenceSettings,
    metrics: Arc<Metrics>,
    label: String,
    /// `interactive` or `bulk`, for logs.
    lane: String,
}

impl Worker {
    fn run(self, receiver: Receiver<Job>) {
        // This thread and the pool its kernels run in (the global one, or the bulk lane's).
        attune_model::flush_denormals();
        while let Ok(first) = receiver.recv() {
            let mut jobs = vec![first];
            if self.settings.dynamic_batching {
                let mut texts = jobs[0].texts.len();
                while texts < self.settings.max_batch_texts {
                    match receiver.try_recv() {
                        Ok(job) => {
                            texts += job.texts.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
            }
            self.metrics.queue_depth(&self.label, jobs.len());
            match self.embed_jobs(&jobs) {
                Ok(results) => {
                    for (job, result) in jobs.into_iter().zip(results) {
                        let _ = job.reply.send(Ok(result));
                    }
                }
                Err(message) => {
                    tracing::error!("model {} ({} lane): {message}", self.label, self.lane);
                    for job in jobs {
                        let _ = job.reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }

    /// Embeds the texts of all `jobs` in as few forward passes as the batch limits allow.
    fn embed_jobs(&self, jobs: &[Job]) -> Result<Vec<Vec<Embedded>>, String> {
        let mut items: Vec<TokenizedText> = Vec::new();
        let mut owner: Vec<(usize, usize)> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            let tokenized = self
                .encoder
                .tokenize(&job.texts, job.kind)
                .map_err(|e| e.to_string())?;
            for (t, mut item) in tokenized.into_iter().enumerate() {
                truncate(&mut item, job.max_tokens);
                items.push(item);
                owner.push((j, t));
            }
        }
        let mut results: Vec<Vec<Option<Embedded>>> =
            jobs.iter().map(|job| vec![None; job.texts.len()]).collect();
        let lengths: Vec<usize> = items.iter().map(|item| item.ids.len()).collect();
        let plan = plan_batches(
            &lengths,
            &EncoderSettings {
                batch_size: self.settings.max_batch_texts,
                max_tokens_per_batch: self.settings.max_batch_tokens,
                ..EncoderSettings::default()
            },
        );
        for batch in plan {
            let refs: Vec<&TokenizedText> = batch.iter().map(|&i| &items[i]).collect();
            let rows = self
                .encoder
                .forward_batch(&refs, Mode::Inference)
                .and_then(to_rows)
                .map_err(|e| e.to_string())?;
            self.metrics.batch(&self.label, batch.len());
            for (&i, vector) in batch.iter().zip(rows) {
                let (j, t) = owner[i];
                results[j][t] = Some(Embedded {
                    vector,
                    tokens: items[i].ids.len(),
                    truncated: items[i].truncated,
                });
            }
        }
        Ok(results
            .into_iter()
            .map(|texts| {
                texts
                    .into_iter()
                    .map(|e| e.expect("every text embedded"))
                    .collect()
            })
            .collect())
    }
}

/// Cuts `item` to `max_tokens` tokens, keeping its final special token (`[SEP]`).
fn truncate(item: &mut TokenizedText, max_tokens: usize) {
    let max_tokens = max_tokens.max(2);
    if item.ids.len() <= max_tokens {
        return;
    }
    let last = *item.ids.last().expect("non-empty");
    let last_type = *item.type_ids.last().expect("non-empty");
    item.ids.truncate(max_tokens - 1);
    item.type_ids.truncate(max_tokens - 1);
    item.ids.push(last);
    item.type_ids.push(last_type);
    item.truncated = true;
}

/// The rows of the encoder's `(texts, dim)` output.
fn to_rows(tensor: candle_core::Tensor) -> Result<Vec<Vec<f32>>, attune_model::ModelError> {
    Ok(tensor.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_closing_token() {
        let mut item = TokenizedText {
            ids: vec![101, 5, 6, 7, 8, 102],
            type_ids: vec![0; 6],
            truncated: false,
        };
        truncate(&mut item, 4);
        assert_eq!(item.ids, vec![101, 5, 6, 102]);
        assert!(item.truncated);
        let mut short = TokenizedText {
            ids: vec![101, 5, 102],
            type_ids: vec![0; 3],
            truncated: false,
        };
        truncate(&mut short, 4);
        assert_eq!(short.ids, vec![101, 5, 102]);
        assert!(!short.truncated);
    }

    #[test]
    fn queued_jobs_share_one_forward_pass_and_match_embedding_alone() {
        let dir = tempfile::tempdir().unwrap();
        attune_model::fixtures::write_random_bert(
            dir.path(),
            &attune_model::fixtures::RandomBertSpec::default(),
        )
        .unwrap();
        let model_dir = attune_model::ModelDir::open(dir.path()).unwrap();
        let load = || {
            Encoder::load(
                &model_dir,
                &attune_model::Device::Cpu,
                EncoderSettings::default(),
            )
            .unwrap()
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        let worker = Worker {
            encoder: Arc::new(load()),
            settings: InferenceSettings::default(),
            metrics: metrics.clone(),
            label: "m".into(),
            lane: "interactive".into(),
        };
        let texts = [
            vec!["red shoe".to_string()],
            vec!["blue boot".to_string(), "green hat size 42".to_string()],
            vec!["black".to_string()],
        ];
        let jobs: Vec<Job> = texts
            .iter()
            .map(|t| Job {
                texts: t.clone(),
                kind: TextKind::Query,
                max_tokens: 128,
                reply: oneshot::channel().0,
            })
            .collect();
        let results = worker.embed_jobs(&jobs).unwrap();
        assert!(metrics
            .render()
            .contains("attune_embedding_batch_texts_count{model=\"m\"} 1"));
        let alone = load();
        for (job, result) in texts.iter().zip(&results) {
            let expected = alone.embed(job, TextKind::Query).unwrap().embeddings;
            for (got, want) in result.iter().zip(&expected) {
                for (a, b) in got.vector.iter().zip(want) {
                    assert!((a - b).abs() < 1e-5, "batched {a} vs alone {b}");
                }
            }
        }
    }
}
