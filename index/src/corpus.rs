//! Reading a corpus for a re-index job: JSONL (one document per line) or a BEIR directory
//! (`corpus.jsonl` inside it).
//!
//! Each line is an object with `_id` or `id` (string or number), `text` (string, required),
//! and optionally `title` (string) and `metadata` (object). The whole file is read and checked
//! before anything is written, so a bad line leaves the store untouched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{IndexError, Result};

/// A document to index.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// External id, unique within a collection.
    pub id: String,
    /// Title (may be empty).
    pub title: String,
    /// Body text (may be empty when the title is not).
    pub text: String,
    /// Metadata: a JSON object; its top-level scalar fields (and arrays of scalars) can be
    /// filtered on.
    pub metadata: Map<String, Value>,
}

impl Document {
    /// The text that is embedded ([`attune_core::embedding_text`]: the one definition that
    /// evaluation, mining, training and the index share).
    pub fn embedding_text(&self) -> String {
        attune_core::embedding_text(&self.title, &self.text)
    }
}

/// A corpus read from disk, deduplicated (the last line of an id wins).
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The file read.
    pub path: PathBuf,
    /// Documents in first-appearance order of their ids.
    pub documents: Vec<Document>,
    /// Ids that appeared more than once, with every line they appeared on.
    pub duplicates: Vec<(String, Vec<usize>)>,
    /// Lines whose title and text are both empty (indexed, but they match nothing well).
    pub empty: Vec<usize>,
}

impl Corpus {
    /// Reads `path`: a JSONL file, or a directory containing `corpus.jsonl`.
    pub fn read(path: &Path) -> Result<Self> {
        let file_path = if path.is_dir() {
            path.join("corpus.jsonl")
        } else {
            path.to_path_buf()
        };
        let file = File::open(&file_path).map_err(|e| IndexError::io(&file_path, e))?;
        let reader = BufReader::new(file);
        let mut documents: Vec<Document> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut lines_of: HashMap<String, Vec<usize>> = HashMap::new();
        let mut empty = Vec::new();
        for (index, line) in reader.lines().enumerate() {
            let number = index + 1;
            let line = line.map_err(|e| IndexError::io(&file_path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let fail = |message: String| IndexError::Corpus {
                path: file_path.clone(),
                line: number,
                message,
            };
            let value: Value =
                serde_json::from_str(&line).map_err(|e| fail(format!("invalid JSON: {e}")))?;
            let mut object = match value {
                Value::Object(object) => object,
                _ => return Err(fail("expected a JSON object".into())),
            };
            let id = match object.remove("_id").or_else(|| object.remove("id")) {
                Some(Value::String(s)) if !s.is_empty() => s,
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => {
                    return Err(fail(
                        "\"_id\" must be a non-empty string or a number".into(),
                    ))
                }
                None => return Err(fail("no \"_id\" (or \"id\") field".into())),
            };
            let text = match object.remove("text") {
                Some(Value::String(s)) => s,
                Some(_) => return Err(fail(format!("document {id:?}: \"text\" must be a string"))),
                None => return Err(fail(format!("document {id:?} has no \"text\" field"))),
            };
            let title = match object.remove("title") {
                Some(Value::String(s)) => s,
                Some(Value::Null) | None => String::new(),
                Some(_) => {
                    return Err(fail(format!("document {id:?}: \"title\" must be a string")))
                }
            };
            let metadata = match object.remove("metadata") {
                Some(Value::Object(m)) => m,
                Some(Value::Null) | None => Map::new(),
                Some(_) => {
                    return Err(fail(format!(
                        "document {id:?}: \"metadata\" must be an object"
                    )))
                }
            };
            if title.trim().is_empty() && text.trim().is_empty() {
                empty.push(number);
            }
            lines_of.entry(id.clone()).or_default().push(number);
            let document = Document {
                id: id.clone(),
                title,
                text,
                metadata,
            };
            match position.get(&id) {
                Some(&at) => documents[at] = document,
                None => {
                    position.insert(id, documents.len());
                    documents.push(document);
                }
            }
        }
        let mut duplicates: Vec<(String, Vec<usize>)> = lines_of
            .into_iter()
            .filter(|(_, lines)| lines.len() > 1)
            .collect();
        duplicates.sort_by_key(|(_, lines)| lines[0]);
        Ok(Self {
            path: file_path,
            documents,
            duplicates,
            empty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_ids_titles_metadata_and_reports_duplicates_last_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.jsonl",
            concat!(
                r#"{"_id": "a", "title": "Shoe", "text": "red", "metadata": {"category": "shoes"}}"#,
                "\n",
                r#"{"id": 7, "text": "seven"}"#,
                "\n",
                "\n",
                r#"{"_id": "a", "title": "Boot", "text": "blue"}"#,
                "\n",
            ),
        );
        let corpus = Corpus::read(&path).unwrap();
        assert_eq!(corpus.documents.len(), 2);
        assert_eq!(corpus.documents[0].title, "Boot");
        assert_eq!(corpus.documents[0].embedding_text(), "Boot blue");
        assert!(corpus.documents[0].metadata.is_empty());
        assert_eq!(corpus.documents[1].id, "7");
        assert_eq!(corpus.duplicates, vec![("a".to_string(), vec![1, 4])]);
    }

    #[test]
    fn a_line_without_text_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.jsonl",
            "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"title\": \"t\"}\n",
        );
        let err = Corpus::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.jsonl:2"), "{err}");
        assert!(err.contains("no \"text\""), "{err}");
        let path = write(dir.path(), "d.jsonl", "{\"text\": \"x\"}\n");
        assert!(Corpus::read(&path)
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:1"));
        let path = write(
            dir.path(),
            "e.jsonl",
            "{\"_id\": 1, \"text\": \"x\"}\n{oops\n",
        );
        let err = Corpus::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("e.jsonl:2") && err.contains("invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn a_beir_directory_reads_its_corpus_and_empty_documents_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "corpus.jsonl",
            "{\"_id\": \"1\", \"title\": \"\", \"text\": \"\"}\n{\"_id\": \"2\", \"text\": \"b\"}\n",
        );
        let corpus = Corpus::read(dir.path()).unwrap();
        assert_eq!(corpus.documents.len(), 2);
        assert_eq!(corpus.empty, vec![1]);
    }
}
