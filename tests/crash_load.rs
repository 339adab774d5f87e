//! Crash and load: mixed traffic (searches, `auto` A/B searches with feedback, upserts, deletes,
//! evaluations) against `attune serve` on loopback while `attune index build` merges the corpus
//! and promotes a new tuned model (the pipeline's promotion: the collection re-embedded from its
//! own documents), with the server and the builds killed (SIGKILL) at random moments. After
//! every trial the store opens cleanly, and every acknowledged upsert, delete and feedback event
//! is there; the counts are printed.
//!
//! `ATTUNE_CRASH_TRIALS` (default 10) and `ATTUNE_CRASH_SEED` (default: the clock) rerun it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use serde_json::{json, Value};

const TRIAL_SECONDS: f64 = 9.0;
const CORPUS_DOCUMENTS: usize = 150;

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn seconds(&mut self, low: f64, high: f64) -> Duration {
        Duration::from_secs_f64(low + (high - low) * (self.below(1_000_000) as f64 / 1e6))
    }
}

/// What clients were told, as the ledger the store is checked against.
#[derive(Default)]
struct Ledger {
    /// Ids whose upsert was acknowledged.
    upserted: BTreeSet<String>,
    /// Ids whose delete was acknowledged.
    deleted: BTreeSet<String>,
    /// Ids whose delete got no answer (either outcome is right).
    uncertain: BTreeSet<String>,
    /// Feedback events acknowledged as recorded.
    feedback: usize,
    /// Feedback events sent (acknowledged or not).
    feedback_sent: usize,
    /// Requests answered, of every kind.
    answered: usize,
}

struct Fixture {
    dir: tempfile::TempDir,
    key: &'static str,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `attune index build`: a corpus merge, or a promotion of `tuned` (no corpus).
    fn build_command(&self, corpus: bool, tuned: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_attune"));
        command
            .args(["index", "build", "--device", "cpu", "--collection", "shop"])
            .arg("--store")
            .arg(self.store())
            .arg("--space")
            .arg(format!("base={}", self.path("model-a").display()))
            .arg("--space")
            .arg(format!("tuned={}", self.path(tuned).display()))
            .args(["--batch-size", "32"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if corpus {
            command.arg("--corpus").arg(self.path("corpus.jsonl"));
        }
        command
    }

    fn start_server(&self, port: u16) -> Child {
        Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--store"])
            .arg(self.store())
            .arg("--config")
            .arg(self.path("attune.toml"))
            .env("ATTUNE_API_KEY", self.key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends a request; `None` when there was no answer (the server is down or was killed).
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    key: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let auth = format!("Bearer {key}");
    let result = match (method, body) {
        ("GET", _) => agent.get(url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(url).header("authorization", &auth).call(),
        ("PUT", Some(body)) => agent
            .put(url)
            .header("authorization", &auth)
            .send_json(body),
        (_, Some(body)) => agent
            .post(url)
            .header("authorization", &auth)
            .send_json(body),
        _ => unreachable!("a body for PUT and POST"),
    };
    let mut response = result.ok()?;
    let status = response.status().as_u16();
    Some((
        status,
        response.body_mut().read_json().unwrap_or(Value::Null),
    ))
}

fn wait_ready(base: &str) -> bool {
    let agent = agent();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some((200, body)) = send(&agent, "GET", &format!("{base}/readyz"), "", None) {
            if body["collections"]["shop"].is_u64() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes: unique ids upserted two at a time; now and then one acknowledged id deleted.
fn writer(
    base: String,
    key: &'static str,
    trial: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let agent = agent();
    let mut n = 0;
    let mut rng = Rng(0x9e37_79b9 ^ trial as u64);
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // A steady stream rather than a flood: the store stays small enough to check whole.
        std::thread::sleep(Duration::from_millis(15));
        let ids = [format!("t{trial}-w{n}a"), format!("t{trial}-w{n}b")];
        let documents: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "title": format!("written {id}"), "text": "a red boot"}))
            .collect();
        let url = format!("{base}/v1/collections/shop/documents");
        match send(
            &agent,
            "PUT",
            &url,
            key,
            Some(&json!({"documents": documents})),
        ) {
            Some((200, _)) => {
                let mut ledger = ledger.lock().unwrap();
                ledger.upserted.extend(ids.iter().cloned());
                ledger.answered += 1;
            }
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(30)),
        }
        if n % 3 == 0 {
            let victim = {
                let ledger = ledger.lock().unwrap();
                let live: Vec<&String> = ledger
                    .upserted
                    .iter()
                    .filter(|id| !ledger.deleted.contains(*id) && !ledger.uncertain.contains(*id))
                    .collect();
                if live.is_empty() {
                    continue;
                }
                live[rng.below(live.len() as u64) as usize].clone()
            };
            let url = format!("{base}/v1/collections/shop/documents/{victim}");
            let answer = send(&agent, "DELETE", &url, key, None);
            let mut ledger = ledger.lock().unwrap();
            match answer {
                Some((200, _)) => {
                    ledger.deleted.insert(victim);
                    ledger.answered += 1;
                }
                // Not found can only follow an unanswered delete of the same id.
                Some(_) | None => {
                    ledger.uncertain.insert(victim);
                }
            }
        }
    }
}

/// Reads: plain and `auto` searches, feedback on the auto ones, a small evaluation now and then.
fn reader(
    base: String,
    key: &'static str,
    client: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let agent = agent();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
        let search = format!("{base}/v1/collections/shop/search");
        let request = json!({"query": format!("shoe number {n}"), "k": 5, "space": "auto",
                             "user": format!("c{client}-u{}", n % 50)});
        let Some((200, body)) = send(&agent, "POST", &search, key, Some(&request)) else {
            std::thread::sleep(Duration::from_millis(30));
            continue;
        };
        ledger.lock().unwrap().answered += 1;
        if let (Some(request_id), Some(doc)) = (
            body["request_id"].as_str(),
            body["results"][0]["id"].as_str(),
        ) {
            let event = ["click", "add_to_cart", "purchase"][n % 3];
            let feedback = json!({"request_id": request_id, "doc_id": doc, "event": event});
            let url = format!("{base}/v1/collections/shop/feedback");
            ledger.lock().unwrap().feedback_sent += 1;
            if let Some((200, body)) = send(&agent, "POST", &url, key, Some(&feedback)) {
                let mut ledger = ledger.lock().unwrap();
                ledger.answered += 1;
                if body["recorded"] == true {
                    ledger.feedback += 1;
                }
            }
        }
        if n % 10 == 0 {
            let evaluate = json!({"queries": [{"id": "q", "text": "shoe number 7 edition 1"}],
                                  "qrels": [{"query_id": "q", "doc_id": "p7", "score": 1}]});
            let url = format!("{base}/v1/collections/shop/evaluate");
            if let Some((200, _)) = send(&agent, "POST", &url, key, Some(&evaluate)) {
                ledger.lock().unwrap().answered += 1;
            }
        } else if n % 4 == 0 {
            let plain = json!({"query": "a red boot", "k": 3});
            if let Some((200, _)) = send(&agent, "POST", &search, key, Some(&plain)) {
                ledger.lock().unwrap().answered += 1;
            }
        }
    }
}

/// Builds one after another (corpus merges and promotions), each killed at a random moment
/// half of the time.
fn builder(
    fixture: Arc<Fixture>,
    seed: u64,
    stop: Arc<AtomicBool>,
    builds: Arc<Mutex<(usize, usize)>>,
) {
    let mut rng = Rng(seed);
    let mut promote_to_b = true;
    while !stop.load(Ordering::Relaxed) {
        let corpus = rng.below(2) == 0;
        let tuned = if corpus {
            if promote_to_b {
                "model-a"
            } else {
                "model-b"
            }
        } else {
            promote_to_b = !promote_to_b;
            if promote_to_b {
                "model-a"
            } else {
                "model-b"
            }
        };
        let mut child = fixture.build_command(corpus, tuned).spawn().unwrap();
        let killed = rng.below(2) == 0;
        let deadline = Instant::now() + rng.seconds(0.02, 0.6);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut builds = builds.lock().unwrap();
                builds.0 += usize::from(status.success());
                break;
            }
            if stop.load(Ordering::Relaxed) || (killed && Instant::now() >= deadline) {
                kill(&mut child);
                builds.lock().unwrap().1 += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Every acknowledged write is there: (acknowledged live ids found, acknowledged deletes
/// absent, feedback events found).
fn verify(base: &str, key: &str, ledger: &Ledger) -> (usize, usize, usize) {
    let agent = agent();
    let mut found = 0;
    for id in ledger.upserted.difference(&ledger.deleted) {
        if ledger.uncertain.contains(id) {
            continue;
        }
        let url = format!("{base}/v1/collections/shop/documents/{id}");
        let (status, body) = send(&agent, "GET", &url, key, None).expect("the server answers");
        assert_eq!(status, 200, "acknowledged upsert {id} is missing: {body}");
        // The lexical space has it too (its title holds the id's tokens).
        let hits = lexical_ids(&agent, base, key, id);
        assert_eq!(hits.first(), Some(id), "lexical space lacks {id}: {hits:?}");
        found += 1;
    }
    let mut absent = 0;
    for id in &ledger.deleted {
        let url = format!("{base}/v1/collections/shop/documents/{id}");
        let (status, _) = send(&agent, "GET", &url, key, None).expect("the server answers");
        assert_eq!(status, 404, "acknowledged delete of {id} came back");
        let hits = lexical_ids(&agent, base, key, id);
        assert!(!hits.contains(id), "lexical space still finds deleted {id}");
        absent += 1;
    }
    let url = format!("{base}/v1/collections/shop/ab-report");
    let (status, report) = send(&agent, "GET", &url, key, None).expect("the server answers");
    assert_eq!(status, 200, "{report}");
    let events: usize = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            ["clicks", "add_to_cart", "purchases"]
                .iter()
                .map(|k| v[k].as_u64().unwrap() as usize)
                .sum::<usize>()
        })
        .sum();
    assert!(
        events >= ledger.feedback && events <= ledger.feedback_sent,
        "feedback: {} acknowledged, {} sent, {events} in the report",
        ledger.feedback,
        ledger.feedback_sent
    );
    (found, absent, events)
}

/// Ids of the lexical space's top 5 for `query`.
fn lexical_ids(agent: &ureq::Agent, base: &str, key: &str, query: &str) -> Vec<String> {
    let url = format!("{base}/v1/collections/shop/search");
    let body = json!({"query": query, "space": "lexical", "k": 5});
    let (status, answer) = send(agent, "POST", &url, key, Some(&body)).expect("the server answers");
    assert_eq!(status, 200, "{answer}");
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn corpus(path: &Path) {
    let lines: Vec<String> = (0..CORPUS_DOCUMENTS)
        .map(|i| {
            json!({"_id": format!("p{i}"), "title": format!("item{i}"),
                   "text": format!("shoe number {i} edition 1")})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn acknowledged_writes_survive_kills_of_the_server_and_of_builds_under_load() {
    let trials: usize = std::env::var("ATTUNE_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("ATTUNE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash_load: {trials} trials, ATTUNE_CRASH_SEED={seed}");
    let fixture = Arc::new(Fixture {
        dir: tempfile::tempdir().unwrap(),
        key: "sesame",
    });
    write_random_bert(&fixture.path("model-a"), &RandomBertSpec::default()).unwrap();
    let other = RandomBertSpec {
        seed: 7,
        ..RandomBertSpec::default()
    };
    write_random_bert(&fixture.path("model-b"), &other).unwrap();
    corpus(&fixture.path("corpus.jsonl"));
    std::fs::write(
        fixture.path("attune.toml"),
        "device = \"cpu\"\nreload_interval_ms = 100\n",
    )
    .unwrap();
    assert!(fixture
        .build_command(true, "model-a")
        .status()
        .unwrap()
        .success());

    let mut rng = Rng(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let builds = Arc::new(Mutex::new((0usize, 0usize)));
    let mut server_kills = 0;
    for trial in 0..trials {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut server = fixture.start_server(port);
        assert!(wait_ready(&base), "trial {trial}: the store did not open");
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![
            std::thread::spawn({
                let (base, stop, ledger) = (base.clone(), stop.clone(), ledger.clone());
                move || writer(base, "sesame", trial, stop, ledger)
            }),
            std::thread::spawn({
                let (fixture, stop, builds) = (fixture.clone(), stop.clone(), builds.clone());
                let seed = rng.next() | 1;
                move || builder(fixture, seed, stop, builds)
            }),
        ];
        for client in 0..2 {
            threads.push(std::thread::spawn({
                let (base, stop, ledger) = (base.clone(), stop.clone(), ledger.clone());
                move || reader(base, "sesame", client, stop, ledger)
            }));
        }
        // Kill the server once at a random moment, and restart it on the same port.
        let started = Instant::now();
        std::thread::sleep(rng.seconds(1.0, TRIAL_SECONDS - 3.0));
        kill(&mut server);
        server_kills += 1;
        server = fixture.start_server(port);
        assert!(
            wait_ready(&base),
            "trial {trial}: the store did not reopen after SIGKILL"
        );
        let left = Duration::from_secs_f64(TRIAL_SECONDS).saturating_sub(started.elapsed());
        std::thread::sleep(left);
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        // A last SIGKILL with the traffic just stopped; then a clean start and the check.
        kill(&mut server);
        let mut server = fixture.start_server(port);
        assert!(
            wait_ready(&base),
            "trial {trial}: the store did not open after the trial"
        );
        // Writes acknowledged on an older generation reach the served one at its switch.
        std::thread::sleep(Duration::from_millis(300));
        let ledger = ledger.lock().unwrap();
        let (found, absent, events) = verify(&base, "sesame", &ledger);
        let (finished, killed) = *builds.lock().unwrap();
        eprintln!(
            "trial {trial}: upserts acknowledged {} / found {found} (live), deletes acknowledged \
             {} / absent {absent}, feedback acknowledged {} / found {events}, requests answered \
             {}; builds finished {} / killed {}",
            ledger.upserted.len(),
            ledger.deleted.len(),
            ledger.feedback,
            ledger.answered,
            finished,
            killed,
        );
        kill(&mut server);
    }
    let ledger = ledger.lock().unwrap();
    assert!(
        ledger.upserted.len() > trials * 5,
        "too little traffic to mean anything"
    );
    assert!(
        ledger.feedback > trials,
        "too little feedback to mean anything"
    );
    assert_eq!(server_kills, trials);
    let (finished, killed) = *builds.lock().unwrap();
    assert!(
        finished > 0 && killed > 0,
        "{finished} builds finished, {killed} killed"
    );
}
