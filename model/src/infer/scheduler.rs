//! Continuous batching (as vLLM's offline engine): requests wait in arrival order; each step the
//! scheduler admits waiting requests while a batch slot and cache blocks are free, runs one
//! forward over every running sequence (the next prefill chunk of a prompt, or one decode token),
//! samples where a sequence has consumed all its tokens, and retires finished sequences at once,
//! returning their blocks so the next step can admit more.
//!
//! Blocks are reserved at admission for the whole sequence (prompt plus the tokens it may
//! generate), so a running sequence never waits for memory and nothing is ever preempted; the
//! cost is that a sequence stopping early held blocks it did not use until it retired. A request
//! that could never fit (longer than the context, more blocks than the pool has) is refused
//! before anything runs, rather than waiting forever.

use std::collections::VecDeque;

use super::cache::KvCache;
use super::forward::{forward, Chunk, Tally};
use super::sampling::{Sampler, SamplingParams};
use super::weights::InferWeights;
use crate::{Error, InferenceMode, Result};

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    /// Tokens that end generation (kept in the output).
    pub stop_tokens: Vec<u32>,
    /// Texts that end generation once the decoded output contains one (needs a detokenizer).
    pub stop_strings: Vec<String>,
    pub sampling: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_new_tokens` generated.
    Length,
    /// The context (`max_seq_len`) is full.
    Context,
    StopToken,
    StopString,
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// The request's index in the submitted list.
    pub id: usize,
    pub generated: Vec<u32>,
    pub finish: Finish,
}

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most sequences in one step.
    pub max_batch: usize,
    /// Most prompt tokens of one sequence in one step.
    pub prefill_chunk: usize,
}

/// What one step did, for progress reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepReport {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub running: usize,
    pub finished: usize,
}

/// Decodes tokens to text, for stop strings.
pub type Detokenizer<'a> = &'a dyn Fn(&[u32]) -> String;

struct Running {
    id: usize,
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Positions already in the cache.
    cached: usize,
    /// Total positions this sequence may reach (prompt + generation, within the context).
    limit: usize,
    blocks: Vec<u32>,
    sampler: Sampler,
}

pub struct Scheduler<'a> {
    weights: &'a InferWeights,
    pub cache: KvCache,
    /// One mode per layer.
    modes: Vec<InferenceMode>,
    config: SchedulerConfig,
    pub tally: Tally,
}

impl<'a> Scheduler<'a> {
    pub fn new(weights: &'a InferWeights, cache: KvCache, mode: InferenceMode, config: SchedulerConfig) -> Result<Scheduler<'a>> {
        Scheduler::with_layer_modes(weights, cache, vec![mode; weights.config.n_layers], config)
    }

    /// A scheduler running layer i in `modes[i]` (threshold-K resolved per layer).
    pub fn with_layer_modes(weights: &'a InferWeights, cache: KvCache, modes: Vec<InferenceMode>, config: SchedulerConfig) -> Result<Scheduler<'a>> {
        if config.max_batch == 0 || config.prefill_chunk == 0 {
            return Err(Error::Invalid { what: "scheduler", value: format!("{config:?}"), msg: "max_batch and prefill_chunk must be positive".into() });
        }
        Ok(Scheduler { weights, cache, modes, config, tally: Tally::default() })
    }

    /// Positions request `r` may occupy, or why it can never run.
    fn footprint(&self, i: usize, r: &Request, detok: Option<Detokenizer>) -> Result<usize> {
        let ctx = self.weights.config.max_seq_len;
        let bad = |msg: String| Err(Error::Invalid { what: "request", value: format!("#{i} ({} prompt tokens)", r.prompt.len()), msg });
        if r.prompt.is_empty() {
            return bad("the prompt is empty; it needs at least one token".into());
        }
        if r.prompt.len() >= ctx {
            return bad(format!("the prompt leaves no room to generate in the model's context of {ctx} tokens"));
        }
        if let Some(t) = r.prompt.iter().chain(&r.stop_tokens).find(|&&t| t as usize >= self.weights.config.vocab_size) {
            return bad(format!("token {t} is outside the vocabulary of {}", self.weights.config.vocab_size));
        }
        if !r.stop_strings.is_empty() && detok.is_none() {
            return bad("stop strings need a detokenizer".into());
        }
        r.sampling.validate()?;
        let limit = (r.prompt.len() + r.max_new_tokens).min(ctx);
        let (need, have) = (self.cache.pool.blocks_for(limit), self.cache.pool.num_blocks());
        if need > have {
            let pool = &self.cache.pool;
            return bad(format!("{limit} positions need {need} cache blocks of {}, and the whole cache has {have}: raise the KV-cache budget", pool.block_size()));
        }
        Ok(limit)
    }

    /// Runs every request to completion; returns completions in request order. `on_step` sees each
    /// step's report (for a progress bar). Every request is checked before anything runs.
    pub fn run(&mut self, requests: &[Request], detok: Option<Detokenizer>, mut on_step: impl FnMut(&StepReport)) -> Result<Vec<Completion>> {
        let limits = requests.iter().enumerate().map(|(i, r)| self.footprint(i, r, detok)).collect::<Result<Vec<_>>>()?;
        let mut waiting: VecDeque<usize> = (0..requests.len()).collect();
        let mut running: Vec<Running> = Vec::new();
        let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
        while !waiting.is_empty() || !running.is_empty() {
            while let Some(&i) = waiting.front() {
                if running.len() >= self.config.max_batch {
                    break;
                }
                let Some(blocks) = self.cache.pool.allocate(self.cache.pool.blocks_for(limits[i])) else { break };
                waiting.pop_front();
                let r = &requests[i];
                running.push(Running { id: i, tokens: r.prompt.clone(), prompt_len: r.prompt.len(), cached: 0, limit: limits[i], blocks, sampler: Sampler::new(r.sampling) });
            }
            if running.is_empty() {
                // Unreachable with the footprint checks above, but never loop forever.
                return Err(Error::Invalid { what: "scheduler", value: format!("{} waiting", waiting.len()), msg: "no request fits in an empty cache".into() });
            }
            let mut report = StepReport { running: running.len(), ..StepReport::default() };
            let chunks: Vec<Chunk> = running
                .iter()
                .map(|s| {
                    let end = s.tokens.len().min(s.cached + self.config.prefill_chunk);
                    Chunk { tokens: &s.tokens[s.cached..end], start: s.cached, blocks: &s.blocks }
                })
                .collect();
            for (c, s) in chunks.iter().zip(&running) {
                if s.cached < s.prompt_len {
                    report.prompt_tokens += c.tokens.len();
                } else {
                    report.decode_tokens += c.tokens.len();
                }
            }
            let logits = forward(self.weights, &mut self.cache, &chunks, &self.modes, &mut self.tally)?.to_f64_vec()?;
            let lens: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
            let vocab = self.weights.config.vocab_size;
            let mut still = Vec::with_capacity(running.len());
            for ((mut s, len), row) in running.drain(..).zip(lens).zip(logits.chunks(vocab)) {
                s.cached += len;
                if s.cached < s.tokens.len() {
                    still.push(s);
                    continue;
                }
                let token = s.sampler.sample(row);
                s.tokens.push(token);
                let r = &requests[s.id];
                let generated = &s.tokens[s.prompt_len..];
                let finish = if r.stop_tokens.contains(&token) {
                    Some(Finish::StopToken)
                } else if stop_string_ends(generated, &r.stop_strings, detok) {
                    Some(Finish::StopString)
                } else if generated.len() >= r.max_new_tokens {
                    Some(Finish::Length)
                } else if s.tokens.len() >= s.limit {
                    Some(Finish::Context)
                } else {
                    None
                };
                match finish {
                    Some(finish) => {
                        report.finished += 1;
                        self.cache.pool.release(std::mem::take(&mut s.blocks));
                        done[s.id] = Some(Completion { id: s.id, generated: s.tokens.split_off(s.prompt_len), finish });
                    }
                    None => still.push(s),
                }
            }
            running = still;
            on_step(&report);
        }
        Ok(done.into_iter().map(|c| c.expect("every request ran to completion")).collect())
    }
}

/// True when the generated text ends in (contains, at its tail) one of `stops`: only the last
/// tokens are decoded, as many as the longest stop string has bytes (a token is at least a byte).
fn stop_string_ends(generated: &[u32], stops: &[String], detok: Option<Detokenizer>) -> bool {
    let (Some(detok), Some(longest)) = (detok, stops.iter().map(String::len).max()) else { return false };
    let tail = &generated[generated.len().saturating_sub(longest + 1)..];
    let text = detok(tail);
    stops.iter().any(|s| !s.is_empty() && text.contains(s.as_str()))
}
