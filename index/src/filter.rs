//! Metadata filters: every clause must hold; a clause holds when the document's field equals
//! one of its values (for an array field: contains one of them).
//!
//! Only top-level scalar fields (string, number, boolean) and arrays of scalars are indexed.
//! Numbers compare by value (`1` equals `1.0`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{IndexError, Result};

/// One clause: `field` equals one of `values`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterClause {
    /// A top-level metadata field.
    pub field: String,
    /// Accepted values (one value: equality; several: membership).
    pub values: Vec<Value>,
}

/// A conjunction of clauses; empty matches every document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// All must hold.
    pub clauses: Vec<FilterClause>,
}

impl Filter {
    /// True when the filter has no clause.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// True when `metadata` passes every clause (the same rule the stores' field indexes
    /// apply: a field equal to one of the values, or an array field containing one).
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        let pairs = indexed_pairs(metadata);
        self.clauses.iter().all(|clause| {
            clause
                .values
                .iter()
                .filter_map(scalar_key)
                .any(|key| pairs.binary_search(&(clause.field.clone(), key)).is_ok())
        })
    }

    /// Parses command-line clauses `field=value`. The value is read as JSON when it parses
    /// (`size=42`, `on_sale=true`, `category=["shoes","boots"]` for a list), else as a string
    /// (`category=shoes`).
    pub fn parse_clauses<S: AsRef<str>>(clauses: &[S]) -> Result<Self> {
        let mut filter = Filter::default();
        for clause in clauses {
            let clause = clause.as_ref();
            let Some((field, value)) = clause.split_once('=') else {
                return Err(IndexError::InvalidFilter {
                    filter: clause.to_string(),
                    message: "expected field=value".into(),
                });
            };
            let field = field.trim();
            let value = value.trim();
            let parsed = serde_json::from_str::<Value>(value)
                .unwrap_or_else(|_| Value::String(value.to_string()));
            let values = match parsed {
                Value::Array(values) => values,
                other => vec![other],
            };
            filter.clauses.push(FilterClause {
                field: field.to_string(),
                values,
            });
        }
        filter.validate()?;
        Ok(filter)
    }

    /// Checks field names and values: non-empty names without NUL, scalar values, at least one
    /// value per clause.
    pub fn validate(&self) -> Result<()> {
        for clause in &self.clauses {
            let fail = |message: &str| IndexError::InvalidFilter {
                filter: format!("{}={}", clause.field, Value::Array(clause.values.clone())),
                message: message.to_string(),
            };
            if clause.field.is_empty() || clause.field.contains('\0') {
                return Err(fail("field names are non-empty and contain no NUL"));
            }
            if clause.values.is_empty() {
                return Err(fail("a clause needs at least one value"));
            }
            if clause.values.iter().any(|v| scalar_key(v).is_none()) {
                return Err(fail("values are strings, numbers or booleans"));
            }
        }
        Ok(())
    }
}

/// The canonical index form of a scalar value, or None for null, objects and arrays.
/// The value a [`scalar_key`] was made from (numbers come back as integers when whole).
pub(crate) fn value_of_key(key: &str) -> Option<Value> {
    let (kind, rest) = key.split_at_checked(1)?;
    match kind {
        "s" => Some(Value::String(rest.to_string())),
        "b" => rest.parse::<bool>().ok().map(Value::Bool),
        "n" => match rest.parse::<i64>() {
            Ok(i) => Some(Value::from(i)),
            Err(_) => rest.parse::<f64>().ok().map(Value::from),
        },
        _ => None,
    }
}

pub(crate) fn scalar_key(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(format!("s{s}")),
        Value::Bool(b) => Some(format!("b{b}")),
        Value::Number(n) => {
            let f = n.as_f64()?;
            Some(if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("n{}", f as i64)
            } else {
                format!("n{f}")
            })
        }
        _ => None,
    }
}

/// The (field, canonical value) pairs a document's metadata is indexed under.
pub(crate) fn indexed_pairs(metadata: &Map<String, Value>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (field, value) in metadata {
        if field.contains('\0') {
            continue;
        }
        match value {
            Value::Array(items) => {
                for item in items {
                    if let Some(key) = scalar_key(item) {
                        pairs.push((field.clone(), key));
                    }
                }
            }
            other => {
                if let Some(key) = scalar_key(other) {
                    pairs.push((field.clone(), key));
                }
            }
        }
    }
    pairs.sort();
    pairs.dedup();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_strings_numbers_and_lists() {
        let f = Filter::parse_clauses(&["category=shoes", "size=42", r#"color=["red","blue"]"#])
            .unwrap();
        assert_eq!(f.clauses[0].values, vec![json!("shoes")]);
        assert_eq!(f.clauses[1].values, vec![json!(42)]);
        assert_eq!(f.clauses[2].values.len(), 2);
        assert!(Filter::parse_clauses(&["nofield"]).is_err());
        assert!(Filter::parse_clauses(&["a=[]"]).is_err());
        assert!(Filter::parse_clauses(&["a={\"x\":1}"]).is_err());
    }

    #[test]
    fn matches_applies_every_clause_to_scalars_and_arrays() {
        let meta = json!({"colour": "red", "size": 42, "tags": ["a", "b"]})
            .as_object()
            .unwrap()
            .clone();
        let f = |clauses: &[&str]| Filter::parse_clauses(clauses).unwrap();
        assert!(f(&[]).matches(&meta));
        assert!(f(&["colour=red", "size=42.0"]).matches(&meta));
        assert!(f(&[r#"colour=["blue","red"]"#, "tags=b"]).matches(&meta));
        assert!(!f(&["colour=red", "size=43"]).matches(&meta));
        assert!(!f(&["missing=1"]).matches(&meta));
    }

    #[test]
    fn numbers_compare_by_value_and_arrays_index_each_element() {
        assert_eq!(scalar_key(&json!(1)), scalar_key(&json!(1.0)));
        assert_ne!(scalar_key(&json!(1)), scalar_key(&json!("1")));
        let meta = json!({"tags": ["a", "b", {"x": 1}], "n": null, "size": 9})
            .as_object()
            .unwrap()
            .clone();
        let pairs = indexed_pairs(&meta);
        assert_eq!(pairs.len(), 3);
    }
}
