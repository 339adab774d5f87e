//! `attune eval` end to end on tiny random models and small BEIR sets the tests write themselves:
//! report files, the embedding cache, the gate's exit status, run files, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .output()
        .expect("attune runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

const WORDS: [&str; 24] = [
    "red", "running", "shoes", "leather", "jacket", "usb", "cable", "laptop", "stand", "wireless",
    "mouse", "coffee", "grinder", "steel", "bottle", "yoga", "mat", "camera", "lens", "phone",
    "case", "desk", "lamp", "hub",
];

/// A BEIR directory with `docs` documents and one query per 4 documents; query i is judged
/// against documents 4i (grade 2) and 4i+1 (grade 1). `seed` varies the texts.
fn write_beir(dir: &Path, docs: usize, seed: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let word = |i: usize| WORDS[(i * 7 + seed * 3) % WORDS.len()];
    let mut corpus = String::new();
    for d in 0..docs {
        let text: Vec<&str> = (0..6).map(|j| word(d * 5 + j * 11)).collect();
        corpus.push_str(&format!(
            "{{\"_id\": \"d{d}\", \"title\": \"{} {}\", \"text\": \"{}\"}}\n",
            word(d),
            word(d + 1),
            text.join(" ")
        ));
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    let mut queries = String::new();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for q in 0..docs / 4 {
        let d = 4 * q;
        queries.push_str(&format!(
            "{{\"_id\": \"q{q}\", \"text\": \"{} {} {}\"}}\n",
            word(d),
            word(d * 5),
            word(d * 5 + 22)
        ));
        qrels.push_str(&format!("q{q}\td{d}\t2\nq{q}\td{}\t1\n", d + 1));
    }
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(dir.join("qrels/test.tsv"), qrels).unwrap();
    dir.to_path_buf()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model_a: String,
    model_b: String,
    domain: String,
    general: String,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let model = |name: &str, seed: u64| {
            let dir = root.join(name);
            let spec = RandomBertSpec {
                seed,
                ..Default::default()
            };
            write_random_bert(&dir, &spec).unwrap();
            dir.to_str().unwrap().to_string()
        };
        let model_a = model("model-a", 1);
        let model_b = model("model-b", 2);
        let domain = write_beir(&root.join("shop"), 64, 1);
        let general = write_beir(&root.join("general"), 48, 5);
        Self {
            model_a,
            model_b,
            domain: domain.to_str().unwrap().to_string(),
            general: general.to_str().unwrap().to_string(),
            _tmp: tmp,
            root,
        }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }

    /// The two random models ordered by general-set nDCG@10 (worse, better), and the gap.
    fn worse_and_better_on_general(&self) -> (String, String, f64) {
        let probe_dir = self.path("probe");
        let probe = self.eval(&[
            "--model",
            &self.model_a,
            "--baseline",
            &self.model_b,
            "--data",
            &self.general,
            "--out",
            &probe_dir,
        ]);
        assert_ok(&probe);
        let metrics = read_json(&Path::new(&probe_dir).join("metrics.json"));
        let ndcg = |m: &str| {
            metrics["datasets"][0]["models"][m]["metrics"]["ndcg@10"]
                .as_f64()
                .unwrap()
        };
        let (a, b) = (ndcg("tuned"), ndcg("base"));
        assert!(
            (a - b).abs() > 1e-6,
            "the two random models must differ: {a} vs {b}"
        );
        let (worse, better) = if a < b {
            (&self.model_a, &self.model_b)
        } else {
            (&self.model_b, &self.model_a)
        };
        (worse.clone(), better.clone(), (a - b).abs())
    }

    fn eval(&self, extra: &[&str]) -> Output {
        let cache = self.path("cache");
        let mut args = vec!["eval", "--cache-dir", &cache, "--device", "cpu"];
        args.extend_from_slice(extra);
        attune(&args)
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn comparison_writes_every_report_file() {
    let fx = Fixture::new();
    let out_dir = fx.path("report");
    let out = fx.eval(&[
        "--model",
        &fx.model_a,
        "--baseline",
        &fx.model_b,
        "--data",
        &fx.domain,
        "--general-data",
        &fx.general,
        "--max-general-drop",
        "1",
        "--out",
        &out_dir,
    ]);
    assert_ok(&out);
    let table = stdout(&out);
    for needle in [
        "domain: shop",
        "general: general",
        "ndcg@10",
        "wins/ties/losses",
        "gate PASS",
    ] {
        assert!(table.contains(needle), "missing {needle:?} in:\n{table}");
    }

    let out_dir = Path::new(&out_dir);
    let metrics = read_json(&out_dir.join("metrics.json"));
    assert_eq!(metrics["definitions"], "trec_eval");
    let domain = &metrics["datasets"][0];
    assert_eq!(domain["queries"], 16);
    assert_eq!(domain["documents"], 64);
    for label in ["tuned", "base"] {
        let m = &domain["models"][label]["metrics"];
        for name in [
            "ndcg@10",
            "recall@100",
            "mrr@10",
            "map@100",
            "precision@5",
            "hit@1",
            "map",
            "mrr",
        ] {
            let v = m[name].as_f64().unwrap_or_else(|| panic!("{label} {name}"));
            assert!((0.0..=1.0).contains(&v), "{label} {name} = {v}");
        }
    }
    let c = &domain["comparison"];
    let (tuned, base) = (
        domain["models"]["tuned"]["metrics"]["ndcg@10"]
            .as_f64()
            .unwrap(),
        domain["models"]["base"]["metrics"]["ndcg@10"]
            .as_f64()
            .unwrap(),
    );
    assert!((c["mean_delta"].as_f64().unwrap() - (tuned - base)).abs() < 1e-12);
    assert_eq!(
        c["wins"].as_u64().unwrap() + c["ties"].as_u64().unwrap() + c["losses"].as_u64().unwrap(),
        16
    );
    let ci = c["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
    assert_eq!(metrics["datasets"][1]["role"], "general");
    assert_eq!(metrics["gate"]["passed"], true);

    let csv = std::fs::read_to_string(out_dir.join("per_query.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.len(),
        1 + 16 + 12,
        "header, domain queries, general queries"
    );
    assert!(lines[0].starts_with("dataset,query_id,query,base:ndcg@1,"));
    assert!(lines[0].contains(",delta:ndcg@10,"));

    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains("## Gate: PASSED"));
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    // Two datasets × (metric bars, Δ histogram, wins/ties/losses).
    assert_eq!(html.matches("<svg").count(), 6);
    for chunk in html.split("<svg").skip(1) {
        let end = chunk.find("</svg>").unwrap() + "</svg>".len();
        roxmltree::Document::parse(&format!("<svg{}", &chunk[..end])).expect("well-formed SVG");
    }
}

#[test]
fn corpus_embeddings_come_from_the_cache_the_second_time() {
    let fx = Fixture::new();
    let args = ["--model", fx.model_a.as_str(), "--data", fx.domain.as_str()];
    let first = fx.eval(&args);
    assert_ok(&first);
    assert!(!stderr(&first).contains("from cache"), "{}", stderr(&first));
    let second = fx.eval(&args);
    assert_ok(&second);
    assert!(
        stderr(&second).contains("(from cache)"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        stdout(&first),
        stdout(&second),
        "cached vectors give the same metrics"
    );

    let mut no_cache = args.to_vec();
    no_cache.push("--no-cache");
    let third = fx.eval(&no_cache);
    assert_ok(&third);
    assert!(!stderr(&third).contains("from cache"));
    // Another model misses the cache.
    let other = fx.eval(&["--model", &fx.model_b, "--data", &fx.domain]);
    assert_ok(&other);
    assert!(!stderr(&other).contains("from cache"));
}

/// A Matryoshka evaluation (`--dimension`) of a model whose whole vectors are cached cuts them
/// instead of embedding again, and scores exactly as embedding truncated vectors does.
#[test]
fn a_truncated_evaluation_reuses_the_whole_vectors_and_scores_alike() {
    let fx = Fixture::new();
    let args = ["--model", fx.model_a.as_str(), "--data", fx.domain.as_str()];
    let whole = fx.eval(&args);
    assert_ok(&whole);
    let mut truncated = args.to_vec();
    truncated.extend(["--dimension", "8"]);
    let cut = fx.eval(&truncated);
    assert_ok(&cut);
    assert!(stderr(&cut).contains("(from cache)"), "{}", stderr(&cut));
    truncated.push("--no-cache");
    let embedded = fx.eval(&truncated);
    assert_ok(&embedded);
    assert!(!stderr(&embedded).contains("from cache"));
    assert_eq!(stdout(&cut), stdout(&embedded), "cut = embedded truncated");
    assert_ne!(
        stdout(&cut),
        stdout(&whole),
        "8 dimensions rank differently"
    );
    let wide = fx.eval(&[
        "--model",
        &fx.model_a,
        "--data",
        &fx.domain,
        "--dimension",
        "100000",
    ]);
    assert!(!wide.status.success() && stderr(&wide).contains("truncate_dim"));
}

#[test]
fn require_gain_fails_with_exit_3_and_the_numbers() {
    let fx = Fixture::new();
    let out = fx.eval(&[
        "--model",
        &fx.model_a,
        "--baseline",
        &fx.model_a,
        "--baseline-label",
        "same",
        "--data",
        &fx.domain,
        "--require-gain",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("gate failed"), "{err}");
    assert!(err.contains("gain +0.0000 is not > 0"), "{err}");
    assert!(stdout(&out).contains("gate FAIL"));
}

#[test]
fn a_general_drop_beyond_the_allowance_fails_the_gate() {
    let fx = Fixture::new();
    let (worse, better, drop) = fx.worse_and_better_on_general();
    let run = |allowance: f64| {
        fx.eval(&[
            "--model",
            &worse,
            "--baseline",
            &better,
            "--data",
            &fx.domain,
            "--general-data",
            &fx.general,
            "--max-general-drop",
            &allowance.to_string(),
        ])
    };
    let failed = run(drop / 2.0);
    assert_eq!(failed.status.code(), Some(3), "{}", stderr(&failed));
    let err = stderr(&failed);
    assert!(err.contains("general capability on general"), "{err}");
    assert!(err.contains(&format!("drop {drop:.4} >")), "{err}");
    assert_ok(&run(drop + 0.001));
}

#[test]
fn run_files_are_scored_against_qrels() {
    let fx = Fixture::new();
    let run = fx.path("run.tsv");
    let qrels = fx.path("qrels.tsv");
    // q1: relevant at ranks 1 and 3; q2: relevant at rank 2; q3 has a ranking but no judgment.
    std::fs::write(
        &run,
        "query-id\tcorpus-id\tscore\nq1\ta\t3\nq1\tb\t2\nq1\tc\t1\nq2\tx\t2\nq2\ty\t1\nq3\tz\t1\n",
    )
    .unwrap();
    std::fs::write(&qrels, "q1 0 a 1\nq1 0 c 1\nq2 0 y 1\nq4 0 a 1\n").unwrap();
    let out_dir = fx.path("run-report");
    let out = attune(&[
        "eval", "--run", &run, "--qrels", &qrels, "--k", "1,3", "--out", &out_dir,
    ]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("1 judged queries have no ranking"), "{err}");
    assert!(
        err.contains("1 ranked queries have no relevant judgment"),
        "{err}"
    );
    let metrics = read_json(&Path::new(&out_dir).join("metrics.json"));
    let m = &metrics["datasets"][0]["models"]["run"]["metrics"];
    let close = |name: &str, want: f64| {
        let got = m[name].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{name}: {got} vs {want}");
    };
    close("mrr@3", (1.0 + 0.5) / 2.0);
    close("hit@1", 0.5);
    close("precision@3", (2.0 / 3.0 + 1.0 / 3.0) / 2.0);
    close("map@3", ((1.0 + 2.0 / 3.0) / 2.0 + 0.5) / 2.0);
    close("recall@1", (0.5 + 0.0) / 2.0);
}

#[test]
fn bad_input_is_reported_not_silenced() {
    let fx = Fixture::new();
    // Qrels naming an unknown query and an unknown document: warnings with counts.
    let domain = Path::new(&fx.domain);
    let qrels_path = domain.join("qrels/test.tsv");
    let mut qrels = std::fs::read_to_string(&qrels_path).unwrap();
    qrels.push_str("ghost\td1\t1\nghost\td2\t1\nq0\tno-such-doc\t1\n");
    std::fs::write(&qrels_path, &qrels).unwrap();
    let out = fx.eval(&["--model", &fx.model_a, "--data", &fx.domain]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("2 qrels rows name 1 queries that are not in queries.jsonl"),
        "{err}"
    );
    assert!(
        err.contains("1 qrels rows name documents that are not in corpus.jsonl"),
        "{err}"
    );

    // A malformed qrels line: an error naming file and line, exit 1.
    qrels.push_str("q1\td3\n");
    std::fs::write(&qrels_path, &qrels).unwrap();
    let out = fx.eval(&["--model", &fx.model_a, "--data", &fx.domain]);
    assert_eq!(out.status.code(), Some(1));
    let line = qrels.lines().count();
    assert!(
        stderr(&out).contains(&format!("test.tsv:{line}: expected 3 fields")),
        "{}",
        stderr(&out)
    );

    // A corpus line without text.
    let corpus = domain.join("corpus.jsonl");
    std::fs::write(
        &corpus,
        "{\"_id\": \"d0\", \"text\": \"ok\"}\n{\"_id\": \"d1\", \"title\": \"t\"}\n",
    )
    .unwrap();
    let out = fx.eval(&["--model", &fx.model_a, "--data", &fx.domain]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("corpus.jsonl:2: missing field \"text\""),
        "{}",
        stderr(&out)
    );

    // The gate needs a baseline; cutoffs must be positive.
    let out = fx.eval(&[
        "--model",
        &fx.model_a,
        "--data",
        &fx.general,
        "--require-gain",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --baseline DIR"));
    let out = fx.eval(&["--model", &fx.model_a, "--data", &fx.general, "--k", "0,10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--k"));
}

#[test]
fn a_merge_sweep_picks_the_best_alpha_within_the_gate() {
    let fx = Fixture::new();
    // The worse model on the general set is the "tuned" one: alpha 1 drops, alpha 0 (the
    // baseline's own weights) cannot.
    let (worse, better, _) = fx.worse_and_better_on_general();
    let out = fx.path("sweep");
    let merged = fx.path("merged");
    let sweep = |alphas: &str, out: &str| {
        fx.eval(&[
            "--model",
            &worse,
            "--baseline",
            &better,
            "--data",
            &fx.domain,
            "--general-data",
            &fx.general,
            "--max-general-drop",
            "0",
            "--sweep-alphas",
            alphas,
            "--sweep-out",
            &merged,
            "--out",
            out,
        ])
    };
    let result = sweep("0,0.5,1", &out);
    assert_ok(&result);
    let report = read_json(&Path::new(&out).join("sweep.json"));
    let points = report["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(
        points[0]["passed"], true,
        "alpha 0 is the baseline: no drop"
    );
    assert!(points[0]["general_drop"].as_f64().unwrap().abs() < 1e-6);
    assert_eq!(points[2]["passed"], false, "alpha 1 is the worse model");
    let best = points
        .iter()
        .filter(|p| p["passed"] == true)
        .max_by(|a, b| {
            a["domain_ndcg_at_10"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["domain_ndcg_at_10"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(report["picked"], best["alpha"]);
    let picked = best["alpha"].as_f64().unwrap();
    assert!(
        stdout(&result).contains(&format!("picked alpha {picked}")),
        "{}",
        stdout(&result)
    );
    assert!(Path::new(&merged).join("model.safetensors").exists());

    // Nothing passes: exit status 3, and the table is still printed.
    let failed = sweep("1", &fx.path("sweep-none"));
    assert_eq!(failed.status.code(), Some(3), "{}", stderr(&failed));
    assert!(stdout(&failed).contains("| 1 |"));
    let bad = sweep("1.5", &fx.path("sweep-bad"));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--sweep-alphas"));
}
