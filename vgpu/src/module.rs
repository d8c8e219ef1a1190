//! A parsed PTX module and its kernels.

use std::sync::Arc;

use crate::ir::{Instr, Op};
use crate::Error;

/// One kernel parameter, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamInfo {
    pub size: usize,
    pub align: usize,
    /// Byte offset in the kernel's parameter buffer.
    pub offset: usize,
}

/// Module-scope `.global` variables: one heap block the module owns, so their addresses are
/// device addresses like any allocation.
#[derive(Debug)]
pub struct ModuleGlobals {
    pub(crate) data: Box<[u64]>,
}

impl ModuleGlobals {
    pub fn base(&self) -> u64 {
        self.data.as_ptr() as u64
    }

    pub fn len_bytes(&self) -> u64 {
        self.data.len() as u64 * 8
    }
}

#[derive(Debug)]
pub struct Kernel {
    pub(crate) name: String,
    pub(crate) params: Vec<ParamInfo>,
    pub(crate) param_bytes: usize,
    pub(crate) static_smem: u32,
    /// Bytes of each thread's local memory (`.local` frame).
    pub(crate) local_bytes: u32,
    /// Alignment of the dynamic (`.extern .shared`) window.
    pub(crate) dyn_smem_align: u32,
    pub(crate) max_threads: Option<u32>,
    pub(crate) regs: u32,
    /// Register slots of the decoded body (after scope reuse).
    pub(crate) slots: u32,
    pub(crate) body: Vec<Instr>,
    pub(crate) globals: Arc<ModuleGlobals>,
}

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    pub fn static_smem_bytes(&self) -> u32 {
        self.static_smem
    }

    /// The `.maxntid` product, if declared.
    pub fn max_threads(&self) -> Option<u32> {
        self.max_threads
    }

    /// Registers per thread: the 32-bit registers the body declares (64-bit ones count twice),
    /// capped at 255; an estimate, as ptxas allocates the real number.
    pub fn regs_per_thread(&self) -> u32 {
        self.regs
    }

    /// Whether the body does nothing but `trap` (and `ret`/`exit` after it): an entry a module
    /// keeps for an architecture that lacks the instructions it needs.
    pub fn only_traps(&self) -> bool {
        self.body.iter().any(|i| i.op == Op::Trap && i.guard.is_none()) && self.body.iter().all(|i| matches!(i.op, Op::Trap | Op::Ret | Op::Exit))
    }

    /// Number of decoded instructions.
    pub fn instruction_count(&self) -> usize {
        self.body.len()
    }
}

#[derive(Debug)]
pub struct Module {
    pub(crate) kernels: Vec<Kernel>,
}

impl Module {
    /// Parses PTX text; errors name the line and the form.
    pub fn parse(ptx: &str) -> Result<Module, Error> {
        crate::ptx::parse_module(ptx)
    }

    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    pub fn kernels(&self) -> impl Iterator<Item = &Kernel> {
        self.kernels.iter()
    }
}
