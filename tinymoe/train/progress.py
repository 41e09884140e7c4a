"""The progress bar: step, loss, validation loss and tokens/s, in a terminal or in JupyterLab.

tqdm.auto picks the right bar: a text bar on stderr in a terminal, an ipywidgets bar in a
notebook. The numbers go in the bar's postfix, so a long run shows how it is going at a glance.
In a notebook the bar is shown through a display handle that is refreshed when the run ends, so
the plain-text copy a saved notebook keeps (for viewers without the live widget) is the final
state, not the empty bar of the first moment.
"""
from __future__ import annotations

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar over optimizer steps; `update(row)` advances it one step and shows the row's numbers."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = self.handle = None
        self.last_val = None
        if enabled:
            from tqdm.auto import tqdm
            in_notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)   # the widget bar
            options = dict(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
            self.bar = tqdm(**options, display=False) if in_notebook else tqdm(**options)
            if in_notebook:
                from IPython.display import display
                self.handle = display(self.bar.container, display_id=True)

    def update(self, row: dict) -> None:
        if row.get("val_loss") is not None:
            self.last_val = row["val_loss"]
        if self.bar is None:
            return
        postfix = {"loss": f"{row['loss']:.3f}"}
        if self.last_val is not None:
            postfix["val"] = f"{self.last_val:.3f}"
        postfix["tok/s"] = f"{row['tokens_per_s']:,.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.handle is not None:
            self.handle.update(self.bar.container)           # the saved text copy: the final state
