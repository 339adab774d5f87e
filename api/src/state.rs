//! What the server serves: the store's collections (each at its current generation) with the
//! inference queues of their spaces' models and their A/B event logs. A watcher thread checks
//! the store's manifests and swaps in generations committed by `attune index build`, so re-index
//! jobs are picked up without a restart; requests in flight finish on the generation they
//! started with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use attune_index::{
    AbEventLog, IndexError, ModelIdentity, ServedCollection, SpaceEmbedder, Store, VectorStore,
};
use attune_model::{Device, DeviceRequest, TextKind};

use crate::drift::DriftMonitor;
use crate::error::{ApiError, StartError};
use crate::inference::InferenceQueue;
use crate::metrics::Metrics;
use crate::settings::ServeSettings;
use attune_app::ModelEmbedder;

/// A collection being served.
pub struct Served {
    /// The generation being served.
    pub collection: Arc<dyn ServedCollection>,
    /// The inference queue of each space's model.
    pub models: BTreeMap<String, Arc<InferenceQueue>>,
    /// The A/B event log (shared across generations).
    pub events: Arc<dyn AbEventLog>,
}

impl Served {
    /// The model of `space`, or 404 naming the spaces there are.
    pub fn model(&self, space: &str) -> Result<&Arc<InferenceQueue>, ApiError> {
        self.models.get(space).ok_or_else(|| {
            ApiError::NotFound(format!(
                "collection {:?} has no space {space:?} (spaces: {})",
                self.collection.name(),
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Shared state of the server.
pub struct AppState {
    store: Arc<dyn VectorStore>,
    /// Settings the server runs with.
    pub settings: ServeSettings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    device: Device,
    collections: RwLock<BTreeMap<String, Arc<Served>>>,
    problems: RwLock<BTreeMap<String, String>>,
    /// Why the store could not be read at the last check (Qdrant unreachable, say); `None`
    /// when it could.
    store_problem: RwLock<Option<String>>,
    models: Mutex<HashMap<String, Arc<InferenceQueue>>>,
    events: Mutex<HashMap<String, Arc<dyn AbEventLog>>>,
    /// Per collection: writes hold it shared, a generation switch exclusively (see
    /// [`AppState::write_gate`]).
    gates: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    /// Drift monitors by (collection, space, model fingerprint): a promoted model starts a
    /// monitor of its own, against its own training queries.
    drift: Mutex<HashMap<(String, String, String), Arc<DriftMonitor>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store.location())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the store and loads every built collection and its models. Collections that cannot
    /// be served are listed by [`AppState::problems`] (and make `/readyz` fail) rather than
    /// stopping the server.
    pub fn open(store: &Path, settings: ServeSettings) -> Result<Arc<Self>, StartError> {
        Self::with_store(Arc::new(Store::open(store)?), settings)
    }

    /// Opens the store `settings.store` names (the embedded one in `dir`, or a Qdrant
    /// deployment) and serves it as [`AppState::open`] does.
    pub fn connect(dir: Option<&Path>, settings: ServeSettings) -> Result<Arc<Self>, StartError> {
        let store = settings.store.open(dir, false)?;
        Self::with_store(store, settings)
    }

    /// Serves the collections of `store` (any implementation of the vector-store seam).
    pub fn with_store(
        store: Arc<dyn VectorStore>,
        settings: ServeSettings,
    ) -> Result<Arc<Self>, StartError> {
        settings.validate()?;
        let device_request: DeviceRequest =
            settings
                .device
                .parse()
                .map_err(|e: attune_model::ModelError| StartError::Model {
                    path: PathBuf::from(&settings.device),
                    message: e.to_string(),
                })?;
        let device = device_request.open().map_err(|e| StartError::Model {
            path: PathBuf::from(&settings.device),
            message: e.to_string(),
        })?;
        let state = Arc::new(Self {
            store,
            settings,
            metrics: Arc::new(Metrics::new()?),
            device,
            collections: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(BTreeMap::new()),
            store_problem: RwLock::new(None),
            models: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            drift: Mutex::new(HashMap::new()),
        });
        state.refresh();
        Ok(state)
    }

    /// Starts the thread that calls [`AppState::refresh`] every `reload_interval_ms`; it ends
    /// when the state is dropped.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = Duration::from_millis(self.settings.reload_interval_ms);
        std::thread::Builder::new()
            .name("attune-store-watcher".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                match weak.upgrade() {
                    Some(state) => state.refresh(),
                    None => break,
                }
            })
            .expect("spawn the store watcher");
    }

    /// The store (read-only use by handlers: published reports).
    pub fn store(&self) -> &dyn VectorStore {
        self.store.as_ref()
    }

    /// Where the store lives (its directory, for the embedded store).
    pub fn store_location(&self) -> String {
        self.store.location()
    }

    /// The served collection `name`.
    pub fn collection(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        if let Some(served) = self.collections.read().expect("lock").get(name) {
            return Ok(served.clone());
        }
        if let Some(problem) = self.problems.read().expect("lock").get(name) {
            return Err(ApiError::Unavailable(format!(
                "collection {name:?} is not being served: {problem}"
            )));
        }
        let names = self.collection_names();
        Err(ApiError::NotFound(format!(
            "unknown collection {name:?} (collections: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )))
    }

    /// The write gate of collection `name`. A write holds it shared from choosing the
    /// generation to writing to it; switching to a new generation holds it exclusively while
    /// the new generation applies the writes the old one took, so no acknowledged write is
    /// left behind on a generation that is no longer served.
    pub fn write_gate(&self, name: &str) -> Arc<RwLock<()>> {
        self.gates
            .lock()
            .expect("lock")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The served collection `name` for a write prepared against `prepared` (vectors from its
    /// models): the current one, or `None` when a switch since changed a space's model (embed
    /// again with the current one's models). Call with the write gate held.
    pub fn collection_for_write(
        &self,
        name: &str,
        prepared: &Served,
    ) -> Result<Option<Arc<Served>>, ApiError> {
        let current = self.collection(name)?;
        let same_models = current.models.len() == prepared.models.len()
            && current.models.iter().all(|(space, queue)| {
                prepared
                    .models
                    .get(space)
                    .is_some_and(|q| q.identity().same_model(queue.identity()))
            });
        Ok(same_models.then_some(current))
    }

    /// Names of the served collections.
    pub fn collection_names(&self) -> Vec<String> {
        self.collections
            .read()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Every served collection.
    pub fn all(&self) -> Vec<Arc<Served>> {
        self.collections
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// Why the store could not be read at the last check, if it could not.
    pub fn store_problem(&self) -> Option<String> {
        self.store_problem.read().expect("lock").clone()
    }

    /// Collections in the store that cannot be served, and why.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems.read().expect("lock").clone()
    }

    /// Every loaded model: (space names using it, queue).
    pub fn models(&self) -> Vec<Arc<InferenceQueue>> {
        let mut models: Vec<_> = self
            .models
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        models.sort_by(|a, b| a.label().cmp(b.label()));
        models
    }

    /// Brings the served collections in line with the store: loads new collections and new
    /// generations, drops removed collections. Blocking (opens sled, reads graphs, loads
    /// models); called at start and by the watcher thread.
    pub fn refresh(&self) {
        let names = match self.store.collection_names() {
            Ok(names) => {
                *self.store_problem.write().expect("lock") = None;
                names
            }
            Err(e) => {
                tracing::error!("reading the store: {e}");
                *self.store_problem.write().expect("lock") = Some(e.to_string());
                return;
            }
        };
        let removed: Vec<String> = self
            .collections
            .read()
            .expect("lock")
            .keys()
            .filter(|name| !names.contains(name))
            .cloned()
            .collect();
        for name in removed {
            tracing::info!("collection {name:?} was removed from the store");
            self.collections.write().expect("lock").remove(&name);
            self.events.lock().expect("lock").remove(&name);
            self.metrics.forget_collection(&name);
            self.drift
                .lock()
                .expect("lock")
                .retain(|(collection, space, _), _| {
                    if *collection == name {
                        self.metrics.forget_drift(collection, space);
                    }
                    *collection != name
                });
        }
        for name in names {
            let current = match self.store.current_generation(&name) {
                Ok(current) => current,
                Err(e) => {
                    self.set_problem(&name, Some(e.to_string()));
                    continue;
                }
            };
            let Some(current) = current else {
                if !self.collections.read().expect("lock").contains_key(&name) {
                    self.set_problem(&name, Some("its first build has not finished".into()));
                }
                continue;
            };
            let served_generation = self
                .collections
                .read()
                .expect("lock")
                .get(&name)
                .map(|s| s.collection.generation());
            if served_generation == Some(current) {
                continue;
            }
            match self
                .load(&name)
                .and_then(|served| self.switch_to(&name, served))
            {
                Ok(served) => {
                    tracing::info!(
                        "serving collection {name:?} generation {}",
                        served.collection.generation()
                    );
                    self.metrics.collection(
                        &name,
                        served.collection.len(),
                        served.collection.generation(),
                    );
                    self.set_problem(&name, None);
                }
                // The build that committed it may still hold its database for a moment: keep
                // serving the previous generation and retry on the next check.
                Err(LoadError::Index(e @ IndexError::InUse { .. })) => {
                    if served_generation.is_none() {
                        self.set_problem(&name, Some(format!("{e} (retrying)")));
                    }
                }
                Err(e) => {
                    tracing::error!("collection {name:?}: {e}");
                    self.set_problem(&name, Some(e.to_string()));
                }
            }
        }
        self.drop_unused_models();
    }

    /// Serves `served` in place of the collection's current generation, once it holds every
    /// write the older generation acknowledged.
    fn switch_to(&self, name: &str, served: Served) -> Result<Arc<Served>, LoadError> {
        // Most of the catching up happens while the old generation still takes writes.
        self.catch_up(&served)?;
        let gate = self.write_gate(name);
        let _exclusive = gate.write().unwrap_or_else(|e| e.into_inner());
        self.catch_up(&served)?;
        let served = Arc::new(served);
        self.collections
            .write()
            .expect("lock")
            .insert(name.to_string(), served.clone());
        Ok(served)
    }

    /// Applies to `served` the writes acknowledged on other generations, embedding with its
    /// models where they differ from the models that embedded the writes.
    fn catch_up(&self, served: &Served) -> Result<(), LoadError> {
        let mut embedder = QueueEmbedder {
            models: &served.models,
            batch: self.settings.inference.max_batch_texts.max(1),
        };
        let applied = served.collection.catch_up(Some(&mut embedder))?;
        if applied > 0 {
            tracing::info!(
                "collection {:?} generation {}: applied {applied} writes acknowledged on the \
                 previous generation",
                served.collection.name(),
                served.collection.generation()
            );
        }
        Ok(())
    }

    fn set_problem(&self, name: &str, problem: Option<String>) {
        let mut problems = self.problems.write().expect("lock");
        match problem {
            Some(problem) => problems.insert(name.to_string(), problem),
            None => problems.remove(name),
        };
    }

    fn load(&self, name: &str) -> Result<Served, LoadError> {
        let collection = self.store.open_collection(name)?;
        let mut models = BTreeMap::new();
        for (space, identity) in collection.spaces() {
            models.insert(space.clone(), self.model_for(name, &space, &identity)?);
        }
        let events = {
            let mut logs = self.events.lock().expect("lock");
            match logs.get(name) {
                Some(log) => log.clone(),
                None => {
                    let log = self.store.open_events(name)?;
                    logs.insert(name.to_string(), log.clone());
                    log
                }
            }
        };
        Ok(Served {
            collection,
            models,
            events,
        })
    }

    /// The loaded model with `identity`, loading it from the configured or recorded directory.
    fn model_for(
        &self,
        collection: &str,
        space: &str,
        identity: &ModelIdentity,
    ) -> Result<Arc<InferenceQueue>, LoadError> {
        if let Some(queue) = self.models.lock().expect("lock").get(&identity.fingerprint) {
            return Ok(queue.clone());
        }
        let path = self.model_dir(space, identity);
        let embedder = ModelEmbedder::for_identity(&path, &self.device, identity).map_err(|e| {
            LoadError::Model(format!(
                "space {space:?} of collection {collection:?}: model {}: {e} (set \
                     models.{space} in the settings file to the model directory the space was \
                     built with, or rebuild the collection)",
                path.display()
            ))
        })?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| identity.fingerprint.clone());
        let (encoder, loaded_identity) = embedder.into_parts();
        let queue = Arc::new(InferenceQueue::start(
            encoder,
            loaded_identity,
            format!(
                "{label}-{}",
                &identity.fingerprint[..8.min(identity.fingerprint.len())]
            ),
            &self.settings.inference,
            self.metrics.clone(),
        ));
        self.models
            .lock()
            .expect("lock")
            .insert(identity.fingerprint.clone(), queue.clone());
        Ok(queue)
    }

    /// The directory of `space`'s model: `models.<space>` of the settings, else the one the
    /// space was built with.
    fn model_dir(&self, space: &str, identity: &ModelIdentity) -> PathBuf {
        self.settings
            .models
            .get(space)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(&identity.source))
    }

    /// The drift monitor of `space` of `served` for the model serving it now, made on first
    /// use. A new monitor whose model's training card lists its training queries comes with
    /// them: the caller embeds them and hands the vectors to
    /// [`DriftMonitor::set_reference_vectors`]. Reads a file; call off the async threads.
    pub fn drift_monitor(
        &self,
        served: &Served,
        space: &str,
    ) -> Result<(Arc<DriftMonitor>, Option<Vec<String>>), ApiError> {
        let identity = served.model(space)?.identity().clone();
        let key = (
            served.collection.name().to_string(),
            space.to_string(),
            identity.fingerprint.clone(),
        );
        if let Some(monitor) = self.drift.lock().expect("lock").get(&key) {
            return Ok((monitor.clone(), None));
        }
        let settings = self.settings.feedback.drift.clone();
        let dir = self.model_dir(space, &identity);
        // A card that cannot be read leaves the first served queries as the reference.
        let card = attune_app::train_job::reference_queries(&dir)
            .unwrap_or_else(|e| {
                tracing::warn!("drift reference of {}: {e}", dir.display());
                None
            })
            .filter(|q| !q.is_empty())
            .map(|mut q| {
                q.truncate(settings.max_reference);
                q
            });
        let monitor = Arc::new(DriftMonitor::new(settings, card.as_deref()));
        let mut monitors = self.drift.lock().expect("lock");
        if let Some(raced) = monitors.get(&key) {
            return Ok((raced.clone(), None));
        }
        monitors.insert(key, monitor.clone());
        Ok((monitor, card))
    }

    /// The drift monitors of the models that serve `served`'s vector spaces now.
    pub fn drift_monitors(&self, served: &Served) -> Vec<(String, Option<Arc<DriftMonitor>>)> {
        let monitors = self.drift.lock().expect("lock");
        served
            .models
            .iter()
            .map(|(space, queue)| {
                let key = (
                    served.collection.name().to_string(),
                    space.clone(),
                    queue.identity().fingerprint.clone(),
                );
                (space.clone(), monitors.get(&key).cloned())
            })
            .collect()
    }

    /// Stops the inference threads of models no served collection uses any more, and drops
    /// the drift monitors of models that no longer serve their space.
    fn drop_unused_models(&self) {
        let serving: std::collections::HashSet<(String, String, String)> = self
            .collections
            .read()
            .expect("lock")
            .iter()
            .flat_map(|(name, served)| {
                served.models.iter().map(move |(space, queue)| {
                    (
                        name.clone(),
                        space.clone(),
                        queue.identity().fingerprint.clone(),
                    )
                })
            })
            .collect();
        self.drift
            .lock()
            .expect("lock")
            .retain(|key, _| serving.contains(key));
        let used: std::collections::HashSet<String> = self
            .collections
            .read()
            .expect("lock")
            .values()
            .flat_map(|s| s.models.values().map(|m| m.identity().fingerprint.clone()))
            .collect();
        self.models
            .lock()
            .expect("lock")
            .retain(|fingerprint, _| used.contains(fingerprint));
    }

    /// Writes the event logs to disk (at shutdown).
    pub fn flush(&self) {
        for log in self.events.lock().expect("lock").values() {
            if let Err(e) = log.flush() {
                tracing::error!("{e}");
            }
        }
    }
}

/// The inference queues of a served generation, as the embedder of journaled writes. Runs on
/// the watcher thread (or at start), never on an async worker.
struct QueueEmbedder<'a> {
    models: &'a BTreeMap<String, Arc<InferenceQueue>>,
    batch: usize,
}

impl SpaceEmbedder for QueueEmbedder<'_> {
    fn embed_documents(&mut self, space: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let queue = self
            .models
            .get(space)
            .ok_or_else(|| format!("no model for space {space:?}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch) {
            let owned: Vec<String> = chunk.iter().map(|t| t.to_string()).collect();
            let mut attempts = 0;
            let embedded = loop {
                let answer = runtime.block_on(queue.embed_in(
                    crate::inference::Lane::Bulk,
                    owned.clone(),
                    TextKind::Document,
                    queue.max_seq_length(),
                ));
                match answer {
                    // A full queue: wait for the searches ahead of us.
                    Err(ApiError::Unavailable(_)) if attempts < 600 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => break other.map_err(|e| e.to_string())?,
                }
            };
            out.extend(embedded.into_iter().map(|e| e.vector));
        }
        Ok(out)
    }
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0}")]
    Model(String),
}
