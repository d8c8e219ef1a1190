//! One forward step of the inference path over a batch of chunks: each chunk is a run of new
//! tokens of one sequence (a prefill chunk of a prompt, or the single token of a decode step), at
//! its positions, with the sequence's block table. Every new token's keys and values go into the
//! paged cache first; then each token attends to its own sequence's positions up to itself through
//! `paged_attention` (one query row per token, context length = position + 1), which makes a
//! prefill chunk causal without a mask and lets prefill and decode share one batch.
//!
//! No tape and nothing saved: each op's output lives until the next op has read it. Logits are
//! computed for each chunk's last token only (what sampling needs).
//!
//! Experts: the MLP routes per token (top-K, threshold, threshold-K) through the engine's routing
//! op and runs only the chosen experts (`moe_sparse_mlp`, `moe_sparse_swiglu` for SwiGLU experts);
//! dense modes use the fused dense MoE op (SwiGLU: the training model's full-width composition),
//! and shared experts are added to every token's routed output. A router-less MLP (GeLU or SwiGLU,
//! shared experts too) at decode size on the CPU runs as a one-expert sparse MLP, for the engine's
//! one-loop decode path.
//! Attention experts either run every head and gate them (the paper's dense attention) or, with
//! per-expert weights (`HeadProjections::PerExpert`), compute query projections and output rows
//! only for the experts each token selects; the attention core itself then still runs over every
//! head (unselected heads see zero queries), so what is saved is the projections' weight reads.
//!
//! Routing statistics accumulate in device scalars and are read once, by the caller, at the end.

use autograd::Var;
use engine::ops::{self, MoePath, RouteMode};
use engine::{DType, Tensor};

use super::cache::KvCache;
use super::weights::{AttentionWeights, ExpertWeights, HeadProjections, InferWeights, MlpWeights, RouterWeights};
use crate::config::Family;
use crate::mlp;
use crate::router::Selection;
use crate::{Error, InferenceMode, Result};

/// New tokens of one sequence: `tokens` at positions `start ..`, the sequence's `blocks` covering
/// at least `start + tokens.len()` positions.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub blocks: &'a [u32],
}

/// Expert use summed over the tokens and routed layers of forward steps (device scalars).
#[derive(Debug, Default)]
pub struct Tally {
    /// Token-layer pairs through a routed attention / MLP layer.
    pub att_token_layers: usize,
    pub mlp_token_layers: usize,
    /// Experts used over those pairs, as f32 scalars on the device (None: nothing routed yet),
    /// besides those of dense layers (every expert of every token), counted here on the host.
    att_experts: Option<Tensor>,
    mlp_experts: Option<Tensor>,
    att_dense: usize,
    mlp_dense: usize,
}

impl Tally {
    fn add(acc: &mut Option<Tensor>, count: Tensor) -> Result<()> {
        let count = ops::cast(&count, DType::F32)?;
        *acc = Some(match acc.take() {
            Some(a) => ops::add(&a, &count)?,
            None => count,
        });
        Ok(())
    }

    /// Mean attention and MLP experts per token and routed layer (None where nothing was routed).
    pub fn experts_per_token(&self) -> Result<(Option<f64>, Option<f64>)> {
        let mean = |acc: &Option<Tensor>, dense: usize, n: usize| -> Result<Option<f64>> {
            let routed = match acc {
                Some(t) => t.to_scalar()?,
                None => 0.0,
            };
            Ok(if n > 0 { Some((routed + dense as f64) / n as f64) } else { None })
        };
        Ok((mean(&self.att_experts, self.att_dense, self.att_token_layers)?, mean(&self.mlp_experts, self.mlp_dense, self.mlp_token_layers)?))
    }
}

/// The per-token index tensors of a batch.
struct Batch {
    n: usize,
    cos: Tensor,
    sin: Tensor,
    slots: Tensor,
    table: Tensor,
    lens: Tensor,
}

/// Runs `chunks` through the model, writing their keys and values into `cache`; returns the
/// logits `[chunks.len(), vocab]` of each chunk's last token. `modes` holds each layer's mode.
pub fn forward(w: &InferWeights, cache: &mut KvCache, chunks: &[Chunk], modes: &[InferenceMode], tally: &mut Tally) -> Result<Tensor> {
    match w.device() {
        // On a pool worker, the others kept awake, so that the step's parallel ops neither wake
        // the calling thread nor wait for sleeping workers.
        engine::Device::Cpu => engine::cpu::on_pool_kept_awake(|| forward_here(w, cache, chunks, modes, tally)),
        _ => forward_here(w, cache, chunks, modes, tally),
    }
}

fn forward_here(w: &InferWeights, cache: &mut KvCache, chunks: &[Chunk], modes: &[InferenceMode], tally: &mut Tally) -> Result<Tensor> {
    let cfg = &w.config;
    if modes.len() != w.layers.len() {
        return Err(Error::Invalid { what: "modes", value: modes.len().to_string(), msg: format!("one inference mode per layer is needed ({} layers)", w.layers.len()) });
    }
    let device = w.device();
    let bs = cache.pool.block_size();
    let max_blocks = chunks.iter().map(|c| c.blocks.len()).max().unwrap_or(0);
    let (mut tokens, mut positions, mut slots, mut lens, mut table, mut last) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, c) in chunks.iter().enumerate() {
        let end = c.start + c.tokens.len();
        if c.tokens.is_empty() || end > cfg.max_seq_len || end > c.blocks.len() * bs {
            return Err(Error::Invalid {
                what: "chunk",
                value: format!("sequence {i}: {} tokens at position {}", c.tokens.len(), c.start),
                msg: format!("needs 1 or more tokens ending within the context ({}) and its {} cache blocks of {bs}", cfg.max_seq_len, c.blocks.len()),
            });
        }
        if let Some(bad) = c.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Invalid { what: "token", value: bad.to_string(), msg: format!("the vocabulary has {} tokens", cfg.vocab_size) });
        }
        for (j, &t) in c.tokens.iter().enumerate() {
            let p = c.start + j;
            tokens.push(t);
            positions.push(p as u32);
            slots.push(c.blocks[p / bs] * bs as u32 + (p % bs) as u32);
            lens.push(p as u32 + 1);
            table.extend_from_slice(c.blocks);
            table.resize(tokens.len() * max_blocks, 0);
        }
        last.push(tokens.len() as u32 - 1);
    }
    let n = tokens.len();
    let u32s = |v: &[u32], dims: Vec<usize>| Tensor::from_slice(v, dims, &device);
    let pos = u32s(&positions, vec![n])?;
    let b = Batch { n, cos: ops::index_select(&w.cos, &pos)?, sin: ops::index_select(&w.sin, &pos)?, slots: u32s(&slots, vec![n])?, table: u32s(&table, vec![n, max_blocks])?, lens: u32s(&lens, vec![n])? };

    // The residual stream `h`, and the output of the last block not yet added to it: each norm
    // adds it on the way in.
    let (mut h, mut branch) = (ops::index_select(&w.embed, &u32s(&tokens, vec![n])?)?, None);
    for (i, (layer, mode)) in w.layers.iter().zip(modes).enumerate() {
        let x;
        (x, h) = add_norm(h, branch.as_ref(), &layer.attn_norm, cfg.norm_eps)?;
        let a = attention(&layer.attn, i, w, &x, &b, cache, mode.attention, tally)?;
        let x;
        (x, h) = add_norm(h, Some(&a), &layer.mlp_norm, cfg.norm_eps)?;
        branch = Some(mlp(&layer.mlp, w, &x, mode.mlp, tally)?);
    }
    let last = u32s(&last, vec![chunks.len()])?;
    let branch = branch.map(|t| ops::index_select(&t, &last)).transpose()?;
    let (h, _) = add_norm(ops::index_select(&h, &last)?, branch.as_ref(), &w.final_norm, cfg.norm_eps)?;
    Ok(match &w.lm_head {
        Some(head) => ops::matmul(&h, head)?,
        None => ops::matmul_t(&h, &w.embed, false, true)?,
    })
}

/// RMSNorm of the residual stream `h` after adding a block's output `branch` to it, in one op
/// (the training model's fused op, so both paths round alike: the sum is rounded to the storage
/// type before it is normalised, as a separate add would round it); returns the normalised rows
/// and the new stream.
fn add_norm(h: Tensor, branch: Option<&Tensor>, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    Ok(match branch {
        None => (ops::rms_norm(&h, None, weight, eps)?.y, h),
        Some(branch) => {
            let norm = ops::rms_norm(branch, Some(&h), weight, eps)?;
            (norm.y, norm.sum.expect("rms_norm returns the sum when given a residual"))
        }
    })
}

fn route(r: &RouterWeights, x: &Tensor) -> Result<Tensor> {
    let mut h = ops::matmul(x, &r.layers[0])?;
    if let Some(w2) = r.layers.get(1) {
        h = ops::matmul(&ops::gelu(&h)?, w2)?;
    }
    Ok(ops::softmax(&h)?)
}

#[allow(clippy::too_many_arguments)]
fn attention(aw: &AttentionWeights, layer: usize, w: &InferWeights, x: &Tensor, b: &Batch, cache: &mut KvCache, selection: Selection, tally: &mut Tally) -> Result<Tensor> {
    let a = &w.config.attention;
    let (n, hq, hkv, dh, experts) = (b.n, w.config.q_heads(), a.kv_heads, a.head_dim, a.n_experts);
    let rope = |t: Tensor, heads: usize| -> Result<Tensor> { Ok(ops::rope(&t.reshape([1, n, heads, dh])?, &b.cos, &b.sin, false)?.reshape([n, heads, dh])?) };
    // Queries (with `Whole` heads), keys and values from one product.
    let qkv = ops::matmul(x, &aw.wqkv)?;
    let q_cols = qkv.dims()[1] - 2 * hkv * dh;
    let k = rope(ops::narrow(&qkv, 1, q_cols, hkv * dh)?, hkv)?;
    let v = ops::narrow(&qkv, 1, q_cols + hkv * dh, hkv * dh)?.reshape([n, hkv, dh])?;
    cache.write(layer, &k, &v, &b.slots)?;
    let attend = |q: &Tensor| -> Result<Tensor> { Ok(ops::paged_attention(q, &cache.k[layer], &cache.v[layer], &b.table, &b.lens, 1.0 / (dh as f64).sqrt())?) };
    // The router's gate [n, E] (probabilities, zeroed for unselected experts) and the 0/1 mask.
    let gate = match &aw.router {
        None => None,
        Some(r) => {
            let probs = route(r, x)?;
            tally.att_token_layers += n;
            let mask = selection.mask(&probs)?;
            match &mask {
                Some(m) => Tally::add(&mut tally.att_experts, ops::sum_all(m)?)?,
                None => tally.att_dense += n * experts,
            }
            Some(match mask {
                Some(m) => (ops::mul(&probs, &m)?, Some(m)),
                None => (probs, None),
            })
        }
    };
    match (&aw.heads, gate) {
        (HeadProjections::Whole { wo }, gate) => {
            let heads = attend(&rope(ops::narrow(&qkv, 1, 0, q_cols)?, hq)?)?;
            let heads = match gate {
                None => heads.reshape([n, hq * dh])?,
                Some((g, _)) => ops::mul(&heads.reshape([n, experts, hq / experts * dh])?, &g.reshape([n, experts, 1])?)?.reshape([n, hq * dh])?,
            };
            Ok(ops::matmul(&heads, wo)?)
        }
        (HeadProjections::PerExpert { wq, wo }, Some((g, mask))) => {
            // Expert-major lists of the selected (token, expert) pairs.
            let selected: Vec<bool> = match mask {
                Some(m) => m.to_f64_vec()?.iter().map(|&v| v > 0.0).collect(),
                None => vec![true; n * experts],
            };
            let mut rows: Vec<Vec<u32>> = vec![vec![]; experts];
            for (i, _) in selected.iter().enumerate().filter(|(_, &s)| s) {
                rows[i % experts].push((i / experts) as u32);
            }
            let device = x.device();
            let pairs: Vec<u32> = rows.iter().enumerate().flat_map(|(e, r)| r.iter().map(move |&t| t * experts as u32 + e as u32)).collect();
            let pairs = Tensor::from_slice(&pairs, [pairs.len()], &device)?;
            let each = |f: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
                rows.iter().enumerate().filter(|(_, r)| !r.is_empty()).map(|(e, r)| f(e, Tensor::from_slice(r, [r.len()], &device)?)).collect()
            };
            let hd = hq / experts * dh;
            // Queries of the selected experts only, scattered into [n·E, H·dh] (zeros elsewhere).
            let q_parts = each(&mut |e, toks| Ok(ops::matmul_t(&ops::index_select(x, &toks)?, &wq[e], false, true)?))?;
            let q = ops::scatter_add_rows(&ops::concat(&q_parts.iter().collect::<Vec<_>>(), 0)?, &pairs, n * experts)?;
            let heads = attend(&rope(q.reshape([n, hq * dh])?, hq)?)?.reshape([n * experts, hd])?;
            let gated = ops::mul(&ops::index_select(&heads, &pairs)?, &ops::index_select(&g.reshape([n * experts, 1])?, &pairs)?)?;
            let mut offset = 0;
            let out_parts = each(&mut |e, toks| {
                let part = ops::matmul(&ops::narrow(&gated, 0, offset, toks.elem_count())?, &wo[e])?;
                offset += toks.elem_count();
                Ok(part)
            })?;
            let token_of_pair: Vec<u32> = rows.concat();
            Ok(ops::scatter_add_rows(&ops::concat(&out_parts.iter().collect::<Vec<_>>(), 0)?, &Tensor::from_slice(&token_of_pair, [token_of_pair.len()], &device)?, n)?)
        }
        (HeadProjections::PerExpert { .. }, None) => unreachable!("per-expert projections are only built for routed attention"),
    }
}

fn mlp(mw: &MlpWeights, w: &InferWeights, x: &Tensor, selection: Selection, tally: &mut Tally) -> Result<Tensor> {
    let y = routed_mlp(mw, w, x, selection, tally)?;
    match &mw.shared {
        Some(shared) => Ok(ops::add(&y, &routed_mlp(shared, w, x, selection, tally)?)?),
        None => Ok(y),
    }
}

/// An MLP's experts, without its shared ones. The composed SwiGLU forms run the training model's
/// functions on constants (no tape), so both paths compute alike.
fn routed_mlp(mw: &MlpWeights, w: &InferWeights, x: &Tensor, selection: Selection, tally: &mut Tally) -> Result<Tensor> {
    let constant = |t: &Tensor| Var::constant(t.clone());
    let ExpertWeights { w1, w3, w2 } = &mw.experts;
    let Some(router) = &mw.router else {
        if x.dims()[0] <= ops::CPU_DECODE_MAX_ROWS && matches!(x.device(), engine::Device::Cpu) {
            return one_expert_mlp(x, &mw.experts);
        }
        return Ok(mlp::body(&constant(x), &(constant(w1), w3.as_ref().map(constant), constant(w2)))?.into_value());
    };
    let (n, experts) = (x.dims()[0], w.config.mlp.n_experts);
    let probs = route(router, x)?;
    tally.mlp_token_layers += n;
    let sparse = |routes: &ops::Routes, weights: &Tensor| -> Result<Tensor> {
        let perm = ops::moe_permute(routes, experts, None)?;
        Ok(match w3 {
            None => ops::moe_sparse_mlp(x, w1, w2, weights, &perm, MoePath::Auto, false)?.0,
            Some(w3) => ops::moe_sparse_swiglu(x, w1, w3, w2, weights, &perm, MoePath::Auto, false)?.0,
        })
    };
    let (y, used) = if w.config.family == Family::Smoe {
        // The SMoE baseline's rule (top-k, gates renormalised over the k); no capacity limit at
        // inference, where it would make a token's output depend on the rest of the batch.
        let routes = ops::moe_route(&probs, RouteMode::TopK(w.config.mlp.top_k.unwrap_or(1)), false)?;
        let kept = ops::gather_last(&probs, &routes.experts)?;
        let weights = ops::div(&kept, &ops::sum(&kept, -1, true)?)?;
        (sparse(&routes, &weights)?, Some(ops::sum_all(&routes.mask)?))
    } else {
        match selection.route_mode(experts)? {
            None => {
                let y = match w3 {
                    None => ops::moe_dense_mlp(x, w1, w2, &probs)?.y,
                    Some(w3) => mlp::dense_swiglu(&constant(x), (&constant(w1), &constant(w3), &constant(w2)), &constant(&probs))?.into_value(),
                };
                tally.mlp_dense += n * experts;
                (y, None)
            }
            Some(rm) => {
                // Unrenormalised, the routes' weights are the selected probabilities (0 in unused slots).
                let routes = ops::moe_route(&probs, rm, false)?;
                (sparse(&routes, &routes.weights)?, Some(ops::sum_all(&routes.mask)?))
            }
        }
    };
    if let Some(used) = used {
        Tally::add(&mut tally.mlp_experts, used)?;
    }
    Ok(y)
}

/// A dense MLP of a few tokens (GeLU or SwiGLU; a plain MLP or the shared experts) as a sparse MLP
/// with one expert that every token takes at weight 1: on the CPU that runs the up (and gate)
/// products, the activation and the down product in one parallel loop over slices of the hidden
/// units (the engine's sparse decode path), one pass over the weights with no wake-up of the
/// threads between the products. The weight 1 and the one-slot sum leave the rounded output as it
/// is.
fn one_expert_mlp(x: &Tensor, ExpertWeights { w1, w3, w2 }: &ExpertWeights) -> Result<Tensor> {
    let every_token = Tensor::full(1.0, [x.dims()[0], 1], x.dtype(), &x.device())?;
    let routes = ops::moe_route(&every_token, RouteMode::TopK(1), false)?;
    let perm = ops::moe_permute(&routes, 1, None)?;
    Ok(match w3 {
        None => ops::moe_sparse_mlp(x, w1, w2, &routes.weights, &perm, MoePath::Auto, false)?.0,
        Some(w3) => ops::moe_sparse_swiglu(x, w1, w3, w2, &routes.weights, &perm, MoePath::Auto, false)?.0,
    })
}
