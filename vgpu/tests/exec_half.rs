//! Half-precision arithmetic through PTX (`add sub mul fma min max neg abs` on f16 / bf16 and the
//! packed f16x2 / bf16x2), with answers from the PTX ISA: a packed register holds element 0 in
//! its low 16 bits and element 1 in its high 16 bits, each computed on its own and rounded to
//! nearest even. The values are exact in 16 bits, so the answers do not depend on rounding; the
//! rounding, NaN, `.sat` and `.relu` rules have unit tests beside the implementation
//! (src/exec/half.rs).

mod common;
use common::{arg, module, Dev};
use half::{bf16, f16};

fn pack_f16(lo: f32, hi: f32) -> u32 {
    f16::from_f32(lo).to_bits() as u32 | (f16::from_f32(hi).to_bits() as u32) << 16
}

fn pack_bf16(lo: f32, hi: f32) -> u32 {
    bf16::from_f32(lo).to_bits() as u32 | (bf16::from_f32(hi).to_bits() as u32) << 16
}

/// `out[k]` = instruction k applied to a, b, c (each one packed register).
const OPS: &[&str] = &[
    "add.rn.f16x2 %r10, %r1, %r2;",
    "sub.f16x2 %r10, %r1, %r2;",
    "mul.rn.f16x2 %r10, %r1, %r2;",
    "fma.rn.f16x2 %r10, %r1, %r2, %r3;",
    "max.f16x2 %r10, %r1, %r2;",
    "min.f16x2 %r10, %r1, %r2;",
    "neg.f16x2 %r10, %r1;",
    "abs.f16x2 %r10, %r1;",
    "add.sat.f16x2 %r10, %r1, %r2;",
];

const BF_OPS: &[&str] = &[
    "add.rn.bf16x2 %r10, %r1, %r2;",
    "mul.rn.bf16x2 %r10, %r1, %r2;",
    "fma.rn.bf16x2 %r10, %r1, %r2, %r3;",
    "fma.rn.relu.bf16x2 %r10, %r1, %r2, %r3;",
    "max.bf16x2 %r10, %r1, %r2;",
    "min.NaN.bf16x2 %r10, %r1, %r2;",
];

fn run(ops: &[&str], a: u32, b: u32, c: u32) -> Vec<u32> {
    let mut body = String::from(
        ".reg .b32 %r<16>; .reg .b64 %rd<8>;
        ld.param.u64 %rd1, [out];
        ld.param.u32 %r1, [a];
        ld.param.u32 %r2, [b];
        ld.param.u32 %r3, [c];\n",
    );
    for (k, op) in ops.iter().enumerate() {
        body.push_str(&format!("{op}\nst.global.u32 [%rd1+{}], %r10;\n", 4 * k));
    }
    let ptx = module(".param .u64 out, .param .u32 a, .param .u32 b, .param .u32 c", &body);
    let dev = Dev::new();
    let out = dev.upload(&vec![0u32; ops.len()]);
    dev.run(&ptx, "k", [1, 1, 1], [1, 1, 1], 0, &[arg(out), arg(a), arg(b), arg(c)]).unwrap();
    dev.download(out, ops.len())
}

#[test]
fn packed_f16_operates_on_each_half() {
    let out = run(OPS, pack_f16(1.5, -2.0), pack_f16(0.25, 3.0), pack_f16(1.0, 0.5));
    let want = [
        pack_f16(1.75, 1.0),
        pack_f16(1.25, -5.0),
        pack_f16(0.375, -6.0),
        pack_f16(1.375, -5.5),
        pack_f16(1.5, 3.0),
        pack_f16(0.25, -2.0),
        pack_f16(-1.5, 2.0),
        pack_f16(1.5, 2.0),
        pack_f16(1.0, 1.0),
    ];
    for (k, (g, w)) in out.iter().zip(want).enumerate() {
        assert_eq!(*g, w, "{}: {g:#010x}, expected {w:#010x}", OPS[k]);
    }
}

#[test]
fn packed_bf16_operates_on_each_half_with_relu_and_nan_rules() {
    let nan_hi = pack_bf16(2.0, 0.0) & 0xffff | 0x7fc0 << 16;
    let out = run(BF_OPS, pack_bf16(2.0, -3.0), pack_bf16(-4.0, 0.5), pack_bf16(1.0, 0.25));
    let want = [pack_bf16(-2.0, -2.5), pack_bf16(-8.0, -1.5), pack_bf16(-7.0, -1.25), 0, pack_bf16(2.0, 0.5), pack_bf16(-4.0, -3.0)];
    for (k, (g, w)) in out.iter().zip(want).enumerate() {
        assert_eq!(*g, w, "{}: {g:#010x}, expected {w:#010x}", BF_OPS[k]);
    }
    // min.NaN: a NaN in one half gives the canonical NaN in that half only.
    let out = run(&["min.NaN.bf16x2 %r10, %r1, %r2;", "min.bf16x2 %r10, %r1, %r2;"], nan_hi, pack_bf16(1.0, 5.0), 0);
    assert_eq!(out[0], pack_bf16(1.0, 0.0) & 0xffff | 0x7fff << 16);
    assert_eq!(out[1], pack_bf16(1.0, 5.0), "min without .NaN takes the non-NaN operand");
}

#[test]
fn scalar_half_forms() {
    let ptx = module(
        ".param .u64 out",
        ".reg .b16 %h<8>; .reg .b32 %r<4>; .reg .b64 %rd<4>;
        ld.param.u64 %rd1, [out];
        mov.b16 %h1, 0x3e00;
        mov.b16 %h2, 0x4100;
        fma.rn.f16 %h3, %h1, %h2, %h1;
        st.global.b16 [%rd1], %h3;
        mov.b16 %h4, 0x3fc0;
        mov.b16 %h5, 0xc040;
        mul.rn.bf16 %h6, %h4, %h5;
        st.global.b16 [%rd1+2], %h6;",
    );
    let dev = Dev::new();
    let out = dev.upload(&[0u16; 2]);
    dev.run(&ptx, "k", [1, 1, 1], [1, 1, 1], 0, &[arg(out)]).unwrap();
    let got: Vec<u16> = dev.download(out, 2);
    // f16: 1.5 * 2.5 + 1.5 = 5.25; bf16: 1.5 * -3.0 = -4.5.
    assert_eq!(got, vec![f16::from_f32(5.25).to_bits(), bf16::from_f32(-4.5).to_bits()]);
}
