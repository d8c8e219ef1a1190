//! A kernel's body: register declarations with `{ }` scoping, shared declarations, labels and
//! instructions, decoded into [`Instr`]s with branch targets resolved.
//!
//! Register slots follow the scopes as a stack: a scope's registers get fresh slots and give them
//! back when it closes, so the hundreds of inline-asm blocks (`{ .reg .pred p; ... }`) of an
//! unrolled mainloop share a few slots instead of growing the register file.

use std::collections::HashMap;

use super::lex::{Item, Lexer};
use super::opcode::decode;
use super::operand::{operand, split_commas, Env, Fixup, Scope, Symbol};
use crate::ir::{Instr, Op, Operand, Ty};
use crate::Error;

pub struct Body {
    pub instrs: Vec<Instr>,
    pub slots: u32,
    pub regs_declared: u32,
    pub fixups: Vec<Fixup>,
    /// Bytes of each thread's local frame.
    pub local_bytes: u64,
}

/// Static shared layout of one kernel, shared with the module-scope symbol resolution.
pub struct SharedLayout {
    pub size: u64,
    pub dyn_align: u64,
}

impl SharedLayout {
    pub fn place(&mut self, bytes: u64, align: u64) -> u64 {
        let off = self.size.next_multiple_of(align.max(1));
        self.size = off + bytes;
        off
    }
}

fn perr(line: u32, msg: impl Into<String>) -> Error {
    Error::Parse { line, msg: msg.into() }
}

/// `.align N`, the type and `name[len]` / `name<count>` / `name` of a declaration.
pub struct Decl<'a> {
    pub align: Option<u64>,
    pub ty: Ty,
    pub names: Vec<&'a str>,
    pub rest: &'a str,
}

/// Parses `[.align N] .type name[, name...]` after the state space word.
pub fn decl(s: &str, line: u32) -> Result<Decl<'_>, Error> {
    let mut align = None;
    let mut ty = None;
    let mut rest = s.trim_start();
    loop {
        let (w, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if w == ".align" {
            let after = after.trim_start();
            let (n, after) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
            align = Some(n.parse::<u64>().map_err(|_| perr(line, format!("bad alignment `{n}`")))?);
            rest = after.trim_start();
        } else if let Some(q) = w.strip_prefix('.') {
            if let Some(t) = Ty::parse(q) {
                ty = Some(t);
            }
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let ty = ty.ok_or_else(|| perr(line, format!("declaration without a type: `{s}`")))?;
    let list = rest.split('=').next().unwrap_or("").trim();
    Ok(Decl { align, ty, names: split_commas(list), rest })
}

/// `name[len]` -> (name, Some(len)); `name[]` -> (name, Some(0)); `name` -> (name, None).
pub fn array(name: &str, line: u32) -> Result<(&str, Option<u64>), Error> {
    match name.split_once('[') {
        None => Ok((name.trim(), None)),
        Some((n, len)) => {
            let len = len.trim_end_matches(']').trim();
            if len.is_empty() {
                return Ok((n.trim(), Some(0)));
            }
            let v = len.parse::<u64>().map_err(|_| perr(line, format!("bad array length in `{name}`")))?;
            Ok((n.trim(), Some(v)))
        }
    }
}

pub struct BodyParser<'a, 'b> {
    pub lex: &'b mut Lexer<'a>,
    pub symbols: HashMap<&'a str, Symbol>,
    pub module_shared: &'b HashMap<&'a str, (u64, u64, bool)>,
    pub layout: SharedLayout,
}

impl<'a> BodyParser<'a, '_> {
    /// Reads items up to the `}` closing the function body.
    pub fn parse(&mut self) -> Result<Body, Error> {
        let mut scopes: Vec<Scope<'a>> = vec![Scope::default()];
        let mut next_slot = 0u32;
        let mut max_slot = 0u32;
        let mut regs_declared = 0u32;
        let mut instrs: Vec<Instr> = Vec::new();
        let mut labels: HashMap<&'a str, u32> = HashMap::new();
        let mut branch_fixups: Vec<(usize, usize, &'a str, u32)> = Vec::new();
        let mut fixups = Vec::new();
        let mut local_bytes = 0u64;
        while let Some((line, item)) = self.lex.next_item() {
            match item {
                Item::Open => scopes.push(Scope { saved_next: next_slot, ..Scope::default() }),
                Item::Close => {
                    let scope = scopes.pop().expect("the function scope is popped last");
                    next_slot = scope.saved_next;
                    if scopes.is_empty() {
                        break;
                    }
                }
                Item::Header(h) => return Err(perr(line, format!("function header inside a body: `{h}`"))),
                Item::Label(name) => {
                    if labels.insert(name, instrs.len() as u32).is_some() {
                        return Err(perr(line, format!("duplicate label `{name}`")));
                    }
                }
                Item::Stmt(s) if s.starts_with(".reg") => {
                    let d = decl(&s[4..], line)?;
                    let top_level = scopes.len() == 1;
                    let scope = scopes.last_mut().expect("inside a scope");
                    for n in &d.names {
                        let count = match n.split_once('<') {
                            Some((prefix, cnt)) => {
                                let c = cnt.trim_end_matches('>').parse::<u32>().map_err(|_| perr(line, format!("bad register count `{n}`")))?;
                                scope.families.push((prefix, next_slot, c));
                                c
                            }
                            None => {
                                scope.names.insert(n, next_slot);
                                1
                            }
                        };
                        next_slot += count;
                        if top_level && d.ty != Ty::Pred {
                            regs_declared = regs_declared.saturating_add(count * d.ty.bits().div_ceil(32));
                        }
                    }
                    max_slot = max_slot.max(next_slot);
                }
                Item::Stmt(s) if s.starts_with(".shared") => {
                    let d = decl(&s[7..], line)?;
                    for n in d.names {
                        let (name, len) = array(n, line)?;
                        let bytes = d.ty.bytes() as u64 * len.unwrap_or(1);
                        let off = self.layout.place(bytes, d.align.unwrap_or(d.ty.bytes() as u64));
                        self.symbols.insert(name, Symbol::Shared(off));
                    }
                }
                Item::Stmt(s) if s.starts_with(".local") => {
                    let d = decl(&s[6..], line)?;
                    for n in d.names {
                        let (name, len) = array(n, line)?;
                        let off = local_bytes.next_multiple_of(d.align.unwrap_or(d.ty.bytes() as u64).max(1));
                        local_bytes = off + d.ty.bytes() as u64 * len.unwrap_or(1);
                        self.symbols.insert(name, Symbol::Local(off));
                    }
                }
                Item::Stmt(s) if s.starts_with(".pragma") || s.starts_with(".loc") || s.is_empty() => {}
                Item::Stmt(s) if s.starts_with('.') => return Err(Error::Unsupported { line, form: s.split_whitespace().next().unwrap_or(s).to_string() }),
                Item::Stmt(s) => {
                    let idx = instrs.len();
                    let (instr, label, syms) = self.instruction(&scopes, s, line)?;
                    if let Some((arg, name)) = label {
                        branch_fixups.push((idx, arg, name, line));
                    }
                    for (arg, sym) in syms {
                        fixups.push(Fixup { instr: idx, arg, sym });
                    }
                    instrs.push(instr);
                }
            }
        }
        for (idx, arg, name, line) in branch_fixups {
            let target = *labels.get(name).ok_or_else(|| perr(line, format!("branch to unknown label `{name}`")))?;
            instrs[idx].args[arg] = Operand::Label(target);
        }
        Ok(Body { instrs, slots: max_slot, regs_declared, fixups, local_bytes })
    }

    /// Resolves a module-scope shared symbol on first use, placing it in this kernel's layout.
    fn use_module_shared(&mut self, name: &'a str) {
        if self.symbols.contains_key(name) {
            return;
        }
        if let Some((&key, &(bytes, align, dynamic))) = self.module_shared.get_key_value(name) {
            let sym = if dynamic {
                self.layout.dyn_align = self.layout.dyn_align.max(align);
                Symbol::DynShared
            } else {
                Symbol::Shared(self.layout.place(bytes, align))
            };
            self.symbols.insert(key, sym);
        }
    }

    #[allow(clippy::type_complexity)]
    fn instruction(&mut self, scopes: &[Scope<'a>], s: &'a str, line: u32) -> Result<(Instr, Option<(usize, &'a str)>, Vec<(usize, Symbol)>), Error> {
        let (guard, rest) = match s.strip_prefix('@') {
            Some(g) => {
                let (p, rest) = g.split_once(char::is_whitespace).ok_or_else(|| perr(line, "guard without an instruction"))?;
                let (neg, name) = match p.strip_prefix('!') {
                    Some(n) => (true, n),
                    None => (false, p),
                };
                let r = Env { scopes, symbols: &self.symbols }.reg(name).ok_or_else(|| perr(line, format!("unknown guard predicate `{name}`")))?;
                (Some((r, neg)), rest.trim_start())
            }
            None => (None, s),
        };
        let (opcode, ops_text) = match rest.split_once(char::is_whitespace) {
            Some((o, r)) => (o, r.trim()),
            None => (rest, ""),
        };
        let (mut op, vec) = decode(opcode, line)?;
        let texts = split_commas(ops_text);
        let mut args = Vec::with_capacity(texts.len());
        let mut syms = Vec::new();
        let mut label = None;
        let is_branch = matches!(op, Op::Bra);
        // Module-scope shared symbols are placed when first named.
        for t in &texts {
            let name = t.trim_start_matches('[').split(['+', ']']).next().unwrap_or("").trim();
            if !name.is_empty() && !name.starts_with('%') {
                // SAFETY-free lifetime juggling: names borrow the PTX text ('a).
                let name: &'a str = &s[name.as_ptr() as usize - s.as_ptr() as usize..][..name.len()];
                self.use_module_shared(name);
            }
        }
        let env = Env { scopes, symbols: &self.symbols };
        for (i, t) in texts.iter().enumerate() {
            if is_branch && i + 1 == texts.len() {
                let name: &'a str = &s[t.as_ptr() as usize - s.as_ptr() as usize..][..t.len()];
                label = Some((i, name));
                args.push(Operand::Label(u32::MAX));
                continue;
            }
            let (o, sym) = operand(&env, t).map_err(|m| perr(line, format!("{m} in `{s}`")))?;
            if let Some(sym) = sym {
                syms.push((i, sym));
            }
            args.push(o);
        }
        finish(&mut op, &args, vec, opcode, line)?;
        Ok((Instr { op, guard, args: args.into_boxed_slice(), line }, label, syms))
    }
}

/// Operand-dependent decoding and arity checks, so the interpreter can index operands freely.
fn finish(op: &mut Op, args: &[Operand], vec: u8, opcode: &str, line: u32) -> Result<(), Error> {
    let bad = |why: &str| perr(line, format!("`{opcode}`: {why}"));
    let need = |n: usize| if args.len() == n { Ok(()) } else { Err(bad(&format!("expected {n} operands, found {}", args.len()))) };
    match op {
        Op::Add { .. } | Op::Sub { .. } | Op::Mul { .. } | Op::Div { .. } | Op::Rem { .. } | Op::Min { .. } | Op::Max { .. } | Op::Copysign { .. }
        | Op::And { .. } | Op::Or { .. } | Op::Xor { .. } | Op::Shl { .. } | Op::Shr { .. } => need(3),
        Op::Mad { .. } | Op::Fma { .. } | Op::Selp { .. } => need(4),
        Op::Bfe { .. } => need(4),
        Op::Bfi { .. } => need(5),
        Op::Abs { .. } | Op::Neg { .. } | Op::Not { .. } | Op::Ex2 { .. } | Op::Rcp { .. } | Op::Sqrt { .. } | Op::Rsqrt { .. } | Op::Lg2 { .. }
        | Op::Tanh { .. } | Op::Popc { .. } | Op::Clz { .. } | Op::Brev { .. } | Op::Mov { .. } | Op::Cvta { .. } => need(2),
        Op::Half { op: h, .. } => need(match h {
            crate::ir::HalfOp::Neg | crate::ir::HalfOp::Abs => 2,
            crate::ir::HalfOp::Fma => 4,
            _ => 3,
        }),
        Op::Cvt { dst, .. } => need(if matches!(dst, Ty::Bf16x2 | Ty::F16x2) { 3 } else { 2 }),
        Op::Setp { bop, .. } => need(if bop.is_some() { 4 } else { 3 }),
        Op::Ld { .. } | Op::St { .. } => {
            need(2)?;
            let (v, a) = if matches!(op, Op::Ld { .. }) { (&args[0], &args[1]) } else { (&args[1], &args[0]) };
            let width = if let Operand::Vec(e) = v { e.len() } else { 1 };
            if width != vec as usize || !matches!(a, Operand::Addr { .. }) {
                return Err(bad("value/vector width or address operand does not match the opcode"));
            }
            Ok(())
        }
        Op::Bra => need(1),
        Op::Ret | Op::Exit | Op::Trap | Op::WgmmaFence | Op::WgmmaCommit | Op::CpAsyncCommit | Op::Nop => Ok(()),
        Op::Fence { .. } | Op::Prefetch => Ok(()),
        Op::Bar { .. } => (1..=2).contains(&args.len()).then_some(()).ok_or_else(|| bad("expected a barrier id and optional thread count")),
        Op::BarWarpSync => need(1),
        Op::Shfl { .. } => need(5),
        Op::MatchAny { .. } => need(3),
        Op::Vote { .. } => need(3),
        Op::Atom { op: a, .. } => need(if matches!(a, crate::ir::AtomOp::Cas) { 4 } else { 3 }),
        Op::Red { .. } => need(2),
        Op::Setmaxnreg { .. } => need(1),
        Op::Ldmatrix { num, .. } => {
            need(2)?;
            match &args[0] {
                Operand::Vec(e) if e.len() == *num as usize => Ok(()),
                _ => Err(bad("destination vector length differs from .xN")),
            }
        }
        Op::MmaM16n8k16 { .. } => need(4),
        Op::Wgmma { n, a_regs, .. } => {
            // d, a-desc|a-regs, b-desc, scale-d, imm-scale-a, imm-scale-b[, imm-trans-a, imm-trans-b]
            if !(6..=8).contains(&args.len()) {
                return Err(bad("expected 6 to 8 operands"));
            }
            match &args[0] {
                Operand::Vec(e) if e.len() == *n as usize / 2 => {}
                _ => return Err(bad("accumulator vector length is not n/2")),
            }
            *a_regs = matches!(args[1], Operand::Vec(_));
            Ok(())
        }
        Op::WgmmaWait | Op::CpAsyncWait { all: false } => need(1),
        Op::CpAsyncWait { all: true } => need(0),
        Op::CpAsync { bytes } => {
            if !(3..=4).contains(&args.len()) {
                return Err(bad("expected dst, src, cp-size[, src-size]"));
            }
            match args[2] {
                Operand::Imm(v @ (4 | 8 | 16)) => {
                    *bytes = v as u32;
                    Ok(())
                }
                _ => Err(bad("cp-size must be 4, 8 or 16")),
            }
        }
        Op::CpAsyncBulkTensor { dims } => {
            need(3)?;
            match &args[1] {
                Operand::Vec(e) if matches!(&e[1], Operand::Vec(c) if c.len() == *dims as usize) => Ok(()),
                _ => Err(bad("tensor operand must be [map, {coords}] with one coordinate per dimension")),
            }
        }
        Op::MbarInit | Op::MbarExpectTx => need(2),
        Op::MbarArrive { .. } => (2..=3).contains(&args.len()).then_some(()).ok_or_else(|| bad("expected state, [bar][, count|tx]")),
        Op::MbarTryWait { .. } | Op::MbarTestWait { .. } => (3..=4).contains(&args.len()).then_some(()).ok_or_else(|| bad("expected pred, [bar], parity|state")),
    }
}
