//! `attune demo-data`: a small shoe and apparel store, generated so that the demo needs nothing
//! but the repository.
//!
//! Products have a title, a description written in the store's own wording (fit notes, width
//! lasts, return terms, materials) and metadata to filter on (category, brand, gender, colour,
//! material, sizes, price, returns). Shopper queries ask for a category plus one to three
//! properties in shoppers' wording ("boots for wide feet I can send back"). A product is
//! relevant (2) when it has every property asked for, and partly relevant (1) when it misses
//! exactly one of two or more. Train and test queries ask for different combinations; the train
//! split lists only fully relevant products, at most [`TRAIN_POSITIVES_PER_QUERY`] per query.
//! `qrels/shoppers.tsv` holds every grade of the train queries: what simulated shoppers
//! (`attune feedback simulate`) know when they decide to click, never training data.
//!
//! Each product also has a model number (`UR4821`: brand letters and digits) and an 8-digit
//! SKU in its metadata, unique in the store, and not in its title or text (the embedded text
//! is the same as before they existed). Identifier queries (a model number or SKU as a shopper
//! types it) are in `queries-identifiers.jsonl`, judged in `qrels/identifiers.tsv`, apart from
//! the shopper queries, so the figures of those stay comparable.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Identifier queries written to `queries-identifiers.jsonl` (one product's model number or
/// SKU each, judged in `qrels/identifiers.tsv`).
pub const IDENTIFIER_QUERIES: usize = 100;

/// Fully relevant products written to the train split per query (the rest stay unlisted, not
/// negative).
pub const TRAIN_POSITIVES_PER_QUERY: usize = 3;

/// Arguments of `attune demo-data`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory to write (BEIR layout: corpus.jsonl, queries.jsonl, qrels/train.tsv,
    /// qrels/test.tsv). Existing files are replaced.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Products in the catalogue.
    #[arg(long, default_value_t = DemoSettings::default().products)]
    pub products: usize,
    /// Shopper queries (train and test together; fewer when the catalogue answers fewer).
    #[arg(long, default_value_t = DemoSettings::default().queries)]
    pub queries: usize,
    /// Share of query combinations held out for the test split.
    #[arg(long, default_value_t = DemoSettings::default().test_share)]
    pub test_share: f64,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = DemoSettings::default().seed)]
    pub seed: u64,
}

/// What the generator makes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoSettings {
    /// Products in the catalogue. Default 400.
    pub products: usize,
    /// Shopper queries, train and test together (at most). Default 600.
    pub queries: usize,
    /// Share of query combinations in the test split, in (0, 1). Default 0.3.
    pub test_share: f64,
    /// Seed. Default 7.
    pub seed: u64,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            products: 400,
            queries: 600,
            test_share: 0.3,
            seed: 7,
        }
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DemoSummary {
    /// Products in corpus.jsonl.
    pub products: usize,
    /// Queries in the train split.
    pub train_queries: usize,
    /// Queries in the test split.
    pub test_queries: usize,
    /// Rows of qrels/train.tsv.
    pub train_pairs: usize,
    /// Rows of qrels/test.tsv.
    pub test_judgments: usize,
    /// Queries in queries-identifiers.jsonl (one judged product each).
    pub identifier_queries: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Footwear,
    Apparel,
}

struct Category {
    key: &'static str,
    kind: Kind,
    /// Singular noun in titles.
    title: &'static str,
    /// Plural nouns shoppers use.
    shopper: &'static [&'static str],
    materials: &'static [&'static str],
    /// Features the category can have.
    features: &'static [&'static str],
    price: (u32, u32),
}

const CATEGORIES: &[Category] = &[
    Category {
        key: "running-shoes",
        kind: Kind::Footwear,
        title: "Road Running Shoe",
        shopper: &["running shoes", "runners", "jogging shoes"],
        materials: &["engineered mesh", "knit", "recycled polyester"],
        features: &["lightweight", "cushioned", "reflective"],
        price: (70, 180),
    },
    Category {
        key: "trail-shoes",
        kind: Kind::Footwear,
        title: "Trail Shoe",
        shopper: &["trail runners", "trail running shoes", "off-road shoes"],
        materials: &["engineered mesh", "ripstop nylon", "recycled polyester"],
        features: &["waterproof", "lightweight", "grippy"],
        price: (90, 200),
    },
    Category {
        key: "sneakers",
        kind: Kind::Footwear,
        title: "Low-Top Sneaker",
        shopper: &["sneakers", "trainers", "casual shoes"],
        materials: &["full-grain leather", "canvas", "suede"],
        features: &["lightweight", "cushioned"],
        price: (50, 150),
    },
    Category {
        key: "boots",
        kind: Kind::Footwear,
        title: "Ankle Boot",
        shopper: &["boots", "ankle boots", "winter boots"],
        materials: &["full-grain leather", "suede", "nubuck"],
        features: &["waterproof", "insulated", "grippy"],
        price: (110, 260),
    },
    Category {
        key: "sandals",
        kind: Kind::Footwear,
        title: "Strap Sandal",
        shopper: &["sandals", "summer sandals", "slides"],
        materials: &["full-grain leather", "cork", "EVA foam"],
        features: &["lightweight", "cushioned"],
        price: (30, 120),
    },
    Category {
        key: "rain-jackets",
        kind: Kind::Apparel,
        title: "Shell Jacket",
        shopper: &["rain jackets", "rain coats", "waterproof jackets"],
        materials: &["recycled nylon", "three-layer laminate", "polyester"],
        features: &["waterproof", "packable", "reflective"],
        price: (80, 280),
    },
    Category {
        key: "fleece",
        kind: Kind::Apparel,
        title: "Grid Fleece Pullover",
        shopper: &["fleeces", "fleece jackets", "mid layers"],
        materials: &["recycled polyester fleece", "merino wool", "polyester"],
        features: &["insulated", "packable"],
        price: (45, 160),
    },
    Category {
        key: "t-shirts",
        kind: Kind::Apparel,
        title: "Crew Tee",
        shopper: &["t-shirts", "tees", "shirts"],
        materials: &["organic cotton", "merino wool", "recycled polyester"],
        features: &["breathable", "quick-drying"],
        price: (15, 70),
    },
    Category {
        key: "hoodies",
        kind: Kind::Apparel,
        title: "Zip Hoodie",
        shopper: &["hoodies", "hooded sweatshirts", "sweatshirts"],
        materials: &[
            "organic cotton",
            "brushed cotton fleece",
            "recycled polyester",
        ],
        features: &["insulated", "breathable"],
        price: (40, 110),
    },
    Category {
        key: "leggings",
        kind: Kind::Apparel,
        title: "High-Rise Tight",
        shopper: &["leggings", "running tights", "yoga pants"],
        materials: &["nylon-elastane", "recycled polyester", "merino wool"],
        features: &["quick-drying", "breathable", "reflective"],
        price: (35, 100),
    },
];

const BRANDS: &[&str] = &[
    "Northpeak",
    "Strideworks",
    "Kestrel",
    "Urbanite",
    "Tidewater",
    "Alder & Ash",
];
const LINES: &[&str] = &[
    "Aero", "Summit", "Drift", "Ridge", "Metro", "Coast", "Ember", "Vale", "Pulse", "Haven",
];
const COLOURS: &[&str] = &["black", "white", "navy", "olive", "grey", "red", "tan"];
const GENDERS: &[(&str, &str)] = &[("women", "Women's"), ("men", "Men's"), ("unisex", "Unisex")];
const SHOE_SIZES: std::ops::RangeInclusive<u32> = 36..=47;
const APPAREL_SIZES: &[&str] = &["XS", "S", "M", "L", "XL", "XXL"];

/// Return terms: metadata value, the store's wording, shoppers' wordings.
const RETURNS: &[(&str, &str, &[&str])] = &[
    (
        "free-60",
        "Returns: free returns and exchanges within 60 days of delivery.",
        &[
            "with free returns",
            "that I can send back for free",
            "with no-hassle returns",
        ],
    ),
    (
        "paid-30",
        "Returns: 30-day returns; the return label is deducted from your refund.",
        &[
            "with a 30 day return window",
            "that I can return within a month",
        ],
    ),
    (
        "final-sale",
        "Returns: final sale, not eligible for return or exchange.",
        &[
            "on final sale",
            "non-returnable clearance",
            "final sale deals",
        ],
    ),
];

/// Fit: (metadata value, store wording, shopper wordings) per kind.
const SHOE_FIT: &[(&str, &str, &[&str])] = &[
    (
        "runs-small",
        "Sizing: this model runs small; we suggest ordering half a size up.",
        &["that run small", "where I should size up", "that fit snug"],
    ),
    (
        "true-to-size",
        "Sizing: true to size; order your usual size.",
        &["true to size", "that fit as expected"],
    ),
    (
        "runs-large",
        "Sizing: this model runs large; consider half a size down.",
        &[
            "that run big",
            "where I should size down",
            "with a roomy fit",
        ],
    ),
];
const APPAREL_FIT: &[(&str, &str, &[&str])] = &[
    (
        "slim",
        "Fit: slim, cut close to the body.",
        &["slim fit", "fitted", "close fitting"],
    ),
    ("regular", "Fit: regular.", &["regular fit", "standard fit"]),
    (
        "relaxed",
        "Fit: relaxed, with room to layer underneath.",
        &["relaxed fit", "loose", "oversized"],
    ),
];
const WIDTHS: &[(&str, &str, &[&str])] = &[
    (
        "narrow",
        "Last: narrow (B) width.",
        &["for narrow feet", "in narrow width"],
    ),
    (
        "regular",
        "Last: standard (D) width.",
        &["in regular width"],
    ),
    (
        "wide",
        "Last: wide (2E) width with a roomy toe box.",
        &["for wide feet", "in wide width", "with a wide toe box"],
    ),
];
/// Shopper wordings of features.
const FEATURE_WORDS: &[(&str, &[&str])] = &[
    (
        "waterproof",
        &["waterproof", "that keep rain out", "for wet weather"],
    ),
    ("lightweight", &["lightweight", "light"]),
    (
        "cushioned",
        &["cushioned", "with soft cushioning", "comfortable"],
    ),
    (
        "reflective",
        &["reflective", "visible at night", "for running in the dark"],
    ),
    ("grippy", &["with good grip", "grippy", "non-slip"]),
    ("insulated", &["insulated", "warm", "for cold weather"]),
    ("packable", &["packable", "that pack small", "for travel"]),
    ("breathable", &["breathable", "that don't get sweaty"]),
    (
        "quick-drying",
        &["quick-drying", "fast drying", "sweat-wicking"],
    ),
];
/// Store wordings of features.
const FEATURE_DESCRIPTIONS: &[(&str, &str)] = &[
    ("waterproof", "Seam-sealed membrane rated to 10,000 mm."),
    ("lightweight", "Weighs under 250 g per piece."),
    (
        "cushioned",
        "Dual-density foam midsole for impact absorption.",
    ),
    ("reflective", "360° retroreflective trims."),
    ("grippy", "Sticky rubber outsole with 5 mm lugs."),
    ("insulated", "Thermal lining rated to -15 °C."),
    ("packable", "Stows into its own pocket."),
    ("breathable", "Open-weave panels vent heat."),
    ("quick-drying", "Hydrophobic yarns dry in under an hour."),
];
/// Materials that make a product not vegan.
const ANIMAL_MATERIALS: &[&str] = &["full-grain leather", "suede", "nubuck", "merino wool"];

struct Product {
    id: String,
    category: &'static Category,
    brand: &'static str,
    line: &'static str,
    gender: (&'static str, &'static str),
    colour: &'static str,
    material: &'static str,
    fit: usize,
    width: Option<usize>,
    returns: usize,
    features: Vec<&'static str>,
    sizes: Vec<Value>,
    price: u32,
    /// Model number, unique in the store (`UR4821`).
    model: String,
    /// Stock-keeping unit, 8 digits, unique in the store.
    sku: String,
}

impl Product {
    fn vegan(&self) -> bool {
        !ANIMAL_MATERIALS.contains(&self.material)
    }

    fn fit_table(&self) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
        match self.category.kind {
            Kind::Footwear => SHOE_FIT,
            Kind::Apparel => APPAREL_FIT,
        }
    }

    fn title(&self) -> String {
        format!(
            "{} {} {} {} – {}",
            self.brand, self.line, self.gender.1, self.category.title, self.colour
        )
    }

    fn text(&self) -> String {
        let mut parts = vec![format!(
            "{} {} in {}, made of {}.",
            self.gender.1,
            self.category.title.to_lowercase(),
            self.colour,
            self.material
        )];
        for feature in &self.features {
            let description = FEATURE_DESCRIPTIONS
                .iter()
                .find(|(name, _)| name == feature)
                .map(|(_, d)| *d)
                .expect("every feature has a description");
            parts.push(description.to_string());
        }
        if self.vegan() {
            parts.push("Contains no animal-derived materials.".into());
        }
        parts.push(self.fit_table()[self.fit].1.to_string());
        if let Some(width) = self.width {
            parts.push(WIDTHS[width].1.to_string());
        }
        let sizes = match self.category.kind {
            Kind::Footwear => format!(
                "Available in EU {}–{}.",
                self.sizes.first().expect("sizes"),
                self.sizes.last().expect("sizes")
            ),
            Kind::Apparel => format!(
                "Available in sizes {}.",
                self.sizes
                    .iter()
                    .map(|s| s.as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        parts.push(sizes);
        parts.push(RETURNS[self.returns].1.to_string());
        parts.join(" ")
    }

    fn metadata(&self) -> Value {
        json!({
            "category": self.category.key,
            "brand": self.brand,
            "gender": self.gender.0,
            "colour": self.colour,
            "material": self.material,
            "fit": self.fit_table()[self.fit].0,
            "width": self.width.map(|w| WIDTHS[w].0),
            "features": self.features,
            "vegan": self.vegan(),
            "sizes": self.sizes,
            "price": self.price,
            "returns": RETURNS[self.returns].0,
            "model": self.model,
            "sku": self.sku,
        })
    }
}

/// One property a query asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Want {
    Gender(&'static str),
    Fit(usize),
    Width(usize),
    Returns(usize),
    Feature(&'static str),
    Vegan,
    Material(&'static str),
    Colour(&'static str),
}

impl Want {
    fn holds(&self, product: &Product) -> bool {
        match self {
            Want::Gender(g) => product.gender.0 == *g || product.gender.0 == "unisex",
            Want::Fit(f) => product.fit == *f,
            Want::Width(w) => product.width == Some(*w),
            Want::Returns(r) => product.returns == *r,
            Want::Feature(f) => product.features.contains(f),
            Want::Vegan => product.vegan(),
            Want::Material(m) => product.material == *m,
            Want::Colour(c) => product.colour == *c,
        }
    }
}

fn random_product(rng: &mut StdRng, index: usize) -> Product {
    let category = CATEGORIES.choose(rng).expect("categories");
    let mut features: Vec<&'static str> = category
        .features
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.4))
        .collect();
    features.sort_unstable();
    let sizes: Vec<Value> = match category.kind {
        Kind::Footwear => {
            let low = rng.random_range(*SHOE_SIZES.start()..=40);
            let high = rng.random_range(43..=*SHOE_SIZES.end());
            (low..=high).map(|s| json!(s)).collect()
        }
        Kind::Apparel => {
            let low = rng.random_range(0..2);
            let high = rng.random_range(3..APPAREL_SIZES.len());
            APPAREL_SIZES[low..=high].iter().map(|s| json!(s)).collect()
        }
    };
    let step = 5;
    let price = rng.random_range(category.price.0 / step..=category.price.1 / step) * step - 1;
    Product {
        id: format!("p{:04}", index + 1),
        category,
        brand: BRANDS.choose(rng).expect("brands"),
        line: LINES.choose(rng).expect("lines"),
        gender: *GENDERS.choose(rng).expect("genders"),
        colour: COLOURS.choose(rng).expect("colours"),
        material: category.materials.choose(rng).expect("materials"),
        fit: rng.random_range(0..3),
        width: (category.kind == Kind::Footwear).then(|| rng.random_range(0..WIDTHS.len())),
        returns: rng.random_range(0..RETURNS.len()),
        features,
        sizes,
        price,
        model: String::new(),
        sku: String::new(),
    }
}

/// Every property that can be asked of a category.
fn askable(category: &Category) -> Vec<Want> {
    let mut wants = vec![Want::Gender("women"), Want::Gender("men"), Want::Vegan];
    wants.extend((0..3).map(Want::Fit));
    wants.extend((0..RETURNS.len()).map(Want::Returns));
    wants.extend(category.features.iter().map(|f| Want::Feature(f)));
    wants.extend(category.materials.iter().map(|m| Want::Material(m)));
    wants.extend(COLOURS.iter().map(|c| Want::Colour(c)));
    if category.kind == Kind::Footwear {
        wants.extend((0..WIDTHS.len()).map(Want::Width));
    }
    wants
}

/// A plausible combination: at most one of each kind of property.
fn compatible(wants: &[Want]) -> bool {
    let kind = |w: &Want| std::mem::discriminant(w);
    let kinds: BTreeSet<_> = wants.iter().map(|w| format!("{:?}", kind(w))).collect();
    kinds.len() == wants.len()
        && !(wants.contains(&Want::Vegan)
            && wants
                .iter()
                .any(|w| matches!(w, Want::Material(m) if ANIMAL_MATERIALS.contains(m))))
}

fn pick<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
    words.choose(rng).expect("wordings")
}

/// Shopper wording of a query for `category` with `wants`.
fn query_text(rng: &mut StdRng, category: &Category, wants: &[Want], fit_kind: Kind) -> String {
    let mut before: Vec<String> = Vec::new();
    let mut after: Vec<String> = Vec::new();
    let mut noun = pick(rng, category.shopper).to_string();
    for want in wants {
        match want {
            Want::Gender(g) => {
                let words: &[&str] = if *g == "women" {
                    &["women's", "womens", "ladies"]
                } else {
                    &["men's", "mens"]
                };
                before.insert(0, pick(rng, words).to_string());
            }
            Want::Colour(c) => before.push(c.to_string()),
            Want::Vegan => before.push(pick(rng, &["vegan", "leather-free", "animal-free"]).into()),
            Want::Material(m) => {
                let word = m
                    .trim_start_matches("full-grain ")
                    .trim_start_matches("engineered ");
                after.push(format!("made of {word}"));
            }
            Want::Feature(f) => {
                let words = FEATURE_WORDS
                    .iter()
                    .find(|(name, _)| name == f)
                    .map(|(_, w)| *w)
                    .expect("every feature has wordings");
                let word = pick(rng, words);
                if word.contains(' ') && !word.starts_with("quick") {
                    after.push(word.to_string());
                } else {
                    before.push(word.to_string());
                }
            }
            Want::Fit(f) => {
                let table = match fit_kind {
                    Kind::Footwear => SHOE_FIT,
                    Kind::Apparel => APPAREL_FIT,
                };
                let word = pick(rng, table[*f].2);
                if fit_kind == Kind::Apparel && !word.contains(' ') {
                    before.push(word.to_string());
                } else {
                    after.push(word.to_string());
                }
            }
            Want::Width(w) => after.push(pick(rng, WIDTHS[*w].2).to_string()),
            Want::Returns(r) => after.push(pick(rng, RETURNS[*r].2).to_string()),
        }
    }
    if rng.random_bool(0.15) {
        noun = format!(
            "{noun} {}",
            pick(rng, &["please", "2026", "sale", "online"])
        );
    }
    let mut words = before;
    words.push(noun);
    words.extend(after);
    words.join(" ")
}

/// Generates the store and writes it under `out`.
pub fn write_demo(out: &Path, settings: &DemoSettings) -> Result<DemoSummary> {
    anyhow::ensure!(
        settings.products >= 20,
        "--products: at least 20, got {}",
        settings.products
    );
    anyhow::ensure!(
        settings.test_share > 0.0 && settings.test_share < 1.0,
        "--test-share: must be in (0, 1), got {}",
        settings.test_share
    );
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut products: Vec<Product> = (0..settings.products)
        .map(|i| random_product(&mut rng, i))
        .collect();
    // Identifiers from a generator of their own: the products and queries drawn from `rng`
    // are those of stores written before identifiers existed.
    let mut id_rng = StdRng::seed_from_u64(settings.seed ^ 0x1D5);
    assign_identifiers(&mut id_rng, &mut products);

    // Every combination of one or two properties per category, plus sampled triples, kept when
    // one to twelve products answer it fully.
    let mut combinations: Vec<(usize, Vec<Want>)> = Vec::new();
    for (c, category) in CATEGORIES.iter().enumerate() {
        let wants = askable(category);
        for (i, a) in wants.iter().enumerate() {
            combinations.push((c, vec![a.clone()]));
            for b in &wants[i + 1..] {
                combinations.push((c, vec![a.clone(), b.clone()]));
            }
        }
        for _ in 0..wants.len() * 4 {
            let mut triple: Vec<Want> = wants.choose_multiple(&mut rng, 3).cloned().collect();
            triple.sort();
            combinations.push((c, triple));
        }
    }
    combinations.retain(|(_, wants)| compatible(wants));
    combinations.sort();
    combinations.dedup();
    combinations.shuffle(&mut rng);

    let mut queries: Vec<(String, String)> = Vec::new();
    let mut test_ids: BTreeSet<String> = BTreeSet::new();
    let mut judgments: BTreeMap<String, Vec<(String, u8)>> = BTreeMap::new();
    let mut seen_texts: BTreeSet<String> = BTreeSet::new();
    for (c, wants) in &combinations {
        if queries.len() == settings.queries {
            break;
        }
        let category = &CATEGORIES[*c];
        let in_category: Vec<&Product> = products
            .iter()
            .filter(|p| p.category.key == category.key)
            .collect();
        let mut graded: Vec<(String, u8)> = Vec::new();
        for product in &in_category {
            let missed = wants.iter().filter(|w| !w.holds(product)).count();
            if missed == 0 {
                graded.push((product.id.clone(), 2));
            } else if missed == 1 && wants.len() >= 2 {
                graded.push((product.id.clone(), 1));
            }
        }
        let full = graded.iter().filter(|(_, g)| *g == 2).count();
        if !(1..=12).contains(&full) {
            continue;
        }
        let text = query_text(&mut rng, category, wants, category.kind);
        if !seen_texts.insert(text.clone()) {
            continue;
        }
        let id = format!("q{:04}", queries.len() + 1);
        if rng.random_bool(settings.test_share) {
            test_ids.insert(id.clone());
        }
        queries.push((id.clone(), text));
        judgments.insert(id, graded);
    }

    fs::create_dir_all(out.join("qrels")).with_context(|| format!("creating {}", out.display()))?;
    let mut summary = DemoSummary {
        products: products.len(),
        ..DemoSummary::default()
    };
    let mut corpus = String::new();
    for product in &products {
        let line = json!({
            "_id": product.id,
            "title": product.title(),
            "text": product.text(),
            "metadata": product.metadata(),
        });
        corpus.push_str(&line.to_string());
        corpus.push('\n');
    }
    write_file(&out.join("corpus.jsonl"), &corpus)?;
    let mut query_lines = String::new();
    for (id, text) in &queries {
        query_lines.push_str(&json!({"_id": id, "text": text}).to_string());
        query_lines.push('\n');
    }
    write_file(&out.join("queries.jsonl"), &query_lines)?;
    let header = "query-id\tcorpus-id\tscore\n";
    let (mut train, mut test) = (header.to_string(), header.to_string());
    let mut shoppers = header.to_string();
    for (id, graded) in &judgments {
        if test_ids.contains(id) {
            summary.test_queries += 1;
            for (doc, grade) in graded {
                test.push_str(&format!("{id}\t{doc}\t{grade}\n"));
                summary.test_judgments += 1;
            }
        } else {
            summary.train_queries += 1;
            for (doc, grade) in graded {
                shoppers.push_str(&format!("{id}\t{doc}\t{grade}\n"));
            }
            let mut full: Vec<&String> = graded
                .iter()
                .filter(|(_, g)| *g == 2)
                .map(|(d, _)| d)
                .collect();
            full.shuffle(&mut rng);
            for doc in full.into_iter().take(TRAIN_POSITIVES_PER_QUERY) {
                train.push_str(&format!("{id}\t{doc}\t1\n"));
                summary.train_pairs += 1;
            }
        }
    }
    write_file(&out.join("qrels/train.tsv"), &train)?;
    write_file(&out.join("qrels/test.tsv"), &test)?;
    write_file(&out.join("qrels/shoppers.tsv"), &shoppers)?;
    summary.identifier_queries = write_identifier_queries(out, &mut id_rng, &products)?;
    Ok(summary)
}

/// Gives every product a model number and a SKU, each unique in the store.
fn assign_identifiers(rng: &mut StdRng, products: &mut [Product]) {
    let mut taken = BTreeSet::new();
    for product in products {
        let letters: String = product
            .brand
            .chars()
            .take(2)
            .collect::<String>()
            .to_uppercase();
        product.model = loop {
            let model = format!("{letters}{}", rng.random_range(1000..10_000));
            if taken.insert(model.clone()) {
                break model;
            }
        };
        product.sku = loop {
            let sku = rng.random_range(10_000_000..100_000_000u32).to_string();
            if taken.insert(sku.clone()) {
                break sku;
            }
        };
    }
}

/// Writes `queries-identifiers.jsonl` and `qrels/identifiers.tsv`: for products drawn at
/// random, a query that is its model number (as written or lowercased) or its SKU, judged
/// relevant (2) for that product only. Returns the number of queries.
fn write_identifier_queries(out: &Path, rng: &mut StdRng, products: &[Product]) -> Result<usize> {
    let count = IDENTIFIER_QUERIES.min(products.len());
    let chosen: Vec<&Product> = products.choose_multiple(rng, count).collect();
    let (mut queries, mut qrels) = (String::new(), "query-id\tcorpus-id\tscore\n".to_string());
    for (i, product) in chosen.iter().enumerate() {
        let text = match rng.random_range(0..3) {
            0 => product.model.clone(),
            1 => product.model.to_lowercase(),
            _ => product.sku.clone(),
        };
        let id = format!("id{:03}", i + 1);
        queries.push_str(&json!({"_id": id, "text": text}).to_string());
        queries.push('\n');
        qrels.push_str(&format!("{id}\t{}\t2\n", product.id));
    }
    write_file(&out.join("queries-identifiers.jsonl"), &queries)?;
    write_file(&out.join("qrels/identifiers.tsv"), &qrels)?;
    Ok(count)
}

fn write_file(path: &Path, body: &str) -> Result<()> {
    let mut file =
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(body.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: DemoArgs) -> Result<()> {
    let settings = DemoSettings {
        products: args.products,
        queries: args.queries,
        test_share: args.test_share,
        seed: args.seed,
    };
    let summary = write_demo(&args.out, &settings)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!(
        "wrote {} (corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv, \
         qrels/shoppers.tsv, queries-identifiers.jsonl, qrels/identifiers.tsv)",
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_writes_the_same_store_and_judgments_follow_the_attributes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let settings = DemoSettings::default();
        let summary = write_demo(a.path(), &settings).unwrap();
        write_demo(b.path(), &settings).unwrap();
        for file in [
            "corpus.jsonl",
            "queries.jsonl",
            "qrels/train.tsv",
            "qrels/test.tsv",
            "qrels/shoppers.tsv",
            "queries-identifiers.jsonl",
            "qrels/identifiers.tsv",
        ] {
            assert_eq!(
                fs::read(a.path().join(file)).unwrap(),
                fs::read(b.path().join(file)).unwrap(),
                "{file}"
            );
        }
        assert_eq!(summary.products, 400);
        assert_eq!(summary.identifier_queries, IDENTIFIER_QUERIES);
        assert_eq!(summary.train_queries + summary.test_queries, 600);
        assert!(
            summary.train_queries > 360 && summary.test_queries > 120,
            "{summary:?}"
        );
        // Every product named in the qrels exists; train rows are positives only.
        let corpus = fs::read_to_string(a.path().join("corpus.jsonl")).unwrap();
        let products: BTreeMap<String, Value> = corpus
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["_id"].as_str().unwrap().to_string(), v)
            })
            .collect();
        let train = fs::read_to_string(a.path().join("qrels/train.tsv")).unwrap();
        for row in train.lines().skip(1) {
            let cols: Vec<&str> = row.split('\t').collect();
            assert!(products.contains_key(cols[1]), "{row}");
            assert_eq!(cols[2], "1");
        }
        // Train and test queries are disjoint.
        let test = fs::read_to_string(a.path().join("qrels/test.tsv")).unwrap();
        let ids = |t: &str| -> BTreeSet<String> {
            t.lines()
                .skip(1)
                .map(|r| r.split('\t').next().unwrap().to_string())
                .collect()
        };
        assert!(ids(&train).is_disjoint(&ids(&test)));
        // The shoppers' judgments cover the train queries only, with every grade.
        let shoppers = fs::read_to_string(a.path().join("qrels/shoppers.tsv")).unwrap();
        assert!(ids(&shoppers).is_disjoint(&ids(&test)));
        assert!(ids(&train).is_subset(&ids(&shoppers)));
        assert!(shoppers.contains("\t1\n") && shoppers.contains("\t2\n"));
        // Sizing and return-policy wording is in the products and the queries.
        assert!(corpus.contains("runs small") && corpus.contains("final sale"));
        let queries = fs::read_to_string(a.path().join("queries.jsonl")).unwrap();
        assert!(queries.contains("size up") || queries.contains("run small"));
        assert!(queries.contains("returns") || queries.contains("send back"));
    }

    #[test]
    fn a_fully_relevant_product_has_every_property_asked_for() {
        let mut rng = StdRng::seed_from_u64(1);
        let products: Vec<Product> = (0..200).map(|i| random_product(&mut rng, i)).collect();
        let wants = [Want::Vegan, Want::Returns(2)];
        for product in &products {
            let holds = wants.iter().all(|w| w.holds(product));
            let metadata = product.metadata();
            assert_eq!(
                holds,
                metadata["vegan"] == json!(true) && metadata["returns"] == json!("final-sale")
            );
        }
        assert!(!compatible(&[Want::Vegan, Want::Material("suede")]));
        assert!(!compatible(&[Want::Fit(0), Want::Fit(1)]));
        assert!(compatible(&[
            Want::Vegan,
            Want::Fit(1),
            Want::Colour("red")
        ]));
    }
}
