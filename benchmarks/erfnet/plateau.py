"""The teacher's stopping rule: a phase ends when validation mIoU has not improved for ``patience`` evaluations.

The rule is a :class:`cheapconv.Callback` on the epoch records of :func:`cheapconv.distill` (each carries
``val_miou``). It keeps the best weights seen, and appends every epoch's point to a JSON-lines curve file as soon
as it is measured, with the best weights in a file beside it, so a phase interrupted and resumed from its
checkpoint keeps its curve, its best weights and its count of epochs without improvement.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cheapconv import Callback

#: the columns of a curve point
CURVE_COLUMNS = ("epoch", "step", "val_miou", "val_pixel_acc", "train_loss", "lr", "epoch_time_s")


def best_index(values: list[float], min_delta: float) -> int | None:
    """The index of the best value under the rule: a value counts as better only where it beats every earlier
    best by more than ``min_delta`` (None for no values).

    >>> best_index([0.1, 0.3, 0.3, 0.29], 0.0)
    1
    >>> best_index([0.1, 0.2, 0.205], 0.01)
    1
    """
    best = None
    for i, v in enumerate(values):
        if best is None or v > values[best] + min_delta:
            best = i
    return best


def epochs_since_best(values: list[float], min_delta: float) -> int:
    """Evaluations since the best value under :func:`best_index`'s rule (0: the last one is the best).

    >>> epochs_since_best([0.1, 0.3, 0.3, 0.29], 0.0)
    2
    """
    best = best_index(values, min_delta)
    return 0 if best is None else len(values) - 1 - best


class Plateau(Callback):
    """Stops a phase (``run.request_stop()``) after ``patience`` epochs without a validation mIoU better than the
    best so far by more than ``min_delta``; ``best_state`` holds the weights of the best epoch."""

    def __init__(self, model: torch.nn.Module, curve: Path, *, patience: int, min_delta: float = 0.0):
        self.model, self.curve, self.patience, self.min_delta = model, Path(curve), patience, min_delta
        self.best_file = self.curve.with_suffix(".best.pt")
        self.run = None
        self.stopped = False

    # ---------------------------------------------------------------------------------------- callback hooks
    def on_start(self, run) -> None:
        self.run = run

    def on_record(self, record: dict) -> None:
        if record.get("kind") != "epoch" or "val_miou" not in record:
            return
        point = {"epoch": record.get("epoch"), "step": record.get("step"), "val_miou": record["val_miou"],
                 "val_pixel_acc": record.get("val_pixel_acc"), "train_loss": record.get("loss"),
                 "lr": record.get("lr"), "epoch_time_s": record.get("epoch_time_s")}
        values = [p["val_miou"] for p in self.points()] + [point["val_miou"]]
        if epochs_since_best(values, self.min_delta) == 0:   # a new best: keep its weights before the point
            torch.save({k: v.detach().clone() for k, v in self.model.state_dict().items()}, self.best_file)
        with open(self.curve, "a") as f:
            f.write(json.dumps(point) + "\n")
        if epochs_since_best(values, self.min_delta) >= self.patience and self.run is not None:
            self.stopped = True
            self.run.request_stop()

    # ------------------------------------------------------------------------------------------- results
    def points(self) -> list[dict]:
        """The curve so far, one point per evaluated epoch, in order (a resumed phase's earlier ones included)."""
        if not self.curve.exists():
            return []
        got = {}   # by epoch: a point measured twice (a resume replayed its epoch) counts once, the later one
        for line in self.curve.read_text().splitlines():
            if line.strip():
                point = json.loads(line)
                got[point["epoch"]] = point
        return [got[k] for k in sorted(got)]

    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The weights of the best epoch (a state dict read as data only), or None before any evaluation."""
        if not self.best_file.exists():
            return None
        return torch.load(self.best_file, map_location="cpu", weights_only=True)

    def summary(self) -> dict:
        """The phase's curve and where it stopped, for the teacher's record."""
        pts = self.points()
        values = [p["val_miou"] for p in pts]
        best = best_index(values, self.min_delta)
        return {"curve": [[p[c] for c in CURVE_COLUMNS] for p in pts], "curve_columns": list(CURVE_COLUMNS),
                "epochs_run": len(pts), "best_epoch": pts[best]["epoch"] if best is not None else None,
                "best_val_miou": values[best] if best is not None else None,
                "stopped": "plateau" if epochs_since_best(values, self.min_delta) >= self.patience else "cap"}
