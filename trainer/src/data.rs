//! Training data: query–positive pairs (with optional hard negatives) from a pairs JSONL file or
//! a BEIR directory. Every pair remembers the file and line it came from, so checks and errors
//! can point at it.
//!
//! - Pairs JSONL: `{"query": "...", "positive": "...", "negatives": ["...", ...], "grade": 2,
//!   "weight": 0.5}` per line; `negatives` (default none), `grade` (a positive integer, the
//!   positive's relevance grade, default 1) and `weight` (a positive number, the pair's loss
//!   weight, default 1) and `source` (a name the training card counts pairs under, such as
//!   `feedback:shop`) optional; empty lines are skipped.
//! - BEIR: every `qrels/<split>.tsv` row with score > 0 is a (query, document) pair whose grade
//!   is the score; the document text is `title + " " + text`
//!   ([`attune_eval::Document::embedding_text`]). Rows naming an unknown query or document, or a
//!   document without title and text (cranfield has one), are skipped and reported.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attune_eval::data::{read_corpus, read_qrels_rows, read_queries};
use attune_eval::DataReport;

use crate::error::{Result, TrainError};

/// Where a pair came from: a file and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (shared between the pairs of one file).
    pub path: Arc<PathBuf>,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPair {
    /// The query text.
    pub query: String,
    /// A relevant document's text.
    pub positive: String,
    /// Explicit hard negatives (may be empty).
    pub negatives: Vec<String>,
    /// The positive's relevance grade (≥ 1; BEIR's qrels score, 1 when the source has none).
    pub grade: u32,
    /// The pair's loss weight (> 0, finite; default 1). Feedback-derived pairs carry their
    /// evidence here; see [`crate::loss`] for how weights and grades enter the loss.
    pub weight: f32,
    /// Where it came from.
    pub location: Location,
    /// The source it names (`"source"` in a pairs file, such as `feedback:shop`); counted in
    /// the training card, where pairs without one count under the data path.
    pub source: Option<String>,
}

impl TrainingPair {
    /// A pair with grade 1, weight 1 and no negatives.
    pub fn new(query: impl Into<String>, positive: impl Into<String>, location: Location) -> Self {
        Self {
            query: query.into(),
            positive: positive.into(),
            negatives: Vec::new(),
            grade: 1,
            weight: 1.0,
            location,
            source: None,
        }
    }
}

/// Writes pairs as a pairs JSONL file (one serialized `T` per line: mined pairs, pairs exported
/// from feedback), atomically: a temporary file beside `path`, fsynced, renamed into place, so a
/// failure leaves any earlier file as it was. `T` must serialize to the fields
/// [`TrainingData::load_pairs`] reads.
pub fn write_pairs<T: serde::Serialize>(path: &Path, pairs: &[T]) -> Result<()> {
    use std::io::Write;
    let io = |source: std::io::Error| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let file = File::create(&tmp).map_err(io)?;
        let mut writer = std::io::BufWriter::new(file);
        for pair in pairs {
            serde_json::to_writer(&mut writer, pair).map_err(|e| io(e.into()))?;
            writer.write_all(b"\n").map_err(io)?;
        }
        writer.flush().map_err(io)?;
        writer.get_ref().sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// A pair source that was skipped while loading, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Where.
    pub location: Location,
    /// Why.
    pub reason: String,
}

/// Pairs loaded from one source.
#[derive(Debug, Clone)]
pub struct TrainingData {
    /// The file or directory read.
    pub source: PathBuf,
    /// The pairs, in file order.
    pub pairs: Vec<TrainingPair>,
    /// Rows that could not become pairs (BEIR rows naming unknown queries or documents).
    pub skipped: Vec<Skipped>,
}

impl TrainingData {
    /// Reads `path`: a BEIR directory (using `qrels/<split>.tsv`) or a pairs JSONL file.
    pub fn load(path: &Path, split: &str) -> Result<Self> {
        if path.is_dir() {
            Self::load_beir(path, split)
        } else {
            Self::load_pairs(path)
        }
    }

    /// Reads a pairs JSONL file.
    pub fn load_pairs(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let shared = Arc::new(path.to_path_buf());
        let mut pairs = Vec::new();
        for (index, line) in BufReader::new(file).lines().enumerate() {
            let line_no = index + 1;
            let line = line.map_err(|source| TrainError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                TrainError::malformed(path, line_no, format!("not valid JSON: {e}"))
            })?;
            let Some(object) = value.as_object() else {
                return Err(TrainError::malformed(
                    path,
                    line_no,
                    "expected a JSON object",
                ));
            };
            let text = |field: &str| -> Result<String> {
                match object.get(field) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(TrainError::malformed(
                        path,
                        line_no,
                        format!("field \"{field}\" must be a string, found {other}"),
                    )),
                    None => Err(TrainError::malformed(
                        path,
                        line_no,
                        format!("missing field \"{field}\""),
                    )),
                }
            };
            let negatives = match object.get("negatives") {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        serde_json::Value::String(s) => Ok(s.clone()),
                        other => Err(TrainError::malformed(
                            path,
                            line_no,
                            format!("field \"negatives\"[{i}] must be a string, found {other}"),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?,
                Some(other) => {
                    return Err(TrainError::malformed(
                        path,
                        line_no,
                        format!("field \"negatives\" must be an array of strings, found {other}"),
                    ))
                }
            };
            let grade = match object.get("grade") {
                None | Some(serde_json::Value::Null) => 1,
                Some(value) => match value.as_u64() {
                    Some(g @ 1..=1000) => g as u32,
                    _ => {
                        return Err(TrainError::malformed(
                            path,
                            line_no,
                            format!(
                                "field \"grade\" must be an integer from 1 to 1000, found {value}"
                            ),
                        ))
                    }
                },
            };
            let weight = match object.get("weight") {
                None | Some(serde_json::Value::Null) => 1.0,
                Some(value) => match value.as_f64() {
                    Some(w) if w > 0.0 && w.is_finite() && w <= f32::MAX as f64 => w as f32,
                    _ => {
                        return Err(TrainError::malformed(
                            path,
                            line_no,
                            format!("field \"weight\" must be a positive number, found {value}"),
                        ))
                    }
                },
            };
            let source = match object.get("source") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(TrainError::malformed(
                        path,
                        line_no,
                        format!("field \"source\" must be a string, found {other}"),
                    ))
                }
            };
            pairs.push(TrainingPair {
                source,
                query: text("query")?,
                positive: text("positive")?,
                negatives,
                grade,
                weight,
                location: Location {
                    path: shared.clone(),
                    line: line_no,
                },
            });
        }
        Ok(Self {
            source: path.to_path_buf(),
            pairs,
            skipped: Vec::new(),
        })
    }

    /// Reads a BEIR directory's `qrels/<split>.tsv` rows with score > 0 as pairs.
    pub fn load_beir(root: &Path, split: &str) -> Result<Self> {
        let mut report = DataReport::default();
        let corpus = read_corpus(&root.join("corpus.jsonl"), &mut report)?;
        let queries = read_queries(&root.join("queries.jsonl"), &mut report)?;
        let qrels_path = root.join("qrels").join(format!("{split}.tsv"));
        let rows = read_qrels_rows(&qrels_path)?;
        let documents: HashMap<&str, String> = corpus
            .iter()
            .map(|d| (d.id.as_str(), d.embedding_text()))
            .collect();
        let query_text: HashMap<&str, &str> = queries
            .iter()
            .map(|q| (q.id.as_str(), q.text.as_str()))
            .collect();
        let shared = Arc::new(qrels_path);
        let mut pairs = Vec::new();
        let mut skipped = Vec::new();
        for row in rows.into_iter().filter(|r| r.grade > 0) {
            let location = Location {
                path: shared.clone(),
                line: row.line,
            };
            match (
                query_text.get(row.query_id.as_str()),
                documents.get(row.doc_id.as_str()),
            ) {
                (Some(_), Some(document)) if document.trim().is_empty() => skipped.push(Skipped {
                    location,
                    reason: format!("document `{}` has no title or text", row.doc_id),
                }),
                (Some(query), Some(document)) => pairs.push(TrainingPair {
                    source: None,
                    grade: u32::try_from(row.grade).unwrap_or(u32::MAX),
                    ..TrainingPair::new(*query, document.clone(), location)
                }),
                (None, _) => skipped.push(Skipped {
                    location,
                    reason: format!("query `{}` is not in queries.jsonl", row.query_id),
                }),
                (_, None) => skipped.push(Skipped {
                    location,
                    reason: format!("document `{}` is not in corpus.jsonl", row.doc_id),
                }),
            }
        }
        Ok(Self {
            source: root.to_path_buf(),
            pairs,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn pairs_jsonl_with_optional_negatives() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "pairs.jsonl",
            "{\"query\": \"q1\", \"positive\": \"p1\"}\n\n{\"query\": \"q2\", \"positive\": \"p2\", \"negatives\": [\"n1\", \"n2\"], \"source\": \"feedback:shop\"}\n",
        );
        let data = TrainingData::load(&path, "train").unwrap();
        assert_eq!(data.pairs.len(), 2);
        assert_eq!(data.pairs[1].source.as_deref(), Some("feedback:shop"));
        assert_eq!(data.pairs[1].negatives, vec!["n1", "n2"]);
        assert_eq!((data.pairs[0].grade, data.pairs[0].weight), (1, 1.0));
        assert_eq!(data.pairs[0].source, None);
        assert_eq!(data.pairs[1].location.line, 3);
        assert!(data.pairs[1]
            .location
            .to_string()
            .ends_with("pairs.jsonl:3"));
    }

    #[test]
    fn malformed_pairs_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        for (body, needle) in [
            ("{\"query\": \"q\"}\n", "missing field \"positive\""),
            (
                "{\"query\": 3, \"positive\": \"p\"}\n",
                "\"query\" must be a string",
            ),
            (
                "{\"query\": \"q\", \"positive\": \"p\", \"negatives\": [1]}\n",
                "\"negatives\"[0]",
            ),
            (
                "{\"query\": \"q\", \"positive\": \"p\", \"negatives\": \"n\"}\n",
                "array of strings",
            ),
            ("not json\n", "not valid JSON"),
            (
                "{\"query\": \"q\", \"positive\": \"p\", \"grade\": 0}\n",
                "\"grade\" must be an integer",
            ),
            (
                "{\"query\": \"q\", \"positive\": \"p\", \"weight\": -1}\n",
                "\"weight\" must be a positive number",
            ),
            (
                "{\"query\": \"q\", \"positive\": \"p\", \"weight\": \"1\"}\n",
                "\"weight\" must be a positive number",
            ),
            (
                "{\"query\": \"q\", \"positive\": \"p\", \"source\": 7}\n",
                "\"source\" must be a string",
            ),
        ] {
            let path = write(
                dir.path(),
                "bad.jsonl",
                &format!("{{\"query\": \"a\", \"positive\": \"b\"}}\n{body}"),
            );
            let err = TrainingData::load(&path, "train").unwrap_err().to_string();
            assert!(
                err.contains("bad.jsonl:2:") && err.contains(needle),
                "{err}"
            );
        }
    }

    #[test]
    fn beir_rows_become_pairs_and_unknown_ids_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "corpus.jsonl",
            "{\"_id\": \"d1\", \"title\": \"Title\", \"text\": \"body\"}\n{\"_id\": \"d2\", \"text\": \"other\"}\n{\"_id\": \"d3\", \"title\": \"\", \"text\": \" \"}\n",
        );
        write(
            root,
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"question\"}\n",
        );
        write(
            root,
            "qrels/train.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq1\tmissing\t1\nq9\td1\t1\nq1\td3\t1\n",
        );
        let data = TrainingData::load(root, "train").unwrap();
        assert_eq!(data.pairs.len(), 1);
        assert_eq!(data.pairs[0].query, "question");
        assert_eq!(data.pairs[0].positive, "Title body");
        assert_eq!(data.pairs[0].grade, 2);
        assert_eq!(data.pairs[0].location.line, 2);
        assert_eq!(data.skipped.len(), 3);
        assert_eq!(data.skipped[0].location.line, 4);
        assert!(data.skipped[1].reason.contains("q9"));
        assert!(data.skipped[2].reason.contains("`d3` has no title or text"));
    }
}
