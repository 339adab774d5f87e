//! Reading evaluation data: BEIR directories, qrels files and TREC-style run files.
//!
//! This module is the only reader of these formats. Every malformed line is an error that names
//! the file and the 1-based line; inconsistencies that still leave something to evaluate (qrels
//! naming unknown queries or documents, duplicate ids) are counted in a [`DataReport`] whose
//! [`DataReport::warnings`] the caller prints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{EvalError, Result};

/// Relevance judgments: query id → (document id → grade). A grade > 0 means relevant; higher is
/// more relevant. Grades ≤ 0 are judged non-relevant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Qrels {
    judgments: BTreeMap<String, HashMap<String, i32>>,
}

impl Qrels {
    /// Records a judgment; a repeated (query, document) pair keeps the last grade.
    pub fn insert(&mut self, query_id: &str, doc_id: &str, grade: i32) {
        self.judgments
            .entry(query_id.to_string())
            .or_default()
            .insert(doc_id.to_string(), grade);
    }

    /// The judgments of one query, if it has any.
    pub fn get(&self, query_id: &str) -> Option<&HashMap<String, i32>> {
        self.judgments.get(query_id)
    }

    /// Judged queries in id order, with their judgments.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HashMap<String, i32>)> {
        self.judgments.iter().map(|(q, j)| (q.as_str(), j))
    }

    /// Number of judged queries.
    pub fn len(&self) -> usize {
        self.judgments.len()
    }

    /// Whether there are no judgments at all.
    pub fn is_empty(&self) -> bool {
        self.judgments.is_empty()
    }

    /// Number of relevant (grade > 0) documents of a query.
    pub fn relevant_count(&self, query_id: &str) -> usize {
        self.get(query_id)
            .map_or(0, |j| j.values().filter(|g| **g > 0).count())
    }
}

/// One ranked document of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredDoc {
    /// Document id.
    pub doc_id: String,
    /// Retrieval score; higher ranks first.
    pub score: f64,
}

/// Rankings: query id → scored documents (any order; metrics sort them by score).
pub type Run = BTreeMap<String, Vec<ScoredDoc>>;

/// A corpus document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// External id (`_id`).
    pub id: String,
    /// Title; may be empty.
    pub title: String,
    /// Body text.
    pub text: String,
}

impl Document {
    /// The text that gets embedded ([`attune_core::embedding_text`]: the one definition that
    /// evaluation, mining, training and the index share).
    pub fn embedding_text(&self) -> String {
        attune_core::embedding_text(&self.title, &self.text)
    }
}

/// A query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// External id (`_id`).
    pub id: String,
    /// Query text.
    pub text: String,
}

/// Counts of inconsistencies found while reading; none of them stops the evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DataReport {
    /// Qrels rows whose query is not in `queries.jsonl` (these queries are not evaluated).
    pub qrels_rows_unknown_query: usize,
    /// Distinct query ids behind [`Self::qrels_rows_unknown_query`].
    pub unknown_queries: usize,
    /// Qrels rows whose document is not in `corpus.jsonl` (still counted as relevant, so they
    /// lower recall, as trec_eval counts them).
    pub qrels_rows_unknown_document: usize,
    /// Judged queries without any relevant (grade > 0) document; they are not evaluated.
    pub queries_without_relevant: usize,
    /// Repeated (query, document) rows in the qrels (the last grade wins).
    pub duplicate_judgments: usize,
    /// Repeated document ids in the corpus (the last line wins).
    pub duplicate_documents: usize,
    /// Repeated query ids in the queries file (the last line wins).
    pub duplicate_queries: usize,
}

impl DataReport {
    /// One human-readable line per non-zero count, naming `source` (a file or directory).
    pub fn warnings(&self, source: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.qrels_rows_unknown_query > 0 {
            out.push(format!(
                "{source}: {} qrels rows name {} queries that are not in queries.jsonl; those queries are skipped",
                self.qrels_rows_unknown_query, self.unknown_queries
            ));
        }
        if self.qrels_rows_unknown_document > 0 {
            out.push(format!(
                "{source}: {} qrels rows name documents that are not in corpus.jsonl; they count as relevant but can never be retrieved",
                self.qrels_rows_unknown_document
            ));
        }
        if self.queries_without_relevant > 0 {
            out.push(format!(
                "{source}: {} judged queries have no relevant document (grade > 0) and are skipped",
                self.queries_without_relevant
            ));
        }
        if self.duplicate_judgments > 0 {
            out.push(format!(
                "{source}: {} repeated (query, document) qrels rows; the last grade wins",
                self.duplicate_judgments
            ));
        }
        if self.duplicate_documents > 0 {
            out.push(format!(
                "{source}: {} repeated document ids in corpus.jsonl; the last line wins",
                self.duplicate_documents
            ));
        }
        if self.duplicate_queries > 0 {
            out.push(format!(
                "{source}: {} repeated query ids in queries.jsonl; the last line wins",
                self.duplicate_queries
            ));
        }
        out
    }
}

/// A BEIR-layout dataset with one qrels split loaded.
#[derive(Debug, Clone)]
pub struct BeirDataset {
    /// The dataset directory.
    pub root: PathBuf,
    /// The qrels split (`qrels/<split>.tsv`).
    pub split: String,
    /// Every corpus document, in file order, ids unique.
    pub corpus: Vec<Document>,
    /// The queries to evaluate: judged in the split with at least one relevant document, in id
    /// order.
    pub queries: Vec<Query>,
    /// The split's judgments (all rows, including unknown queries and documents).
    pub qrels: Qrels,
    /// What was inconsistent.
    pub report: DataReport,
}

impl BeirDataset {
    /// Reads `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv` under `root`.
    pub fn load(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(EvalError::MissingFile {
                path: root,
                what: "BEIR dataset directory",
            });
        }
        let mut report = DataReport::default();
        let corpus = read_corpus(&root.join("corpus.jsonl"), &mut report)?;
        let all_queries = read_queries(&root.join("queries.jsonl"), &mut report)?;
        let qrels_path = root.join("qrels").join(format!("{split}.tsv"));
        let qrels = read_qrels_counting(&qrels_path, &mut report)?;

        let doc_ids: HashSet<&str> = corpus.iter().map(|d| d.id.as_str()).collect();
        let query_text: HashMap<&str, &str> = all_queries
            .iter()
            .map(|q| (q.id.as_str(), q.text.as_str()))
            .collect();
        let mut queries = Vec::new();
        for (query_id, judgments) in qrels.iter() {
            report.qrels_rows_unknown_document += judgments
                .keys()
                .filter(|d| !doc_ids.contains(d.as_str()))
                .count();
            let Some(text) = query_text.get(query_id) else {
                report.qrels_rows_unknown_query += judgments.len();
                report.unknown_queries += 1;
                continue;
            };
            if judgments.values().all(|g| *g <= 0) {
                report.queries_without_relevant += 1;
                continue;
            }
            queries.push(Query {
                id: query_id.to_string(),
                text: text.to_string(),
            });
        }
        Ok(Self {
            root,
            split: split.to_string(),
            corpus,
            queries,
            qrels,
            report,
        })
    }

    /// Texts to embed for the corpus, in corpus order ([`Document::embedding_text`]).
    pub fn document_texts(&self) -> Vec<String> {
        self.corpus.iter().map(Document::embedding_text).collect()
    }
}

fn open_lines(path: &Path, what: &'static str) -> Result<impl Iterator<Item = Result<String>>> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EvalError::MissingFile {
            path: path.to_path_buf(),
            what,
        },
        _ => EvalError::io(path, e),
    })?;
    let owned = path.to_path_buf();
    Ok(BufReader::new(file)
        .lines()
        .map(move |l| l.map_err(|e| EvalError::io(&owned, e))))
}

/// A JSON id: a string, or a number written as it appears.
fn json_id(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn json_text<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
    required: bool,
    path: &Path,
    line: usize,
) -> Result<&'a str> {
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(serde_json::Value::Null) | None if !required => Ok(""),
        Some(other) => Err(EvalError::malformed(
            path,
            line,
            format!("field \"{field}\" must be a string, found {other}"),
        )),
        None => Err(EvalError::malformed(
            path,
            line,
            format!("missing field \"{field}\""),
        )),
    }
}

/// One line of a BEIR JSONL file as its `_id` and object; `None` for a blank line.
fn parse_object_line(
    text: &str,
    path: &Path,
    line: usize,
) -> Result<Option<(String, serde_json::Map<String, serde_json::Value>)>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| EvalError::malformed(path, line, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(EvalError::malformed(path, line, "expected a JSON object"));
    };
    let Some(id) = json_id(object.get("_id")) else {
        return Err(EvalError::malformed(
            path,
            line,
            "missing field \"_id\" (a string or a number)",
        ));
    };
    Ok(Some((id, object)))
}

/// One line of a BEIR `corpus.jsonl` (`{"_id", "title"?, "text"}`) as a [`Document`]; `None`
/// for a blank line. `path` and `line` (1-based) name the line in errors.
pub fn parse_corpus_line(text: &str, path: &Path, line: usize) -> Result<Option<Document>> {
    let Some((id, object)) = parse_object_line(text, path, line)? else {
        return Ok(None);
    };
    Ok(Some(Document {
        title: json_text(&object, "title", false, path, line)?.to_string(),
        text: json_text(&object, "text", true, path, line)?.to_string(),
        id,
    }))
}

/// One line of a BEIR `queries.jsonl` (`{"_id", "text"}`) as a [`Query`]; `None` for a blank
/// line. `path` and `line` (1-based) name the line in errors.
pub fn parse_query_line(text: &str, path: &Path, line: usize) -> Result<Option<Query>> {
    let Some((id, object)) = parse_object_line(text, path, line)? else {
        return Ok(None);
    };
    Ok(Some(Query {
        text: json_text(&object, "text", true, path, line)?.to_string(),
        id,
    }))
}

/// Parses each line of a JSONL file with `parse`, skipping blank lines.
fn read_jsonl<T>(
    path: &Path,
    what: &'static str,
    parse: impl Fn(&str, &Path, usize) -> Result<Option<T>>,
    mut each: impl FnMut(T),
) -> Result<()> {
    for (index, line) in open_lines(path, what)?.enumerate() {
        if let Some(item) = parse(&line?, path, index + 1)? {
            each(item);
        }
    }
    Ok(())
}

/// Items in first-seen order where a repeated id replaces the earlier item in place.
struct LastWins<T> {
    items: Vec<T>,
    position: HashMap<String, usize>,
}

impl<T> LastWins<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            position: HashMap::new(),
        }
    }

    /// Adds `item` under `id`; returns whether it replaced an earlier one.
    fn insert(&mut self, id: &str, item: T) -> bool {
        match self.position.get(id) {
            Some(&at) => {
                self.items[at] = item;
                true
            }
            None => {
                self.position.insert(id.to_string(), self.items.len());
                self.items.push(item);
                false
            }
        }
    }
}

/// Reads a BEIR `corpus.jsonl`: `{"_id", "title"?, "text"}` per line. Repeated ids keep the last
/// line (counted in the report).
pub fn read_corpus(path: &Path, report: &mut DataReport) -> Result<Vec<Document>> {
    let mut docs = LastWins::new();
    read_jsonl(path, "corpus.jsonl", parse_corpus_line, |doc: Document| {
        if docs.insert(&doc.id.clone(), doc) {
            report.duplicate_documents += 1;
        }
    })?;
    Ok(docs.items)
}

/// Reads a BEIR `queries.jsonl`: `{"_id", "text"}` per line. Repeated ids keep the last line.
pub fn read_queries(path: &Path, report: &mut DataReport) -> Result<Vec<Query>> {
    let mut queries = LastWins::new();
    read_jsonl(path, "queries.jsonl", parse_query_line, |query: Query| {
        if queries.insert(&query.id.clone(), query) {
            report.duplicate_queries += 1;
        }
    })?;
    Ok(queries.items)
}

fn is_header(first_field: &str) -> bool {
    matches!(
        first_field.to_ascii_lowercase().as_str(),
        "query-id" | "query_id" | "qid" | "query"
    )
}

/// Reads a qrels file: BEIR TSV (`query-id  corpus-id  score`, header optional) or TREC qrels
/// (`qid  iteration  docno  relevance`). Fields split on tabs or spaces; grades are integers.
pub fn read_qrels(path: &Path) -> Result<Qrels> {
    read_qrels_counting(path, &mut DataReport::default())
}

fn read_qrels_counting(path: &Path, report: &mut DataReport) -> Result<Qrels> {
    let mut qrels = Qrels::default();
    for row in read_qrels_rows(path)? {
        if qrels
            .get(&row.query_id)
            .is_some_and(|j| j.contains_key(&row.doc_id))
        {
            report.duplicate_judgments += 1;
        }
        qrels.insert(&row.query_id, &row.doc_id, row.grade);
    }
    Ok(qrels)
}

/// One qrels row with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrelsRow {
    /// Query id.
    pub query_id: String,
    /// Document id.
    pub doc_id: String,
    /// Relevance grade (> 0 is relevant).
    pub grade: i32,
    /// 1-based line number.
    pub line: usize,
}

/// Reads a qrels file row by row, in file order, in either layout of [`read_qrels`]; training
/// uses the line numbers to point at problems.
pub fn read_qrels_rows(path: &Path) -> Result<Vec<QrelsRow>> {
    let mut rows = Vec::new();
    for (index, line) in open_lines(path, "qrels file")?.enumerate() {
        let line_no = index + 1;
        let line = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || (line_no == 1 && is_header(fields[0])) {
            continue;
        }
        let (query, doc, grade) = match fields.as_slice() {
            [q, d, g] => (*q, *d, *g),
            [q, _iteration, d, g] => (*q, *d, *g),
            _ => {
                return Err(EvalError::malformed(
                    path,
                    line_no,
                    format!(
                        "expected 3 fields (query-id corpus-id score) or 4 (qid iter docno rel), found {}",
                        fields.len()
                    ),
                ))
            }
        };
        let grade = parse_grade(grade).ok_or_else(|| {
            EvalError::malformed(
                path,
                line_no,
                format!("relevance `{grade}` is not an integer"),
            )
        })?;
        rows.push(QrelsRow {
            query_id: query.to_string(),
            doc_id: doc.to_string(),
            grade,
            line: line_no,
        });
    }
    Ok(rows)
}

fn parse_grade(field: &str) -> Option<i32> {
    if let Ok(g) = field.parse::<i32>() {
        return Some(g);
    }
    let value: f64 = field.parse().ok()?;
    (value.fract() == 0.0 && value.abs() < i32::MAX as f64).then_some(value as i32)
}

/// Reads a run file: TSV `query-id  corpus-id  score` (header optional; the format of
/// `../shared/reference/metrics/*.run.tsv`) or TREC `qid Q0 docno rank score tag`. A document
/// listed twice for one query, or a score that is not a finite number, is an error naming the
/// line.
pub fn read_run(path: &Path) -> Result<Run> {
    let mut run = Run::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (index, line) in open_lines(path, "run file")?.enumerate() {
        let line_no = index + 1;
        let line = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || (line_no == 1 && is_header(fields[0])) {
            continue;
        }
        let (query, doc, score) = match fields.as_slice() {
            [q, d, s] => (*q, *d, *s),
            [q, _q0, d, _rank, s, _tag] => (*q, *d, *s),
            _ => {
                return Err(EvalError::malformed(
                    path,
                    line_no,
                    format!(
                        "expected 3 fields (query-id corpus-id score) or 6 (qid Q0 docno rank score tag), found {}",
                        fields.len()
                    ),
                ))
            }
        };
        let score: f64 = score
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite())
            .ok_or_else(|| {
                EvalError::malformed(
                    path,
                    line_no,
                    format!("score `{score}` is not a finite number"),
                )
            })?;
        if !seen.insert((query.to_string(), doc.to_string())) {
            return Err(EvalError::malformed(
                path,
                line_no,
                format!("document `{doc}` is ranked twice for query `{query}`"),
            ));
        }
        run.entry(query.to_string()).or_default().push(ScoredDoc {
            doc_id: doc.to_string(),
            score,
        });
    }
    Ok(run)
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
    fn embedding_text_joins_title_and_text_like_beir() {
        let doc = |title: &str, text: &str| Document {
            id: "d".into(),
            title: title.into(),
            text: text.into(),
        };
        assert_eq!(doc("Title", "Body.").embedding_text(), "Title Body.");
        assert_eq!(doc("", " Body ").embedding_text(), "Body");
        assert_eq!(doc(" T ", "").embedding_text(), "T");
    }

    #[test]
    fn qrels_read_beir_and_trec_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let beir = write(
            dir.path(),
            "a.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n",
        );
        let trec = write(dir.path(), "b.txt", "q1 0 d1 2\nq1 0 d2 0\n");
        let a = read_qrels(&beir).unwrap();
        assert_eq!(a, read_qrels(&trec).unwrap());
        assert_eq!(a.relevant_count("q1"), 1);
        assert_eq!(a.get("q1").unwrap()["d1"], 2);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let qrels = write(
            dir.path(),
            "q.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1 d2\n",
        );
        let err = read_qrels(&qrels).unwrap_err().to_string();
        assert!(err.contains("q.tsv:3:"), "{err}");
        let qrels = write(dir.path(), "g.tsv", "q1\td1\thigh\n");
        let err = read_qrels(&qrels).unwrap_err().to_string();
        assert!(err.contains("g.tsv:1:") && err.contains("high"), "{err}");

        let run = write(dir.path(), "r.tsv", "q1\td1\t0.5\nq1\td1\t0.4\n");
        let err = read_run(&run).unwrap_err().to_string();
        assert!(err.contains("r.tsv:2:") && err.contains("twice"), "{err}");
        let run = write(dir.path(), "n.tsv", "q1\td1\tNaN\n");
        assert!(read_run(&run).unwrap_err().to_string().contains("n.tsv:1:"));

        let corpus = write(
            dir.path(),
            "corpus.jsonl",
            "{\"_id\": \"a\", \"text\": \"x\"}\n\n{\"_id\": \"b\"}\n",
        );
        let err = read_corpus(&corpus, &mut DataReport::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corpus.jsonl:3:") && err.contains("\"text\""),
            "{err}"
        );
    }

    #[test]
    fn run_reads_trec_six_columns() {
        let dir = tempfile::tempdir().unwrap();
        let run = write(
            dir.path(),
            "r.trec",
            "q1 Q0 d1 1 2.5 sys\nq1 Q0 d2 2 1.5 sys\n",
        );
        let run = read_run(&run).unwrap();
        assert_eq!(run["q1"].len(), 2);
        assert_eq!(run["q1"][1].score, 1.5);
    }

    #[test]
    fn beir_load_counts_inconsistencies() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "corpus.jsonl",
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"one\"}\n{\"_id\": 2, \"text\": \"two\"}\n{\"_id\": \"d1\", \"text\": \"again\"}\n",
        );
        write(
            root,
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"first\"}\n{\"_id\": \"q2\", \"text\": \"second\"}\n{\"_id\": \"q3\", \"text\": \"third\"}\n",
        );
        write(
            root,
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tmissing\t1\nq2\t2\t0\nq9\td1\t1\nq9\t2\t1\n",
        );
        let data = BeirDataset::load(root, "test").unwrap();
        assert_eq!(data.corpus.len(), 2);
        assert_eq!(data.corpus[0].text, "again");
        assert_eq!(data.corpus[1].id, "2");
        assert_eq!(data.queries.len(), 1);
        assert_eq!(data.queries[0].id, "q1");
        let r = &data.report;
        assert_eq!(
            (r.qrels_rows_unknown_query, r.unknown_queries),
            (2, 1),
            "{r:?}"
        );
        assert_eq!(r.qrels_rows_unknown_document, 1);
        assert_eq!(r.queries_without_relevant, 1);
        assert_eq!(r.duplicate_documents, 1);
        let warnings = r.warnings("data");
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings[0].contains("2 qrels rows name 1 queries"));

        let err = BeirDataset::load(root, "dev").unwrap_err().to_string();
        assert!(err.contains("dev.tsv") && err.contains("missing"), "{err}");
    }
}
