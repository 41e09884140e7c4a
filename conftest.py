"""Project-wide pytest set-up.

1. Triton's CPU interpreter, switched on before anything imports Triton. Triton reads
   TRITON_INTERPRET when a kernel is defined (`@triton.jit`), and a test, an exercise or a
   notebook kernel may define one before `tinymoe.kernels` gets the chance to set it. So on a
   machine without a CUDA device, every pytest command (`pytest -m exercises`, `-m triton`, ...)
   runs the kernels in the interpreter, as `make test` does; child processes (nbval's kernels,
   the grader's sandboxes) inherit it. A value already set is kept (`TRITON_INTERPRET=0` on a GPU).
2. The notebooks run by nbval get the `nbval` marker, so `pytest -m nbval` (or `-m "not nbval"`)
   selects them like every other part.
3. torch's global switches (autograd on, the default dtype) are the same after every test as
   before it: a test (or a benchmark it calls) that leaves them changed fails by name, and they
   are put back so the tests after it are not silently broken.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(getattr(item, "fspath", "")).endswith(".ipynb"):
            item.add_marker(pytest.mark.nbval)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _torch_globals_restored(request):
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    yield
    changed = []
    if torch.is_grad_enabled() != grad:
        changed.append(f"autograd enabled {grad} -> {torch.is_grad_enabled()}")
        torch.set_grad_enabled(grad)
    if torch.get_default_dtype() != dtype:
        changed.append(f"default dtype {dtype} -> {torch.get_default_dtype()}")
        torch.set_default_dtype(dtype)
    if changed:
        pytest.fail(f"{request.node.nodeid} left torch's global state changed ({'; '.join(changed)}): "
                    f"use a context manager (torch.no_grad(), ...) instead of the global switch", pytrace=False)
