"""The flash-attention kernels compile for a real GPU (H100, sm_90) on this GPU-less machine, with the
same ahead-of-time path as tests/test_triton_compile.py (a subprocess with TRITON_INTERPRET=0)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.triton

SCRIPT = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tinymoe.kernels import flash_attention as fa

    target = GPUTarget("cuda", 90, 32)

    def build(fn, pointers, constants, **options):
        names = fn.arg_names
        signature = {n: "constexpr" if n in constants else pointers.get(n, "i32") for n in names}
        signature["scale"] = "fp32"
        constexprs = {(names.index(k),): v for k, v in constants.items()}
        kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=target, options=options)
        assert kernel.asm["cubin"], fn.__name__
        print("compiled", fn.__name__, constants)

    t, f32 = "*fp16", "*fp32"
    masks = dict(CAUSAL=True, HAS_WINDOW=True, HAS_CHUNK=True, INPUT_PRECISION=None,
                 BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, BLOCK_DV=64)
    build(fa.flash_forward_kernel, {"q_ptr": t, "k_ptr": t, "v_ptr": t, "out_ptr": t, "lse_ptr": f32}, masks,
          num_warps=4, num_stages=2)
    build(fa.flash_dkdv_kernel, {"q_ptr": t, "k_ptr": t, "v_ptr": t, "do_ptr": t, "lse_ptr": f32, "delta_ptr": f32,
                                 "dk_ptr": t, "dv_ptr": t}, masks, num_warps=4, num_stages=2)
    build(fa.flash_dq_kernel, {"q_ptr": t, "k_ptr": t, "v_ptr": t, "do_ptr": t, "lse_ptr": f32, "delta_ptr": f32,
                               "dq_ptr": t}, dict(masks, CAUSAL=False, HAS_WINDOW=False, HAS_CHUNK=False),
          num_warps=4, num_stages=2)
''')


def test_flash_kernels_compile_for_an_h100(tmp_path):
    pytest.importorskip("triton.backends.nvidia", reason="this Triton build has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path), "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        "a flash-attention kernel that runs in the interpreter does not compile for sm_90; Triton said:\n"
        + result.stderr[-3000:])
    assert result.stdout.count("compiled") == 3, f"expected 3 compiled kernels, got:\n{result.stdout}"
