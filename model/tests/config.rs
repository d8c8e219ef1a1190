//! Configs: every preset loads and checks; inconsistent ones are rejected with the field named.

use model::config::presets;
use model::{Config, Selection};

#[test]
fn every_preset_is_valid() {
    for name in presets::NAMES {
        let c = presets::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&c.model.name, name);
    }
}

#[test]
fn paper_shapes_match_table_1() {
    // Non-embedding parameter totals of Pan et al. Table 1 (millions), within the routers' and
    // norms' share: the table's totals exclude embeddings.
    for (name, millions) in [("dense-1b", 1017.0), ("dense-6b", 6186.0), ("ds-moe-1b", 1067.0), ("ds-moe-6b", 6343.0), ("smoe-1b", 1042.0)] {
        let c = presets::load(name).unwrap();
        let m = &c.model;
        let a = &m.attention;
        let d = m.d_model;
        let attn = d * m.q_heads() * a.head_dim * 2 + 2 * d * a.kv_heads * a.head_dim;
        let mlp = 2 * d * m.mlp.n_experts * m.mlp.expert_width;
        let total = (m.n_layers * (attn + mlp)) as f64 / 1e6;
        assert!((total - millions).abs() / millions < 0.06, "{name}: {total:.0}M vs {millions}M");
    }
}

fn with(edit: impl Fn(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&presets::load("ds-moe-tiny").unwrap().to_json()).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn inconsistent_configs_are_rejected_with_a_reason() {
    let cases: Vec<(String, &str)> = vec![
        (with(|v| v["model"]["attention"]["kv_heads"] = 3.into()), "kv_heads"),
        (with(|v| v["model"]["attention"]["head_dim"] = 15.into()), "head_dim"),
        (with(|v| v["model"]["family"] = "dense".into()), "dense model"),
        (with(|v| v["model"]["mlp"]["top_k"] = 2.into()), "top_k"),
        (with(|v| v["train"]["seq_len"] = 4096.into()), "max_seq_len"),
        (with(|v| v["model"]["d_model"] = 0.into()), "d_model"),
        (with(|v| v["model"]["wat"] = 1.into()), "unknown field"),
        (with(|v| v["train"]["lr"] = (-1.0).into()), "lr"),
        ("{not json".into(), "key must be a string"),
    ];
    for (text, needle) in cases {
        let err = Config::from_json(&text, "test.json").expect_err(needle).to_string();
        assert!(err.contains("test.json") && err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(presets::load("no-such-config").unwrap_err().to_string().contains("not a preset"));
}

#[test]
fn mode_strings_parse_or_explain() {
    assert_eq!(Selection::parse("dense").unwrap(), Selection::Dense);
    assert_eq!(Selection::parse("top-k:4").unwrap(), Selection::TopK(4));
    assert_eq!(Selection::parse("threshold:0.5").unwrap(), Selection::Threshold(0.5));
    assert_eq!(Selection::parse("threshold-k:0.48").unwrap(), Selection::ThresholdK(0.48));
    for bad in ["top-k", "top-k:0", "top-k:x", "threshold:-1", "sparse", "dense:2", ""] {
        assert!(Selection::parse(bad).is_err(), "{bad:?} should be rejected");
    }
    // One setting for both routers (the paper's Threshold strategy), or each its own.
    let both = model::InferenceMode::parse("threshold:0.48", "same").unwrap();
    assert_eq!(both, model::InferenceMode::both(Selection::Threshold(0.48)));
    let apart = model::InferenceMode::parse("top-k:2", "threshold:1").unwrap();
    assert_eq!((apart.mlp, apart.attention), (Selection::TopK(2), Selection::Threshold(1.0)));
    assert!(model::InferenceMode::parse("top-k:2", "same-ish").is_err());
}

#[test]
fn peer_presets_have_their_published_sizes() {
    // Published totals, embeddings included (Mistral-7B 7.24B; DeepSeekMoE-16B 16.4B, 2.8B
    // active; Qwen1.5-MoE-A2.7B 14.3B, 2.7B active), within 1 %.
    for (name, total, active) in [("mistral-7b", 7.24e9, 7.24e9), ("deepseekmoe-16b", 16.4e9, 2.8e9), ("qwen1.5-moe-a2.7b", 14.3e9, 2.7e9)] {
        let k = presets::load(name).unwrap().model.counts(None, None).unwrap();
        let (got_total, got_active) = ((k.total + k.embedding) as f64, k.active + k.embedding as f64);
        assert!((got_total / total - 1.0).abs() < 0.01, "{name}: {got_total:.4e} parameters, published {total:e}");
        assert!((got_active / active - 1.0).abs() < 0.015, "{name}: {got_active:.4e} active, published {active:e}");
    }
}

/// A tiny config with the peers' MLP: SwiGLU, a dense first layer and shared experts.
fn swiglu_tiny(name: &str) -> model::ModelConfig {
    let mut c = presets::load(name).unwrap().model;
    c.mlp.activation = model::config::Activation::Swiglu;
    c.mlp.first_dense_layers = 1;
    c.mlp.dense_width = Some(96);
    c.mlp.shared_experts = 2;
    c
}

#[test]
fn config_counts_match_an_instantiated_model() {
    let mut configs: Vec<_> = ["ds-moe-tiny", "dense-tiny", "smoe-tiny", "fairseq-moe-tiny"].iter().map(|n| presets::load(n).unwrap().model).collect();
    configs.extend([swiglu_tiny("ds-moe-tiny"), swiglu_tiny("smoe-tiny")]);
    for c in configs {
        let name = &c.name;
        let m = model::Model::new(&c, &engine::Device::Cpu, 0).unwrap();
        let (from_config, from_model) = (c.counts(None, None).unwrap(), m.param_counts(None));
        assert_eq!(from_config.total, from_model.total, "{name}");
        assert_eq!(from_config.embedding, from_model.embedding, "{name}");
    }
}
