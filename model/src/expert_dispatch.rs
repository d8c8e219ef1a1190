//! Expert parallelism with all-to-all, for sparse expert computation: the SMoE baseline's top-k
//! training and DS-MoE's sparse inference (the classic scheme of GShard, fairseq's MoE layers and
//! DeepSpeed-MoE), on the ranks of an expert group that each hold `E/n` experts.
//!
//! In the grid of `parallel::Grid` the ranks of an expert group hold the same tokens (attention,
//! norms and routers run replicated; `expert_parallel.rs`). The sparse layer splits the work by
//! tokens and by experts at once:
//!
//! 1. Every rank lists all T tokens' routed (token, expert) pairs sorted by expert, with the
//!    capacity limit (`moe_permute` on the replicated routes, by the caller, which renormalises
//!    the gates over the kept pairs: integer work over T·k slots). So
//!    the dropping is the single-process one by construction, first choices before second
//!    choices, whatever the ranks' token shares. Rank r keeps the pairs of its share of the
//!    tokens, rows `[r·T/n, (r+1)·T/n)`. Experts of one rank are consecutive, so the list is
//!    already grouped by destination rank.
//! 2. Dispatch: one all-to-all with per-rank counts sends each pair's token row to the rank of its
//!    expert, and a second one its expert's index. A rank receives the rows in source-rank order,
//!    so in the original token order.
//! 3. The receiving rank runs its experts on what it got with the local sparse ops (grouped per
//!    expert, `moe_permute` on the received rows, which are all kept).
//! 4. Combine: the all-to-all in reverse brings each pair's output back to the rank that sent it,
//!    in the order it was sent; there it is gated by the pair's router weight and added into its
//!    token's row (`scatter_add_rows`, in list order: deterministic), and one all-reduce of the
//!    `[T, d]` result (each rank filling its share of the rows) gives every rank the whole output.
//!
//! Backward runs through the same exchanges in reverse: the gradient of a received row goes back
//! to its sender by the opposite all-to-all, and because every rank reaches the replicated input
//! and router weights only through its own share, their gradients are summed over the group
//! (`replicated_input`), as in the dense split. Every rank records the same collectives in the
//! same order whatever its counts (an empty share still exchanges, with zero rows), so the
//! backward's collectives match up across ranks.

use std::sync::Arc;

use autograd::Var;
use engine::comm::Communicator;
use engine::ops::{self, Permutation, Routes};
use engine::Tensor;

use crate::expert_parallel::{local_experts, replicated_input};
use crate::parallel::group_sum;
use crate::Result;

/// What `sparse_moe` computed: the output `[T, d]`, the (token, expert) pairs computed and those
/// the capacity limit dropped, both over the whole group.
pub struct SparseOut {
    pub y: Var,
    pub computed: usize,
    pub dropped: usize,
}

/// Rows of `x` exchanged between the ranks: `send_rows[q]` consecutive rows to rank q; returns
/// what arrived and the rows from each rank. The backward sends the gradient back the same way.
fn exchange(group: &Arc<dyn Communicator>, x: &Var, send_rows: &[usize]) -> Result<(Var, Vec<usize>)> {
    let (value, recv_rows) = group.all_to_all(x.value(), send_rows)?;
    let (g, back) = (group.clone(), recv_rows.clone());
    let y = Var::custom("all_to_all", value, &[x], 0, move |grad, _| Ok(vec![Some(g.all_to_all(grad, &back)?.0)]))?;
    Ok((y, recv_rows))
}

/// The routed experts of a sparse MoE MLP over `group`'s ranks: the replicated input `x` `[T, d]`,
/// gate weights `weights` `[T, k]` of its routes over all experts, and the pairs kept of them
/// (`perm`, from `moe_permute` on the replicated routes with the capacity applied: the same list
/// on every rank, the one the gates were renormalised over). `experts` runs this rank's experts, ungated, on the rows
/// it received: `(rows, unit weights [R, 1], their expert-sorted list)` to `[R, d]`.
pub fn sparse_moe(
    group: &Arc<dyn Communicator>,
    x: &Var,
    weights: &Var,
    perm: &Permutation,
    experts: impl FnOnce(&Var, &Var, &Permutation) -> Result<Var>,
) -> Result<SparseOut> {
    let n_experts = perm.n_experts;
    let (n, rank) = (group.size(), group.rank());
    let (first, count) = local_experts(n_experts, rank, n)?;
    let (tokens, k) = (x.dims()[0], perm.k_max);
    let device = x.device();
    let index = |v: &[u32]| Tensor::from_slice(v, [v.len()], &device);
    let x = replicated_input(group, x)?;
    let weights = replicated_input(group, weights)?;

    // 1. All tokens' kept pairs sorted by expert, then this rank's tokens' pairs among them, still
    //    sorted by expert (so by destination rank).
    let all_offsets = perm.offsets.to_vec::<u32>()?;
    let all_slots = perm.sorted_slots.to_vec::<u32>()?;
    let share = (rank * tokens / n * k) as u32..((rank + 1) * tokens / n * k) as u32;
    let mut offsets = vec![0usize];
    let mut slots: Vec<u32> = Vec::new();
    for e in 0..n_experts {
        slots.extend(all_slots[all_offsets[e] as usize..all_offsets[e + 1] as usize].iter().filter(|s| share.contains(*s)));
        offsets.push(slots.len());
    }
    let token_rows: Vec<u32> = slots.iter().map(|s| s / k as u32).collect();
    let send_rows: Vec<usize> = (0..n).map(|q| offsets[(q + 1) * count] - offsets[q * count]).collect();
    let send_experts: Vec<u32> = (0..n_experts).flat_map(|e| std::iter::repeat(e as u32).take(offsets[e + 1] - offsets[e])).collect();

    // 2. Dispatch the rows and their experts.
    let (received, recv_rows) = exchange(group, &x.index_select(&index(&token_rows)?)?, &send_rows)?;
    let (recv_experts, _) = group.all_to_all(&Tensor::from_slice(&send_experts, [send_experts.len(), 1], &device)?, &send_rows)?;
    let local: Vec<u32> = recv_experts.to_vec::<u32>()?.into_iter().map(|e| e - first as u32).collect();

    // 3. This rank's experts on what it received, each expert's rows in arrival order.
    let r = local.len();
    let unit = Tensor::ones([r, 1], x.dtype(), &device)?;
    let received_routes = Routes { experts: Tensor::from_slice(&local, [r, 1], &device)?, weights: unit.clone(), mask: unit.clone(), counts: Tensor::from_slice(&vec![1u32; r], [r], &device)? };
    let received_perm = ops::moe_permute(&received_routes, count, None)?;
    let computed = experts(&received, &Var::constant(unit), &received_perm)?;

    // 4. Combine: back to the senders, gated, into the tokens' rows, summed over the group.
    let (returned, _) = exchange(group, &computed, &recv_rows)?;
    let gates = weights.reshape([tokens * k, 1])?.index_select(&index(&slots)?)?;
    let y = returned.mul(&gates)?.scatter_add_rows(&index(&token_rows)?, tokens)?;
    let y = group_sum(group.as_ref(), &y)?;

    let dropped = perm.dropped.to_vec::<u32>()?[0] as usize;
    Ok(SparseOut { y, computed: all_offsets[n_experts] as usize, dropped })
}
