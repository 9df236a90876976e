//! The sampler against token sequences computed by an independent Python transcription of its
//! algorithm (`tests/fixtures/make_sampler_golden.py`): the same seed and settings must give the
//! same tokens here, and on every platform this test runs on.

use ember_core::sampler::{Sampler, SamplingConfig};
use serde_json::Value;

#[test]
fn sampler_matches_the_python_transcription() {
    let text = include_str!("fixtures/sampler_golden.json");
    let golden: Value = serde_json::from_str(text).unwrap();
    let logits: Vec<f32> = golden["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for case in golden["cases"].as_array().unwrap() {
        let c = &case["config"];
        let config = SamplingConfig {
            temperature: c["temperature"].as_f64().unwrap() as f32,
            top_k: c["top_k"].as_u64().unwrap() as u32,
            top_p: c["top_p"].as_f64().unwrap() as f32,
            repetition_penalty: c["repetition_penalty"].as_f64().unwrap() as f32,
            penalty_window: c["penalty_window"].as_u64().unwrap() as u32,
            seed: c["seed"].as_u64().unwrap(),
        };
        let mut sampler = Sampler::new(config).unwrap();
        let mut history: Vec<u32> =
            serde_json::from_value(case["initial_history"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let got: Vec<u32> = (0..want.len())
            .map(|_| {
                let token = sampler.sample(&mut logits.clone(), &history).unwrap();
                history.push(token);
                token
            })
            .collect();
        assert_eq!(got, want, "{config:?}");
    }
}
