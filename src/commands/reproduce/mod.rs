//! `dsmoe reproduce`: the claims of the DS-MoE paper (Pan et al. 2024) and of Artetxe et al. (2021),
//! as collected in `paper-notes.md`, turned into experiments one command runs and reports on.
//!
//! Each experiment names the runs it needs; runs are shared between experiments (one DS-MoE run
//! serves Table 3, Fig. 4, Fig. 5, the middle size of Fig. 3 and the default α of Table 4), trained
//! by the same `TrainingRun` code as `dsmoe train`, and reused or resumed from `OUT/runs/` (see
//! `lab`). Each experiment writes `OUT/<experiment>/` (results.json, table.md, plots) and the
//! report (`claims`) is rebuilt from every results.json present at the end.
//!
//! Scales: `tiny` trains the tiny configs for their own 600 steps (1.8 training tokens per
//! non-embedding parameter; at 300 steps, 0.9, every experiment ran in 32 minutes on a 2-core CPU
//! shared with other builds, so 600 steps fit the 60-minute target on a quiet one); `small` trains
//! them 4x as long and evaluates on 4x the windows; `paper` trains the paper's 1B/3B/6B presets (a
//! GPU job; Artetxe et al.'s pair has no preset at that scale); `toy` is a seconds-long miniature
//! for tests.

mod artetxe;
mod claims;
mod fig3;
mod fig4;
mod fig5;
mod lab;
mod output;
mod speed;
mod table3;
mod table4;
mod table7;
mod timing;
mod why;

use anyhow::{bail, Result};
use model::config::presets;
use model::Config;

use self::lab::{Lab, RunSpec};
use super::{compute_dtype, device};
use crate::cli::{ReproduceArgs, Scale};

pub use claims::write_report;

/// The experiments, in report order, with what each reproduces.
pub const EXPERIMENTS: &[(&str, &str)] = &[
    ("table3", "Table 3: quality against active parameters (dense, DS-MoE, SMoE of one total size)"),
    ("fig4", "Fig. 4: inference strategies, loss against active parameters"),
    ("table4", "Table 4: the MLP's MI weight α against sparsity and loss"),
    ("fig3", "Fig. 3: sparsity grows with model size"),
    ("fig5", "Fig. 5: per-layer expert utilisation, attention and MLP"),
    ("artetxe", "Artetxe et al.: top-2 MoE against its dense twin at equal training FLOPs"),
    ("speed", "Table 5 and Fig. 6: latency, input, output and serving throughput of DS-MoE, dense against sparse (the `dsmoe bench inference` protocols)"),
    ("table7", "Table 7: serving throughput of DS-MoE against dense and SMoE models"),
];

pub fn run(a: ReproduceArgs) -> Result<()> {
    let names: Vec<&str> = if a.experiments.is_empty() {
        EXPERIMENTS.iter().map(|e| e.0).collect()
    } else {
        let mut names = Vec::new();
        for e in &a.experiments {
            let Some(&(name, _)) = EXPERIMENTS.iter().find(|(n, _)| n == e) else {
                bail!("unknown experiment {e:?}; the experiments are {}", EXPERIMENTS.iter().map(|e| e.0).collect::<Vec<_>>().join(", "));
            };
            names.push(name);
        }
        names
    };
    let device = device(&a.device)?;
    let dtype = compute_dtype(None, &device)?;
    let mut lab = Lab::new(&a.out, eval_windows(a.scale), device, dtype, a.data.clone())?;
    let mut plan: Vec<RunSpec> = Vec::new();
    for name in &names {
        for spec in runs_of(name, a.scale)? {
            if !plan.iter().any(|p| p.name == spec.name) {
                plan.push(spec);
            }
        }
    }
    lab.plan(&plan);
    for name in &names {
        let scale = a.scale;
        let (began, trained_before) = (std::time::Instant::now(), lab.training_s);
        match *name {
            "table3" => table3::run(&mut lab, scale)?,
            "fig4" => fig4::run(&mut lab, scale)?,
            "table4" => table4::run(&mut lab, scale)?,
            "fig3" => fig3::run(&mut lab, scale)?,
            "fig5" => fig5::run(&mut lab, scale)?,
            "artetxe" => artetxe::run(&mut lab, scale)?,
            "table7" => table7::run(&mut lab, scale)?,
            _ => speed::run(&mut lab, scale)?,
        }
        let wall = began.elapsed().as_secs_f64();
        let runs = runs_of(name, a.scale)?.into_iter().map(|s| s.name).collect();
        lab.timings.experiment(name, runs, wall, lab.training_s - trained_before);
        lab.timings.save(&a.out)?;
        lab.say(&format!("{name}: written to {} in {wall:.0} s", a.out.join(name).display()));
    }
    let invocation = timing::Invocation { experiments: names.iter().map(|n| n.to_string()).collect(), seconds: lab.elapsed_s(), steps_trained: lab.trained_steps() };
    lab.timings.invocations.push(invocation);
    lab.timings.save(&a.out)?;
    lab.finish();
    let report = write_report(&a.out, a.scale)?;
    println!("report: {}", report.display());
    Ok(())
}

/// The runs experiment `name` trains at `scale`.
fn runs_of(name: &str, scale: Scale) -> Result<Vec<RunSpec>> {
    Ok(match name {
        "table3" => table3::runs(scale)?,
        "fig4" | "fig5" | "speed" => vec![ds_moe(scale)?],
        "table4" => table4::runs(scale)?,
        "fig3" => fig3::runs(scale)?,
        "artetxe" => artetxe::runs(scale)?,
        _ => vec![],
    })
}

/// Validation windows per evaluation.
fn eval_windows(scale: Scale) -> usize {
    match scale {
        Scale::Toy => 4,
        Scale::Tiny => 96,
        Scale::Small => 384,
        Scale::Paper => 256,
    }
}

/// A preset, fitted to `scale`: `tiny` keeps the preset's schedule (600 steps for the tiny configs)
/// with evaluations of 48 windows every 50 steps for the curves, `small` trains 4x as long, `paper`
/// keeps the preset's schedule, `toy` shrinks everything.
fn preset(name: &str, scale: Scale) -> Result<Config> {
    let mut c = presets::load(name)?;
    let t = &mut c.train;
    match scale {
        Scale::Toy => {
            let m = &mut c.model;
            let old_d = m.d_model;
            m.d_model = 32;
            m.n_layers = 2;
            m.max_seq_len = 16;
            m.attention.head_dim = 32 / m.q_heads();
            m.mlp.expert_width = (m.mlp.expert_width * 32 / old_d).max(1);
            m.mlp.dense_width = m.mlp.dense_width.map(|w| (w * 32 / old_d).max(1));
            *t = model::TrainConfig { batch_size: 2, seq_len: 16, steps: 4, warmup_steps: 1, eval_interval: 2, eval_windows: 2, final_eval_windows: 4, checkpoint_interval: 2, ..t.clone() };
        }
        Scale::Tiny => {
            t.eval_interval = 50;
            t.eval_windows = 48;
        }
        Scale::Small => {
            t.steps *= 4;
            t.checkpoint_interval *= 4;
        }
        Scale::Paper => {}
    }
    c.validate(name)?;
    Ok(c)
}

/// The attention MI weight of the paper's DS-MoE-3B and 6B (Table 2), per layer.
const PAPER_MI_ALPHA_ATT: f64 = 2e-4;

/// The DS-MoE run most experiments share. Below paper scale it is ds-moe-tiny with the paper's
/// attention MI weight: ds-moe-tiny's 0.005 was chosen for the main job's MLP sparsity and never
/// tuned for attention. In 300-step runs at ε = 0.48 in both routers, 0.005 left 28-32 % of the
/// attention experts in use in layers 1-3 (the paper: above 60 % in every layer) at loss 2.041,
/// 1e-3 47-83 % at 2.052, and the paper's 2e-4 56-76 % at 2.022 (dense: 2.019 against 2.033).
/// The MLP's weight stays ds-moe-tiny's 0.0125, about 30x the paper's (4e-4 for 3B): in 300-step
/// runs the paper's value left DS-MoE worse densely (2.082 against 2.019) and at ε = 0.48 kept 52 %
/// of the MLP experts (18 % at 0.0125) at loss 2.080 against 2.021, so the stronger weight is both
/// sparser and better here, and Table 4 sweeps it.
fn ds_moe(scale: Scale) -> Result<RunSpec> {
    if scale == Scale::Paper {
        return Ok(RunSpec { name: "ds-moe".into(), config: preset("ds-moe-1b", scale)? });
    }
    let mut config = preset("ds-moe-tiny", scale)?;
    let m = &mut config.model;
    m.mi_alpha_att = PAPER_MI_ALPHA_ATT;
    m.name = format!("{}-att2e-4", m.name);
    m.description = format!("{} Here the attention MI weight is the paper's (Table 2, DS-MoE-3B and 6B: 2e-4 per layer) instead.", m.description);
    Ok(RunSpec { name: "ds-moe".into(), config })
}
