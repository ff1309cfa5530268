//! Sentence embeddings with the real all-MiniLM-L6-v2 (`scripts/models.sh`),
//! checked against reference vectors computed without candle
//! (`scripts/reference/embed_reference.py`, stored in
//! `tests/fixtures/embed/reference.json`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use aios_inference::InferenceError;
use aios_inference::embed::{Embedder, EmbedderConfig, Embedding, EmbeddingModel, cosine};
use aios_inference::files;
use candle_core::Device;

fn model_dir() -> PathBuf {
    files::model_file(files::MINILM_DIR).unwrap_or_else(|error| panic!("{error}"))
}

static MODEL: LazyLock<EmbeddingModel> =
    LazyLock::new(|| EmbeddingModel::load(&model_dir(), &Device::Cpu).unwrap());

fn embed(texts: &[&str], max_batch: usize) -> Vec<Embedding> {
    MODEL.embed(texts, max_batch).unwrap()
}

fn embed_one(text: &str) -> Embedding {
    embed(&[text], 1).pop().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// === Reference ===

#[derive(serde::Deserialize)]
struct Reference {
    max_tokens: usize,
    sentences: Vec<ReferenceSentence>,
}

#[derive(serde::Deserialize)]
struct ReferenceSentence {
    text: String,
    ids: Vec<u32>,
    truncated: bool,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn token_ids_and_vectors_match_the_reference() {
    let reference = reference();
    assert_eq!(MODEL.max_tokens(), reference.max_tokens);
    assert_eq!(MODEL.dimensions(), 384);
    assert!(
        reference.sentences.iter().any(|s| s.truncated),
        "the fixture covers truncation"
    );
    for sentence in &reference.sentences {
        let tokens = MODEL.tokenize(&sentence.text).unwrap();
        assert_eq!(tokens.ids, sentence.ids, "token ids of {:?}", sentence.text);
        assert_eq!(
            tokens.truncated, sentence.truncated,
            "truncated {:?}",
            sentence.text
        );

        let ours = embed_one(&sentence.text);
        assert_eq!(ours.tokens as usize, sentence.ids.len());
        assert_eq!(ours.truncated, sentence.truncated);
        let similarity = cosine(&ours.vector, &sentence.vector);
        assert!(
            similarity > 0.999,
            "cosine {similarity} for {:?}",
            sentence.text
        );
        // The reference is float64 rounded to 6 places; candle's f32 lands
        // within ~6e-7 of it. The tanh GELU instead of erf would move it by
        // ~2e-4 while keeping the cosine at 0.999999: the cosine alone
        // would not notice.
        let diff = max_abs_diff(&ours.vector, &sentence.vector);
        assert!(
            diff < 1e-5,
            "differs by up to {diff} for {:?}",
            sentence.text
        );
    }
}

#[test]
fn batches_equal_one_at_a_time_in_input_order() {
    let reference = reference();
    // Mixed lengths, duplicates, the empty string and the truncated text, so
    // that every batch is padded and batches hold texts from all over the list.
    let mut texts: Vec<&str> = reference
        .sentences
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    texts.reverse();
    texts.extend([
        "The cat sits on the mat.",
        "Short.",
        "",
        "A slightly longer sentence about the weather in spring.",
    ]);
    let alone: Vec<Embedding> = texts.iter().map(|text| embed_one(text)).collect();
    for max_batch in [3, 32] {
        let batched = embed(&texts, max_batch);
        assert_eq!(batched.len(), texts.len());
        for ((text, batched), alone) in texts.iter().zip(&batched).zip(&alone) {
            let diff = max_abs_diff(&batched.vector, &alone.vector);
            assert!(
                diff < 1e-4,
                "max_batch {max_batch}: {text:?} moved by {diff} in a batch"
            );
            assert_eq!(
                (batched.tokens, batched.truncated),
                (alone.tokens, alone.truncated)
            );
        }
    }
    // Order: each result is its own text's, not a neighbour's.
    let batched = embed(&texts, 32);
    for (index, embedding) in batched.iter().enumerate() {
        let own = cosine(&embedding.vector, &alone[index].vector);
        assert!(
            own > 0.9999,
            "result {index} is not {:?}'s embedding",
            texts[index]
        );
    }
}

#[test]
fn similar_sentences_are_close_and_unrelated_ones_far() {
    let similar = [
        (
            "How do I reset my password?",
            "How can I change my password?",
        ),
        ("A man is playing a guitar.", "A person plays the guitar."),
        (
            "The weather is lovely today.",
            "It's a beautiful sunny day.",
        ),
        (
            "Where is the nearest train station?",
            "How do I get to the closest railway station?",
        ),
        (
            "A dog is running in the park.",
            "A puppy runs through the park.",
        ),
        (
            "I would like to cancel my subscription.",
            "How do I cancel my subscription?",
        ),
    ];
    let unrelated = [
        (
            "How do I reset my password?",
            "The giraffe is the tallest land animal.",
        ),
        (
            "A man is playing a guitar.",
            "Quarterly revenue grew by 12% in 2023.",
        ),
        (
            "The weather is lovely today.",
            "Rust's borrow checker enforces ownership rules.",
        ),
        (
            "Where is the nearest train station?",
            "She baked a chocolate cake for the party.",
        ),
        (
            "A dog is running in the park.",
            "Photosynthesis converts light into chemical energy.",
        ),
        (
            "I would like to cancel my subscription.",
            "The museum opens at nine on Sundays.",
        ),
    ];
    for (a, b) in similar {
        let similarity = cosine(&embed_one(a).vector, &embed_one(b).vector);
        assert!(similarity > 0.7, "{a:?} ~ {b:?}: cosine {similarity}");
    }
    for (a, b) in unrelated {
        let similarity = cosine(&embed_one(a).vector, &embed_one(b).vector);
        assert!(similarity < 0.3, "{a:?} vs {b:?}: cosine {similarity}");
    }
}

#[test]
fn empty_list_and_empty_string() {
    assert!(embed(&[], 32).is_empty());
    let empty = embed_one("");
    assert_eq!(empty.tokens, 2, "[CLS] and [SEP]");
    assert!(!empty.truncated);
    assert_eq!(empty.vector.len(), 384);
    let norm: f32 = empty.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

#[test]
fn long_input_is_truncated_and_says_so() {
    let long = "Aios embeds text on the node that serves it. ".repeat(500);
    let embedding = embed_one(&long);
    assert!(embedding.truncated);
    assert_eq!(embedding.tokens as usize, MODEL.max_tokens());
    // Only the beginning is embedded: more of the same tail changes nothing.
    let longer = embed_one(&format!("{long}{long}"));
    assert!(max_abs_diff(&embedding.vector, &longer.vector) < 1e-5);

    // A text that fits exactly is not truncated.
    let words: Vec<&str> = std::iter::repeat_n("cat", MODEL.max_tokens() - 2).collect();
    let fits = embed_one(&words.join(" "));
    assert_eq!(
        (fits.tokens as usize, fits.truncated),
        (MODEL.max_tokens(), false)
    );
    let over = embed_one(&format!("{} cat", words.join(" ")));
    assert_eq!(
        (over.tokens as usize, over.truncated),
        (MODEL.max_tokens(), true)
    );
}

// === Loading ===

/// A scratch model directory holding links to some of the real files.
fn scratch_dir(name: &str, files: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("embed")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in files {
        std::os::unix::fs::symlink(model_dir().join(file), dir.join(file)).unwrap();
    }
    dir
}

fn file_error(result: Result<EmbeddingModel, InferenceError>) -> (String, String) {
    match result {
        Err(InferenceError::File { path, reason }) => (path, reason),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn missing_or_bad_files_are_named() {
    let all = ["model.safetensors", "config.json", "tokenizer.json"];
    for missing in all {
        let present: Vec<&str> = all.iter().copied().filter(|f| *f != missing).collect();
        let dir = scratch_dir(&format!("missing-{missing}"), &present);
        let (path, reason) = file_error(EmbeddingModel::load(&dir, &Device::Cpu));
        assert!(path.ends_with(missing), "{path}: {reason}");
        assert!(reason.contains("not found"), "{reason}");
    }

    for bad in all {
        let present: Vec<&str> = all.iter().copied().filter(|f| *f != bad).collect();
        let dir = scratch_dir(&format!("bad-{bad}"), &present);
        std::fs::write(dir.join(bad), b"{\"not\": \"this\"}").unwrap();
        let (path, reason) = file_error(EmbeddingModel::load(&dir, &Device::Cpu));
        assert!(path.ends_with(bad), "{path}: {reason}");
    }

    let dir = scratch_dir("not-bert", &["model.safetensors", "tokenizer.json"]);
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"bert\"", "\"roberta\""),
    )
    .unwrap();
    let (path, reason) = file_error(EmbeddingModel::load(&dir, &Device::Cpu));
    assert!(
        path.ends_with("config.json") && reason.contains("roberta"),
        "{path}: {reason}"
    );

    let (path, _) = file_error(EmbeddingModel::load(
        Path::new("/nonexistent/model"),
        &Device::Cpu,
    ));
    assert_eq!(path, "/nonexistent/model");
}

#[test]
fn max_tokens_comes_from_sentence_bert_config_or_the_caller() {
    let dir = scratch_dir(
        "sentence-config",
        &["model.safetensors", "config.json", "tokenizer.json"],
    );
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 128, "do_lower_case": false}"#,
    )
    .unwrap();
    let model = EmbeddingModel::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.max_tokens(), 128);
    let long = "word ".repeat(300);
    let embedding = model.embed(&[&long], 8).unwrap().pop().unwrap();
    assert_eq!((embedding.tokens, embedding.truncated), (128, true));

    let model = model.with_max_tokens(512).unwrap();
    let embedding = model.embed(&[&long], 8).unwrap().pop().unwrap();
    assert_eq!((embedding.tokens, embedding.truncated), (302, false));

    let too_long = EmbeddingModel::load(&dir, &Device::Cpu)
        .unwrap()
        .with_max_tokens(513);
    assert!(
        matches!(too_long, Err(InferenceError::InvalidRequest(_))),
        "{too_long:?}"
    );
    let too_short = EmbeddingModel::load(&dir, &Device::Cpu)
        .unwrap()
        .with_max_tokens(2);
    assert!(
        matches!(too_short, Err(InferenceError::InvalidRequest(_))),
        "{too_short:?}"
    );
}

// === Embedder ===

fn start(config: EmbedderConfig) -> Embedder {
    let model = EmbeddingModel::load(&model_dir(), &Device::Cpu).unwrap();
    Embedder::start("minilm", model, config).unwrap()
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}

#[tokio::test]
async fn embedder_answers_concurrent_callers_with_their_own_vectors() {
    let embedder = start(EmbedderConfig {
        max_batch: 8,
        queue_capacity: 32,
        threads: 2,
    });
    assert_eq!((embedder.dimensions(), embedder.max_tokens()), (384, 256));
    assert!(embedder.embed(Vec::new()).await.unwrap().is_empty());

    let texts = [
        "The cat sits on the mat.",
        "How do I reset my password?",
        "",
        "Quarterly revenue grew by 12% in 2023.",
    ];
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let embedder = embedder.clone();
            let text = texts[i % texts.len()];
            tokio::spawn(async move {
                (
                    text,
                    embedder
                        .embed(vec![text.to_string(), text.to_uppercase()])
                        .await,
                )
            })
        })
        .collect();
    for task in tasks {
        let (text, result) = task.await.unwrap();
        let result = result.unwrap();
        assert_eq!(result.len(), 2);
        let alone = embed_one(text);
        assert!(
            max_abs_diff(&result[0].vector, &alone.vector) < 1e-4,
            "{text:?}"
        );
        // The model is uncased: the upper-case copy is the same text.
        assert!(
            max_abs_diff(&result[1].vector, &alone.vector) < 1e-4,
            "{text:?}"
        );
    }
    embedder.shutdown().await;
}

#[tokio::test]
async fn full_queue_is_overloaded_at_once() {
    let embedder = start(EmbedderConfig {
        max_batch: 4,
        queue_capacity: 1,
        threads: 1,
    });
    // Long enough to keep the thread busy for a good while (8 x 256 tokens: a second or more).
    let busy = vec!["Aios embeds text on the node that serves it. ".repeat(30); 8];
    let first = tokio::spawn({
        let embedder = embedder.clone();
        let busy = busy.clone();
        async move { embedder.embed(busy).await }
    });
    // Queue a second request behind the first once the thread has taken it.
    let second = loop {
        let task = tokio::spawn({
            let embedder = embedder.clone();
            async move { embedder.embed(strings(&["queued"])).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        match task.is_finished() {
            false => break task,
            true => assert!(matches!(
                task.await.unwrap(),
                Err(InferenceError::Overloaded { .. })
            )),
        }
    };
    let third = tokio::time::timeout(
        Duration::from_millis(500),
        embedder.embed(strings(&["one too many"])),
    )
    .await
    .expect("a full queue answers at once");
    match third {
        Err(InferenceError::Overloaded { model, queued }) => {
            assert_eq!((model.as_str(), queued), ("minilm", 1))
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(!first.is_finished(), "the first request was still running");
    assert_eq!(first.await.unwrap().unwrap().len(), 8);
    assert_eq!(second.await.unwrap().unwrap().len(), 1);
}

#[tokio::test]
async fn shutdown_answers_what_was_queued_then_refuses() {
    let embedder = start(EmbedderConfig {
        max_batch: 2,
        queue_capacity: 16,
        threads: 1,
    });
    // join! polls every branch once before any completes: the four requests
    // are queued before shutdown starts.
    let (a, b, c, d, ()) = tokio::join!(
        embedder.embed(strings(&["first"])),
        embedder.embed(strings(&["second", "third"])),
        embedder.embed(strings(&["fourth"])),
        embedder.embed(strings(&["fifth", "sixth", "seventh"])),
        async {
            tokio::task::yield_now().await;
            embedder.shutdown().await;
        },
    );
    let counts = [a, b, c, d].map(|result| result.unwrap().len());
    assert_eq!(counts, [1, 2, 1, 3]);
    let late = embedder.embed(strings(&["too late"])).await;
    assert!(
        matches!(late, Err(InferenceError::Stopped(ref model)) if model == "minilm"),
        "{late:?}"
    );
    // A second shutdown is harmless.
    embedder.shutdown().await;
}

#[test]
fn embedder_config_is_checked() {
    let model = EmbeddingModel::load(&model_dir(), &Device::Cpu).unwrap();
    let zero = Embedder::start(
        "minilm",
        model,
        EmbedderConfig {
            queue_capacity: 0,
            ..EmbedderConfig::default()
        },
    );
    assert!(
        matches!(zero, Err(InferenceError::InvalidRequest(ref m)) if m.contains("queue_capacity")),
        "{zero:?}"
    );
}
