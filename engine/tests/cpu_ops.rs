//! The CPU backend against naive f64 references. Every op runs on seeded random inputs of ragged
//! sizes (nothing a multiple of a block or lane width), in f64, f32, bf16 and f16, and must come
//! within `DType::tolerance` of a plain-loop f64 implementation, by relative error of norms
//! (NaN never passes). Sizes large enough to take the multi-threaded paths are included, and the
//! error cases go through the op layer, which must answer `Err`, never panic.

// An inline module so that the files below live in `cpu_ops/` beside this crate root.
mod cpu_ops {
    mod support;

    mod adamw;
    mod attention;
    mod elementwise;
    mod errors;
    mod fused;
    mod index;
    mod layout;
    mod matmul;
    mod paged_attention;
    mod reduce;
    mod rope;
}
