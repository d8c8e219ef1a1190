//! Opcode text (`ld.global.v4.f32`, `setp.gtu.f32`, ...) -> [`Op`].
//!
//! The opcode is split at dots into a base and modifiers; modifiers are sorted into a type list,
//! rounding, state space and flags, then the base picks the variant. Unknown bases or modifier
//! combinations are an `Unsupported` error naming the whole opcode. Modifiers that only matter to
//! real hardware scheduling (`.sync`, `.aligned`, `.uni`, `.ftz` on forms without denormal
//! inputs in our kernels, cache hints) are accepted and ignored; see the notes per arm.

use crate::ir::{AbType, AtomOp, BoolOp, Cmp, HalfOp, MulMode, Op, Rnd, ShflMode, Space, Ty, VoteMode};
use crate::Error;

/// The modifiers of one opcode, sorted by kind.
#[derive(Default)]
struct Mods<'a> {
    types: Vec<Ty>,
    rnd: Option<Rnd>,
    int_rnd: Option<Rnd>,
    space: Option<Space>,
    sat: bool,
    approx: bool,
    vec: u8,
    words: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    fn has(&self, w: &str) -> bool {
        self.words.contains(&w)
    }

    fn ty(&self, i: usize) -> Option<Ty> {
        self.types.get(i).copied()
    }
}

fn split<'a>(rest: &[&'a str]) -> Mods<'a> {
    let mut m = Mods { vec: 1, ..Mods::default() };
    for &w in rest {
        if let Some(t) = Ty::parse(w) {
            m.types.push(t);
            continue;
        }
        match w {
            "rn" => m.rnd = Some(Rnd::Rn),
            "rz" => m.rnd = Some(Rnd::Rz),
            "rm" => m.rnd = Some(Rnd::Rm),
            "rp" => m.rnd = Some(Rnd::Rp),
            "rni" => m.int_rnd = Some(Rnd::Rn),
            "rzi" => m.int_rnd = Some(Rnd::Rz),
            "rmi" => m.int_rnd = Some(Rnd::Rm),
            "rpi" => m.int_rnd = Some(Rnd::Rp),
            "sat" => m.sat = true,
            "approx" => m.approx = true,
            "global" => m.space = Some(Space::Global),
            "shared" | "shared::cta" | "shared::cluster" => m.space = Some(Space::Shared),
            "param" => m.space = Some(Space::Param),
            "local" => m.space = Some(Space::Local),
            "const" => m.space = Some(Space::Const),
            "v2" => m.vec = 2,
            "v4" => m.vec = 4,
            // Scheduling, cache and denormal hints with no functional effect here.
            "ftz" | "full" | "sync" | "aligned" | "uni" | "volatile" | "relaxed" | "weak" | "nc" | "ca" | "cg" | "cs" | "lu" | "cv" | "wb"
            | "wt" | "gpu" | "cta" | "sys" | "L1::no_allocate" | "L2::128B" | "L2::64B" | "L2::256B" | "L1::evict_last" | "L1::evict_first"
            | "L2::cache_hint" | "noftz" => {}
            other => m.words.push(other),
        }
    }
    m
}

fn cmp(w: &str) -> Option<Cmp> {
    Some(match w {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" => Cmp::Lo,
        "ls" => Cmp::Ls,
        "hi" => Cmp::Hi,
        "hs" => Cmp::Hs,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

fn atom_op(w: &str) -> Option<AtomOp> {
    Some(match w {
        "add" => AtomOp::Add,
        "min" => AtomOp::Min,
        "max" => AtomOp::Max,
        "exch" => AtomOp::Exch,
        "cas" => AtomOp::Cas,
        "and" => AtomOp::And,
        "or" => AtomOp::Or,
        "xor" => AtomOp::Xor,
        "inc" => AtomOp::Inc,
        "dec" => AtomOp::Dec,
        _ => return None,
    })
}

fn mul_mode(m: &Mods) -> MulMode {
    if m.has("hi") {
        MulMode::Hi
    } else if m.has("wide") {
        MulMode::Wide
    } else {
        MulMode::Lo
    }
}

/// Decodes one opcode; returns the op and its vector width (`.v2`/`.v4`, else 1).
pub fn decode(opcode: &str, line: u32) -> Result<(Op, u8), Error> {
    let unsupported = || Error::Unsupported { line, form: opcode.to_string() };
    let parts: Vec<&str> = opcode.split('.').collect();
    let (base, rest) = (parts[0], &parts[1..]);
    let m = split(rest);
    let t0 = m.ty(0);
    let ty = || t0.ok_or_else(unsupported);
    let half = t0.is_some_and(|t| matches!(t, Ty::F16 | Ty::Bf16 | Ty::F16x2 | Ty::Bf16x2));
    let op = match base {
        "add" | "sub" | "mul" | "fma" | "min" | "max" | "neg" | "abs" if half => {
            // Only round-to-nearest exists for half arithmetic; min.xorsign.abs is not modelled.
            if m.rnd.is_some_and(|r| r != Rnd::Rn) || m.has("xorsign") {
                return Err(unsupported());
            }
            let op = match base {
                "add" => HalfOp::Add,
                "sub" => HalfOp::Sub,
                "mul" => HalfOp::Mul,
                "fma" => HalfOp::Fma,
                "min" => HalfOp::Min,
                "max" => HalfOp::Max,
                "neg" => HalfOp::Neg,
                _ => HalfOp::Abs,
            };
            Op::Half { op, ty: ty()?, sat: m.sat, relu: m.has("relu"), nan: m.has("NaN") }
        }
        "add" => Op::Add { ty: ty()?, rnd: m.rnd, sat: m.sat },
        "sub" => Op::Sub { ty: ty()?, rnd: m.rnd, sat: m.sat },
        "mul" => Op::Mul { ty: ty()?, mode: mul_mode(&m), rnd: m.rnd },
        "mad" => Op::Mad { ty: ty()?, mode: mul_mode(&m), rnd: m.rnd },
        "fma" => Op::Fma { ty: ty()?, rnd: m.rnd.ok_or_else(unsupported)? },
        "div" => Op::Div { ty: ty()?, rnd: m.rnd, approx: m.approx },
        "rem" => Op::Rem { ty: ty()? },
        "min" => Op::Min { ty: ty()? },
        "max" => Op::Max { ty: ty()? },
        "abs" => Op::Abs { ty: ty()? },
        "neg" => Op::Neg { ty: ty()? },
        "copysign" => Op::Copysign { ty: ty()? },
        "ex2" if m.approx => Op::Ex2 { ty: ty()? },
        "lg2" if m.approx => Op::Lg2 { ty: ty()? },
        "tanh" if m.approx => Op::Tanh { ty: ty()? },
        "rsqrt" if m.approx => Op::Rsqrt { ty: ty()? },
        "rcp" if m.approx || m.rnd.is_some() => Op::Rcp { ty: ty()?, rnd: m.rnd },
        "sqrt" if m.approx || m.rnd.is_some() => Op::Sqrt { ty: ty()?, rnd: m.rnd },
        "and" => Op::And { ty: ty()? },
        "or" => Op::Or { ty: ty()? },
        "xor" => Op::Xor { ty: ty()? },
        "not" => Op::Not { ty: ty()? },
        "shl" => Op::Shl { ty: ty()? },
        "shr" => Op::Shr { ty: ty()? },
        "bfi" => Op::Bfi { ty: ty()? },
        "bfe" => Op::Bfe { ty: ty()? },
        "popc" => Op::Popc { ty: ty()? },
        "clz" => Op::Clz { ty: ty()? },
        "brev" => Op::Brev { ty: ty()? },
        "setp" => {
            let c = rest.first().and_then(|w| cmp(w)).ok_or_else(unsupported)?;
            let bop = if m.has("and") {
                Some(BoolOp::And)
            } else if m.has("or") {
                Some(BoolOp::Or)
            } else if m.has("xor") {
                Some(BoolOp::Xor)
            } else {
                None
            };
            Op::Setp { cmp: c, ty: ty()?, bop }
        }
        "selp" => Op::Selp { ty: ty()? },
        "mov" => Op::Mov { ty: ty()? },
        "cvt" => {
            let (dst, src) = (ty()?, m.ty(1).ok_or_else(unsupported)?);
            // f32 -> f16x2/bf16x2 packing (`cvt.rn.bf16x2.f32 d, a, b`) is the only two-source form.
            Op::Cvt { dst, src, rnd: m.rnd, int_rnd: m.int_rnd, sat: m.sat }
        }
        "cvta" => {
            let to = m.has("to");
            Op::Cvta { space: m.space.ok_or_else(unsupported)?, to }
        }
        "ld" => Op::Ld { space: m.space.unwrap_or(Space::Generic), ty: ty()? },
        "st" => Op::St { space: m.space.unwrap_or(Space::Generic), ty: ty()? },
        "bra" => Op::Bra,
        "ret" => Op::Ret,
        "exit" => Op::Exit,
        "trap" => Op::Trap,
        "bar" | "barrier" if m.has("warp") => Op::BarWarpSync,
        "bar" | "barrier" if m.has("arrive") => Op::Bar { arrive: true },
        "bar" | "barrier" => Op::Bar { arrive: false },
        "shfl" => {
            let mode = if m.has("up") {
                ShflMode::Up
            } else if m.has("down") {
                ShflMode::Down
            } else if m.has("bfly") {
                ShflMode::Bfly
            } else if m.has("idx") {
                ShflMode::Idx
            } else {
                return Err(unsupported());
            };
            Op::Shfl { mode }
        }
        "match" if m.has("any") => Op::MatchAny { ty: ty()? },
        "vote" => {
            let mode = if m.has("all") {
                VoteMode::All
            } else if m.has("any") {
                VoteMode::Any
            } else if m.has("ballot") {
                VoteMode::Ballot
            } else {
                VoteMode::Uni
            };
            Op::Vote { mode }
        }
        "atom" | "red" => {
            let op = m.words.iter().find_map(|w| atom_op(w)).ok_or_else(unsupported)?;
            let space = m.space.unwrap_or(Space::Generic);
            if base == "atom" {
                Op::Atom { space, op, ty: ty()? }
            } else {
                Op::Red { space, op, ty: ty()? }
            }
        }
        "setmaxnreg" => Op::Setmaxnreg { inc: m.has("inc") },
        "ldmatrix" => {
            let num = if m.has("x4") {
                4
            } else if m.has("x2") {
                2
            } else if m.has("x1") {
                1
            } else {
                return Err(unsupported());
            };
            if !m.has("m8n8") || ty()? != Ty::B16 {
                return Err(unsupported());
            }
            Op::Ldmatrix { num, trans: m.has("trans") }
        }
        "mma" => {
            let ab = match (m.ty(0), m.ty(1), m.ty(2), m.ty(3)) {
                (Some(Ty::F32), Some(Ty::Bf16), Some(Ty::Bf16), Some(Ty::F32)) => AbType::Bf16,
                (Some(Ty::F32), Some(Ty::F16), Some(Ty::F16), Some(Ty::F32)) => AbType::F16,
                _ => return Err(unsupported()),
            };
            if !(m.has("m16n8k16") && m.has("row") && m.has("col")) {
                return Err(unsupported());
            }
            Op::MmaM16n8k16 { ab }
        }
        "wgmma" if m.has("fence") => Op::WgmmaFence,
        "wgmma" if m.has("commit_group") => Op::WgmmaCommit,
        "wgmma" if m.has("wait_group") => Op::WgmmaWait,
        "wgmma" if m.has("mma_async") => {
            let shape = m.words.iter().find(|w| w.starts_with("m64n")).ok_or_else(unsupported)?;
            let n: u32 = shape.strip_prefix("m64n").and_then(|s| s.strip_suffix("k16")).and_then(|s| s.parse().ok()).ok_or_else(unsupported)?;
            let ab = match (m.ty(0), m.ty(1), m.ty(2)) {
                (Some(Ty::F32), Some(Ty::Bf16), Some(Ty::Bf16)) => AbType::Bf16,
                (Some(Ty::F32), Some(Ty::F16), Some(Ty::F16)) => AbType::F16,
                _ => return Err(unsupported()),
            };
            Op::Wgmma { n, ab, a_regs: false }
        }
        "cp" if m.has("async") && m.has("bulk") && m.has("tensor") => {
            let dims = m.words.iter().find_map(|w| w.strip_suffix('d').and_then(|d| d.parse::<u8>().ok())).ok_or_else(unsupported)?;
            if !m.has("mbarrier::complete_tx::bytes") {
                return Err(unsupported());
            }
            Op::CpAsyncBulkTensor { dims }
        }
        "cp" if m.has("async") && m.has("commit_group") => Op::CpAsyncCommit,
        "cp" if m.has("async") && m.has("wait_group") => Op::CpAsyncWait { all: false },
        "cp" if m.has("async") && m.has("wait_all") => Op::CpAsyncWait { all: true },
        // The copy size is the third operand; 16 for `.cg` (checked at decode of the operands).
        "cp" if m.has("async") && m.space == Some(Space::Global) => Op::CpAsync { bytes: 0 },
        "mbarrier" if m.has("init") => Op::MbarInit,
        "mbarrier" if m.has("arrive") && m.has("expect_tx") => Op::MbarArrive { expect_tx: true },
        "mbarrier" if m.has("arrive") => Op::MbarArrive { expect_tx: false },
        "mbarrier" if m.has("expect_tx") => Op::MbarExpectTx,
        "mbarrier" if m.has("try_wait") => Op::MbarTryWait { parity: m.has("parity") },
        "mbarrier" if m.has("test_wait") => Op::MbarTestWait { parity: m.has("parity") },
        "fence" => Op::Fence { proxy_async: m.has("proxy") && m.has("async") },
        "membar" => Op::Fence { proxy_async: false },
        "prefetch" | "prefetchu" => Op::Prefetch,
        "nanosleep" => Op::Nop,
        _ => return Err(unsupported()),
    };
    Ok((op, m.vec))
}
