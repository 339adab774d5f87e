//! Metric parity with pytrec_eval and sentence-transformers on the fixed reference runs in
//! `../shared/reference/metrics/` (or `$ATTUNE_SHARED_DIR/reference/metrics/`): every value of
//! each `.expected.json` is reproduced to 1e-6 under the matching definitions. Missing reference
//! files fail the test; CI always has them.

use std::path::PathBuf;

use attune_eval::data::{read_qrels, read_run};
use attune_eval::{evaluate, Definitions, MetricKind, MetricName, MetricsSettings};

fn shared_dir() -> PathBuf {
    std::env::var_os("ATTUNE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// pytrec_eval's measure names in attune's spelling.
fn trec_name(measure: &str) -> MetricName {
    let (kind, cutoff) = match measure.rsplit_once('_') {
        Some((base, k)) if k.chars().all(|c| c.is_ascii_digit()) => {
            (base, Some(k.parse().unwrap()))
        }
        _ => (measure, None),
    };
    let kind = match kind {
        "ndcg_cut" => MetricKind::Ndcg,
        "map_cut" | "map" => MetricKind::Map,
        "recall" => MetricKind::Recall,
        "P" => MetricKind::Precision,
        "recip_rank" => MetricKind::Mrr,
        other => panic!("unmapped trec_eval measure {other}"),
    };
    MetricName { kind, cutoff }
}

/// sentence-transformers' metric names in attune's spelling.
fn st_kind(name: &str) -> MetricKind {
    match name {
        "accuracy@k" => MetricKind::Hit,
        "precision@k" => MetricKind::Precision,
        "recall@k" => MetricKind::Recall,
        "ndcg@k" => MetricKind::Ndcg,
        "mrr@k" => MetricKind::Mrr,
        "map@k" => MetricKind::Map,
        other => panic!("unmapped sentence-transformers metric {other}"),
    }
}

fn check_dataset(name: &str) -> usize {
    let dir = shared_dir().join("reference/metrics");
    let expected_path = dir.join(format!("{name}.expected.json"));
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (set ATTUNE_SHARED_DIR)", expected_path.display())),
    )
    .unwrap();
    let run = read_run(&dir.join(expected["run"].as_str().unwrap())).unwrap();
    let split = expected["split"].as_str().unwrap();
    let qrels = read_qrels(
        &shared_dir()
            .join("data")
            .join(name)
            .join(format!("qrels/{split}.tsv")),
    )
    .unwrap();
    let mut checked = 0;

    let cutoffs = vec![1, 3, 5, 10, 100];
    let trec = evaluate(
        &run,
        &qrels,
        &MetricsSettings {
            definitions: Definitions::TrecEval,
            cutoffs: cutoffs.clone(),
        },
    )
    .unwrap();
    assert_eq!(
        trec.per_query.len() as u64,
        expected["queries"].as_u64().unwrap()
    );
    for (measure, want) in expected["trec_eval"]["metrics"].as_object().unwrap() {
        let metric = trec_name(measure);
        let got = trec
            .mean_of(metric)
            .unwrap_or_else(|| panic!("{metric} not computed"));
        let want = want.as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-6,
            "{name} trec_eval {measure}: attune {got} vs pytrec_eval {want}"
        );
        checked += 1;
    }

    let st = evaluate(
        &run,
        &qrels,
        &MetricsSettings {
            definitions: Definitions::SentenceTransformers,
            cutoffs,
        },
    )
    .unwrap();
    for (metric, by_k) in expected["sentence_transformers"]["metrics"]
        .as_object()
        .unwrap()
    {
        for (k, want) in by_k.as_object().unwrap() {
            let name_k = MetricName::at(st_kind(metric), k.parse().unwrap());
            let got = st.mean_of(name_k).unwrap();
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{name} sentence-transformers {metric}[{k}]: attune {got} vs {want}"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn scifact_reference_metrics() {
    assert_eq!(check_dataset("scifact"), 18);
}

#[test]
fn cranfield_reference_metrics() {
    assert_eq!(check_dataset("cranfield"), 18);
}

#[test]
fn haystack_icecat_reference_metrics() {
    assert_eq!(check_dataset("haystack_icecat"), 18);
}
