//! dsmoe's hand-written CUDA C++ kernels, embedded as source.
//!
//! The `.cu` files in `src/kernels/` are compiled at run time by NVRTC for the exact GPU the process
//! finds (see `engine::cuda::nvrtc`), so this crate only carries text: no CUDA toolkit is needed to
//! build it, and one binary serves every GPU generation. Each [`KernelSource`] is one NVRTC program
//! (one CUDA module) and lists its `extern "C"` entry points, so the engine and the compile check
//! in `engine/tests/kernels_compile.rs` can iterate over all of them without parsing C++.
//!
//! The sources include no toolkit header: `common.cuh` (handed to NVRTC in memory, see [`HEADERS`])
//! defines the bf16 / f16 storage types and their conversions itself.

/// A header the kernels `#include "name"`; given to NVRTC in memory.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub name: &'static str,
    pub source: &'static str,
}

/// One `.cu` file: one NVRTC program, loaded as one CUDA module.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// Module name (the file name without `.cu`); also names the program in NVRTC messages.
    pub name: &'static str,
    pub source: &'static str,
    /// Every `extern "C" __global__` function the file defines.
    pub entry_points: &'static [&'static str],
    /// SASS mnemonics (e.g. `"HGMMA"`) that must appear in the sm_90a machine code of this module:
    /// the compile check disassembles it and fails if one is missing, which catches a tensor-core
    /// kernel silently compiled to a slower path.
    pub expect_sass: &'static [&'static str],
}

/// The headers every kernel may include.
pub const HEADERS: &[Header] = &[
    Header { name: "common.cuh", source: include_str!("kernels/common.cuh") },
    Header { name: "gemm_sm80.cuh", source: include_str!("kernels/gemm_sm80.cuh") },
    Header { name: "gemm_epilogue.cuh", source: include_str!("kernels/gemm_epilogue.cuh") },
    Header { name: "gemm_sm90.cuh", source: include_str!("kernels/gemm_sm90.cuh") },
    Header { name: "attention_rows.cuh", source: include_str!("kernels/attention_rows.cuh") },
    Header { name: "attention_wgmma.cuh", source: include_str!("kernels/attention_wgmma.cuh") },
];

pub const ELEMENTWISE: KernelSource = KernelSource {
    name: "elementwise",
    source: include_str!("kernels/elementwise.cu"),
    entry_points: &["unary_f32", "unary_bf16", "unary_f16", "scalar_f32", "scalar_bf16", "scalar_f16"],
    expect_sass: &[],
};

pub const BINARY: KernelSource = KernelSource {
    name: "binary",
    source: include_str!("kernels/binary.cu"),
    entry_points: &[
        "binary_f32",
        "binary_bf16",
        "binary_f16",
        "binary_bcast_f32",
        "binary_bcast_bf16",
        "binary_bcast_f16",
        "binary_bcast64_f32",
        "binary_bcast64_bf16",
        "binary_bcast64_f16",
    ],
    expect_sass: &[],
};

pub const REDUCE: KernelSource = KernelSource {
    name: "reduce",
    source: include_str!("kernels/reduce.cu"),
    entry_points: &[
        "reduce_rows_f32",
        "reduce_rows_bf16",
        "reduce_rows_f16",
        "reduce_cols_f32",
        "reduce_cols_bf16",
        "reduce_cols_f16",
        "argmax_rows_f32",
        "argmax_rows_bf16",
        "argmax_rows_f16",
        "argmax_cols_f32",
        "argmax_cols_bf16",
        "argmax_cols_f16",
    ],
    expect_sass: &[],
};

pub const SOFTMAX: KernelSource = KernelSource {
    name: "softmax",
    source: include_str!("kernels/softmax.cu"),
    entry_points: &[
        "softmax_f32",
        "softmax_bf16",
        "softmax_f16",
        "cross_entropy_f32",
        "cross_entropy_bf16",
        "cross_entropy_f16",
        "cross_entropy_backward_f32",
        "cross_entropy_backward_bf16",
        "cross_entropy_backward_f16",
    ],
    expect_sass: &[],
};

pub const RMS_NORM: KernelSource = KernelSource {
    name: "rms_norm",
    source: include_str!("kernels/rms_norm.cu"),
    entry_points: &[
        "rms_norm_f32",
        "rms_norm_bf16",
        "rms_norm_f16",
        "rms_norm_backward_rows_f32",
        "rms_norm_backward_rows_bf16",
        "rms_norm_backward_rows_f16",
        "rms_norm_backward_weight_f32",
        "rms_norm_backward_weight_bf16",
        "rms_norm_backward_weight_f16",
    ],
    expect_sass: &[],
};

pub const INDEX: KernelSource = KernelSource {
    name: "index",
    source: include_str!("kernels/index.cu"),
    entry_points: &[
        "index_select_w2",
        "index_select_w4",
        "index_select_w8",
        "index_select_w16",
        "gather_last_w2",
        "gather_last_w4",
        "gather_last_w8",
        "scatter_add_rows_f32",
        "scatter_add_rows_bf16",
        "scatter_add_rows_f16",
        "scatter_add_last_f32",
        "scatter_add_last_bf16",
        "scatter_add_last_f16",
    ],
    expect_sass: &[],
};

pub const TOPK: KernelSource = KernelSource {
    name: "topk",
    source: include_str!("kernels/topk.cu"),
    entry_points: &["topk_f32", "topk_bf16", "topk_f16"],
    expect_sass: &[],
};

pub const LAYOUT: KernelSource = KernelSource {
    name: "layout",
    source: include_str!("kernels/layout.cu"),
    entry_points: &[
        "cast_f32_f64",
        "cast_f32_bf16",
        "cast_f32_f16",
        "cast_f32_u32",
        "cast_f64_f32",
        "cast_f64_bf16",
        "cast_f64_f16",
        "cast_f64_u32",
        "cast_bf16_f32",
        "cast_bf16_f64",
        "cast_bf16_f16",
        "cast_bf16_u32",
        "cast_f16_f32",
        "cast_f16_f64",
        "cast_f16_bf16",
        "cast_f16_u32",
        "cast_u32_f32",
        "cast_u32_f64",
        "cast_u32_bf16",
        "cast_u32_f16",
        "copy2d_w2",
        "copy2d_w4",
        "copy2d_w8",
        "copy2d_w16",
        "copy_strided_w2",
        "copy_strided_w4",
        "copy_strided_w8",
        "copy_strided64_w2",
        "copy_strided64_w4",
        "copy_strided64_w8",
    ],
    expect_sass: &[],
};

pub const ROPE: KernelSource = KernelSource {
    name: "rope",
    source: include_str!("kernels/rope.cu"),
    entry_points: &["rope_f32", "rope_bf16", "rope_f16"],
    expect_sass: &[],
};

pub const ADAMW: KernelSource = KernelSource {
    name: "adamw",
    source: include_str!("kernels/adamw.cu"),
    entry_points: &["adamw_f32"],
    expect_sass: &[],
};

pub const GEMM: KernelSource = KernelSource {
    name: "gemm",
    source: include_str!("kernels/gemm.cu"),
    entry_points: &["gemm_f32", "gemm_bf16", "gemm_f16"],
    expect_sass: &[],
};

pub const MOE_ROUTE: KernelSource = KernelSource {
    name: "moe_route",
    source: include_str!("kernels/moe_route.cu"),
    entry_points: &[
        "moe_route_f32",
        "moe_route_bf16",
        "moe_route_f16",
        "moe_threshold_count_f32",
        "moe_threshold_count_bf16",
        "moe_threshold_count_f16",
        "moe_batch_k",
        "moe_chunk_rank",
        "moe_expert_scan",
        "moe_offsets",
        "moe_scatter_slots",
        "moe_kept_f32",
        "moe_kept_bf16",
        "moe_kept_f16",
    ],
    expect_sass: &[],
};

pub const MOE_SPARSE: KernelSource = KernelSource {
    name: "moe_sparse",
    source: include_str!("kernels/moe_sparse.cu"),
    entry_points: &[
        "moe_list_tables",
        "moe_gemm_rows_bf16",
        "moe_gemm_rows_f16",
        "moe_gemm_scatter_bf16",
        "moe_gemm_scatter_f16",
        "moe_gemm_rows_narrow_bf16",
        "moe_gemm_rows_narrow_f16",
        "moe_gemm_scatter_narrow_bf16",
        "moe_gemm_scatter_narrow_f16",
        "moe_gemm_dw_bf16",
        "moe_gemm_dw_f16",
        "moe_gemm_exact_rows_f32",
        "moe_gemm_exact_rows_bf16",
        "moe_gemm_exact_rows_f16",
        "moe_gemm_exact_scatter_f32",
        "moe_gemm_exact_scatter_bf16",
        "moe_gemm_exact_scatter_f16",
        "moe_gemm_exact_dw_f32",
        "moe_gemm_exact_dw_bf16",
        "moe_gemm_exact_dw_f16",
        "moe_combine_f32",
        "moe_combine_bf16",
        "moe_combine_f16",
        "moe_combine_splits_f32",
        "moe_combine_splits_bf16",
        "moe_combine_splits_f16",
        "moe_grad_act_f32",
        "moe_grad_act_bf16",
        "moe_grad_act_f16",
        "moe_grad_swiglu_f32",
        "moe_grad_swiglu_bf16",
        "moe_grad_swiglu_f16",
    ],
    // The bf16 / f16 grouped GEMMs run gemm_sm80.cuh's mainloop on every architecture (TMA cannot
    // gather rows): mma.sync, cp.async copies and ldmatrix loads.
    expect_sass: &["HMMA", "LDGSTS", "LDSM"],
};

pub const MOE_DECODE: KernelSource = KernelSource {
    name: "moe_decode",
    source: include_str!("kernels/moe_decode.cu"),
    entry_points: &["moe_decode_up_f32", "moe_decode_up_bf16", "moe_decode_up_f16", "moe_decode_up_swiglu_f32", "moe_decode_up_swiglu_bf16", "moe_decode_up_swiglu_f16", "moe_decode_down_f32", "moe_decode_down_bf16", "moe_decode_down_f16"],
    expect_sass: &[],
};

pub const MOE_DENSE: KernelSource = KernelSource {
    name: "moe_dense",
    source: include_str!("kernels/moe_dense.cu"),
    entry_points: &[
        "moe_up_gate_bf16",
        "moe_up_gate_f16",
        "moe_down_grad_bf16",
        "moe_down_grad_f16",
        "moe_gate_fwd_f32",
        "moe_gate_fwd_bf16",
        "moe_gate_fwd_f16",
        "moe_gate_bwd_f32",
        "moe_gate_bwd_bf16",
        "moe_gate_bwd_f16",
        "moe_dp_reduce_f32",
        "moe_dp_reduce_bf16",
        "moe_dp_reduce_f16",
    ],
    // mma.sync (HMMA), fed by cp.async (LDGSTS) and ldmatrix (LDSM).
    expect_sass: &["HMMA.16816.F32.BF16", "HMMA.16816.F32", "LDGSTS", "LDSM"],
};

/// The entry points `GEMM_LINEAR_ENTRIES` (gemm_epilogue.cuh) defines with `prefix`: every form
/// (nn, nt, tn) for bf16 -> bf16 / f32 and f16 -> f16 / f32, followed by any `extra` entries.
macro_rules! gemm_linear_entries {
    ($prefix:literal $(, $extra:literal)*) => {
        &[
            concat!($prefix, "_nn_bf16_bf16"),
            concat!($prefix, "_nt_bf16_bf16"),
            concat!($prefix, "_tn_bf16_bf16"),
            concat!($prefix, "_nn_bf16_f32"),
            concat!($prefix, "_nt_bf16_f32"),
            concat!($prefix, "_tn_bf16_f32"),
            concat!($prefix, "_nn_f16_f16"),
            concat!($prefix, "_nt_f16_f16"),
            concat!($prefix, "_tn_f16_f16"),
            concat!($prefix, "_nn_f16_f32"),
            concat!($prefix, "_nt_f16_f32"),
            concat!($prefix, "_tn_f16_f32"),
            $($extra,)*
        ]
    };
}

pub const GEMM_SM90: KernelSource = KernelSource {
    name: "gemm_sm90",
    source: include_str!("kernels/gemm_sm90.cu"),
    entry_points: gemm_linear_entries!("gemm90"),
    // wgmma (HGMMA) fed by TMA (UTMALDG), registers moved by setmaxnreg (USETMAXREG).
    expect_sass: &["HGMMA", "UTMALDG", "USETMAXREG"],
};

pub const GEMM_SM80: KernelSource = KernelSource {
    name: "gemm_sm80",
    source: include_str!("kernels/gemm_sm80.cu"),
    entry_points: gemm_linear_entries!("gemm80", "gemm_group_table"),
    // On sm_90a too this module is mma.sync (HMMA); Hopper's own path is gemm_sm90.
    expect_sass: &["HMMA", "LDGSTS", "LDSM"],
};

/// Fused causal attention (forward, dq, dk/dv) for head dims up to 32, 64 and 128.
pub const ATTENTION: KernelSource = KernelSource {
    name: "attention",
    source: include_str!("kernels/attention.cu"),
    entry_points: &[
        "attention_fwd_f32_d32",
        "attention_fwd_f32_d64",
        "attention_fwd_f32_d128",
        "attention_fwd_bf16_d32",
        "attention_fwd_bf16_d64",
        "attention_fwd_bf16_d128",
        "attention_fwd_f16_d32",
        "attention_fwd_f16_d64",
        "attention_fwd_f16_d128",
        "attention_dq_f32_d32",
        "attention_dq_f32_d64",
        "attention_dq_f32_d128",
        "attention_dq_bf16_d32",
        "attention_dq_bf16_d64",
        "attention_dq_bf16_d128",
        "attention_dq_f16_d32",
        "attention_dq_f16_d64",
        "attention_dq_f16_d128",
        "attention_dkdv_f32_d32",
        "attention_dkdv_f32_d64",
        "attention_dkdv_f32_d128",
        "attention_dkdv_bf16_d32",
        "attention_dkdv_bf16_d64",
        "attention_dkdv_bf16_d128",
        "attention_dkdv_f16_d32",
        "attention_dkdv_f16_d64",
        "attention_dkdv_f16_d128",
    ],
    expect_sass: &[],
};

/// The tensor-core (mma.sync) forward and backward of fused causal attention, bf16 / f16, head dims
/// 64, 96 and 128.
pub const ATTENTION_SM80: KernelSource = KernelSource {
    name: "attention_sm80",
    source: include_str!("kernels/attention_sm80.cu"),
    entry_points: &[
        "attention_fwd_tc_bf16_d64",
        "attention_fwd_tc_bf16_d96",
        "attention_fwd_tc_bf16_d128",
        "attention_fwd_tc_f16_d64",
        "attention_fwd_tc_f16_d96",
        "attention_fwd_tc_f16_d128",
        "attention_dq_tc_bf16_d64",
        "attention_dq_tc_bf16_d96",
        "attention_dq_tc_bf16_d128",
        "attention_dq_tc_f16_d64",
        "attention_dq_tc_f16_d96",
        "attention_dq_tc_f16_d128",
        "attention_dkdv_tc_bf16_d64",
        "attention_dkdv_tc_bf16_d96",
        "attention_dkdv_tc_bf16_d128",
        "attention_dkdv_tc_f16_d64",
        "attention_dkdv_tc_f16_d96",
        "attention_dkdv_tc_f16_d128",
    ],
    // HMMA fed by ldmatrix (LDSM) from cp.async (LDGSTS) copies.
    expect_sass: &["HMMA", "LDGSTS", "LDSM"],
};

/// Paged decode attention (split along the sequence, log-sum-exp merge) and the KV-cache row write.
pub const PAGED_ATTENTION: KernelSource = KernelSource {
    name: "paged_attention",
    source: include_str!("kernels/paged_attention.cu"),
    entry_points: &[
        "paged_decode_f32",
        "paged_decode_bf16",
        "paged_decode_f16",
        "paged_decode_f32_v16",
        "paged_decode_bf16_v16",
        "paged_decode_f16_v16",
        "paged_combine_f32",
        "paged_combine_bf16",
        "paged_combine_f16",
        "paged_write_rows_w2",
        "paged_write_rows_w4",
        "paged_write_rows_w8",
        "paged_write_rows_w16",
    ],
    expect_sass: &[],
};

/// The Hopper (wgmma + TMA) forward and dq kernels of fused causal attention, bf16 / f16, head dims
/// 64, 96 and 128.
pub const ATTENTION_SM90: KernelSource = KernelSource {
    name: "attention_sm90",
    source: include_str!("kernels/attention_sm90.cu"),
    entry_points: &[
        "attention_fwd90_bf16_d64",
        "attention_fwd90_bf16_d96",
        "attention_fwd90_bf16_d128",
        "attention_fwd90_f16_d64",
        "attention_fwd90_f16_d96",
        "attention_fwd90_f16_d128",
        "attention_dq90_bf16_d64",
        "attention_dq90_bf16_d96",
        "attention_dq90_bf16_d128",
        "attention_dq90_f16_d64",
        "attention_dq90_f16_d96",
        "attention_dq90_f16_d128",
    ],
    // wgmma (HGMMA) fed by TMA (UTMALDG).
    expect_sass: &["HGMMA", "UTMALDG"],
};

/// The Hopper (wgmma + TMA) dK / dV kernel of the fused attention backward, bf16 / f16, head dims
/// 64, 96 and 128.
pub const ATTENTION_BWD_SM90: KernelSource = KernelSource {
    name: "attention_bwd_sm90",
    source: include_str!("kernels/attention_bwd_sm90.cu"),
    entry_points: &[
        "attention_dkdv90_bf16_d64",
        "attention_dkdv90_bf16_d96",
        "attention_dkdv90_bf16_d128",
        "attention_dkdv90_f16_d64",
        "attention_dkdv90_f16_d96",
        "attention_dkdv90_f16_d128",
    ],
    // wgmma (HGMMA) fed by TMA (UTMALDG).
    expect_sass: &["HGMMA", "UTMALDG"],
};

/// Every kernel module, for whole-set iteration (compile checks, warm-up).
pub const ALL: &[KernelSource] = &[ELEMENTWISE, BINARY, REDUCE, SOFTMAX, RMS_NORM, INDEX, TOPK, LAYOUT, ROPE, ADAMW, GEMM, GEMM_SM80, GEMM_SM90, MOE_DENSE, MOE_ROUTE, MOE_SPARSE, MOE_DECODE, ATTENTION, ATTENTION_SM80, PAGED_ATTENTION, ATTENTION_SM90, ATTENTION_BWD_SM90];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_entry_points_are_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|k| k.name).collect();
        let mut entries: Vec<&str> = ALL.iter().flat_map(|k| k.entry_points.iter().copied()).collect();
        let (n, e) = (names.len(), entries.len());
        names.sort_unstable();
        names.dedup();
        entries.sort_unstable();
        entries.dedup();
        assert_eq!(names.len(), n, "duplicate module name");
        assert_eq!(entries.len(), e, "an entry point is listed twice (entries must be unique across modules)");
    }

    #[test]
    fn every_module_includes_only_known_headers() {
        for k in ALL {
            for line in k.source.lines().filter(|l| l.trim_start().starts_with("#include")) {
                assert!(
                    HEADERS.iter().any(|h| line.contains(&format!("\"{}\"", h.name))),
                    "{}: {line:?} is neither common.cuh nor any header in HEADERS (no toolkit headers: see common.cuh)",
                    k.name
                );
            }
        }
    }
}
