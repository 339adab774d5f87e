//! Synthetic retrieval data for tests and examples: a small product catalogue in BEIR layout
//! whose queries name a product's code, colour and kind, so a model can learn to match them.
//! Every word tokenizes with [`attune_model::fixtures::write_random_bert`]'s vocabulary.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use rand::seq::IndexedRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Result, TrainError};

/// Size of a synthetic dataset. `Default`: 80 documents, 48 training queries, 16 test queries.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Documents in the corpus.
    pub documents: usize,
    /// Queries in `qrels/train.tsv` (about the first documents).
    pub train_queries: usize,
    /// Queries in `qrels/test.tsv` (about other documents than the training queries').
    pub test_queries: usize,
    /// Seed: equal seeds give equal files.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            documents: 80,
            train_queries: 48,
            test_queries: 16,
            seed: 7,
        }
    }
}

const COLOURS: [&str; 4] = ["red", "blue", "black", "white"];
const MATERIALS: [&str; 3] = ["leather", "cotton", "wool"];
const KINDS: [&str; 4] = ["shoe", "jacket", "laptop", "battery"];

/// Writes `corpus.jsonl`, `queries.jsonl`, `qrels/train.tsv` and `qrels/test.tsv` under `dir`.
pub fn write_synthetic_beir(dir: &Path, spec: &SyntheticSpec) -> Result<()> {
    assert!(
        spec.train_queries + spec.test_queries <= spec.documents,
        "each query is about its own document"
    );
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let letters: Vec<char> = ('a'..='z').collect();
    let mut corpus = String::new();
    let mut docs = Vec::new();
    for i in 0..spec.documents {
        let code: String = (0..3).map(|_| *letters.choose(&mut rng).unwrap()).collect();
        let colour = *COLOURS.choose(&mut rng).unwrap();
        let material = *MATERIALS.choose(&mut rng).unwrap();
        let kind = *KINDS.choose(&mut rng).unwrap();
        let size = rng.random_range(1..10);
        let title = format!("{colour} {kind}");
        let text = format!("{material} {kind} in {colour}, model {code}, size {size}");
        writeln!(
            corpus,
            "{}",
            serde_json::json!({"_id": format!("d{i}"), "title": title, "text": text})
        )
        .unwrap();
        docs.push((code, colour, kind));
    }
    let mut queries = String::new();
    let mut train = String::from("query-id\tcorpus-id\tscore\n");
    let mut test = train.clone();
    let queried = spec.train_queries + spec.test_queries;
    for (q, (code, colour, kind)) in docs.iter().take(queried).enumerate() {
        let text = format!("{code} {colour} {kind}");
        writeln!(
            queries,
            "{}",
            serde_json::json!({"_id": format!("q{q}"), "text": text})
        )
        .unwrap();
        let qrels = if q < spec.train_queries {
            &mut train
        } else {
            &mut test
        };
        writeln!(qrels, "q{q}\td{q}\t1").unwrap();
    }
    let write = |name: &str, body: &str| -> Result<()> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
        }
        fs::write(&path, body).map_err(|e| TrainError::io(&path, e))
    };
    write("corpus.jsonl", &corpus)?;
    write("queries.jsonl", &queries)?;
    write("qrels/train.tsv", &train)?;
    write("qrels/test.tsv", &test)
}
