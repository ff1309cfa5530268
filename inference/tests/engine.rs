//! The engine on the real SmolLM2 GGUF (`scripts/models.sh`): continuous
//! batching gives the same tokens as running alone, backpressure,
//! cancellation, sampling, token counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::{Duration, Instant};

use aios_inference::InferenceError;
use aios_inference::engine::{
    Engine, EngineConfig, FinishReason, GenerateRequest, GenerationEvent, GenerationStream,
};
use aios_inference::files;
use aios_inference::llama::{LlamaModel, LoadOptions};
use aios_inference::sample::SamplingParams;
use candle_core::Device;

fn engine(max_batch: usize, queue_capacity: usize) -> Engine {
    let path = files::model_file(files::SMOLLM2_GGUF)
        .unwrap_or_else(|e| panic!("{e} (the engine tests need scripts/models.sh to have run)"));
    let model = LlamaModel::load(&path, &LoadOptions::default(), &Device::Cpu).unwrap();
    let config = EngineConfig {
        max_batch,
        queue_capacity,
        threads: 2,
        ..EngineConfig::default()
    };
    Engine::start("smollm2", model, config).unwrap()
}

fn request(prompt: &[u32], max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_vec(),
        params: SamplingParams {
            max_tokens,
            ..SamplingParams::default()
        },
        stop_ids: vec![],
    }
}

/// Tokens, then the `Done` event.
async fn collect(mut stream: GenerationStream) -> (Vec<u32>, GenerationEvent) {
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            GenerationEvent::Token(t) => tokens.push(t),
            done @ GenerationEvent::Done { .. } => return (tokens, done),
        }
    }
    panic!("stream ended without Done after {tokens:?}")
}

async fn until<F: Fn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const PROMPTS: [&[u32]; 4] = [
    &[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47],
    &[
        1, 9690, 198, 2683, 359, 253, 5356, 11173, 30, 2, 198, 1, 4093, 198, 1780, 314, 260,
    ],
    &[1780, 314],
    &[
        1, 4093, 198, 2683, 359, 253, 3575, 282, 4649, 47, 19842, 281, 582, 1890, 6330, 30, 2, 198,
        1, 520, 9531, 198,
    ],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sequences_get_the_tokens_they_get_alone() {
    let engine = engine(4, 8);
    let lengths = [12, 20, 7, 16];
    let mut alone = Vec::new();
    for (p, &n) in PROMPTS.iter().zip(&lengths) {
        alone.push(collect(engine.submit(request(p, n)).unwrap()).await.0);
    }
    let streams: Vec<_> = PROMPTS
        .iter()
        .zip(&lengths)
        .map(|(p, &n)| engine.submit(request(p, n)).unwrap())
        .collect();
    let mut together = Vec::new();
    for s in streams {
        together.push(collect(s).await.0);
    }
    assert_eq!(together, alone);
    for (tokens, &n) in together.iter().zip(&lengths) {
        assert_eq!(tokens.len(), n as usize);
    }
    // The four ran as one batch: fewer steps than tokens.
    let stats = engine.stats();
    assert_eq!(stats.completed, 8);
    assert!(stats.steps < stats.generated_tokens, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_counts_tokens_and_says_why() {
    let engine = engine(2, 4);
    let (tokens, done) = collect(engine.submit(request(PROMPTS[0], 9)).unwrap()).await;
    assert_eq!(tokens.len(), 9);
    assert_eq!(
        done,
        GenerationEvent::Done {
            reason: FinishReason::Length,
            prompt_tokens: PROMPTS[0].len() as u32,
            completion_tokens: 9,
        }
    );
    // A stop id ends the generation before it, without emitting it.
    let stop = tokens[4];
    let first = tokens.iter().position(|&t| t == stop).unwrap();
    let mut stopping = request(PROMPTS[0], 9);
    stopping.stop_ids = vec![stop];
    let (stopped, done) = collect(engine.submit(stopping).unwrap()).await;
    assert_eq!(stopped, tokens[..first]);
    assert_eq!(
        done,
        GenerationEvent::Done {
            reason: FinishReason::Stop,
            prompt_tokens: PROMPTS[0].len() as u32,
            completion_tokens: first as u32,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_frees_the_slot() {
    let engine = engine(1, 4);
    let mut long = engine.submit(request(PROMPTS[1], 2_000)).unwrap();
    assert!(matches!(long.next().await, Some(GenerationEvent::Token(_))));
    assert_eq!(engine.stats().active, 1);
    drop(long);
    // The only slot is free again: a second request runs to the end.
    let (tokens, done) = collect(engine.submit(request(PROMPTS[2], 5)).unwrap()).await;
    assert_eq!(tokens.len(), 5);
    assert!(matches!(
        done,
        GenerationEvent::Done {
            reason: FinishReason::Length,
            ..
        }
    ));
    until("the slot to be released", || engine.stats().active == 0).await;
    let stats = engine.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.completed, 1, "{stats:?}");
    assert!(
        stats.generated_tokens < 100,
        "the cancelled request kept going: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let engine = engine(1, 1);
    // One request holds the only slot…
    let mut running = engine.submit(request(PROMPTS[1], 2_000)).unwrap();
    assert!(matches!(
        running.next().await,
        Some(GenerationEvent::Token(_))
    ));
    // …one waits in the queue…
    let _waiting = engine.submit(request(PROMPTS[2], 5)).unwrap();
    assert_eq!(engine.stats().queued, 1);
    // …and the next is refused without waiting.
    let started = Instant::now();
    let refused = engine.submit(request(PROMPTS[3], 5));
    assert!(started.elapsed() < Duration::from_millis(50));
    match refused {
        Err(InferenceError::Overloaded { queued, .. }) => assert_eq!(queued, 1),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(engine.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_repeats_and_temperature_zero_is_greedy() {
    let engine = engine(4, 8);
    let sampled = |seed: u64| GenerateRequest {
        params: SamplingParams {
            temperature: 1.2,
            top_p: 0.95,
            seed: Some(seed),
            max_tokens: 24,
            ..SamplingParams::default()
        },
        ..request(PROMPTS[0], 24)
    };
    // Run concurrently, so batching must not change a seeded result either.
    let a = engine.submit(sampled(7)).unwrap();
    let b = engine.submit(sampled(7)).unwrap();
    let c = engine.submit(sampled(8)).unwrap();
    let (a, b, c) = (collect(a).await.0, collect(b).await.0, collect(c).await.0);
    assert_eq!(a, b);
    assert_ne!(a, c, "different seeds gave the same 24 tokens");
    // Temperature 0 ignores the seed: it is the greedy answer.
    let greedy = collect(engine.submit(request(PROMPTS[0], 24)).unwrap())
        .await
        .0;
    let mut zero = sampled(7);
    zero.params.temperature = 0.0;
    assert_eq!(collect(engine.submit(zero).unwrap()).await.0, greedy);
    assert_ne!(
        a, greedy,
        "sampling at temperature 1.2 gave the greedy answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_and_stopped_engines_are_refused() {
    let engine = engine(1, 2);
    assert!(matches!(
        engine.submit(request(&[], 5)),
        Err(InferenceError::InvalidRequest(_))
    ));
    assert!(matches!(
        engine.submit(request(PROMPTS[0], 0)),
        Err(InferenceError::InvalidRequest(_))
    ));
    let too_long = vec![1u32; engine.context_length()];
    assert!(matches!(
        engine.submit(request(&too_long, 1)),
        Err(InferenceError::InvalidRequest(_))
    ));
    let mut running = engine.submit(request(PROMPTS[1], 2_000)).unwrap();
    assert!(matches!(
        running.next().await,
        Some(GenerationEvent::Token(_))
    ));
    engine.stop();
    // The running request ends without Done; new ones are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline.into(), running.next()).await {
            Ok(Some(GenerationEvent::Token(_))) => continue,
            Ok(None) => break,
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }
    assert!(matches!(
        engine.submit(request(PROMPTS[0], 5)),
        Err(InferenceError::Stopped(_))
    ));
}
