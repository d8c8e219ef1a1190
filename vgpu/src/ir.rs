//! The decoded instruction set: what the parser produces and the interpreter executes.
//!
//! Every PTX form the emulator knows is one [`Op`] variant with its modifiers decoded into fields,
//! so the interpreter dispatches on an enum and never looks at text. Adding a form means one arm in
//! `ptx/opcode.rs` (decode) and one in `exec/` (semantics).

/// A PTX scalar type. Register slots hold every type as a u64 (floats as their bits, narrower
/// integers zero-extended, predicates as 0/1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ty {
    Pred,
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }

    pub fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
        }
    }

    pub fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64)
    }

    /// All-ones in the type's width.
    pub fn mask(self) -> u64 {
        match self.bits() {
            64 => u64::MAX,
            b => (1u64 << b) - 1,
        }
    }
}

/// State spaces of memory instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Generic,
    Global,
    /// `.shared`, `.shared::cta` and (single-CTA clusters) `.shared::cluster`.
    Shared,
    Param,
    Local,
    Const,
}

/// Floating-point rounding (`.rn .rz .rm .rp`) or rounding to an integral value (`.rni` ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    Rn,
    Rz,
    Rm,
    Rp,
}

/// `setp` comparisons; the `u` forms are true when either operand is NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

/// `mul`/`mad` result selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MulMode {
    Lo,
    Hi,
    Wide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Exch,
    Cas,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

/// Special registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    SmId,
    NSmId,
    Clock,
    Clock64,
    DynSmemSize,
    TotalSmemSize,
    LaneMaskLt,
    LaneMaskLe,
    LaneMaskEq,
    LaneMaskGe,
    LaneMaskGt,
}

/// Element type of tensor-core operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbType {
    Bf16,
    F16,
}

/// Half-precision operations (exec/half.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfOp {
    Add,
    Sub,
    Mul,
    Fma,
    Min,
    Max,
    Neg,
    Abs,
}

/// One decoded opcode with its modifiers.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Add { ty: Ty, rnd: Option<Rnd>, sat: bool },
    Sub { ty: Ty, rnd: Option<Rnd>, sat: bool },
    Mul { ty: Ty, mode: MulMode, rnd: Option<Rnd> },
    Mad { ty: Ty, mode: MulMode, rnd: Option<Rnd> },
    Fma { ty: Ty, rnd: Rnd },
    Div { ty: Ty, rnd: Option<Rnd>, approx: bool },
    Rem { ty: Ty },
    Min { ty: Ty },
    Max { ty: Ty },
    Abs { ty: Ty },
    Neg { ty: Ty },
    Copysign { ty: Ty },
    /// `add sub mul fma min max neg abs` on f16 / bf16 / f16x2 / bf16x2 (`relu`: fma's `.relu`;
    /// `nan`: min/max's `.NaN`).
    Half { op: HalfOp, ty: Ty, sat: bool, relu: bool, nan: bool },
    Ex2 { ty: Ty },
    Rcp { ty: Ty, rnd: Option<Rnd> },
    Sqrt { ty: Ty, rnd: Option<Rnd> },
    Rsqrt { ty: Ty },
    Lg2 { ty: Ty },
    Tanh { ty: Ty },
    And { ty: Ty },
    Or { ty: Ty },
    Xor { ty: Ty },
    Not { ty: Ty },
    Shl { ty: Ty },
    Shr { ty: Ty },
    Bfi { ty: Ty },
    Bfe { ty: Ty },
    Popc { ty: Ty },
    Clz { ty: Ty },
    Brev { ty: Ty },
    Setp { cmp: Cmp, ty: Ty, bop: Option<BoolOp> },
    Selp { ty: Ty },
    Mov { ty: Ty },
    Cvt { dst: Ty, src: Ty, rnd: Option<Rnd>, int_rnd: Option<Rnd>, sat: bool },
    /// `cvta.to.<space>` (generic -> space) when `to`, else `cvta.<space>` (space -> generic).
    Cvta { space: Space, to: bool },
    Ld { space: Space, ty: Ty },
    St { space: Space, ty: Ty },
    Bra,
    Ret,
    Exit,
    Trap,
    /// `bar.sync` / `barrier.sync` (`arrive`: `bar.arrive`, no wait).
    Bar { arrive: bool },
    BarWarpSync,
    Shfl { mode: ShflMode },
    MatchAny { ty: Ty },
    Vote { mode: VoteMode },
    Atom { space: Space, op: AtomOp, ty: Ty },
    Red { space: Space, op: AtomOp, ty: Ty },
    Setmaxnreg { inc: bool },
    Ldmatrix { num: u8, trans: bool },
    MmaM16n8k16 { ab: AbType },
    Wgmma { n: u32, ab: AbType, a_regs: bool },
    WgmmaFence,
    WgmmaCommit,
    WgmmaWait,
    /// `cp.async.{ca,cg}.shared.global` with `bytes` copied (4, 8 or 16).
    CpAsync { bytes: u32 },
    CpAsyncCommit,
    CpAsyncWait { all: bool },
    /// `cp.async.bulk.tensor.<dims>d.shared::cluster.global.mbarrier::complete_tx::bytes`
    CpAsyncBulkTensor { dims: u8 },
    MbarInit,
    MbarArrive { expect_tx: bool },
    MbarExpectTx,
    MbarTryWait { parity: bool },
    MbarTestWait { parity: bool },
    /// fences and membar: ordering points for the race checker.
    Fence { proxy_async: bool },
    Prefetch,
    Nop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

/// A memory address operand `[base + offset]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrBase {
    Reg(u32),
    /// An absolute address (a symbol resolved at parse time: param offset, shared offset or
    /// global address, by the instruction's space), or a literal.
    Abs,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Reg(u32),
    /// `!%p` as a source predicate.
    NotReg(u32),
    Imm(u64),
    Sreg(Sreg),
    Vec(Box<[Operand]>),
    Addr { base: AddrBase, offset: i64 },
    /// A branch target: an instruction index.
    Label(u32),
    /// `_`: a destination whose value is discarded.
    Sink,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    pub op: Op,
    /// `@%p` (false) / `@!%p` (true).
    pub guard: Option<(u32, bool)>,
    pub args: Box<[Operand]>,
    /// 1-based PTX line.
    pub line: u32,
}
