//! The vector-store seam over a Qdrant deployment (one node or a cluster), through Qdrant's
//! REST API (see [`client`] for why REST and how requests are retried). attune servers in front
//! of it keep no state of their own: two servers over one Qdrant answer alike and share one A/B
//! log.
//!
//! **Layout** (prefix `attune`, collection `shop`; `~` cannot occur in a collection name, so
//! no two names collide):
//!
//! ```text
//! attune~meta            payload only: one point per collection (its registration) and per
//!                        published report
//! attune~shop~g7         generation 7: one named dense vector per space, a sparse vector
//!                        "lexical" (BM25 weights, IDF applied by Qdrant), the document in the
//!                        payload; the generation's manifest in the collection's metadata
//! attune~shop            alias of the current generation: the switch is one alias change
//! attune~shop~journal    payload only: acknowledged writes, by sequence number
//! attune~shop~events     payload only: the A/B log (served requests, feedback, the salt)
//! ```
//!
//! **Writes.** An upsert or delete is first appended to the journal (one record per call,
//! claimed with `insert_only` and read back, so two servers never share a number), then applied
//! to the generation. Each point carries the sequence number of the write that made it, and a
//! write only replaces a point with a smaller one (Qdrant's `update_filter`), so applying
//! writes twice, late or concurrently never lets an older one win. A delete leaves a tombstone
//! (a point without vectors) for the same reason; a rebuild drops tombstones.
//!
//! **Builds.** A build notes the journal's end, reads the current generation, embeds into a new
//! Qdrant collection (reusing vectors whose content hash and model are unchanged), waits until
//! Qdrant has indexed it, replays the journal records that arrived meanwhile (embedding them
//! with the new models), switches the alias, and replays once more. A server still writing to the old generation after the switch
//! journals its writes; it applies them to the new generation when it switches (see
//! [`crate::ServedCollection::catch_up`]).

mod client;
mod collection;
mod events;
mod journal;
mod payload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use client::QdrantSettings;
pub use collection::QdrantCollection;

use crate::build::{BuildEvent, BuildReport, BuildSettings, BuildSource, SpaceSpec};
use crate::error::{IndexError, Result};
use crate::graph::HnswParams;
use crate::identity::ModelIdentity;
use crate::lexical::LexicalSettings;
use crate::store::validate_name;
use crate::vector_store::{AbEventLog, ServedCollection, VectorStore};
use client::{Client, Method};

/// The manifest of one generation, kept in its Qdrant collection's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GenerationInfo {
    pub generation: u64,
    pub spaces: BTreeMap<String, ModelIdentity>,
    pub hnsw: HnswParams,
    pub lexical: Option<LexicalSettings>,
    /// Mean token count of a document in the lexical space when it was built (BM25's length
    /// normalisation); 1 without one.
    pub mean_length: f32,
    /// Every journal record up to this one is applied.
    pub journal_seq: u64,
    pub committed_unix: u64,
}

/// A store of collections in Qdrant (see the module docs).
#[derive(Debug, Clone)]
pub struct QdrantStore {
    client: Client,
}

/// The names attune gives its Qdrant collections.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub fn meta(&self) -> String {
        format!("{}~meta", self.prefix)
    }
    pub fn alias(&self, name: &str) -> String {
        format!("{}~{name}", self.prefix)
    }
    pub fn generation(&self, name: &str, generation: u64) -> String {
        format!("{}~{name}~g{generation}", self.prefix)
    }
    pub fn journal(&self, name: &str) -> String {
        format!("{}~{name}~journal", self.prefix)
    }
    pub fn events(&self, name: &str) -> String {
        format!("{}~{name}~events", self.prefix)
    }
    /// The generation of a collection named by [`Names::generation`].
    fn parse_generation(&self, name: &str, collection: &str) -> Option<u64> {
        collection
            .strip_prefix(&format!("{}~{name}~g", self.prefix))?
            .parse()
            .ok()
    }
}

impl QdrantStore {
    /// Connects to the Qdrant at `settings.url`, creating attune's registry collection there
    /// if missing. Fails, naming the URL, when Qdrant cannot be reached.
    pub fn connect(settings: QdrantSettings) -> Result<Self> {
        let store = Self {
            client: Client::new(settings)?,
        };
        let meta = store.names().meta();
        ensure_payload_collection(
            &store.client,
            &meta,
            &[("kind", "keyword"), ("name", "keyword")],
        )?;
        Ok(store)
    }

    /// The settings it connected with.
    pub fn settings(&self) -> &QdrantSettings {
        self.client.settings()
    }

    pub(crate) fn names(&self) -> Names {
        Names {
            prefix: self.client.settings().prefix.clone(),
        }
    }

    fn registration_id(name: &str) -> String {
        payload::point_id(&format!("collection/{name}"))
    }

    fn report_id(name: &str) -> String {
        payload::point_id(&format!("report/{name}"))
    }

    fn registered(&self, name: &str) -> Result<bool> {
        let meta = self.names().meta();
        Ok(payload::retrieve(
            &self.client,
            &meta,
            &[Self::registration_id(name)],
            false,
            &[],
        )?
        .into_iter()
        .next()
        .is_some())
    }

    fn register(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let point = json!({"id": Self::registration_id(name), "vector": {},
                           "payload": {"kind": "collection", "name": name}});
        payload::upsert(&self.client, &self.names().meta(), &[point])
    }

    fn unknown(&self, name: &str) -> Result<IndexError> {
        let names = self.collection_names()?;
        Ok(IndexError::UnknownCollection {
            name: name.to_string(),
            store: self.location().into(),
            available: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        })
    }

    /// The generation `name`'s alias points at, if any.
    fn aliased_generation(&self, name: &str) -> Result<Option<u64>> {
        let aliases = self.client.expect(Method::Get, "/aliases", None)?;
        let alias = self.names().alias(name);
        let target = aliases["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["alias_name"] == alias.as_str())
            .and_then(|a| a["collection_name"].as_str().map(str::to_string));
        Ok(target.and_then(|c| self.names().parse_generation(name, &c)))
    }

    pub(crate) fn generation_info(&self, name: &str, generation: u64) -> Result<GenerationInfo> {
        let collection = self.names().generation(name, generation);
        let info = self
            .client
            .call(Method::Get, &format!("/collections/{collection}"), None)?
            .ok_or_else(|| {
                self.client
                    .error(&collection, "the collection the alias names is missing")
            })?;
        serde_json::from_value(info["config"]["metadata"]["attune"].clone()).map_err(|e| {
            IndexError::CorruptRecord {
                what: format!("the manifest of Qdrant collection {collection}"),
                reason: e.to_string(),
            }
        })
    }

    /// Drops every generation of `name` numbered below `kept`.
    pub(crate) fn drop_generations_before(&self, name: &str, kept: u64) -> Result<()> {
        let listing = self.client.expect(Method::Get, "/collections", None)?;
        let names = self.names();
        let older = listing["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .filter(|c| names.parse_generation(name, c).is_some_and(|g| g < kept));
        for collection in older {
            self.drop_qdrant_collection(collection)?;
        }
        Ok(())
    }

    /// Drops the Qdrant collection `collection` if it exists.
    pub(crate) fn drop_qdrant_collection(&self, collection: &str) -> Result<()> {
        self.client
            .call(Method::Delete, &format!("/collections/{collection}"), None)?;
        Ok(())
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

/// Creates a collection without vectors (a registry, a journal, an event log) with keyword or
/// integer indexes on `fields`, unless it exists.
pub(crate) fn ensure_payload_collection(
    client: &Client,
    name: &str,
    fields: &[(&str, &str)],
) -> Result<()> {
    let path = format!("/collections/{name}");
    if client.call(Method::Get, &path, None)?.is_some() {
        return Ok(());
    }
    let settings = client.settings();
    let body = json!({"vectors": {}, "shard_number": settings.shard_number,
                      "replication_factor": settings.replication_factor,
                      "write_consistency_factor": settings.write_consistency_factor});
    create_collection(client, name, &body)?;
    for (field, schema) in fields {
        client.expect(
            Method::Put,
            &format!("/collections/{name}/index?wait=true"),
            Some(&json!({"field_name": field, "field_schema": schema})),
        )?;
    }
    Ok(())
}

/// Creates a collection; one that appeared meanwhile (another process, or a retried request
/// that had succeeded) is fine.
pub(crate) fn create_collection(client: &Client, name: &str, body: &Value) -> Result<()> {
    match client.call(Method::Put, &format!("/collections/{name}"), Some(body)) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(e),
    }
}

impl VectorStore for QdrantStore {
    fn location(&self) -> String {
        format!("qdrant {}", self.client.settings().url)
    }

    fn collection_names(&self) -> Result<Vec<String>> {
        let filter = json!({"must": [{"key": "kind", "match": {"value": "collection"}}]});
        let mut names: Vec<String> =
            payload::scroll(&self.client, &self.names().meta(), &filter, false, None)?
                .into_iter()
                .filter_map(|p| p["payload"]["name"].as_str().map(str::to_string))
                .collect();
        names.sort();
        Ok(names)
    }

    fn current_generation(&self, name: &str) -> Result<Option<u64>> {
        if !self.registered(name)? {
            return Err(self.unknown(name)?);
        }
        self.aliased_generation(name)
    }

    fn spaces(&self, name: &str) -> Result<BTreeMap<String, ModelIdentity>> {
        match self.current_generation(name)? {
            Some(generation) => Ok(self.generation_info(name, generation)?.spaces),
            None => Ok(BTreeMap::new()),
        }
    }

    fn open_collection(&self, name: &str) -> Result<Arc<dyn ServedCollection>> {
        let Some(generation) = self.current_generation(name)? else {
            return Err(IndexError::NotBuilt { name: name.into() });
        };
        let info = self.generation_info(name, generation)?;
        Ok(Arc::new(QdrantCollection::open(self, name, info)?))
    }

    fn build(
        &self,
        name: &str,
        source: BuildSource<'_>,
        spaces: &mut [SpaceSpec<'_>],
        settings: &BuildSettings,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<BuildReport> {
        let started = Instant::now();
        crate::build::check_inputs(name, spaces, settings)?;
        if !self.registered(name)? {
            if matches!(source, BuildSource::Collection) {
                return Err(self.unknown(name)?);
            }
            self.register(name)?;
        }
        collection::build(self, name, source, spaces, settings, progress, started)
    }

    fn drop_collection(&self, name: &str) -> Result<bool> {
        if !self.registered(name)? {
            return Ok(false);
        }
        let names = self.names();
        let alias = names.alias(name);
        self.client.expect(
            Method::Post,
            "/collections/aliases",
            Some(&json!({"actions": [{"delete_alias": {"alias_name": alias}}]})),
        )?;
        let all = self.client.expect(Method::Get, "/collections", None)?;
        for collection in all["collections"].as_array().into_iter().flatten() {
            let Some(collection) = collection["name"].as_str() else {
                continue;
            };
            if names.parse_generation(name, collection).is_some()
                || collection == names.journal(name)
                || collection == names.events(name)
            {
                self.drop_qdrant_collection(collection)?;
            }
        }
        let meta = names.meta();
        payload::delete(
            &self.client,
            &meta,
            &[Self::registration_id(name), Self::report_id(name)],
        )?;
        Ok(true)
    }

    fn open_events(&self, name: &str) -> Result<Arc<dyn AbEventLog>> {
        validate_name(name)?;
        Ok(Arc::new(events::QdrantEvents::open(self, name)?))
    }

    fn publish_report(&self, name: &str, files: &[(&str, &[u8])]) -> Result<()> {
        for (file, _) in files {
            validate_name(file)?;
        }
        if !self.registered(name)? {
            return Err(self.unknown(name)?);
        }
        use base64::Engine;
        let files: serde_json::Map<String, Value> = files
            .iter()
            .map(|(f, bytes)| {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                (f.to_string(), Value::String(encoded))
            })
            .collect();
        let point = json!({"id": Self::report_id(name), "vector": {},
                           "payload": {"kind": "report", "name": name, "files": files}});
        payload::upsert(&self.client, &self.names().meta(), &[point])
    }

    fn report_files(&self, name: &str) -> Result<Vec<String>> {
        Ok(self.report(name)?.into_keys().collect())
    }

    fn report_file(&self, name: &str, file: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.report(name)?.remove(file))
    }
}

impl QdrantStore {
    fn report(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        if !self.registered(name)? {
            return Err(self.unknown(name)?);
        }
        use base64::Engine;
        let meta = self.names().meta();
        let points = payload::retrieve(&self.client, &meta, &[Self::report_id(name)], true, &[])?;
        let mut out = BTreeMap::new();
        for point in points {
            for (file, encoded) in point["payload"]["files"].as_object().into_iter().flatten() {
                let bytes = encoded
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .ok_or_else(|| IndexError::CorruptRecord {
                        what: format!("published report file {file:?} of {name:?} in {meta}"),
                        reason: "not base64".into(),
                    })?;
                out.insert(file.clone(), bytes);
            }
        }
        Ok(out)
    }
}
