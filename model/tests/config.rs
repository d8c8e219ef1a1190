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
fn config_counts_match_an_instantiated_model() {
    for name in ["ds-moe-tiny", "dense-tiny", "smoe-tiny", "fairseq-moe-tiny"] {
        let c = presets::load(name).unwrap().model;
        let m = model::Model::new(&c, &engine::Device::Cpu, 0).unwrap();
        let (from_config, from_model) = (c.counts(None, None).unwrap(), m.param_counts(None));
        assert_eq!(from_config.total, from_model.total, "{name}");
        assert_eq!(from_config.embedding, from_model.embedding, "{name}");
    }
}
