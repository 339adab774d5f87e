//! `attune embed`: texts in (plain lines, JSONL, or a BEIR corpus or queries file), embeddings
//! out (JSONL), in input order.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attune_eval::data;
use attune_model::{
    device_name, DeviceRequest, Encoder, EncoderSettings, ModelDir, Precision, TextKind,
};
use clap::{Args, ValueEnum};
use serde::Serialize;

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// From the first non-empty line: a JSON object with "_id" and "title" is a BEIR corpus,
    /// one with "_id" BEIR queries, one with "text" JSONL; anything else is text.
    Auto,
    /// One text per line (an empty line is an empty text).
    Text,
    /// One JSON object per line: {"text": "...", "id": ...}; "id" is optional and copied to the output.
    Jsonl,
    /// A BEIR corpus.jsonl: {"_id", "title"?, "text"} per line. Each document is embedded as
    /// `attune index` and `attune eval` embed it (title and text, each trimmed, joined by a
    /// space); "_id" is copied to the output as "id" (a string). Blank lines are skipped.
    Corpus,
    /// A BEIR queries.jsonl: {"_id", "text"} per line. Each text is embedded as given, as
    /// `attune eval` embeds queries; "_id" is copied to the output as "id". Blank lines are
    /// skipped.
    Queries,
}

/// Which prompt of the model applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// No prompt: the texts as given.
    Plain,
    /// The model's "query" prompt (e.g. "query: " for e5), if it has one.
    Query,
    /// The model's "document"/"passage" prompt, if it has one.
    Document,
}

/// Arguments of `attune embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Sentence-transformers model directory (config.json, tokenizer.json, model.safetensors,
    /// modules.json, 1_Pooling/). Fetch the base model with scripts/fetch-model.sh.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Input: one text per line, JSONL with a "text" field and an optional "id", or a BEIR
    /// corpus or queries file (see --input-format). `-` is stdin.
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub input: String,
    /// Output: JSONL lines {"id"?, "embedding": [...]}, one per input line, in input order.
    /// `-` is stdout.
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub output: String,
    /// How to read the input.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub input_format: InputFormat,
    /// Texts per forward pass (texts are sorted by length first, so padding stays small).
    #[arg(long, default_value_t = EncoderSettings::default().batch_size)]
    pub batch_size: usize,
    /// Most padded tokens (texts x longest text) per forward pass; bounds memory.
    #[arg(long, default_value_t = EncoderSettings::default().max_tokens_per_batch)]
    pub max_tokens: usize,
    /// Batches computed at once on the CPU, one thread each (default: one per thread); 1
    /// computes one batch at a time over all threads. The embeddings are the same either way.
    #[arg(long, value_name = "N")]
    pub concurrent_batches: Option<usize>,
    /// Truncate texts to this many tokens, special tokens included (default: the model's
    /// max_seq_length from sentence_bert_config.json; at most max_position_embeddings).
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Matryoshka: keep each embedding's first N dimensions, re-normalised (default: all).
    #[arg(long, value_name = "N")]
    pub dimension: Option<usize>,
    /// Text prepended to every input (e.g. "query: " for e5 models); overrides the model's prompt.
    #[arg(long, value_name = "S")]
    pub prefix: Option<String>,
    /// Which of the model's named prompts to use when --prefix is not given.
    #[arg(long, value_enum, default_value_t = Kind::Plain)]
    pub kind: Kind,
    /// Device: auto (a CUDA GPU if built with --features cuda and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Dtype of the matrix products: auto (bf16 on a GPU, f32 on the CPU), f32, bf16, f16, or
    /// int8 (CPU: 8-bit products on AVX-512 VNNI, about twice f32's speed).
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
    /// Texts read, length-sorted and embedded at a time before their lines are written; bounds
    /// memory for inputs of any size.
    #[arg(long, default_value_t = 16384)]
    pub chunk_size: usize,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    embedding: &'a [f32],
}

struct InputRecord {
    id: Option<serde_json::Value>,
    text: String,
}

/// Parses one input line; `line_no` is 1-based, for messages. `None`: a blank line of a BEIR
/// file, which has no output line.
fn parse_line(
    line: &str,
    format: InputFormat,
    source: &str,
    line_no: usize,
) -> Result<Option<InputRecord>> {
    let beir_record = |id: String, text: String| InputRecord {
        id: Some(serde_json::Value::String(id)),
        text,
    };
    Ok(match format {
        InputFormat::Auto | InputFormat::Text => Some(InputRecord {
            id: None,
            text: line.to_string(),
        }),
        InputFormat::Jsonl => Some(parse_jsonl_line(line, source, line_no)?),
        InputFormat::Corpus => {
            data::parse_corpus_line(line, Path::new(source), line_no)?.map(|doc| {
                let text = doc.embedding_text();
                beir_record(doc.id, text)
            })
        }
        InputFormat::Queries => data::parse_query_line(line, Path::new(source), line_no)?
            .map(|query| beir_record(query.id, query.text)),
    })
}

/// One line of [`InputFormat::Jsonl`]; a blank line is an empty text.
fn parse_jsonl_line(line: &str, source: &str, line_no: usize) -> Result<InputRecord> {
    if line.trim().is_empty() {
        // Kept, so output line N still answers input line N.
        return Ok(InputRecord {
            id: None,
            text: String::new(),
        });
    }
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{source}:{line_no}: not valid JSON"))?;
    let Some(object) = value.as_object() else {
        bail!("{source}:{line_no}: expected a JSON object with a \"text\" field");
    };
    let text = match object.get("text") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => bail!("{source}:{line_no}: field \"text\" must be a string, found {other}"),
        None => bail!("{source}:{line_no}: missing field \"text\""),
    };
    Ok(InputRecord {
        id: object.get("id").cloned(),
        text,
    })
}

/// The format [`InputFormat::Auto`] reads, from the first non-empty line.
fn detect_format(first_line: &str) -> InputFormat {
    let value = serde_json::from_str::<serde_json::Value>(first_line).ok();
    match value.as_ref().and_then(|v| v.as_object()) {
        Some(o) if o.contains_key("_id") && o.contains_key("title") => InputFormat::Corpus,
        Some(o) if o.contains_key("_id") => InputFormat::Queries,
        Some(o) if o.contains_key("text") => InputFormat::Jsonl,
        _ => InputFormat::Text,
    }
}

/// Runs `attune embed`.
pub fn run(args: EmbedArgs) -> Result<()> {
    super::keep_freed_memory();
    if args.chunk_size == 0 {
        bail!("--chunk-size must be at least 1");
    }
    let device = args.device.open()?;
    let model = ModelDir::open(&args.model)?;
    let kind = match (args.kind, args.prefix.is_some()) {
        (Kind::Document, _) => TextKind::Document,
        (Kind::Query, _) | (Kind::Plain, true) => TextKind::Query,
        (Kind::Plain, false) => TextKind::Plain,
    };
    let settings = EncoderSettings {
        batch_size: args.batch_size,
        max_tokens_per_batch: args.max_tokens,
        max_seq_length: args.max_seq_len,
        query_prefix: args.prefix.clone(),
        document_prefix: args.prefix.clone(),
        precision: args.precision,
        truncate_dim: args.dimension,
        concurrent_batches: args.concurrent_batches,
    };
    let encoder = Encoder::load(&model, &device, settings)?;

    let source = if args.input == "-" {
        "<stdin>".to_string()
    } else {
        args.input.clone()
    };
    let (reader, total): (Box<dyn BufRead>, Option<u64>) = if args.input == "-" {
        (Box::new(BufReader::new(io::stdin().lock())), None)
    } else {
        let open = || {
            File::open(&args.input).with_context(|| format!("{}: cannot open input", args.input))
        };
        // One cheap pass to count lines gives the progress bar a length and an ETA.
        let lines = BufReader::new(open()?).lines().count() as u64;
        (
            Box::new(BufReader::with_capacity(1 << 20, open()?)),
            Some(lines),
        )
    };
    let mut writer: Box<dyn Write> = if args.output == "-" {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        let f = File::create(&args.output)
            .with_context(|| format!("{}: cannot create output", args.output))?;
        Box::new(BufWriter::with_capacity(1 << 20, f))
    };

    let progress = super::progress_bar(total, "texts");

    let started = Instant::now();
    let mut format = args.input_format;
    let mut lines = reader.lines().enumerate();
    let (mut texts_done, mut tokens, mut truncated, mut flops) = (0usize, 0usize, 0usize, 0f64);
    loop {
        let mut chunk: Vec<InputRecord> = Vec::with_capacity(args.chunk_size.min(65536));
        for (index, line) in lines.by_ref() {
            let line = line.with_context(|| format!("{source}:{}: cannot read", index + 1))?;
            if format == InputFormat::Auto && !line.trim().is_empty() {
                format = detect_format(&line);
            }
            chunk.extend(parse_line(&line, format, &source, index + 1)?);
            if chunk.len() == args.chunk_size {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
        let out = encoder.embed_with_progress(&texts, kind, &mut |n| progress.inc(n as u64))?;
        for (record, embedding) in chunk.iter().zip(&out.embeddings) {
            serde_json::to_writer(
                &mut writer,
                &OutputLine {
                    id: record.id.as_ref(),
                    embedding,
                },
            )?;
            writer.write_all(b"\n")?;
        }
        texts_done += chunk.len();
        tokens += out.tokens;
        truncated += out.truncated;
        flops += out.flops;
    }
    writer
        .flush()
        .with_context(|| format!("{}: cannot write output", args.output))?;
    progress.finish_and_clear();

    let seconds = started.elapsed().as_secs_f64();
    if truncated > 0 {
        eprintln!(
            "attune embed: {truncated} of {texts_done} texts were longer than {} tokens and were truncated",
            encoder.max_seq_length()
        );
    }
    eprintln!(
        "attune embed: {texts_done} texts, {tokens} tokens in {seconds:.2} s on {} ({:.1} texts/s, {:.0} tokens/s, {:.1} GFLOP/s)",
        device_name(&device),
        texts_done as f64 / seconds.max(1e-9),
        tokens as f64 / seconds.max(1e-9),
        flops / seconds.max(1e-9) / 1e9,
    );
    Ok(())
}
