//! PTX text -> [`Module`]: module-scope directives, `.global` data, shared declarations and
//! kernels (`.entry`). Bodies are in body.rs, operands in operand.rs, opcodes in opcode.rs.
//!
//! Symbol values known only at the end (the module's `.global` block address, the dynamic shared
//! window's offset after a kernel's static shared data) are patched through fixups.

mod body;
mod lex;
mod opcode;
mod operand;

use std::collections::HashMap;
use std::sync::Arc;

use body::{array, decl, BodyParser, SharedLayout};
use lex::{Item, Lexer};
use operand::{immediate, split_commas, Fixup, Symbol};

use crate::ir::{Operand, Ty};
use crate::module::ModuleGlobals;
use crate::{Error, Kernel, Module, ParamInfo};

fn perr(line: u32, msg: impl Into<String>) -> Error {
    Error::Parse { line, msg: msg.into() }
}

/// The register file a kernel may use per thread: `.maxntid` lets ptxas spread 64K registers
/// over at most that many threads (in steps of 8); otherwise 255.
fn regs_estimate(declared: u32, max_threads: Option<u32>, maxnreg: Option<u32>) -> u32 {
    let mut cap = 255;
    if let Some(t) = max_threads {
        cap = cap.min((65_536 / t.max(1)) / 8 * 8);
    }
    if let Some(n) = maxnreg {
        cap = cap.min(n);
    }
    declared.clamp(16, cap.max(16))
}

struct PendingKernel {
    kernel: Kernel,
    fixups: Vec<Fixup>,
    dyn_base: u64,
}

pub(crate) fn parse_module(ptx: &str) -> Result<Module, Error> {
    let mut lex = Lexer::new(ptx);
    let mut symbols: HashMap<&str, Symbol> = HashMap::new();
    let mut module_shared: HashMap<&str, (u64, u64, bool)> = HashMap::new();
    let mut global_data: Vec<u8> = Vec::new();
    let mut pending: Vec<PendingKernel> = Vec::new();
    while let Some((line, item)) = lex.next_item() {
        match item {
            Item::Stmt(s) => {
                let mut extern_ = false;
                let mut rest = s;
                loop {
                    let (w, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    match w {
                        ".visible" | ".weak" | ".common" => rest = after.trim_start(),
                        ".extern" => {
                            extern_ = true;
                            rest = after.trim_start();
                        }
                        _ => break,
                    }
                }
                let (dir, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                match dir {
                    ".version" | ".target" | ".address_size" | ".file" | ".pragma" | ".func" => {}
                    ".global" => {
                        let (name, off) = global_var(after, line, &mut global_data)?;
                        symbols.insert(name, Symbol::Global(off));
                    }
                    ".shared" => {
                        let d = decl(after, line)?;
                        for n in d.names {
                            let (name, len) = array(n, line)?;
                            let align = d.align.unwrap_or(d.ty.bytes() as u64);
                            let dynamic = extern_ && len == Some(0);
                            module_shared.insert(name, (d.ty.bytes() as u64 * len.unwrap_or(1), align, dynamic));
                        }
                    }
                    _ => return Err(Error::Unsupported { line, form: format!("module directive `{dir}`") }),
                }
            }
            Item::Header(h) => {
                let is_entry = h.split_whitespace().any(|w| w == ".entry");
                if !is_entry {
                    skip_body(&mut lex);
                    continue;
                }
                pending.push(entry(h, line, &mut lex, &symbols, &module_shared)?);
            }
            Item::Open | Item::Close | Item::Label(_) => return Err(perr(line, "braces or a label outside a function")),
        }
    }
    // One heap block for the module's .global data, 8-byte aligned (declared alignments up to 8 hold).
    let words = global_data.len().div_ceil(8).max(1);
    let mut data = vec![0u64; words].into_boxed_slice();
    bytemuck::cast_slice_mut::<u64, u8>(&mut data)[..global_data.len()].copy_from_slice(&global_data);
    let globals = Arc::new(ModuleGlobals { data });
    let mut kernels = Vec::with_capacity(pending.len());
    for mut p in pending {
        for f in &p.fixups {
            let add = match f.sym {
                Symbol::Global(_) => globals.base(),
                Symbol::DynShared => p.dyn_base,
                Symbol::Param(_) | Symbol::Shared(_) | Symbol::Local(_) => continue,
            };
            match &mut p.kernel.body[f.instr].args[f.arg] {
                Operand::Imm(v) => *v = v.wrapping_add(add),
                Operand::Addr { offset, .. } => *offset = offset.wrapping_add(add as i64),
                _ => unreachable!("fixups are recorded only for immediates and addresses"),
            }
        }
        p.kernel.globals = globals.clone();
        kernels.push(p.kernel);
    }
    Ok(Module { kernels })
}

fn skip_body(lex: &mut Lexer) {
    let mut depth = 1;
    while let Some((_, item)) = lex.next_item() {
        match item {
            Item::Open => depth += 1,
            Item::Close => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// `.global [.align N] .type name[len] [= init]`: lays it out in `data`, returns (name, offset).
fn global_var<'a>(s: &'a str, line: u32, data: &mut Vec<u8>) -> Result<(&'a str, u64), Error> {
    let d = decl(s, line)?;
    let [n] = d.names[..] else { return Err(perr(line, "one `.global` variable per declaration expected")) };
    let (name, len) = array(n, line)?;
    let elem = d.ty.bytes() as usize;
    let count = len.unwrap_or(1) as usize;
    let align = d.align.unwrap_or(elem as u64).min(8) as usize;
    let off = data.len().next_multiple_of(align);
    data.resize(off + elem * count, 0);
    if let Some((_, init)) = d.rest.split_once('=') {
        let init = init.trim();
        let values = match init.strip_prefix('{').and_then(|i| i.strip_suffix('}')) {
            Some(list) => split_commas(list),
            None => vec![init],
        };
        if values.len() > count {
            return Err(perr(line, format!("`{name}`: {} initialisers for {count} elements", values.len())));
        }
        for (i, v) in values.iter().enumerate() {
            let bits = immediate(v).ok_or_else(|| Error::Unsupported { line, form: format!("`.global` initialiser `{v}`") })?;
            let bits = if d.ty == Ty::F32 && v.contains('.') { (f64::from_bits(bits) as f32).to_bits() as u64 } else { bits };
            data[off + i * elem..off + (i + 1) * elem].copy_from_slice(&bits.to_le_bytes()[..elem]);
        }
    }
    Ok((name, off as u64))
}

fn entry<'a>(
    header: &'a str,
    line: u32,
    lex: &mut Lexer<'a>,
    module_symbols: &HashMap<&'a str, Symbol>,
    module_shared: &HashMap<&'a str, (u64, u64, bool)>,
) -> Result<PendingKernel, Error> {
    let open = header.find('(').ok_or_else(|| perr(line, "kernel header without a parameter list"))?;
    let close = header.rfind(')').ok_or_else(|| perr(line, "kernel header without `)`"))?;
    let name = header[..open].split_whitespace().last().ok_or_else(|| perr(line, "kernel without a name"))?;
    let mut symbols = module_symbols.clone();
    let mut params = Vec::new();
    let mut offset = 0usize;
    for p in split_commas(&header[open + 1..close]) {
        let p = p.strip_prefix(".param").ok_or_else(|| perr(line, format!("kernel parameter `{p}` is not `.param`")))?;
        let d = decl(p, line)?;
        let [n] = d.names[..] else { return Err(perr(line, format!("parameter `{p}`"))) };
        let (pname, len) = array(n, line)?;
        let size = d.ty.bytes() as usize * len.unwrap_or(1) as usize;
        let align = d.align.unwrap_or(d.ty.bytes() as u64) as usize;
        offset = offset.next_multiple_of(align.max(1));
        symbols.insert(pname, Symbol::Param(offset as u64));
        params.push(ParamInfo { size, align, offset });
        offset += size;
    }
    let mut max_threads = None;
    let mut maxnreg = None;
    let tail = &header[close + 1..];
    let mut words = tail.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).peekable();
    while let Some(w) = words.next() {
        let mut nums = Vec::new();
        while let Some(n) = words.peek().and_then(|n| n.parse::<u32>().ok()) {
            nums.push(n);
            words.next();
        }
        match w {
            ".maxntid" | ".reqntid" => max_threads = Some(nums.iter().product::<u32>()),
            ".maxnreg" => maxnreg = nums.first().copied(),
            _ => {}
        }
    }
    let mut bp = BodyParser { lex, symbols, module_shared, layout: SharedLayout { size: 0, dyn_align: 16 } };
    let body = bp.parse()?;
    let layout = bp.layout;
    let static_smem = u32::try_from(layout.size).map_err(|_| perr(line, format!("`{name}`: static shared memory too large")))?;
    let dyn_base = layout.size.next_multiple_of(layout.dyn_align);
    let kernel = Kernel {
        name: name.to_string(),
        params,
        param_bytes: offset,
        static_smem,
        local_bytes: u32::try_from(body.local_bytes).map_err(|_| perr(line, format!("`{name}`: local memory too large")))?,
        dyn_smem_align: layout.dyn_align as u32,
        max_threads,
        regs: regs_estimate(body.regs_declared, max_threads, maxnreg),
        slots: body.slots,
        body: body.instrs,
        globals: Arc::new(ModuleGlobals { data: Box::new([]) }),
    };
    Ok(PendingKernel { kernel, fixups: body.fixups, dyn_base })
}
