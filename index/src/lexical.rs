//! The lexical space: BM25 over a document's title, text and the metadata fields a collection
//! names (brand, model number, SKU...), with tantivy. This module owns the space's settings, its
//! analyzer, its tantivy schema and its directory (`gen-NNNNNN/lexical/`).
//!
//! **Truth and derived data.** Like a graph, the lexical index is derived from the stored
//! documents: each commit records the journal position it reflects (tantivy's commit payload),
//! and a collection that opens one that is missing, unreadable or at another position rebuilds
//! it from its documents. Documents are keyed by the store's node number (a fast field) and
//! replaced by id.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::{IndexError, Result};
use crate::store::StoredDocument;

/// The name of a collection's lexical space in requests (`"lexical"`, and `"hybrid:<dense>"`
/// for its fusion with a dense space, see [`crate::retrieval`]).
pub const LEXICAL_SPACE: &str = "lexical";

/// The analyzer registered in each lexical index.
const ANALYZER: &str = "attune";
/// Tokens longer than this (bytes) are dropped (base64 blobs, URLs).
const MAX_TOKEN_BYTES: usize = 40;
/// Indexing memory of a writer (tantivy's minimum is 15 MB).
const WRITER_BYTES: usize = 32_000_000;

/// How a collection's lexical space analyzes text, and what it indexes. Part of the generation
/// (`attune index build` takes it; changing it means a rebuild).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LexicalSettings {
    /// Top-level metadata fields indexed beside title and text (strings and numbers, and
    /// arrays of them). Default: none.
    pub fields: Vec<String>,
    /// Lowercase tokens. Default true.
    pub lowercase: bool,
    /// Fold accented letters to ASCII (`é` → `e`). Default true.
    pub ascii_folding: bool,
    /// Snowball stemming language (`english`, `german`, `french`, ... or `none`). Default
    /// `english`.
    pub stemmer: String,
}

impl Default for LexicalSettings {
    fn default() -> Self {
        Self {
            fields: Vec::new(),
            lowercase: true,
            ascii_folding: true,
            stemmer: "english".into(),
        }
    }
}

/// The stemming languages [`LexicalSettings::stemmer`] takes.
const LANGUAGES: [(&str, Language); 18] = [
    ("arabic", Language::Arabic),
    ("danish", Language::Danish),
    ("dutch", Language::Dutch),
    ("english", Language::English),
    ("finnish", Language::Finnish),
    ("french", Language::French),
    ("german", Language::German),
    ("greek", Language::Greek),
    ("hungarian", Language::Hungarian),
    ("italian", Language::Italian),
    ("norwegian", Language::Norwegian),
    ("portuguese", Language::Portuguese),
    ("romanian", Language::Romanian),
    ("russian", Language::Russian),
    ("spanish", Language::Spanish),
    ("swedish", Language::Swedish),
    ("tamil", Language::Tamil),
    ("turkish", Language::Turkish),
];

impl LexicalSettings {
    /// The stemming language, `None` for `none`; an unknown name is an error listing the
    /// languages.
    fn language(&self) -> Result<Option<Language>> {
        if self.stemmer == "none" {
            return Ok(None);
        }
        LANGUAGES
            .iter()
            .find(|(name, _)| *name == self.stemmer)
            .map(|(_, language)| Some(*language))
            .ok_or_else(|| {
                IndexError::InvalidSetting(format!(
                    "lexical stemmer {:?}: use none or one of {}",
                    self.stemmer,
                    LANGUAGES.map(|(n, _)| n).join(", ")
                ))
            })
    }

    /// Checks the settings (stemmer name, field names).
    pub fn validate(&self) -> Result<()> {
        self.language()?;
        if let Some(field) = self.fields.iter().find(|f| f.trim().is_empty()) {
            return Err(IndexError::InvalidSetting(format!(
                "lexical fields: empty field name {field:?}"
            )));
        }
        Ok(())
    }

    /// The analyzer: tokens of letters and digits, long ones dropped, then lowercasing, ASCII
    /// folding and stemming as set.
    pub(crate) fn analyzer(&self) -> Result<TextAnalyzer> {
        let mut builder = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .dynamic();
        if self.lowercase {
            builder = builder.filter_dynamic(LowerCaser);
        }
        if self.ascii_folding {
            builder = builder.filter_dynamic(AsciiFoldingFilter);
        }
        if let Some(language) = self.language()? {
            builder = builder.filter_dynamic(Stemmer::new(language));
        }
        Ok(builder.build())
    }

    /// The metadata text of `metadata` that the space indexes: the named fields' strings and
    /// numbers (array elements each), in field order.
    pub fn metadata_values(&self, metadata: &serde_json::Map<String, Value>) -> Vec<String> {
        let mut out = Vec::new();
        for field in &self.fields {
            match metadata.get(field) {
                Some(Value::Array(items)) => out.extend(items.iter().filter_map(scalar_text)),
                Some(value) => out.extend(scalar_text(value)),
                None => {}
            }
        }
        out
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The tantivy fields of a lexical index.
#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    node: Field,
    title: Field,
    text: Field,
    metadata: Field,
}

impl Fields {
    fn schema() -> (Schema, Fields) {
        let mut builder = Schema::builder();
        let analyzed = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let fields = Fields {
            id: builder.add_text_field("id", STRING),
            node: builder.add_u64_field("node", FAST),
            title: builder.add_text_field("title", analyzed.clone()),
            text: builder.add_text_field("text", analyzed.clone()),
            metadata: builder.add_text_field("metadata", analyzed),
        };
        (builder.build(), fields)
    }

    fn searched(&self) -> [Field; 3] {
        [self.title, self.text, self.metadata]
    }
}

/// A collection's lexical index (on disk in a generation, or in memory), searched with BM25.
/// Writes are buffered until [`LexicalIndex::commit`].
pub struct LexicalIndex {
    settings: LexicalSettings,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    analyzer: TextAnalyzer,
    /// Opened by the first write.
    writer: Mutex<Option<IndexWriter>>,
}

impl std::fmt::Debug for LexicalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LexicalIndex")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn tantivy_error(what: impl std::fmt::Display, e: tantivy::TantivyError) -> IndexError {
    IndexError::Lexical {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl LexicalIndex {
    /// Creates an empty index in `dir` (replacing whatever is there), or in memory.
    pub fn create(dir: Option<&Path>, settings: &LexicalSettings) -> Result<Self> {
        settings.validate()?;
        let (schema, _) = Fields::schema();
        let index = match dir {
            Some(dir) => {
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
                }
                std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
                Index::create_in_dir(dir, schema).map_err(|e| tantivy_error(dir.display(), e))?
            }
            None => Index::create_in_ram(schema),
        };
        Self::with_index(index, settings, "a new lexical index")
    }

    /// Opens the index in `dir` with the journal position its last commit recorded; `None`
    /// when it is missing, unreadable or of another schema (the caller rebuilds it).
    pub fn open(dir: &Path, settings: &LexicalSettings) -> Result<Option<(Self, Option<u64>)>> {
        settings.validate()?;
        let Ok(index) = Index::open_in_dir(dir) else {
            return Ok(None);
        };
        if index.schema() != Fields::schema().0 {
            return Ok(None);
        }
        let stamp = match index.load_metas() {
            Ok(metas) => metas.payload.and_then(|p| p.parse::<u64>().ok()),
            Err(_) => return Ok(None),
        };
        match Self::with_index(index, settings, dir.display()) {
            Ok(lexical) => Ok(Some((lexical, stamp))),
            Err(e) => {
                tracing::warn!("{e}; rebuilding it from the stored documents");
                Ok(None)
            }
        }
    }

    fn with_index(
        index: Index,
        settings: &LexicalSettings,
        what: impl std::fmt::Display,
    ) -> Result<Self> {
        let analyzer = settings.analyzer()?;
        index.tokenizers().register(ANALYZER, analyzer.clone());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| tantivy_error(&what, e))?;
        Ok(Self {
            settings: settings.clone(),
            index,
            reader,
            fields: Fields::schema().1,
            analyzer,
            writer: Mutex::new(None),
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &LexicalSettings {
        &self.settings
    }

    /// Documents in the last commit.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when the last commit holds no document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_writer<T>(&self, f: impl FnOnce(&mut IndexWriter) -> Result<T>) -> Result<T> {
        let mut slot = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let writer = self
                .index
                .writer_with_num_threads(1, WRITER_BYTES)
                .map_err(|e| tantivy_error("the lexical index writer", e))?;
            *slot = Some(writer);
        }
        f(slot.as_mut().expect("opened above"))
    }

    /// Adds `document` as node `node`, replacing any document with its id.
    pub fn put(&self, node: u32, document: &StoredDocument) -> Result<()> {
        let fields = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(fields.id, &document.id);
        doc.add_u64(fields.node, u64::from(node));
        doc.add_text(fields.title, &document.title);
        doc.add_text(fields.text, &document.text);
        for value in self.settings.metadata_values(&document.metadata) {
            doc.add_text(fields.metadata, &value);
        }
        self.with_writer(|writer| {
            writer.delete_term(Term::from_field_text(fields.id, &document.id));
            writer
                .add_document(doc)
                .map(|_| ())
                .map_err(|e| tantivy_error(format!("document {:?}", document.id), e))
        })
    }

    /// Removes the document `id` (nothing when absent).
    pub fn remove(&self, id: &str) -> Result<()> {
        let field = self.fields.id;
        self.with_writer(|writer| {
            writer.delete_term(Term::from_field_text(field, id));
            Ok(())
        })
    }

    /// Makes the writes so far durable and searchable, recording journal position `stamp`.
    pub fn commit(&self, stamp: u64) -> Result<()> {
        self.with_writer(|writer| {
            let mut prepared = writer
                .prepare_commit()
                .map_err(|e| tantivy_error("a lexical commit", e))?;
            prepared.set_payload(&stamp.to_string());
            prepared
                .commit()
                .map_err(|e| tantivy_error("a lexical commit", e))?;
            Ok(())
        })?;
        self.reader
            .reload()
            .map_err(|e| tantivy_error("the lexical reader", e))
    }

    /// Fills an empty index with `documents` (node, document) and commits at `stamp`.
    pub fn fill<'a>(
        &self,
        documents: impl IntoIterator<Item = (u32, &'a StoredDocument)>,
        stamp: u64,
    ) -> Result<()> {
        for (node, document) in documents {
            self.put(node, document)?;
        }
        self.commit(stamp)
    }

    /// The analyzed tokens of `text`, distinct, in order of first appearance.
    fn tokens(&self, text: &str) -> Vec<String> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut tokens: Vec<String> = Vec::new();
        while let Some(token) = stream.next() {
            if !tokens.contains(&token.text) {
                tokens.push(token.text.clone());
            }
        }
        tokens
    }

    /// The BM25 query of `text`: any of its tokens in any searched field (scores add up).
    fn query(&self, text: &str) -> Option<BooleanQuery> {
        let clauses: Vec<(Occur, Box<dyn Query>)> = self
            .tokens(text)
            .iter()
            .flat_map(|token| {
                self.fields.searched().map(|field| {
                    let term = Term::from_field_text(field, token);
                    let query: Box<dyn Query> =
                        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                    (Occur::Should, query)
                })
            })
            .collect();
        (!clauses.is_empty()).then(|| BooleanQuery::new(clauses))
    }

    /// The `k` best (node, BM25 score) for `text` among nodes that `accept` passes, best first
    /// (ties by node). A query without any token finds nothing.
    pub fn search(
        &self,
        text: &str,
        k: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<(u32, f32)>> {
        let Some(query) = self.query(text) else {
            return Ok(Vec::new());
        };
        let searcher = self.reader.searcher();
        let total = searcher.num_docs() as usize;
        let mut limit = (k * 2).max(20).min(total.max(1));
        loop {
            let top = searcher
                .search(&query, &TopDocs::with_limit(limit))
                .map_err(|e| tantivy_error("a lexical search", e))?;
            let mut hits = Vec::with_capacity(k);
            // The node column of each segment, opened once per search.
            let mut columns = vec![None; searcher.segment_readers().len()];
            for (score, address) in &top {
                let slot = &mut columns[address.segment_ord as usize];
                if slot.is_none() {
                    let column = searcher
                        .segment_reader(address.segment_ord)
                        .fast_fields()
                        .u64("node")
                        .map_err(|e| tantivy_error("the node column", e))?;
                    *slot = Some(column);
                }
                let column = slot.as_ref().expect("opened above");
                if let Some(node) = column.first(address.doc_id) {
                    let node = node as u32;
                    if accept(node) {
                        hits.push((node, *score));
                    }
                }
            }
            if hits.len() >= k || top.len() < limit || limit >= total {
                hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                hits.truncate(k);
                return Ok(hits);
            }
            limit = (limit * 4).min(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, title: &str, text: &str, sku: &str) -> StoredDocument {
        let mut metadata = serde_json::Map::new();
        metadata.insert("sku".into(), Value::String(sku.into()));
        metadata.insert("sizes".into(), serde_json::json!([41, 42]));
        StoredDocument {
            id: id.into(),
            title: title.into(),
            text: text.into(),
            metadata,
            hash: String::new(),
        }
    }

    fn settings() -> LexicalSettings {
        LexicalSettings {
            fields: vec!["sku".into(), "sizes".into()],
            ..LexicalSettings::default()
        }
    }

    #[test]
    fn bm25_finds_words_identifiers_and_stems_and_replaces_by_id() {
        let index = LexicalIndex::create(None, &settings()).unwrap();
        let docs = [
            doc(
                "a",
                "Trail Running Shoes",
                "Grippy soles for muddy trails",
                "TRX-4410",
            ),
            doc("b", "Wool Hat", "Warm hat for winter", "HAT-0007"),
            doc("c", "Café table", "A small round table", "TBL-12"),
        ];
        index
            .fill(docs.iter().enumerate().map(|(i, d)| (i as u32, d)), 3)
            .unwrap();
        let all = |_| true;
        assert_eq!(index.search("trx-4410", 5, &all).unwrap()[0].0, 0);
        assert_eq!(index.search("shoe", 5, &all).unwrap()[0].0, 0, "stemmed");
        assert_eq!(index.search("CAFE", 5, &all).unwrap()[0].0, 2, "folded");
        assert_eq!(
            index.search("42", 5, &all).unwrap().len(),
            3,
            "array metadata"
        );
        assert!(index.search("?!", 5, &all).unwrap().is_empty());
        assert_eq!(index.search("hat", 5, &|n| n != 1).unwrap(), vec![]);

        // Replacing "b" under another node drops its old text; removing "c" drops it.
        index
            .put(7, &doc("b", "Cotton Scarf", "Light", "SCF-1"))
            .unwrap();
        index.remove("c").unwrap();
        index.commit(5).unwrap();
        assert!(index.search("hat", 5, &all).unwrap().is_empty());
        assert_eq!(index.search("scarf", 5, &all).unwrap()[0].0, 7);
        assert!(index.search("table", 5, &all).unwrap().is_empty());
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn a_directory_remembers_its_position_and_refuses_bad_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lexical");
        let index = LexicalIndex::create(Some(&path), &settings()).unwrap();
        index
            .fill([(0, &doc("a", "Red shoes", "", "S-1"))], 11)
            .unwrap();
        drop(index);
        let (index, stamp) = LexicalIndex::open(&path, &settings()).unwrap().unwrap();
        assert_eq!(stamp, Some(11));
        assert_eq!(index.search("red", 3, &|_| true).unwrap()[0].0, 0);
        assert!(LexicalIndex::open(&dir.path().join("missing"), &settings())
            .unwrap()
            .is_none());
        let bad = LexicalSettings {
            stemmer: "klingon".into(),
            ..LexicalSettings::default()
        };
        let err = LexicalIndex::create(None, &bad).unwrap_err().to_string();
        assert!(err.contains("klingon") && err.contains("english"), "{err}");
    }

    #[test]
    fn deep_filters_widen_the_search_until_k_pass() {
        let index = LexicalIndex::create(None, &LexicalSettings::default()).unwrap();
        let docs: Vec<StoredDocument> = (0..200)
            .map(|i| {
                doc(
                    &format!("d{i}"),
                    "blue shirt",
                    &"blue ".repeat(1 + i % 5),
                    "x",
                )
            })
            .collect();
        index
            .fill(docs.iter().enumerate().map(|(i, d)| (i as u32, d)), 1)
            .unwrap();
        let hits = index.search("blue", 3, &|n| n >= 190).unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.iter().all(|(n, _)| *n >= 190));
    }
}
