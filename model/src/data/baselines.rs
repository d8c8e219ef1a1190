//! Reference losses that need no model: what a uniform guess, token frequencies (unigram) and
//! next-token frequencies given the previous token (bigram) score on the validation split, with
//! counts from the training split and add-one smoothing (so no validation token has probability 0).
//! Printed beside a model's loss, they say at a glance whether it learned more than frequencies:
//! on the default corpus, unigram 3.33 and bigram 2.54 nats per byte.

use std::collections::HashMap;

use super::{Corpus, Split};
use crate::Result;

/// Cross-entropies of the validation split, nats per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baselines {
    pub uniform: f64,
    pub unigram: f64,
    pub bigram: f64,
}

/// Tokens read per step: bounded memory whatever the corpus size.
const CHUNK: usize = 1 << 20;

/// Calls `f(previous, token)` for every token of `split`, in order (`previous` is None for the first).
fn for_each_pair(corpus: &Corpus, split: Split, mut f: impl FnMut(Option<u32>, u32)) -> Result<()> {
    let range = corpus.range(split);
    let mut prev = None;
    let mut buf = Vec::with_capacity(CHUNK);
    let mut at = range.start;
    while at < range.end {
        let n = CHUNK.min(range.end - at);
        buf.clear();
        corpus.read_into(at, n, &mut buf)?;
        for &t in &buf {
            f(prev, t);
            prev = Some(t);
        }
        at += n;
    }
    Ok(())
}

impl Corpus {
    pub fn baselines(&self) -> Result<Baselines> {
        let v = self.vocab_size();
        // Bigram counts are sparse for large vocabularies, hence a map keyed by (previous, next).
        let (mut unigram, mut context) = (vec![0u64; v], vec![0u64; v]);
        let mut bigram: HashMap<(u32, u32), u64> = HashMap::new();
        let mut n = 0u64;
        for_each_pair(self, Split::Train, |prev, t| {
            unigram[t as usize] += 1;
            n += 1;
            if let Some(p) = prev {
                context[p as usize] += 1;
                *bigram.entry((p, t)).or_default() += 1;
            }
        })?;
        let vf = v as f64;
        let (mut uni_nll, mut bi_nll, mut tokens, mut pairs) = (0.0, 0.0, 0u64, 0u64);
        for_each_pair(self, Split::Validation, |prev, t| {
            uni_nll -= ((unigram[t as usize] + 1) as f64 / (n as f64 + vf)).ln();
            tokens += 1;
            if let Some(p) = prev {
                let c = bigram.get(&(p, t)).copied().unwrap_or(0);
                bi_nll -= ((c + 1) as f64 / (context[p as usize] as f64 + vf)).ln();
                pairs += 1;
            }
        })?;
        Ok(Baselines { uniform: vf.ln(), unigram: uni_nll / tokens as f64, bigram: bi_nll / pairs as f64 })
    }
}
