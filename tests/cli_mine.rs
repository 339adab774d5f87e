//! `attune mine` on a tiny random model and a synthetic catalogue: one pair per judged
//! (query, positive), no judged positive ever written as a negative, the rank window and the
//! per-pair count respected, the margin applied, and bad settings named.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_trainer::fixtures::{write_synthetic_beir, SyntheticSpec};
use serde_json::Value;

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .output()
        .expect("attune runs")
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mined_negatives_never_include_a_judged_positive() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("beir");
    write_synthetic_beir(&data, &SyntheticSpec::default()).unwrap();
    // Several positives for some queries: q0 judges d0..d5 relevant, q1 d1 and d7 to d9.
    let train = data.join("qrels/train.tsv");
    let mut qrels = std::fs::read_to_string(&train).unwrap();
    for d in 1..=5 {
        qrels.push_str(&format!("q0\td{d}\t1\n"));
    }
    for d in 7..=9 {
        qrels.push_str(&format!("q1\td{d}\t2\n"));
    }
    qrels.push_str("q2\td11\t0\n"); // judged not relevant: may be mined
    std::fs::write(&train, qrels).unwrap();
    write_random_bert(&tmp.path().join("model"), &RandomBertSpec::default()).unwrap();

    let out = tmp.path().join("mined.jsonl");
    let run = |range: &str, per_query: &str, margin: &str| {
        attune(&[
            "mine",
            "--model",
            tmp.path().join("model").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--range",
            range,
            "--per-query",
            per_query,
            "--margin",
            margin,
            "--device",
            "cpu",
            "--json",
        ])
    };
    let result = run("0:20", "8", "-10");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report: Value = serde_json::from_slice(&result.stdout).unwrap();

    // Judged positives per query text, as embedded texts (title + " " + text).
    let docs: HashMap<String, String> = lines(&data.join("corpus.jsonl"))
        .iter()
        .map(|d| {
            let text = format!(
                "{} {}",
                d["title"].as_str().unwrap(),
                d["text"].as_str().unwrap()
            );
            (d["_id"].as_str().unwrap().to_string(), text)
        })
        .collect();
    let queries: HashMap<String, String> = lines(&data.join("queries.jsonl"))
        .iter()
        .map(|q| {
            (
                q["_id"].as_str().unwrap().to_string(),
                q["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut judged: HashMap<String, HashSet<String>> = HashMap::new();
    let mut pairs_expected = 0;
    for row in std::fs::read_to_string(&train).unwrap().lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        if cols[2].parse::<i32>().unwrap() > 0 {
            judged
                .entry(queries[cols[0]].clone())
                .or_default()
                .insert(docs[cols[1]].clone());
            pairs_expected += 1;
        }
    }
    let mined = lines(&out);
    assert_eq!(mined.len(), pairs_expected);
    assert_eq!(report["pairs"], pairs_expected);
    for pair in &mined {
        let query = pair["query"].as_str().unwrap();
        let positives = &judged[query];
        assert!(positives.contains(pair["positive"].as_str().unwrap()));
        let negatives: Vec<&str> = pair["negatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        // A window of 20 holds at most 6 judged positives, and no margin applies: always 8.
        assert_eq!(negatives.len(), 8, "{pair}");
        assert_eq!(
            negatives.iter().collect::<HashSet<_>>().len(),
            8,
            "distinct"
        );
        for negative in negatives {
            assert!(
                !positives.contains(negative),
                "judged positive mined for {query:?}"
            );
        }
    }
    assert!(report["skipped_judged"].as_u64().unwrap() > 0, "{report}");

    // A margin no candidate can clear leaves every pair without negatives, and says so.
    let result = run("0:20", "8", "10");
    assert!(result.status.success());
    let report: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(report["negatives"], 0);
    assert_eq!(report["short_pairs"], pairs_expected);
    assert!(lines(&out)
        .iter()
        .all(|p| p["negatives"].as_array().unwrap().is_empty()));

    // The mined file trains: pairs JSONL with negatives reads back, and mining it again (its own
    // texts as corpus) still never returns a positive.
    let again = tmp.path().join("again.jsonl");
    let result = attune(&[
        "mine",
        "--model",
        tmp.path().join("model").to_str().unwrap(),
        "--data",
        out.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--range",
        "0:10",
        "--margin",
        "-10",
        "--device",
        "cpu",
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for pair in lines(&again) {
        let positives = &judged[pair["query"].as_str().unwrap()];
        for negative in pair["negatives"].as_array().unwrap() {
            assert!(!positives.contains(negative.as_str().unwrap()));
        }
    }

    let result = run("20:10", "8", "0.05");
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("--range"));
}

/// A pipeline's `[mine]` ranks at the model's own length, not at a shorter `[train]
/// max_seq_len`: it mines what `attune mine` mines with its defaults, and not what mining at
/// the training length gives.
#[test]
fn the_pipeline_mines_at_the_models_own_length() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = (tmp.path().join("beir"), tmp.path().join("model"));
    write_synthetic_beir(&data, &SyntheticSpec::default()).unwrap();
    write_random_bert(&model, &RandomBertSpec::default()).unwrap();
    let config = tmp.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "work_dir = \"work\"\nbase_model = {model:?}\ndevice = \"cpu\"\n\n[data]\npath = {data:?}\n\n\
             [mine]\n\n[train]\nmax_steps = 2\nbatch_size = 8\nmax_seq_len = 4\n\n\
             [index]\nstore = \"store\"\ncollection = \"shop\"\n"
        ),
    )
    .unwrap();
    // The gate may refuse two steps of a random model; the mined pairs are written before.
    attune(&["pipeline", "--config", config.to_str().unwrap()]);
    let piped = tmp.path().join("work/mined.jsonl");
    assert!(piped.exists(), "the pipeline wrote no mined pairs");
    let mine = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec![
            "mine",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let result = attune(&args);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        lines(&out)
    };
    let whole = mine("whole.jsonl", &[]);
    assert_eq!(lines(&piped), whole);
    assert_ne!(mine("short.jsonl", &["--max-seq-len", "4"]), whole);
}
