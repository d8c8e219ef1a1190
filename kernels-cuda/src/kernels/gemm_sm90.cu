// gemm_sm90.cu: the engine's GEMM on Hopper (compute capability 9.0, built for sm_90a): plain,
// fused-epilogue and grouped products, bf16 / f16 in, f32 accumulate, output in the input dtype or
// f32. The algorithm, layouts, tensor maps and limits are in gemm_sm90.cuh; the epilogue is
// gemm_epilogue.cuh's LinearEpilogue, as in gemm_sm80.cu, so both paths take the same arguments
// plus, here, two tensor maps and the B batch stride.
//
// Grouped GEMM on this path uses one A map over the whole [M_total, K] (or [K_total, M]) operand
// and one 3-D B map over the stack of expert matrices; the device-side group table gives each tile
// its rows (A coordinates) and its expert (B's third coordinate), so no per-group tensor map is
// built or patched on the device and no host sync is needed.
//
// The module is compiled for every architecture the engine builds (CI checks sm_80 too), but wgmma,
// setmaxnreg and TMA exist only on sm_90a: elsewhere the entry points trap (the host never launches
// them there; it picks gemm_sm80 below compute capability 9.0).

#include "common.cuh"
#include "gemm_sm80.cuh"
#include "gemm_sm90.cuh"
#include "gemm_epilogue.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GEMM90_BODY(TA, TB, TIN, TOUT)                                        \
    extern __shared__ __align__(1024) char smem[];                            \
    gemm_ep::LinearEpilogue<TOUT> ep{{}, e};                                  \
    sm90::gemm<TA, TB, TIN>(p, x, &map_a, &map_b, ep, smem);
#else
#define GEMM90_BODY(TA, TB, TIN, TOUT) __trap();
#endif

#define GEMM90_ENTRY(FORM, TA, TB, TIN, NIN, TOUT, NOUT)                                                       \
    extern "C" __global__ void __launch_bounds__(sm90::Tile::THREADS, 1)                                     \
        gemm90_##FORM##_##NIN##_##NOUT(sm80::GemmProblem<TIN> p, sm90::Sm90Extra x,                         \
                                       const __grid_constant__ sm90::TensorMap map_a,                        \
                                       const __grid_constant__ sm90::TensorMap map_b, gemm_ep::EpilogueParams e) { \
        GEMM90_BODY(TA, TB, TIN, TOUT)                                                                       \
    }

GEMM_LINEAR_ENTRIES(GEMM90_ENTRY)
