use super::*;
use crate::fixtures::{dur, fields, local_model_spec, model_spec, resource};
use crate::{Spec, validate};

fn model(s: pb::ModelSpec) -> Model {
    match validate(&resource(s)).unwrap().spec {
        Spec::Model(m) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn valid_remote_model() {
    let m = model(model_spec());
    assert_eq!(m.provider, ModelProvider::Openai);
    assert_eq!(m.provider_model, "gpt-4o-mini");
    assert_eq!(m.endpoint.as_deref(), Some("https://api.openai.com/v1"));
    assert_eq!(m.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(m.path, None);
    assert!(m.has(ModelCapability::Tools));
    assert_eq!(m.input_price_per_mtok, Usd::from_micros(150_000));
    assert_eq!(m.output_price_per_mtok, Usd::from_micros(600_000));
    assert_eq!(m.context_window_tokens, NonZeroU32::new(128_000));
    assert_eq!(m.max_output_tokens, NonZeroU32::new(16_384));
    assert_eq!(m.timeout, Duration::from_secs(30));
}

#[test]
fn valid_local_model_with_defaults() {
    let m = model(local_model_spec());
    assert_eq!(m.provider, ModelProvider::Local);
    assert_eq!(m.provider_model, "gpt-4o-mini", "defaults to metadata.name");
    assert_eq!(m.capabilities, [ModelCapability::Chat], "empty = CHAT");
    assert_eq!(m.input_price_per_mtok, Usd::ZERO);
    assert_eq!(m.context_window_tokens, None);
    assert_eq!(m.max_output_tokens, None);
    assert_eq!(m.timeout, DEFAULT_MODEL_TIMEOUT);
    assert!(m.path.is_some());
}

#[test]
fn openai_compatible_needs_an_endpoint() {
    let mut s = model_spec();
    s.provider = pb::ModelProvider::OpenaiCompatible as i32;
    s.endpoint.clear();
    assert_eq!(fields(&resource(s)), ["model.endpoint"]);

    let mut s = model_spec();
    s.provider = pb::ModelProvider::OpenaiCompatible as i32;
    s.endpoint = "http://vllm.internal:8000/v1".into();
    s.api_key_env.clear();
    let m = model(s);
    assert_eq!(m.endpoint.as_deref(), Some("http://vllm.internal:8000/v1"));
    assert_eq!(m.api_key_env, None);
}

#[test]
fn provider_is_required_and_known() {
    for provider in [0, 12] {
        let mut s = model_spec();
        s.provider = provider;
        assert_eq!(fields(&resource(s)), ["model.provider"], "{provider}");
    }
}

#[test]
fn remote_models_need_a_provider_model_and_no_path() {
    let mut s = model_spec();
    s.provider = pb::ModelProvider::Anthropic as i32;
    s.provider_model.clear();
    s.path = "/models/x.gguf".into();
    assert_eq!(fields(&resource(s)), ["model.provider_model", "model.path"]);
}

#[test]
fn local_models_need_a_path_and_no_endpoint_or_key() {
    let mut s = local_model_spec();
    s.path.clear();
    s.endpoint = "http://x".into();
    s.api_key_env = "KEY".into();
    assert_eq!(
        fields(&resource(s)),
        ["model.endpoint", "model.api_key_env", "model.path"]
    );
}

#[test]
fn endpoint_and_api_key_env_syntax() {
    let mut s = model_spec();
    s.endpoint = "api.openai.com/v1".into();
    s.api_key_env = "OPENAI-KEY".into();
    assert_eq!(
        fields(&resource(s)),
        ["model.endpoint", "model.api_key_env"]
    );
}

#[test]
fn capabilities_reject_unspecified_and_repeats() {
    let mut s = model_spec();
    s.capabilities = vec![1, 1, 0, 8];
    assert_eq!(
        fields(&resource(s)),
        [
            "model.capabilities[1]",
            "model.capabilities[2]",
            "model.capabilities[3]"
        ]
    );
}

#[test]
fn prices_are_finite_and_non_negative() {
    let mut s = model_spec();
    s.input_price_usd_per_mtok = -0.1;
    s.output_price_usd_per_mtok = f64::NAN;
    assert_eq!(
        fields(&resource(s)),
        [
            "model.input_price_usd_per_mtok",
            "model.output_price_usd_per_mtok"
        ]
    );
    let mut s = model_spec();
    s.input_price_usd_per_mtok = f64::INFINITY;
    assert_eq!(fields(&resource(s)), ["model.input_price_usd_per_mtok"]);
}

#[test]
fn max_output_fits_in_the_context_window() {
    let mut s = model_spec();
    s.max_output_tokens = s.context_window_tokens + 1;
    assert_eq!(fields(&resource(s)), ["model.max_output_tokens"]);
    let mut s = model_spec();
    s.context_window_tokens = 0;
    s.max_output_tokens = 1_000_000;
    assert_eq!(model(s).max_output_tokens, NonZeroU32::new(1_000_000));
}

#[test]
fn timeout_is_positive() {
    for bad in [dur(0), dur(-3)] {
        let mut s = model_spec();
        s.timeout = bad;
        assert_eq!(fields(&resource(s)), ["model.timeout"]);
    }
}

#[test]
fn api_key_file_is_an_absolute_path_and_excludes_api_key_env() {
    let mut s = model_spec();
    s.api_key_env.clear();
    s.api_key_file = "/run/secrets/openai".into();
    let Spec::Model(m) = validate(&resource(s.clone())).unwrap().spec else {
        panic!("not a model");
    };
    assert_eq!(m.api_key_file.as_deref(), Some("/run/secrets/openai"));

    s.api_key_file = "relative/key".into();
    assert_eq!(fields(&resource(s.clone())), ["model.api_key_file"]);
    s.api_key_file = "/run/secrets/openai".into();
    s.api_key_env = "OPENAI_API_KEY".into();
    assert_eq!(fields(&resource(s)), ["model.api_key_file"]);
}
