//! The paged KV cache: per layer, a key pool and a value pool of `num_blocks` fixed-size blocks
//! (`[num_blocks, block_size, kv_heads, head_dim]`), and one free list of block ids shared by all
//! layers (a sequence's block b holds its positions `b·block_size ..` in every layer).
//!
//! The pool is sized once from a memory budget, so memory is not reserved per sequence for the
//! maximum length: a sequence holds `⌈len / block_size⌉` blocks and returns them when it retires.
//! MoA's attention experts share their keys and values (GQA-style), so the cache holds `kv_heads`
//! heads per position, not one per query head.

use engine::{bf16, f16, ops, CpuStorage, DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::{Error, Result};

/// Block ids of a pool: which are free. Allocation and release are O(blocks moved).
#[derive(Debug)]
pub struct BlockPool {
    free: Vec<u32>,
    num_blocks: usize,
    block_size: usize,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockPool {
        // Reversed so blocks are handed out from 0 upward (easier to read in a debugger).
        BlockPool { free: (0..num_blocks as u32).rev().collect(), num_blocks, block_size }
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks a sequence of `tokens` positions occupies.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// `n` blocks, or None (and nothing taken) when fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        let at = self.free.len().checked_sub(n)?;
        Some(self.free.split_off(at))
    }

    /// Returns blocks to the pool.
    pub fn release(&mut self, blocks: Vec<u32>) {
        debug_assert!(blocks.iter().all(|&b| (b as usize) < self.num_blocks && !self.free.contains(&b)), "double release");
        self.free.extend(blocks);
    }
}

/// Zeros made in their dtype on the host (`Tensor::zeros` goes through f64, which a pool of
/// gigabytes should not), then moved to `device`.
fn zeros(dims: [usize; 4], dtype: DType, device: &Device) -> engine::Result<Tensor> {
    let n = dims.iter().product();
    let cpu = match dtype {
        DType::F32 => CpuStorage::F32(vec![0.0; n]),
        DType::F64 => CpuStorage::F64(vec![0.0; n]),
        DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
        DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
        DType::U32 => CpuStorage::U32(vec![0; n]),
    };
    Tensor::from_cpu(cpu, dims).to_device(device)
}

/// The cache pools of every layer and the block allocator.
pub struct KvCache {
    pub pool: BlockPool,
    /// Per layer: `[num_blocks, block_size, kv_heads, head_dim]`.
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
}

impl KvCache {
    /// Bytes one cached position takes over all layers (keys and values).
    pub fn bytes_per_position(cfg: &ModelConfig, dtype: DType) -> usize {
        2 * cfg.n_layers * cfg.attention.kv_heads * cfg.attention.head_dim * dtype.size_in_bytes()
    }

    /// As many blocks of `block_size` positions as fit in `budget_bytes`.
    pub fn with_budget(cfg: &ModelConfig, dtype: DType, device: &Device, budget_bytes: usize, block_size: usize) -> Result<KvCache> {
        if block_size == 0 {
            return Err(Error::Invalid { what: "block size", value: "0".into(), msg: "must be positive".into() });
        }
        let per_block = KvCache::bytes_per_position(cfg, dtype) * block_size;
        let num_blocks = budget_bytes / per_block;
        if num_blocks == 0 {
            return Err(Error::Invalid {
                what: "KV-cache budget",
                value: format!("{budget_bytes} bytes"),
                msg: format!("too small for one block of {block_size} positions ({per_block} bytes over {} layers)", cfg.n_layers),
            });
        }
        let (a, n) = (&cfg.attention, cfg.n_layers);
        let dims = [num_blocks, block_size, a.kv_heads, a.head_dim];
        let zeros = || zeros(dims, dtype, device);
        Ok(KvCache { pool: BlockPool::new(num_blocks, block_size), k: (0..n).map(|_| zeros()).collect::<engine::Result<_>>()?, v: (0..n).map(|_| zeros()).collect::<engine::Result<_>>()? })
    }

    /// Writes keys and values `[n, kv_heads, head_dim]` of layer `layer` into pool slots `slots` (u32 `[n]`).
    pub(crate) fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor, slots: &Tensor) -> Result<()> {
        ops::write_rows(&mut self.k[layer], k, slots)?;
        ops::write_rows(&mut self.v[layer], v, slots)?;
        Ok(())
    }
}
