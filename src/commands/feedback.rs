//! `attune feedback export`: training pairs from a collection's feedback log.
//! `attune feedback simulate`: a shopper simulator that searches a running server and clicks,
//! adds to cart and buys through its public API, driven by graded judgments.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use attune_app::feedback::{export_from, export_from_store, write_pairs, Export, ExportSettings};
use attune_eval::data::{read_qrels_rows, read_queries, DataReport};
use clap::{Args, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::StoreArgs;

/// `attune feedback …`
#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// Training pairs from what shoppers did with logged searches: graded positives
    /// (purchase > add-to-cart > click), skipped-above negatives, one vote per (user, query),
    /// inverse-propensity weights from the server's swap exploration. Reads a running server's
    /// log, or the store's: an embedded store's once the server that holds it has stopped, a
    /// Qdrant store's at any time.
    Export(ExportArgs),
    /// Simulated shoppers: searches a running server with judged queries and sends clicks,
    /// add-to-carts and purchases through the public API, by a position-based click model.
    Simulate(SimulateArgs),
}

/// Arguments of `attune feedback export`.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("log")
        .required(true)
        .multiple(true)
        .args(["store", "backend", "url"])
))]
pub struct ExportArgs {
    /// The store that holds the log: an embedded store's directory (the server that holds its
    /// log must be stopped), or a Qdrant store (`--backend qdrant`; read while servers run).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Or a running server's base URL (`GET /v1/collections/{c}/feedback/pairs`); read instead
    /// of any store.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// API key, with --url when the server has one.
    #[arg(long, env = "ATTUNE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// What to export.
    #[command(flatten)]
    pub settings: ExportSettings,
    /// The pairs JSONL file to write (replaced atomically; untouched on error).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs `attune feedback …`.
pub fn run(command: FeedbackCommand) -> Result<()> {
    match command {
        FeedbackCommand::Export(args) => run_export(args),
        FeedbackCommand::Simulate(args) => run_simulate(args),
    }
}

fn run_export(args: ExportArgs) -> Result<()> {
    let export = match &args.url {
        Some(url) => export_from_server(url, args.api_key.as_deref(), &args.settings)?,
        None => export_from_stored_log(&args.store, &args.settings)?,
    };
    write_pairs(&args.out, &export.pairs)?;
    let report = &export.report;
    println!(
        "wrote {} pairs for {} queries to {} ({} logged searches, {} explored; {} events in \
         {} shopper sessions; {} engaged documents below --min-events {}; {} events on \
         unknown searches)",
        report.pairs,
        report.queries,
        args.out.display(),
        report.requests,
        report.explored_requests,
        report.events,
        report.sessions,
        report.below_min_events,
        args.settings.min_events,
        report.unknown_request_events,
    );
    match &report.propensities {
        Some(p) => println!("position bias: {}", p.method),
        None => println!("position bias: not corrected (--position-correction false)"),
    }
    Ok(())
}

/// The export of a store's log: the embedded store's through its directory, any other
/// backend's through the vector-store seam.
fn export_from_stored_log(store: &StoreArgs, settings: &ExportSettings) -> Result<Export> {
    let backend = store.settings(&Default::default()).backend;
    if backend == attune_index::StoreBackend::Embedded {
        let Some(dir) = &store.store else {
            bail!("feedback export needs --store DIR (or --backend qdrant, or --url)");
        };
        return Ok(export_from_store(dir, settings)?);
    }
    Ok(export_from(store.open(false)?.as_ref(), settings)?)
}

/// The export of a running server.
fn export_from_server(url: &str, key: Option<&str>, settings: &ExportSettings) -> Result<Export> {
    let url = format!(
        "{}/v1/collections/{}/feedback/pairs",
        url.trim_end_matches('/'),
        settings.collection
    );
    let mut request = ureq::get(&url)
        .query("min_events", settings.min_events.to_string())
        .query(
            "position_correction",
            settings.position_correction.to_string(),
        )
        .query("max_negatives", settings.max_negatives.to_string())
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(since) = &settings.since {
        request = request.query("since", since);
    }
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let mut response = request.call().with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("GET {url}: reading the answer"))?;
    if status != 200 {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("{url}: {status}: {message}");
    }
    Ok(Export {
        report: serde_json::from_value(body["report"].clone())?,
        pairs: serde_json::from_value(body["pairs"].clone())?,
    })
}

/// Arguments of `attune feedback simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The collection to search.
    #[arg(long)]
    pub collection: String,
    /// A BEIR directory: its queries and the graded judgments of `--split` drive the shoppers.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Qrels split whose queries are searched and whose grades decide clicks (the demo store
    /// writes every grade of its train queries to `shoppers`; `identifiers` shifts the mix to
    /// model numbers and SKUs).
    #[arg(long, default_value = "shoppers")]
    pub split: String,
    /// Queries file (default: the split's `queries-<split>.jsonl` when there is one, else
    /// `queries.jsonl`).
    #[arg(long, value_name = "FILE")]
    pub queries: Option<PathBuf>,
    /// Shopper sessions (one search each).
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Distinct shoppers the sessions are drawn from (default: half the sessions).
    #[arg(long)]
    pub users: Option<usize>,
    /// The space searched (default: the server's default; `auto` runs the A/B test).
    #[arg(long)]
    pub space: Option<String>,
    /// Examination falls with rank as `rank^-eta`.
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,
    /// Results asked per search.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// API key, when the server has one.
    #[arg(long, env = "ATTUNE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The shoppers' click model: position-based, examination `rank^-eta`; whether an examined
/// result is clicked, added to the cart and bought depends on its judged grade.
#[derive(Debug, Clone)]
pub struct ClickModel {
    /// Examination exponent.
    pub eta: f64,
}

impl ClickModel {
    /// (click, add-to-cart given click, purchase given add-to-cart) by grade 0, 1, 2+.
    const BY_GRADE: [(f64, f64, f64); 3] = [(0.03, 0.05, 0.2), (0.35, 0.25, 0.4), (0.8, 0.5, 0.6)];

    /// What one shopper does with results whose grades are `grades` (rank order): `(rank,
    /// event)` in the order sent. A purchase ends the session.
    pub fn session(&self, grades: &[i32], rng: &mut impl Rng) -> Vec<(usize, &'static str)> {
        let mut events = Vec::new();
        for (i, grade) in grades.iter().enumerate() {
            let rank = i + 1;
            if !rng.random_bool((rank as f64).powf(-self.eta).min(1.0)) {
                continue;
            }
            let (click, cart, buy) = Self::BY_GRADE[(*grade).clamp(0, 2) as usize];
            if !rng.random_bool(click) {
                continue;
            }
            events.push((rank, "click"));
            if rng.random_bool(cart) {
                events.push((rank, "add_to_cart"));
                if rng.random_bool(buy) {
                    events.push((rank, "purchase"));
                    break;
                }
            }
        }
        events
    }
}

/// Judged queries: id → (text, grades by document).
type Judged = BTreeMap<String, (String, HashMap<String, i32>)>;

fn judged_queries(args: &SimulateArgs) -> Result<Judged> {
    let qrels = args.data.join("qrels").join(format!("{}.tsv", args.split));
    let rows = read_qrels_rows(&qrels).with_context(|| format!("reading {}", qrels.display()))?;
    let queries_file = args.queries.clone().unwrap_or_else(|| {
        let own = args.data.join(format!("queries-{}.jsonl", args.split));
        if own.exists() {
            own
        } else {
            args.data.join("queries.jsonl")
        }
    });
    let texts: HashMap<String, String> = read_queries(&queries_file, &mut DataReport::default())
        .with_context(|| format!("reading {}", queries_file.display()))?
        .into_iter()
        .map(|q| (q.id, q.text))
        .collect();
    let mut judged = Judged::new();
    for row in rows {
        let Some(text) = texts.get(&row.query_id) else {
            continue;
        };
        judged
            .entry(row.query_id)
            .or_insert_with(|| (text.clone(), HashMap::new()))
            .1
            .insert(row.doc_id, row.grade);
    }
    if judged.is_empty() {
        bail!(
            "{}: no judged query found in {}",
            qrels.display(),
            queries_file.display()
        );
    }
    Ok(judged)
}

fn post(args: &SimulateArgs, path: &str, body: &Value) -> Result<Value> {
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let mut request = ureq::post(&url)
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(key) = &args.api_key {
        request = request.header("x-api-key", key);
    }
    let mut response = request
        .send_json(body)
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let answer: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("POST {url}: reading the answer"))?;
    if status != 200 {
        bail!("POST {url}: {status} {answer}");
    }
    Ok(answer)
}

fn run_simulate(args: SimulateArgs) -> Result<()> {
    let judged = judged_queries(&args)?;
    let ids: Vec<&String> = judged.keys().collect();
    let model = ClickModel { eta: args.eta };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let users = args.users.unwrap_or((args.sessions / 2).max(1));
    let search = format!("/v1/collections/{}/search", args.collection);
    let feedback = format!("/v1/collections/{}/feedback", args.collection);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut clicks_by_rank = vec![0usize; args.k];
    for _ in 0..args.sessions {
        let (text, grades) = &judged[ids[rng.random_range(0..ids.len())]];
        let user = format!("shopper-{}", rng.random_range(0..users));
        let mut body = json!({"query": text, "k": args.k, "user": user});
        if let Some(space) = &args.space {
            body["space"] = json!(space);
        }
        let answer = post(&args, &search, &body)?;
        let Some(request_id) = answer["request_id"].as_str() else {
            bail!(
                "the search response has no request_id: collection {:?} does not log searches \
                 (list it in the server's [feedback] log, or pass --space auto)",
                args.collection
            );
        };
        let results: Vec<&str> = answer["results"]
            .as_array()
            .map(|r| r.iter().filter_map(|h| h["id"].as_str()).collect())
            .unwrap_or_default();
        let shown: Vec<i32> = results
            .iter()
            .map(|id| grades.get(*id).copied().unwrap_or(0))
            .collect();
        for (rank, event) in model.session(&shown, &mut rng) {
            post(
                &args,
                &feedback,
                &json!({"request_id": request_id, "doc_id": results[rank - 1], "event": event}),
            )?;
            *counts.entry(event).or_default() += 1;
            if event == "click" {
                clicks_by_rank[rank - 1] += 1;
            }
        }
    }
    println!(
        "{}",
        json!({
            "sessions": args.sessions,
            "queries": judged.len(),
            "users": users,
            "events": counts,
            "clicks_by_rank": clicks_by_rank,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shoppers_click_less_further_down_and_more_on_better_grades() {
        let model = ClickModel { eta: 1.0 };
        let mut rng = StdRng::seed_from_u64(1);
        let mut clicks = [0usize; 4];
        for _ in 0..20_000 {
            // Relevant at ranks 1 and 3, irrelevant at 2 and 4.
            for (rank, event) in model.session(&[2, 0, 2, 0], &mut rng) {
                if event == "click" {
                    clicks[rank - 1] += 1;
                }
            }
        }
        // Rank 3 is examined a third as often as rank 1 (a purchase at 1 also ends some).
        let ratio = clicks[2] as f64 / clicks[0] as f64;
        assert!((0.2..0.36).contains(&ratio), "{clicks:?}");
        assert!(clicks[1] * 10 < clicks[0], "{clicks:?}");
        assert!(clicks[3] < clicks[1], "{clicks:?}");
    }
}
