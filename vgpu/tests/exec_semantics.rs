//! Arithmetic, rounding, conversion, comparison and shuffle semantics against the PTX ISA's
//! definitions, each through a one-instruction kernel.

mod common;
use common::{arg, module, Dev};

/// Runs `instr` (operands %d = result, %a %b %c = inputs, 32-bit registers) on one thread and
/// returns the 32-bit result.
fn eval32(instr: &str, a: u32, b: u32, c: u32) -> u32 {
    let ptx = module(
        ".param .u64 out, .param .u32 pa, .param .u32 pb, .param .u32 pc",
        &format!(
            ".reg .b32 %a, %b, %c, %d; .reg .b16 %rs1; .reg .b64 %o; .reg .pred %p;
            ld.param.u64 %o, [out];
            ld.param.u32 %a, [pa];
            ld.param.u32 %b, [pb];
            ld.param.u32 %c, [pc];
            {instr};
            st.global.u32 [%o], %d;
            ret;"
        ),
    );
    let dev = Dev::new();
    let out = dev.upload(&[0u32]);
    dev.run(&ptx, "k", [1, 1, 1], [1, 1, 1], 0, &[arg(out), arg(a), arg(b), arg(c)]).unwrap();
    dev.download::<u32>(out, 1)[0]
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

fn up(x: f32) -> f32 {
    f32::from_bits(x.to_bits() + 1)
}

#[test]
fn directed_rounding_of_add_mul_fma() {
    let tiny = 2f32.powi(-30);
    assert_eq!(eval32("add.rn.f32 %d, %a, %b", f(1.0), f(tiny), 0), f(1.0));
    assert_eq!(eval32("add.rp.f32 %d, %a, %b", f(1.0), f(tiny), 0), f(up(1.0)));
    assert_eq!(eval32("add.rm.f32 %d, %a, %b", f(1.0), f(tiny), 0), f(1.0));
    assert_eq!(eval32("add.rz.f32 %d, %a, %b", f(-1.0), f(-tiny), 0), f(-1.0));
    assert_eq!(eval32("add.rm.f32 %d, %a, %b", f(-1.0), f(-tiny), 0), f(-up(1.0)));
    // (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46: rz/rm drop the 2^-46, rp rounds it up to the next f32.
    let x = up(1.0);
    assert_eq!(eval32("mul.rz.f32 %d, %a, %b", f(x), f(x), 0), f(1.0 + 2f32.powi(-22)));
    assert_eq!(eval32("mul.rp.f32 %d, %a, %b", f(x), f(x), 0), f(up(1.0 + 2f32.powi(-22))));
    // fma is fused: x*x - (x*x rounded) recovers the 2^-46 exactly.
    let p = x * x;
    assert_eq!(eval32("fma.rn.f32 %d, %a, %b, %c", f(x), f(x), f(-p)), f(2f32.powi(-46)));
    // The expf reduction's magic-number trick: fma.rm against 0x4B400001 (2^23 + 2^22 + 1) leaves
    // floor(a*b) + 1 in the low mantissa bits; with an inexact product the floor shows.
    assert_eq!(eval32("fma.rm.f32 %d, %a, %b, %c", f(0.75), f(252.0), 0x4B40_0001), f(12_583_102.0));
    assert_eq!(eval32("fma.rm.f32 %d, %a, %b, %c", f(0.7), f(252.0), 0x4B40_0001), f(12_583_089.0));
    assert_eq!(eval32("fma.rp.f32 %d, %a, %b, %c", f(0.7), f(252.0), 0x4B40_0001), f(12_583_090.0));
}

#[test]
fn conversions_round_and_saturate() {
    // bf16: 1 + 2^-8 is halfway between 1.0 and 1.0078125: ties to even.
    assert_eq!(eval32("cvt.rn.bf16.f32 %rs1, %a; cvt.u32.u16 %d, %rs1", f(1.0 + 2f32.powi(-8)), 0, 0).to_string(), "16256");
    assert_eq!(eval32("cvt.rn.bf16.f32 %rs1, %a; cvt.u32.u16 %d, %rs1", f(1.0 + 3.0 * 2f32.powi(-9)), 0, 0), 0x3F81);
    // f16: 65520 rounds to infinity.
    assert_eq!(eval32("cvt.rn.f16.f32 %rs1, %a; cvt.u32.u16 %d, %rs1", f(65520.0), 0, 0), 0x7C00);
    assert_eq!(eval32("cvt.rni.s32.f32 %d, %a", f(2.5), 0, 0), 2);
    assert_eq!(eval32("cvt.rni.s32.f32 %d, %a", f(-2.5), 0, 0), (-2i32) as u32);
    assert_eq!(eval32("cvt.rmi.f32.f32 %d, %a", f(-1.5), 0, 0), f(-2.0));
    assert_eq!(eval32("cvt.rzi.s32.f32 %d, %a", f(3e9), 0, 0), i32::MAX as u32);
    assert_eq!(eval32("cvt.rzi.s32.f32 %d, %a", f(f32::NAN), 0, 0), 0);
    assert_eq!(eval32("cvt.rzi.u32.f32 %d, %a", f(-5.0), 0, 0), 0);
    assert_eq!(eval32("cvt.sat.f32.f32 %d, %a", f(1.5), 0, 0), f(1.0));
    assert_eq!(eval32("cvt.rn.f32.s32 %d, %a", (-7i32) as u32, 0, 0), f(-7.0));
    assert_eq!(eval32("cvt.rn.f32.u32 %d, %a", 16_777_217, 0, 0), f(16_777_216.0));
    assert_eq!(eval32("cvt.rz.f32.u32 %d, %a", 16_777_219, 0, 0), f(16_777_218.0));
}

#[test]
fn unordered_comparisons_are_true_on_nan() {
    let nan = f(f32::NAN);
    let t = |cmp: &str, a: u32, b: u32| eval32(&format!("setp.{cmp}.f32 %p, %a, %b; selp.u32 %d, 1, 0, %p"), a, b, 0);
    assert_eq!(t("gt", nan, f(1.0)), 0);
    assert_eq!(t("gtu", nan, f(1.0)), 1);
    assert_eq!(t("ne", nan, nan), 0);
    assert_eq!(t("neu", nan, nan), 1);
    assert_eq!(t("geu", f(2.0), f(1.0)), 1);
    assert_eq!(t("leu", f(2.0), f(1.0)), 0);
    assert_eq!(t("lt", f(-0.0), f(0.0)), 0);
    assert_eq!(eval32("setp.lt.s32 %p, %a, %b; selp.u32 %d, 1, 0, %p", (-1i32) as u32, 1, 0), 1);
    assert_eq!(eval32("setp.lo.u32 %p, %a, %b; selp.u32 %d, 1, 0, %p", (-1i32) as u32, 1, 0), 0);
}

#[test]
fn integer_forms() {
    assert_eq!(eval32("mul.hi.u32 %d, %a, %b", 0x8000_0000, 6, 0), 3);
    assert_eq!(eval32("mul.hi.s32 %d, %a, %b", (-2i32) as u32, 0x4000_0000, 0), u32::MAX);
    assert_eq!(eval32("div.u32 %d, %a, %b", 7, 2, 0), 3);
    assert_eq!(eval32("rem.s32 %d, %a, %b", (-7i32) as u32, 2, 0), (-1i32) as u32);
    assert_eq!(eval32("shr.s32 %d, %a, %b", 0x8000_0000, 40, 0), u32::MAX);
    assert_eq!(eval32("shr.u32 %d, %a, %b", 0x8000_0000, 40, 0), 0);
    assert_eq!(eval32("shl.b32 %d, %a, %b", 1, 31, 0), 0x8000_0000);
    assert_eq!(eval32("bfi.b32 %d, %a, %b, 8, 4", 0xF, 0, 0), 0xF00);
    assert_eq!(eval32("popc.b32 %d, %a", 0xF0F0, 0, 0), 8);
    assert_eq!(eval32("min.s32 %d, %a, %b", (-3i32) as u32, 2, 0), (-3i32) as u32);
    assert_eq!(eval32("max.u32 %d, %a, %b", (-3i32) as u32, 2, 0), (-3i32) as u32);
    assert_eq!(eval32("add.sat.s32 %d, %a, %b", i32::MAX as u32, 1, 0), i32::MAX as u32);
    assert_eq!(eval32("copysign.f32 %d, %a, %b", f(-1.0), f(3.0), 0), f(-3.0));
    assert_eq!(eval32("max.f32 %d, %a, %b", f(f32::NAN), f(3.0), 0), f(3.0));
}

#[test]
fn approximate_transcendentals_stay_within_the_isa_bounds() {
    for x in [-3.7f32, -1.0, 0.0, 0.3, 1.0, 5.5, 20.0] {
        let got = f32::from_bits(eval32("ex2.approx.ftz.f32 %d, %a", f(x), 0, 0));
        let want = (x as f64).exp2();
        assert!(((got as f64 - want) / want).abs() < 2f64.powi(-22), "ex2({x}) = {got}, want {want}");
    }
    for x in [0.1f32, 3.0, -7.0, 1e-3] {
        let got = f32::from_bits(eval32("rcp.approx.ftz.f32 %d, %a", f(x), 0, 0));
        let want = 1.0 / x as f64;
        assert!(((got as f64 - want) / want).abs() <= 2f64.powi(-23), "rcp({x}) = {got}, want {want}");
    }
    // .ftz: a subnormal input is zero.
    assert_eq!(eval32("rcp.approx.ftz.f32 %d, %a", 1, 0, 0), f(f32::INFINITY));
}

/// Runs `instrs` on one warp with %v = lane * 10 and stores %d (and %q as 0/1) per lane.
fn warp_eval(instrs: &str) -> (Vec<u32>, Vec<u32>) {
    let ptx = module(
        ".param .u64 out, .param .u64 outp",
        &format!(
            ".reg .b32 %l, %v, %d, %q, %t; .reg .b64 %o, %op, %off; .reg .pred %p;
            ld.param.u64 %o, [out];
            ld.param.u64 %op, [outp];
            mov.u32 %l, %tid.x;
            mul.lo.u32 %v, %l, 10;
            mov.u32 %d, 0;
            mov.pred %p, 0;
            {instrs};
            selp.u32 %q, 1, 0, %p;
            mul.wide.u32 %off, %l, 4;
            add.s64 %o, %o, %off;
            add.s64 %op, %op, %off;
            st.global.u32 [%o], %d;
            st.global.u32 [%op], %q;
            ret;"
        ),
    );
    let dev = Dev::new();
    let (out, outp) = (dev.upload(&[0u32; 32]), dev.upload(&[0u32; 32]));
    dev.run(&ptx, "k", [1, 1, 1], [32, 1, 1], 0, &[arg(out), arg(outp)]).unwrap();
    (dev.download(out, 32), dev.download(outp, 32))
}

#[test]
fn shfl_modes_follow_the_isa_pseudocode() {
    let (d, p) = warp_eval("shfl.sync.bfly.b32 %d|%p, %v, 1, 31, -1");
    assert!((0..32).all(|l| d[l] == ((l ^ 1) * 10) as u32 && p[l] == 1), "{d:?}");
    let (d, p) = warp_eval("shfl.sync.up.b32 %d|%p, %v, 1, 0, -1");
    assert_eq!((d[0], p[0]), (0, 0), "lane 0 has no lane below: keeps its own value");
    assert!((1..32).all(|l| d[l] == ((l - 1) * 10) as u32 && p[l] == 1));
    let (d, p) = warp_eval("shfl.sync.down.b32 %d|%p, %v, 2, 31, -1");
    assert!((0..30).all(|l| d[l] == ((l + 2) * 10) as u32 && p[l] == 1));
    assert_eq!((d[30], p[30], d[31], p[31]), (300, 0, 310, 0));
    let (d, _) = warp_eval("shfl.sync.idx.b32 %d|%p, %v, 5, 31, -1");
    assert!(d.iter().all(|&x| x == 50));
    // Width 8 (c = ((32 - 8) << 8) | 31 for idx): lane 5 of each 8-lane segment.
    let (d, _) = warp_eval("shfl.sync.idx.b32 %d|%p, %v, 5, 6175, -1");
    assert!((0..32).all(|l| d[l] == ((l / 8 * 8 + 5) * 10) as u32), "{d:?}");
    // Width 8 down by 4: lanes past their segment's end keep their value.
    let (d, p) = warp_eval("shfl.sync.down.b32 %d|%p, %v, 4, 6175, -1");
    assert!((0..32).all(|l| if l % 8 < 4 { d[l] == ((l + 4) * 10) as u32 && p[l] == 1 } else { d[l] == (l * 10) as u32 && p[l] == 0 }));
}

#[test]
fn match_any_groups_equal_values() {
    let (d, _) = warp_eval("and.b32 %t, %l, 3; match.any.sync.b32 %d, %t, -1");
    assert!((0..32).all(|l| d[l] == 0x1111_1111u32 << (l % 4)), "{d:x?}");
}

#[test]
fn diverged_lanes_reconverge_for_a_full_warp_shuffle() {
    // Odd lanes take a detour; the shuffle after the join still sees all 32 lanes.
    let (d, _) = warp_eval(
        "and.b32 %t, %l, 1;
        setp.eq.u32 %p, %t, 1;
        @%p bra ODD;
        add.u32 %v, %v, 1;
        bra.uni JOIN;
    ODD:
        add.u32 %v, %v, 2;
    JOIN:
        shfl.sync.bfly.b32 %d, %v, 1, 31, -1",
    );
    assert!((0..32).all(|l| d[l] == ((l ^ 1) * 10 + 1 + (l ^ 1) % 2) as u32), "{d:?}");
}
