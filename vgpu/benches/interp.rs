//! Interpreter speed in warp-instructions per second (criterion reports them as elements/s).
//!
//! Two kernels: an arithmetic loop (fma, integer, compare, branch: the lane-wise fast path) and a
//! shared-memory loop (st.shared, bar.sync, ld.shared, shfl: checks, barriers and collectives),
//! each over 16 CTAs of 256 threads, with the sanitizer checks on (the default) and off.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vgpu::{launch, Arch, DeviceConfig, GlobalMemory, LaunchConfig, Module};

const ALU: &str = "
.version 8.0
.target sm_90a
.address_size 64
.visible .entry alu(.param .u64 out, .param .u32 iters)
{
    .reg .pred %p<2>; .reg .b32 %r<8>; .reg .f32 %f<8>; .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [iters];
    mov.u32 %r2, %tid.x;
    cvt.rn.f32.u32 %f1, %r2;
    mov.f32 %f2, 0f3F800000;
    mov.u32 %r3, 0;
LOOP:
    fma.rn.f32 %f2, %f2, 0f3F7FFFFE, %f1;
    mul.f32 %f3, %f2, 0f3F000000;
    add.s32 %r3, %r3, 1;
    xor.b32 %r4, %r3, %r2;
    setp.lt.u32 %p1, %r3, %r1;
    @%p1 bra LOOP;
    mul.wide.u32 %rd2, %r2, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.f32 [%rd3], %f3;
    ret;
}
";

const SHARED: &str = "
.version 8.0
.target sm_90a
.address_size 64
.visible .entry smem(.param .u64 out, .param .u32 iters)
{
    .reg .pred %p<2>; .reg .b32 %r<12>; .reg .b64 %rd<4>;
    .shared .align 16 .b8 buf[1024];
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [iters];
    mov.u32 %r2, %tid.x;
    shl.b32 %r5, %r2, 2;
    mov.u32 %r6, buf;
    add.u32 %r7, %r6, %r5;
    xor.b32 %r8, %r5, 4;
    add.u32 %r8, %r6, %r8;
    mov.u32 %r3, 0;
    mov.u32 %r4, 0;
LOOP:
    st.shared.u32 [%r7], %r3;
    bar.sync 0;
    ld.shared.u32 %r9, [%r8];
    shfl.sync.bfly.b32 %r10, %r9, 1, 31, -1;
    add.s32 %r4, %r4, %r10;
    bar.sync 0;
    add.s32 %r3, %r3, 1;
    setp.lt.u32 %p1, %r3, %r1;
    @%p1 bra LOOP;
    mul.wide.u32 %rd2, %r2, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r4;
    ret;
}
";

fn bench(c: &mut Criterion) {
    let mem = GlobalMemory::new(1 << 24);
    let out = mem.alloc(256 * 4).unwrap();
    let cfg = LaunchConfig { grid: [16, 1, 1], block: [256, 1, 1], dynamic_smem: 0 };
    let mut group = c.benchmark_group("vgpu");
    for (name, ptx, entry, iters) in [("alu", ALU, "alu", 200u32), ("shared", SHARED, "smem", 100)] {
        let module = Module::parse(ptx).unwrap();
        let kernel = module.kernel(entry).unwrap();
        for checks in [true, false] {
            let dev = DeviceConfig { arch: Arch::Sm90a, sm_count: 4, checks };
            let args: [&[u8]; 2] = [&out.to_le_bytes(), &iters.to_le_bytes()];
            let per_launch = launch(&dev, &mem, kernel, &cfg, &args).unwrap().instructions;
            group.throughput(Throughput::Elements(per_launch));
            let label = format!("{name}/checks={checks}");
            group.bench_function(label, |b| b.iter(|| launch(&dev, &mem, kernel, &cfg, &args).unwrap()));
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
