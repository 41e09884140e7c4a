"""The comparison the Triton tests make: a kernel's output against a PyTorch path's."""
import torch


def assert_close(actual, expected, what, dtype, tolerance: dict):
    """Max |difference| within tolerance[dtype] x the largest expected value; on failure, say where."""
    actual, expected = actual.float(), expected.float()
    diff = (actual - expected).abs()
    scale = expected.abs().max().clamp(min=1e-6)
    worst = int(diff.argmax()) if diff.numel() else 0
    assert diff.numel() == 0 or diff.max() <= tolerance[dtype] * scale, (
        f"{what}: max |difference| {diff.max():.3g} at flat index {worst} "
        f"(got {actual.flatten()[worst]:.5g}, expected {expected.flatten()[worst]:.5g}); "
        f"allowed {tolerance[dtype]:.0e} x largest value {scale:.3g}")
