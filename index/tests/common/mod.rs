//! Shared by the store's integration tests: a deterministic fake model and a product corpus.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use attune_index::{Embedder, ModelIdentity};
use serde_json::json;

pub const DIM: usize = 48;

/// Hashed bag of words: texts sharing words get similar vectors. `fail_after` batches makes it
/// fail, to simulate a crash mid-build.
pub struct WordHash {
    pub identity: ModelIdentity,
    pub salt: u64,
    pub embedded: usize,
    pub batches: usize,
    pub fail_after: Option<usize>,
}

impl WordHash {
    pub fn new(name: &str, salt: u64) -> Self {
        Self {
            identity: identity(name),
            salt,
            embedded: 0,
            batches: 0,
            fail_after: None,
        }
    }
}

pub fn identity(name: &str) -> ModelIdentity {
    ModelIdentity {
        fingerprint: format!("fingerprint-{name}"),
        dim: DIM,
        source: String::new(),
        encoding: None,
    }
}

pub fn word_vector(text: &str, salt: u64) -> Vec<f32> {
    let mut v = vec![0.05f32; DIM];
    for word in text.split_whitespace() {
        let mut h: u64 = 1469598103934665603 ^ salt;
        for b in word.to_lowercase().bytes() {
            h = (h ^ b as u64).wrapping_mul(1099511628211);
        }
        v[(h % DIM as u64) as usize] += 1.0;
        v[((h >> 20) % DIM as u64) as usize] += 0.5;
    }
    v
}

impl Embedder for WordHash {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }
    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        if self.fail_after == Some(self.batches) {
            return Err("simulated crash".into());
        }
        self.batches += 1;
        self.embedded += texts.len();
        Ok(texts.iter().map(|t| word_vector(t, self.salt)).collect())
    }
}

pub const COLOURS: [&str; 5] = ["red", "blue", "green", "black", "white"];
pub const ITEMS: [&str; 6] = ["shoe", "boot", "sandal", "jacket", "shirt", "hat"];
pub const MATERIALS: [&str; 4] = ["leather", "wool", "cotton", "canvas"];

pub fn product(i: usize) -> serde_json::Value {
    let colour = COLOURS[i % 5];
    let item = ITEMS[(i / 5) % 6];
    let material = MATERIALS[(i / 30) % 4];
    json!({
        "_id": format!("p{i}"),
        "title": format!("{colour} {material} {item} model{i}"),
        "text": format!("a {colour} {item} made of {material} style{} fit{}", i % 17, i % 7),
        "metadata": {"category": if i % 6 < 3 { "footwear" } else { "apparel" },
                     "material": material, "size": 36 + i % 10, "tags": [colour, item]},
    })
}

pub fn write_corpus(path: &Path, docs: &[serde_json::Value]) {
    let body: String = docs.iter().map(|d| format!("{d}\n")).collect();
    fs::write(path, body).unwrap();
}
