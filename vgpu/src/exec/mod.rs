//! The interpreter: a launch runs every CTA of the grid to completion, CTAs in parallel (rayon),
//! each CTA's warps cooperatively on one host thread (cta.rs). Global atomics are host atomics, so
//! CTAs running at once see each other's updates as on a GPU. Files: warp.rs (lanes, registers,
//! lane groups), step.rs (dispatch), alu.rs/float.rs/half.rs (arithmetic), mem.rs (ld/st/atom/cp.async),
//! shared.rs (shared memory and its checks), collective.rs (warp collectives, tensor cores),
//! asyncop.rs (mbarrier, TMA), accum.rs (wgmma accumulators in flight).

mod accum;
mod alu;
mod asyncop;
mod collective;
mod cta;
mod float;
mod half;
mod mem;
mod shared;
mod step;
mod warp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::{DeviceConfig, Error, GlobalMemory, Kernel, LaunchConfig, LaunchStats};
use cta::{Bar, Cta, CtaState};
use shared::{SharedMem, MAX_WARPS};
use warp::{SregCtx, Warp};

/// Shared-window size of a launch: static data, then the dynamic window at its alignment.
pub fn smem_window(kernel: &Kernel, dynamic: u32) -> u64 {
    (kernel.static_smem as u64).next_multiple_of(kernel.dyn_smem_align.max(16) as u64) + dynamic as u64
}

fn validate(dev: &DeviceConfig, kernel: &Kernel, cfg: &LaunchConfig, args: &[&[u8]]) -> Result<(), Error> {
    let refuse = |msg: String| Err(Error::Launch { kernel: kernel.name.clone(), msg });
    let lim = dev.limits();
    let threads = cfg.block.iter().map(|&d| d as u64).product::<u64>();
    if cfg.block.contains(&0) || cfg.grid.contains(&0) {
        return refuse(format!("empty grid {:?} or block {:?}", cfg.grid, cfg.block));
    }
    if threads > lim.max_threads_per_block as u64 || (0..3).any(|d| cfg.block[d] > lim.max_block_dim[d]) {
        return refuse(format!("block {:?} ({threads} threads) exceeds the device's {} threads / {:?} per block", cfg.block, lim.max_threads_per_block, lim.max_block_dim));
    }
    if (0..3).any(|d| cfg.grid[d] > lim.max_grid_dim[d]) {
        return refuse(format!("grid {:?} exceeds the device's {:?}", cfg.grid, lim.max_grid_dim));
    }
    if let Some(max) = kernel.max_threads {
        if threads > max as u64 {
            return refuse(format!("block of {threads} threads exceeds the kernel's .maxntid of {max}"));
        }
    }
    let smem = smem_window(kernel, cfg.dynamic_smem);
    if smem > lim.max_dyn_smem_per_block as u64 {
        return refuse(format!(
            "{} bytes of shared memory ({} static + {} dynamic) exceed the device's {} per block",
            smem, kernel.static_smem, cfg.dynamic_smem, lim.max_dyn_smem_per_block
        ));
    }
    let warps = threads.div_ceil(32);
    let regs = warps * 32 * kernel.regs as u64;
    if regs > lim.regs_per_block as u64 {
        return refuse(format!(
            "{warps} warps x 32 threads x {} registers = {regs} registers exceed the {} per block",
            kernel.regs, lim.regs_per_block
        ));
    }
    if args.len() != kernel.params.len() {
        return refuse(format!("{} arguments for {} parameters", args.len(), kernel.params.len()));
    }
    for (k, (a, p)) in args.iter().zip(&kernel.params).enumerate() {
        if a.len() != p.size {
            return refuse(format!("argument {k} has {} bytes, the parameter {}", a.len(), p.size));
        }
    }
    if warps as usize > MAX_WARPS {
        return refuse(format!("{warps} warps per block exceed the emulator's {MAX_WARPS}"));
    }
    Ok(())
}

/// Buffers a worker thread hands from one CTA to its next.
#[derive(Default)]
struct Spare {
    shared: Option<SharedMem>,
    regs: Vec<Vec<[u64; 32]>>,
}

pub(crate) fn run_grid(dev: &DeviceConfig, mem: &GlobalMemory, kernel: &Kernel, cfg: &LaunchConfig, args: &[&[u8]]) -> Result<LaunchStats, Error> {
    validate(dev, kernel, cfg, args)?;
    let mut pbuf = vec![0u64; kernel.param_bytes.div_ceil(8).max(1)];
    {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut pbuf);
        for (a, p) in args.iter().zip(&kernel.params) {
            bytes[p.offset..p.offset + p.size].copy_from_slice(a);
        }
    }
    let params: &[u8] = &bytemuck::cast_slice(&pbuf)[..kernel.param_bytes];
    let g = &kernel.globals;
    let pbase = params.as_ptr() as u64;
    let view = mem.snapshot().with_extra(&[(g.base(), g.base() + g.len_bytes()), (pbase, pbase + params.len() as u64)]);
    let threads = cfg.block.iter().product::<u32>();
    let nwarps = threads.div_ceil(32);
    let smem = smem_window(kernel, cfg.dynamic_smem) as usize;
    let total = cfg.grid.iter().map(|&d| d as u64).product::<u64>();
    let instructions = AtomicU64::new(0);
    (0..total).into_par_iter().try_for_each_init(Spare::default, |spare: &mut Spare, id| {
        let ctaid = [(id % cfg.grid[0] as u64) as u32, (id / cfg.grid[0] as u64 % cfg.grid[1] as u64) as u32, (id / (cfg.grid[0] as u64 * cfg.grid[1] as u64)) as u32];
        let warps: Vec<Warp> = (0..nwarps).map(|w| Warp::new(w, spare.regs.pop().unwrap_or_default(), kernel.slots, cfg.block, threads, kernel.regs)).collect();
        let st = CtaState {
            kernel,
            ctx: SregCtx {
                block: cfg.block,
                grid: cfg.grid,
                ctaid,
                warps: nwarps,
                sm: (id % dev.sm_count as u64) as u32,
                sms: dev.sm_count,
                dyn_smem: cfg.dynamic_smem,
                total_smem: smem as u32,
                clock: 0,
            },
            shared: match spare.shared.take() {
                Some(mut s) => {
                    s.reset(smem, nwarps as usize, dev.checks);
                    s
                }
                None => SharedMem::new(smem, nwarps as usize, dev.checks),
            },
            params,
            view: &view,
            hints: [(0, 0); 4],
            arch: dev.arch,
            instructions: 0,
            bars: [Bar::default(); 16],
            mbar_clock: HashMap::new(),
            tma_pending: HashMap::new(),
            regs_budget: nwarps * 32 * kernel.regs,
            local: vec![0; nwarps as usize * 32 * kernel.local_bytes as usize],
        };
        let mut cta = Cta { warps, st };
        let r = cta.run();
        instructions.fetch_add(cta.st.instructions, Ordering::Relaxed);
        spare.shared = Some(cta.st.shared);
        spare.regs.extend(cta.warps.into_iter().map(|w| w.regs));
        r
    })?;
    Ok(LaunchStats { instructions: instructions.into_inner(), ctas: total })
}
