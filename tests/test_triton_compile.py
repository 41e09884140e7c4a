"""Every kernel compiles for a real GPU (H100, sm_90) on this GPU-less machine.

The interpreter runs kernels as Python, so it accepts code the compiler would reject (and the
other triton tests cannot tell). Triton's ahead-of-time path (`triton.compile` with a target)
lowers a kernel all the way to a cubin with the ptxas shipped in the wheel, no device needed.
It runs in a subprocess with TRITON_INTERPRET=0: in this process the kernels were already made
into interpreter functions when tinymoe.kernels was imported.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.triton

SCRIPT = textwrap.dedent('''
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    router, align, gemm, combine = (importlib.import_module(f"tinymoe.kernels.{m}")
                                    for m in ("router", "align", "grouped_gemm", "combine"))
    target = GPUTarget("cuda", 90, 32)

    def build(fn, pointers, constants, **options):
        names = fn.arg_names
        signature = {n: "constexpr" if n in constants else pointers.get(n, "i32") for n in names}
        constexprs = {(names.index(k),): v for k, v in constants.items()}
        kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=target, options=options)
        assert kernel.asm["cubin"], fn.__name__
        print("compiled", fn.__name__, constants)

    i32 = "*i32"
    build(router.router_kernel, {"logits_ptr": "*fp32", "bias_ptr": "*fp32", "expert_ids_ptr": i32,
                                 "weights_ptr": "*fp32", "block_counts_ptr": i32},
          dict(TOP_K=2, USE_SIGMOID=True, HAS_BIAS=True, RENORMALIZE=True, BLOCK_TOKENS=16, BLOCK_EXPERTS=8, K_PAD=2))
    build(align.count_kernel, {"expert_ids_ptr": "*i64", "block_counts_ptr": i32}, dict(BLOCK_PAIRS=32, BLOCK_EXPERTS=8))
    build(align.scan_kernel, {"block_counts_ptr": i32, "block_starts_ptr": i32, "expert_counts_ptr": i32},
          dict(BLOCK_BLOCKS=16, BLOCK_EXPERTS=8))
    build(align.offsets_kernel, {"expert_counts_ptr": i32, "expert_offsets_ptr": i32, "tile_experts_ptr": i32},
          dict(BLOCK_M=64, BLOCK_EXPERTS=8, BLOCK_TILES=64))
    build(align.scatter_kernel, {"expert_ids_ptr": "*i64", "block_starts_ptr": i32, "expert_offsets_ptr": i32,
                                 "sorted_pairs_ptr": i32, "pair_rows_ptr": i32}, dict(BLOCK_PAIRS=32, BLOCK_EXPERTS=8))
    for dtype, precision in (("bf16", None),):   # float32 ("ieee") lowers the same constructs; slower to build
        t = "*" + dtype
        rows = ("x_ptr", "w_gate_ptr", "w_up_ptr", "hidden_ptr", "gate_ptr", "up_ptr")
        build(gemm.gate_up_kernel, {**{n: t for n in rows}, "sorted_pairs_ptr": i32, "tile_experts_ptr": i32},
              dict(GATED=True, SAVE_PREACTIVATIONS=True, INPUT_PRECISION=precision, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
              num_warps=4, num_stages=2)
        build(gemm.grouped_matmul_kernel, {"a_ptr": t, "b_ptr": t, "out_ptr": t, "row_scales_ptr": "*fp32",
                                           "sorted_pairs_ptr": i32, "tile_experts_ptr": i32},
              dict(GATHER_ROWS=True, HAS_ROW_SCALES=True, INPUT_PRECISION=precision, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
              num_warps=4, num_stages=2)
        build(gemm.weight_grad_kernel, {"g_ptr": t, "a_ptr": t, "dw_ptr": t, "row_scales_ptr": "*fp32",
                                        "sorted_pairs_ptr": i32, "expert_offsets_ptr": i32},
              dict(GATHER_G=True, GATHER_A=False, HAS_ROW_SCALES=True, INPUT_PRECISION=precision,
                   BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), num_warps=4, num_stages=2)
        build(combine.combine_kernel, {"rows_ptr": t, "pair_rows_ptr": i32, "out_ptr": t},
              dict(TOP_K=2, BLOCK_TOKENS=32, BLOCK_D=64))
''')


def test_every_kernel_compiles_for_an_h100(tmp_path):
    pytest.importorskip("triton.backends.nvidia", reason="this Triton build has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path), "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        "a kernel that runs in the interpreter does not compile for sm_90; Triton said:\n"
        + result.stderr[-3000:])
    assert result.stdout.count("compiled") == 9, f"expected 9 compiled kernels, got:\n{result.stdout}"
