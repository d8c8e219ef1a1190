//! Operand text -> [`Operand`], against the registers and symbols in scope.

use std::collections::HashMap;

use crate::ir::{AddrBase, Operand, Sreg};

/// What a non-register name denotes at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symbol {
    /// Byte offset in the parameter buffer.
    Param(u64),
    /// Byte offset in the CTA's shared window (static layout).
    Shared(u64),
    /// The dynamic shared window; its offset is known after the body is read.
    DynShared,
    /// Byte offset in the module's `.global` block; the base is added once the module is read.
    Global(u64),
    /// Byte offset in each thread's local frame (`.local` arrays: the stack NVRTC spills to).
    Local(u64),
}

/// A symbol reference whose value is patched after parsing: instruction, operand index.
#[derive(Debug, Clone, Copy)]
pub struct Fixup {
    pub instr: usize,
    pub arg: usize,
    pub sym: Symbol,
}

/// Registers in scope: innermost scope last. Families (`%r<100>`) are looked up by prefix.
#[derive(Default)]
pub struct Scope<'a> {
    pub names: HashMap<&'a str, u32>,
    pub families: Vec<(&'a str, u32, u32)>,
    pub saved_next: u32,
}

pub struct Env<'a, 'b> {
    pub scopes: &'b [Scope<'a>],
    pub symbols: &'b HashMap<&'a str, Symbol>,
}

fn split_number(name: &str) -> Option<(&str, u32)> {
    let digits = name.bytes().rev().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits == name.len() {
        return None;
    }
    let (prefix, num) = name.split_at(name.len() - digits);
    Some((prefix, num.parse().ok()?))
}

impl Env<'_, '_> {
    pub fn reg(&self, name: &str) -> Option<u32> {
        let fam = split_number(name);
        for scope in self.scopes.iter().rev() {
            if let Some(&slot) = scope.names.get(name) {
                return Some(slot);
            }
            if let Some((prefix, n)) = fam {
                if let Some(&(_, base, count)) = scope.families.iter().find(|(p, _, _)| *p == prefix) {
                    if n < count {
                        return Some(base + n);
                    }
                }
            }
        }
        None
    }
}

fn sreg(name: &str) -> Option<Sreg> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = name.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%smid" => Sreg::SmId,
        "%nsmid" => Sreg::NSmId,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%dynamic_smem_size" => Sreg::DynSmemSize,
        "%total_smem_size" => Sreg::TotalSmemSize,
        "%lanemask_lt" => Sreg::LaneMaskLt,
        "%lanemask_le" => Sreg::LaneMaskLe,
        "%lanemask_eq" => Sreg::LaneMaskEq,
        "%lanemask_ge" => Sreg::LaneMaskGe,
        "%lanemask_gt" => Sreg::LaneMaskGt,
        _ => return None,
    })
}

/// Integer or hex-float literal: `12`, `-3`, `0x1F`, `0f3F800000` (f32 bits), `0d...` (f64 bits).
pub fn immediate(s: &str) -> Option<u64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h.trim_end_matches('U'), 16).ok()?
    } else if let Some(h) = body.strip_prefix("0f").or_else(|| body.strip_prefix("0F")) {
        if h.len() != 8 {
            return None;
        }
        u32::from_str_radix(h, 16).ok()? as u64
    } else if let Some(h) = body.strip_prefix("0d").or_else(|| body.strip_prefix("0D")) {
        if h.len() != 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()?
    } else if body.bytes().all(|c| c.is_ascii_digit()) && !body.is_empty() {
        body.parse::<u64>().ok()?
    } else if body.contains('.') {
        // Decimal float literals are f64 in PTX.
        body.parse::<f64>().ok()?.to_bits()
    } else {
        return None;
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Top-level comma split (not inside `{}` or `[]`).
pub fn split_commas(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.bytes().enumerate() {
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

/// Parses one operand. Symbols become immediates/absolute addresses holding their parse-time
/// value; the caller records a fixup for those that need a base added later (returned here).
pub fn operand(env: &Env, s: &str) -> Result<(Operand, Option<Symbol>), String> {
    if s == "_" {
        return Ok((Operand::Sink, None));
    }
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let mut elems = Vec::new();
        for e in split_commas(inner) {
            let (o, sym) = operand(env, e)?;
            if sym.is_some() || matches!(o, Operand::Vec(_) | Operand::Addr { .. }) {
                return Err(format!("vector element `{e}`"));
            }
            elems.push(o);
        }
        return Ok((Operand::Vec(elems.into_boxed_slice()), None));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Some((map, coords)) = inner.split_once(',') {
            // A tensor operand `[map, {c0, c1, ...}]`: the map's address and the coordinates.
            let (m, _) = operand(env, map.trim())?;
            let (c, _) = operand(env, coords.trim())?;
            return Ok((Operand::Vec(vec![m, c].into_boxed_slice()), None));
        }
        return address(env, inner.trim());
    }
    if let Some((v, p)) = s.split_once('|') {
        // `%r|%p`: a value and a predicate destination (shfl's in-range flag, setp's complement).
        let (a, _) = operand(env, v.trim())?;
        let (b, _) = operand(env, p.trim())?;
        return Ok((Operand::Vec(vec![a, b].into_boxed_slice()), None));
    }
    if let Some(p) = s.strip_prefix('!') {
        return env.reg(p.trim()).map(|r| (Operand::NotReg(r), None)).ok_or_else(|| format!("unknown predicate `{p}`"));
    }
    if let Some(v) = immediate(s) {
        return Ok((Operand::Imm(v), None));
    }
    if let Some(r) = env.reg(s) {
        return Ok((Operand::Reg(r), None));
    }
    if s.starts_with('%') {
        return sreg(s).map(|r| (Operand::Sreg(r), None)).ok_or_else(|| format!("unknown register `{s}`"));
    }
    match env.symbols.get(s) {
        Some(&sym) => Ok((Operand::Imm(sym_value(sym)), Some(sym))),
        None => Err(format!("unknown name `{s}`")),
    }
}

pub fn sym_value(sym: Symbol) -> u64 {
    match sym {
        Symbol::Param(v) | Symbol::Shared(v) | Symbol::Global(v) | Symbol::Local(v) => v,
        Symbol::DynShared => 0,
    }
}

fn address(env: &Env, s: &str) -> Result<(Operand, Option<Symbol>), String> {
    // base, base+off, base+-off, base-off, off
    let (base, off) = match s.find(['+', '-']).filter(|&i| i > 0) {
        Some(i) => {
            let (b, o) = s.split_at(i);
            let o = o.strip_prefix('+').unwrap_or(o).trim();
            let v = immediate(o).ok_or_else(|| format!("address offset `{o}`"))? as i64;
            (b.trim(), v)
        }
        None => (s, 0),
    };
    if let Some(v) = immediate(base) {
        return Ok((Operand::Addr { base: AddrBase::Abs, offset: (v as i64).wrapping_add(off) }, None));
    }
    if let Some(r) = env.reg(base) {
        return Ok((Operand::Addr { base: AddrBase::Reg(r), offset: off }, None));
    }
    match env.symbols.get(base) {
        Some(&sym) => Ok((Operand::Addr { base: AddrBase::Abs, offset: sym_value(sym) as i64 + off }, Some(sym))),
        None => Err(format!("unknown address base `{base}`")),
    }
}
