//! Checkpoints: bit-exact round trips of every dtype, `latest` and pruning, every way a checkpoint
//! can be broken (each a clear error), crashes in the middle of a save, atomic writes, RNG state as
//! hex, and interoperability with Python's `safetensors`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use engine::{bf16, f16, CpuStorage, DType, Device, Rng, Tensor};
use model::checkpoint::{
    rng_from_hex, rng_to_hex, save, save_tensors, write_atomic, write_atomic_with, Checkpoint, Snapshot, TensorFile, CONFIG_FILE, FORMAT_VERSION, LATEST_FILE,
    MODEL_FILE, STATE_FILE,
};
use model::config::presets;
use model::{Error, Model};
use serde_json::{json, Value};

use common::{err_naming, Scratch};

fn bytes_of(t: &Tensor) -> Vec<u8> {
    t.to_cpu_storage().unwrap().as_bytes().to_vec()
}

/// One tensor of each dtype, with values that only a bit-exact copy preserves: NaN payloads, -0,
/// subnormals, infinities, the largest u32.
fn every_dtype() -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(11);
    let mut f32s: Vec<f32> = (0..6).map(|_| rng.normal() as f32).collect();
    f32s[0] = f32::from_bits(0x7fc0_1234);
    f32s[1] = -0.0;
    f32s[2] = f32::from_bits(1);
    let f64s = vec![std::f64::consts::PI, -0.0, f64::from_bits(0x7ff8_0000_0000_0abc), f64::MIN_POSITIVE / 3.0];
    let bf16s: Vec<bf16> = (0..6).map(|i| bf16::from_f64(rng.normal() * 10f64.powi(i))).chain([bf16::NEG_INFINITY, bf16::from_bits(0x7fc1)]).collect();
    let f16s: Vec<f16> = [0.1, -65504.0, 6e-8, 1.0, 3.5].iter().map(|&v| f16::from_f64(v)).collect();
    let u32s = vec![0u32, 1, 0xdead_beef, u32::MAX];
    vec![
        ("layers.0.w".into(), Tensor::from_cpu(CpuStorage::F32(f32s), vec![2, 3])),
        ("f64.vector".into(), Tensor::from_cpu(CpuStorage::F64(f64s), vec![4])),
        ("bf16.matrix".into(), Tensor::from_cpu(CpuStorage::BF16(bf16s), vec![2, 2, 2])),
        ("f16.v".into(), Tensor::from_cpu(CpuStorage::F16(f16s), vec![5])),
        ("u32.ids".into(), Tensor::from_cpu(CpuStorage::U32(u32s), vec![2, 2])),
        ("scalar".into(), Tensor::from_cpu(CpuStorage::F32(vec![2.5]), Vec::<usize>::new())),
    ]
}

fn snapshot<'a>(step: u64, model: &'a [(String, Tensor)], config: &'a Value, state: &'a Value) -> Snapshot<'a> {
    Snapshot { step, model, optimizer: &model[..2], config, state }
}

#[test]
fn save_then_open_round_trips_every_dtype_bit_exactly() {
    let dir = Scratch::new("checkpoint-roundtrip");
    let run = dir.path("run");
    let tensors = every_dtype();
    let config = json!({ "model": { "d_model": 8, "name": "t" }, "lr": 3e-4 });
    let rng = Rng::new(77);
    let state = json!({ "data_rng": rng_to_hex(&rng), "tokens_seen": 123_456_789_012u64 });
    let step_dir = save(&run, &snapshot(1000, &tensors, &config, &state), 3).unwrap();
    assert_eq!(step_dir, run.join("step-00001000"));

    for opened in [Checkpoint::open(&run).unwrap(), Checkpoint::open(&step_dir).unwrap()] {
        assert_eq!(opened.step(), 1000);
        assert_eq!(opened.dir(), step_dir);
        assert_eq!(opened.state(), &state);
        assert_eq!(opened.config().unwrap(), config);
        let file = opened.model().unwrap();
        let mut names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(file.names(), names);
        let meta = file.metadata();
        assert_eq!(meta.get("format").map(String::as_str), Some("dsmoe"));
        assert_eq!(meta.get("step").map(String::as_str), Some("1000"));
        assert_eq!(meta.get("format_version"), Some(&FORMAT_VERSION.to_string()));
        let loaded = file.load_all(&Device::Cpu).unwrap();
        for (name, t) in &tensors {
            let back = &loaded[name];
            assert_eq!((back.dtype(), back.dims()), (t.dtype(), t.dims()), "{name}");
            assert_eq!(bytes_of(back), bytes_of(t), "{name}");
        }
        let optimizer = opened.optimizer().unwrap().load_all(&Device::Cpu).unwrap();
        assert_eq!(optimizer.len(), 2);
        assert_eq!(bytes_of(&optimizer["layers.0.w"]), bytes_of(&tensors[0].1));
        let restored = rng_from_hex(opened.state()["data_rng"].as_str().unwrap()).unwrap();
        assert_eq!(restored.state(), rng.state());
    }
}

#[test]
fn latest_names_the_newest_and_keep_last_prunes() {
    let dir = Scratch::new("checkpoint-latest");
    let run = dir.path("run");
    let tensors = every_dtype();
    let config = json!({});
    for step in [100u64, 200, 300, 400, 500] {
        save(&run, &snapshot(step, &tensors, &config, &json!({ "at": step })), 2).unwrap();
        assert_eq!(fs::read_to_string(run.join(LATEST_FILE)).unwrap().trim(), format!("step-{step:08}"));
        let opened = Checkpoint::open(&run).unwrap();
        assert_eq!((opened.step(), opened.state()["at"].as_u64()), (step, Some(step)));
    }
    assert_eq!(step_dirs(&run), ["step-00000400", "step-00000500"]);

    // keep_last 0 still keeps the checkpoint just written.
    save(&run, &snapshot(600, &tensors, &config, &json!({})), 0).unwrap();
    assert_eq!(step_dirs(&run), ["step-00000600"]);

    // Re-saving the latest step in place is refused; the checkpoint stays loadable.
    let msg = err_naming(save(&run, &snapshot(600, &tensors, &config, &json!({})), 2), &run.join("step-00000600"));
    assert!(msg.contains("refusing"), "{msg}");
    assert_eq!(Checkpoint::open(&run).unwrap().step(), 600);
}

fn step_dirs(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("step-")).collect();
    names.sort();
    names
}

#[test]
fn a_crash_mid_save_leaves_the_previous_checkpoint_loadable() {
    let dir = Scratch::new("checkpoint-crash");
    let run = dir.path("run");
    let tensors = every_dtype();
    let config = json!({ "c": 1 });
    save(&run, &snapshot(10, &tensors, &config, &json!({ "at": 10 })), 3).unwrap();

    // A save of step 20 that died after writing the weights (no state.json), with temporary files of
    // interrupted atomic writes beside the weights and beside `latest`.
    let partial = run.join("step-00000020");
    fs::create_dir(&partial).unwrap();
    fs::copy(run.join("step-00000010").join(MODEL_FILE), partial.join(MODEL_FILE)).unwrap();
    fs::write(partial.join(".optimizer.safetensors.4242-0.tmp"), b"half a file").unwrap();
    fs::write(run.join(".latest.4242-1.tmp"), b"step-000").unwrap();

    let opened = Checkpoint::open(&run).unwrap();
    assert_eq!(opened.step(), 10);
    assert_eq!(bytes_of(&opened.model().unwrap().tensor("u32.ids", &Device::Cpu).unwrap()), bytes_of(&tensors[4].1));
    // The partial directory itself is not a checkpoint.
    let msg = err_naming(Checkpoint::open(&partial), &partial);
    assert!(msg.contains("no complete checkpoint"), "{msg}");

    // The next save of that step replaces the debris.
    save(&run, &snapshot(20, &tensors, &config, &json!({ "at": 20 })), 3).unwrap();
    assert!(!partial.join(".optimizer.safetensors.4242-0.tmp").exists());
    assert_eq!(Checkpoint::open(&run).unwrap().state()["at"], 20);
}

#[test]
fn crash_debris_does_not_count_against_keep_last() {
    let dir = Scratch::new("checkpoint-debris");
    let run = dir.path("run");
    let tensors = every_dtype();
    let config = json!({});
    save(&run, &snapshot(1, &tensors, &config, &json!({})), 2).unwrap();
    // An interrupted save of a later step, then the run resumed from step 1 and saved step 2.
    fs::create_dir(run.join("step-00000003")).unwrap();
    fs::write(run.join("step-00000003").join(CONFIG_FILE), b"{}").unwrap();
    save(&run, &snapshot(2, &tensors, &config, &json!({})), 2).unwrap();
    // Two complete checkpoints are kept, as asked; the incomplete directory is gone.
    assert_eq!(step_dirs(&run), ["step-00000001", "step-00000002"]);
    assert_eq!(Checkpoint::open(&run.join("step-00000001")).unwrap().step(), 1);
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    let dir = Scratch::new("checkpoint-broken");
    let run = dir.path("run");
    let tensors = every_dtype();
    let config = json!({});
    let step_dir = save(&run, &snapshot(5, &tensors, &config, &json!({})), 1).unwrap();
    let model_path = step_dir.join(MODEL_FILE);
    let state_path = step_dir.join(STATE_FILE);
    let good_model = fs::read(&model_path).unwrap();
    let good_state = fs::read(&state_path).unwrap();

    let missing = dir.path("nowhere");
    assert!(err_naming(Checkpoint::open(&missing), &missing).contains("no complete checkpoint"));

    // Truncated weights: the header promises more data than the file holds.
    fs::write(&model_path, &good_model[..good_model.len() - 3]).unwrap();
    let msg = err_naming(Checkpoint::open(&run).unwrap().model(), &model_path);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    // Cut inside the header, and before the length prefix ends.
    for cut in [20, 4, 0] {
        fs::write(&model_path, &good_model[..cut]).unwrap();
        err_naming(TensorFile::open(&model_path), &model_path);
    }

    // A corrupt header: garbage JSON, then an absurd header length.
    let mut corrupt = good_model.clone();
    corrupt[8..16].copy_from_slice(b"#garbage");
    fs::write(&model_path, &corrupt).unwrap();
    assert!(err_naming(TensorFile::open(&model_path), &model_path).contains("not a valid safetensors file"));
    let mut corrupt = good_model.clone();
    corrupt[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&model_path, &corrupt).unwrap();
    err_naming(TensorFile::open(&model_path), &model_path);
    fs::write(&model_path, &good_model).unwrap();

    // state.json: another format version, no version, not JSON, no step.
    for (bad, expected) in [
        (json!({ "format_version": FORMAT_VERSION + 1, "step": 5, "state": {} }).to_string(), "format_version"),
        (json!({ "step": 5, "state": {} }).to_string(), "format_version"),
        ("{ \"format_version\": 1, ".to_string(), "invalid JSON"),
        (json!({ "format_version": FORMAT_VERSION, "state": {} }).to_string(), "step"),
        (json!({ "format_version": FORMAT_VERSION, "step": 5 }).to_string(), "state"),
    ] {
        fs::write(&state_path, &bad).unwrap();
        let msg = err_naming(Checkpoint::open(&run), &state_path);
        assert!(msg.contains(expected), "{bad}: {msg}");
    }
    fs::write(&state_path, &good_state).unwrap();

    // A `latest` that names no step directory.
    fs::write(run.join(LATEST_FILE), b"../elsewhere\n").unwrap();
    assert!(err_naming(Checkpoint::open(&run), &run.join(LATEST_FILE)).contains("step-00001000"));
    fs::write(run.join(LATEST_FILE), b"step-00000005\n").unwrap();

    // Missing tensors and wrong shapes, by name.
    let file = Checkpoint::open(&run).unwrap().model().unwrap();
    let msg = err_naming(file.tensor("no.such", &Device::Cpu), &model_path);
    assert!(msg.contains("no.such") && msg.contains("missing"), "{msg}");
    let msg = err_naming(file.load_expected(&[("u32.ids", &[2, 2]), ("layers.0.w", &[3, 2])], &Device::Cpu), &model_path);
    assert!(msg.contains("layers.0.w") && msg.contains("[2, 3]") && msg.contains("[3, 2]"), "{msg}");
    let ok = file.load_expected(&[("u32.ids", &[2, 2])], &Device::Cpu).unwrap();
    assert_eq!(ok.len(), 1);
}

#[test]
fn a_dtype_dsmoe_does_not_use_is_an_error() {
    let dir = Scratch::new("checkpoint-dtype");
    let path = dir.path("i64.safetensors");
    let header = br#"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    fs::write(&path, &bytes).unwrap();
    let file = TensorFile::open(&path).unwrap();
    let msg = err_naming(file.tensor("ids", &Device::Cpu), &path);
    assert!(msg.contains("I64") && msg.contains("ids"), "{msg}");
}

#[test]
fn params_load_checks_names_shapes_and_dtypes() {
    let dir = Scratch::new("checkpoint-params");
    let config = presets::load("dense-tiny").unwrap().model;
    let source = Model::new(&config, &Device::Cpu, 1).unwrap();
    let weights: Vec<(String, Tensor)> = source.params.iter().map(|p| (p.name.clone(), p.value.clone())).collect();
    let path = dir.path(MODEL_FILE);
    save_tensors(&path, &weights, &HashMap::new()).unwrap();
    let origin = path.display().to_string();

    let mut target = Model::new(&config, &Device::Cpu, 2).unwrap();
    target.params.load(&mut TensorFile::open(&path).unwrap().load_all(&Device::Cpu).unwrap(), &origin).unwrap();
    for (p, (_, w)) in target.params.iter().zip(&weights) {
        assert_eq!(bytes_of(&p.value), bytes_of(w), "{}", p.name);
    }

    let first = weights[0].0.clone();
    let mut loaded = TensorFile::open(&path).unwrap().load_all(&Device::Cpu).unwrap();
    loaded.remove(&first);
    let msg = err_naming(target.params.load(&mut loaded, &origin), &path);
    assert!(msg.contains(&format!("missing tensor {first}")), "{msg}");

    let mut loaded = TensorFile::open(&path).unwrap().load_all(&Device::Cpu).unwrap();
    let n = loaded[&first].elem_count();
    loaded.insert(first.clone(), Tensor::zeros(vec![n], DType::F32, &Device::Cpu).unwrap());
    let msg = err_naming(target.params.load(&mut loaded, &origin), &path);
    assert!(msg.contains(&first) && msg.contains("shape"), "{msg}");

    // The right shape in another dtype (an f32 tensor relabelled u32 has the same byte length).
    let mut loaded = TensorFile::open(&path).unwrap().load_all(&Device::Cpu).unwrap();
    let dims = loaded[&first].dims().to_vec();
    loaded.insert(first.clone(), Tensor::zeros(dims, DType::U32, &Device::Cpu).unwrap());
    let msg = err_naming(target.params.load(&mut loaded, &origin), &path);
    assert!(msg.contains(&first) && msg.contains("dtype"), "{msg}");

    let mut loaded = TensorFile::open(&path).unwrap().load_all(&Device::Cpu).unwrap();
    loaded.insert("extra.weight".into(), Tensor::zeros(vec![1], DType::F32, &Device::Cpu).unwrap());
    assert!(err_naming(target.params.load(&mut loaded, &origin), &path).contains("unexpected tensor extra.weight"));
}

#[test]
fn save_tensors_rejects_duplicate_names() {
    let dir = Scratch::new("checkpoint-dup");
    let path = dir.path("dup.safetensors");
    let t = Tensor::zeros(vec![2], DType::F32, &Device::Cpu).unwrap();
    let msg = err_naming(save_tensors(&path, &[("a".into(), t.clone()), ("a".into(), t)], &HashMap::new()), &path);
    assert!(msg.contains("tensor a is given twice"), "{msg}");
    assert!(!path.exists());
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect()
}

#[test]
fn write_atomic_replaces_whole_files_and_leaves_no_temporary_file() {
    let dir = Scratch::new("checkpoint-atomic");
    let path = dir.path("f.bin");
    write_atomic(&path, b"first").unwrap();
    write_atomic(&path, b"second, longer").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second, longer");
    assert!(temp_files(&dir.0).is_empty());

    // A failing writer: the error comes back, the old file is untouched, nothing is left behind.
    let failed = write_atomic_with(&path, |w| {
        use std::io::Write;
        w.write_all(b"partial").unwrap();
        Err(Error::data("the writer", "gave up"))
    });
    assert!(failed.unwrap_err().to_string().contains("gave up"));
    assert_eq!(fs::read(&path).unwrap(), b"second, longer");
    assert!(temp_files(&dir.0).is_empty(), "{:?}", temp_files(&dir.0));

    // Into a directory that does not exist: an error, not a panic.
    let nowhere = dir.path("missing/f.bin");
    assert!(err_naming(write_atomic(&nowhere, b"x"), &dir.path("missing")).contains("creating"));
}

#[test]
fn rng_state_round_trips_through_hex() {
    let mut rng = Rng::new(2024);
    for _ in 0..37 {
        rng.next_u64();
    }
    let hex = rng_to_hex(&rng);
    assert_eq!(hex.len(), 96);
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let mut back = rng_from_hex(&hex).unwrap();
    assert_eq!(rng_to_hex(&back), hex);
    assert_eq!((0..10).map(|_| back.next_u64()).collect::<Vec<_>>(), (0..10).map(|_| rng.next_u64()).collect::<Vec<_>>());
    assert!(rng_from_hex(&hex.to_uppercase()).is_ok());

    let mut bad = vec![String::new(), hex[1..].to_string(), format!("{hex}0"), format!("zz{}", &hex[2..]), format!("+f{}", &hex[2..])];
    bad.push(format!("{}{}", "é".repeat(47), "00")); // 96 bytes, not ASCII
    bad.push(format!("{} {}", &hex[..47], &hex[48..]));
    for b in bad {
        let e = rng_from_hex(&b).err().unwrap_or_else(|| panic!("accepted {b:?}"));
        assert!(e.to_string().contains("RNG state"), "{e}");
    }
}

/// Python's `safetensors` reads what dsmoe writes: values, dtypes, shapes and metadata.
#[test]
fn python_safetensors_reads_dsmoe_files() {
    let python = std::env::var("DSMOE_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var("DSMOE_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "DSMOE_REQUIRE_PYTHON=1 but {why}");
        engine::cuda::report_skip(&format!("Python safetensors interop ({why}; set DSMOE_PYTHON to a python with safetensors and numpy)"));
    };
    match Command::new(&python).args(["-c", "import safetensors.numpy, numpy"]).output() {
        Err(e) => return skip(format!("cannot run {python}: {e}")),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return skip(format!("{python} lacks safetensors or numpy: {}", stderr.lines().last().unwrap_or("").trim()));
        }
        Ok(_) => {}
    }

    let dir = Scratch::new("checkpoint-python");
    let path = dir.path("interop.safetensors");
    let mut rng = Rng::new(5);
    let f32s: Vec<f32> = (0..12).map(|_| rng.normal() as f32).chain([-0.0, 1e-40, f32::MAX]).collect();
    let bf16s: Vec<bf16> = (0..6).map(|_| bf16::from_f64(rng.normal() * 100.0)).collect();
    let u32s: Vec<u32> = vec![0, 7, 65_536, u32::MAX];
    let tensors: Vec<(String, Tensor)> = vec![
        ("w.f32".into(), Tensor::from_cpu(CpuStorage::F32(f32s.clone()), vec![3, 5])),
        ("w.bf16".into(), Tensor::from_cpu(CpuStorage::BF16(bf16s.clone()), vec![2, 3])),
        ("ids.u32".into(), Tensor::from_cpu(CpuStorage::U32(u32s.clone()), vec![4])),
    ];
    let metadata = HashMap::from([("format".to_string(), "dsmoe".to_string()), ("note".to_string(), "π ≈ 3.14".to_string())]);
    save_tensors(&path, &tensors, &metadata).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_safetensors.py");
    let out = Command::new(&python).arg(&script).arg(&path).output().unwrap();
    assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    let meta: HashMap<String, String> = serde_json::from_value(report["metadata"].clone()).unwrap();
    assert_eq!(meta, metadata);
    let t = &report["tensors"];
    assert_eq!(t.as_object().unwrap().len(), 3);
    let floats = |name: &str| -> Vec<f32> { t[name]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect() };
    assert_eq!((t["w.f32"]["dtype"].as_str(), &t["w.f32"]["shape"]), (Some("F32"), &json!([3, 5])));
    assert_eq!(floats("w.f32").iter().map(|v| v.to_bits()).collect::<Vec<_>>(), f32s.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    assert_eq!((t["w.bf16"]["dtype"].as_str(), &t["w.bf16"]["shape"]), (Some("BF16"), &json!([2, 3])));
    assert_eq!(floats("w.bf16").iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bf16s.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<_>>());
    assert_eq!((t["ids.u32"]["dtype"].as_str(), &t["ids.u32"]["shape"]), (Some("U32"), &json!([4])));
    assert_eq!(t["ids.u32"]["values"], json!(u32s));
}
