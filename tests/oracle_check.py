"""The one comparison every oracle test makes (our tensor against an outside reference's), and the
random weights the Llama oracles put in our modules before copying them across."""
import torch


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-5, against: str = "the reference") -> float:
    """Max abs error of ours vs theirs, printed; it must stay within tol x max(1, largest |reference| value)
    (float32 rounding grows with the size of the numbers)."""
    assert ours.shape == theirs.shape, f"{name}: our shape {tuple(ours.shape)} != reference {tuple(theirs.shape)}"
    err = (ours.detach().double() - theirs.detach().double()).abs().max().item()
    scale = max(1.0, theirs.detach().abs().max().item())
    print(f"ORACLE {name:<60} max abs error {err:.3e}  (reference max |value| {scale:.3g})")
    assert err <= tol * scale, (f"{name}: max abs error {err:.3e} against {against} exceeds "
                                f"{tol:.0e} x {scale:.3g} = {tol * scale:.3e}")
    return err


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norm gains too, so a gain of 1 cannot hide a missing multiply)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
