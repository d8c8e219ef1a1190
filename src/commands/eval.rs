//! `dsmoe eval`: validation loss of a checkpoint under an inference mode.

use anyhow::Result;
use model::eval::evaluate;
use model::run::{check_vocab, load_model, open_corpus, validation_windows};

use super::{compute_dtype, device, inference_mode, report};
use crate::cli::EvalArgs;

pub fn run(a: EvalArgs) -> Result<()> {
    let mode = inference_mode(&a.mode, &a.att_mode)?;
    let device = device(&a.device)?;
    let dtype = compute_dtype(None, &device)?;
    let loaded = load_model(&a.checkpoint, &device)?;
    let corpus = open_corpus(a.data.as_deref().or(loaded.data.as_deref()))?;
    check_vocab(&loaded.config, &corpus)?;
    let t = &loaded.config.train;
    let windows = validation_windows(&corpus, t.seq_len, a.windows)?;
    let r = evaluate(&loaded.model, &windows, t.batch_size, mode, dtype, corpus.bytes_per_token())?;
    if a.json {
        let mut v = report::json(&r);
        v["checkpoint"] = a.checkpoint.display().to_string().into();
        v["step"] = loaded.step.into();
        v["config"] = loaded.config.model.name.clone().into();
        println!("{v}");
    } else {
        println!("{} at step {} on {} validation tokens of {}", loaded.config.model.name, loaded.step, r.tokens, corpus.path().display());
        println!("{}", report::header());
        println!("{}", report::row(&r, None));
    }
    Ok(())
}
