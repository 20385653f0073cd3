"""Checkpoint files checked before Lightning loads them, so a damaged one is named with what to do about it.

Without this, a zero-byte `.ckpt` gives a bare `EOFError`, a truncated one torch's zip message without the
path, and a truncated `last.ckpt` makes every automatic resume fail the same way until someone finds it.
Here every such file raises :class:`CheckpointError` naming the path, what is wrong and what to do.

Lightning checkpoints are zip archives (torch's format) whose members carry CRC-32 checksums, so checking
every member's CRC finds truncation and garbling in any byte without unpickling anything; unpickling then
checks that it is a Lightning checkpoint at all. Loading is weights-only (``torch.load(weights_only=True)``):
mlcap writes tensors and plain Python values only, so a file that needs any other object unpickled (the way a
pickle runs code) is refused before anything in it is built, naming the file. A model checkpoint (one with hyper-parameters) of another layout than this code's (`LAYOUT`) is
refused in one line naming the file: retrain with this version.

The training recipe's own reads and edits of its checkpoints live here too: the best model (`load_best`), the
epoch it holds (`saved_epoch`) and the calibrated threshold written into it (`set_checkpoint_threshold`).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mlcap.errors import ExpectedError
from mlcap.runs import atomic_path

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = [
    "LAYOUT",
    "LAYOUT_KEY",
    "CheckpointError",
    "check_checkpoint",
    "check_resumable",
    "check_same_network",
    "load_best",
    "load_checkpoint",
    "saved_epoch",
    "set_checkpoint_threshold",
]

# What Lightning needs to resume training (it raises a KeyError deep in fit() without the optimizer state).
RESUME_KEYS = ("epoch", "global_step", "optimizer_states")
# The model checkpoints' layout: hyper-parameters `model` (the model config), `data` (DataMetadata), `threshold`
# and `tta`, and the network's module names. Bumped when either changes; layout 1 (no key) held label_ids,
# vocab_tokens, preprocessing and one hyper-parameter per model key; layout 2 held integer label_ids, root and
# image_dir in `data` (now label names and the data node).
LAYOUT_KEY, LAYOUT = "mlcap_layout", 3


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def _advice(path: Path, automatic: bool) -> str:
    if automatic:
        return (
            "It is the interrupted run's last checkpoint, which the automatic resume would load: delete it "
            f"(rm '{path}') to train this run from the start, or pass ckpt_path=<another checkpoint> to resume "
            "from that one."
        )
    return (
        "Pass ckpt_path= a complete checkpoint (e.g. <run>/checkpoints/best.ckpt or last.ckpt), "
        "or train again to write a new one."
    )


def _file_problem(path: Path) -> str | None:
    """Why the file itself is unusable (missing, empty, a damaged archive), or None."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes; the run writing it was probably killed)"
    if not zipfile.is_zipfile(path):
        return None  # no zip directory: truncated, not a checkpoint, or torch's legacy format; loading tells
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"is a damaged archive ({err})"
    return f"is damaged: its member {damaged} fails its CRC check" if damaged else None


def _load(path: Path, map_location: Any, automatic: bool, mmap: bool = False) -> dict:
    """The checkpoint dict; `mmap` (zip format only) maps tensors instead of reading them, for checks."""
    problem = _file_problem(path)
    if problem is None:
        is_zip = zipfile.is_zipfile(path)
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
        except pickle.UnpicklingError as err:
            if "unsupported global" not in str(err).lower():
                raise CheckpointError(
                    f"checkpoint {path} is not a torch checkpoint ({_refused_global(err)}). "
                    f"{_advice(path, automatic)}"
                ) from None
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds objects other than tensors and plain values "
                f"({_refused_global(err)}), which mlcap never writes; loading it could run code. Use a "
                f"checkpoint written by mlcap. {_advice(path, automatic)}"
            ) from None
        except Exception as err:  # noqa: BLE001 - whatever torch or pickle raise, the file is unusable
            first = " ".join(str(err).split()).split(". ")[0][:160]  # torch's messages run on for lines
            kind = (
                "cannot be loaded" if is_zip else "is truncated or not a torch checkpoint (no zip directory)"
            )
            problem = f"{kind} ({type(err).__name__}: {first})"
    if problem is None and not (isinstance(checkpoint, dict) and "state_dict" in checkpoint):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        problem = f"is not a Lightning checkpoint (no state_dict; found {found})"
    if problem is None and "hyper_parameters" in checkpoint and checkpoint.get(LAYOUT_KEY, 1) != LAYOUT:
        # A model checkpoint (it has hyper-parameters) of another mlcap version: not loadable by this code.
        raise CheckpointError(
            f"checkpoint {path} was written by another mlcap version (checkpoint layout "
            f"{checkpoint.get(LAYOUT_KEY, 1)}, this version reads {LAYOUT}); retrain with this version"
        )
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem}. {_advice(path, automatic)}")
    return checkpoint


def _refused_global(err: Exception) -> str:
    """What torch's weights-only unpickler refused (e.g. `GLOBAL posix.system`), from its long message."""
    found = re.search(
        r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|[A-Z][\w ]*?GLOBAL [\w.]+)", str(err)
    )
    return found.group(1) if found else " ".join(str(err).split())[:120]


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu", automatic: bool = False) -> dict:
    """The checkpoint's dict, or a :class:`CheckpointError` naming the file and what to do.

    `automatic`: the file was picked by the automatic resume (the advice is then to delete it).
    """
    return _load(Path(path), map_location, automatic)


def check_checkpoint(path: str | Path, *, automatic: bool = False) -> Path:
    """`path` if it holds a complete Lightning checkpoint (for predicting or reloading the best weights)."""
    path = Path(path)
    _load(path, "cpu", automatic, mmap=True)
    return path


def check_resumable(path: str | Path, *, automatic: bool = False) -> Path:
    """`path` if training can resume from it: complete, and with epoch, step and optimizer state.

    Call it before `trainer.fit(..., ckpt_path=path)`; `automatic=True` when the path is the run's own
    `checkpoints/last.ckpt` picked by the automatic resume rather than given as `ckpt_path=`.
    """
    path = Path(path)
    checkpoint = _load(path, "cpu", automatic, mmap=True)
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} holds weights but not the training state to resume from (no {missing}; "
            "saved with save_weights_only?). Use it for predicting, or pass ckpt_path= a last.ckpt written "
            "by training."
        )
    return path


# Model keys that may change when training resumes from a checkpoint: how it trains, not what it is.
TRAINING_KEYS = (
    "optimizer",
    "scheduler",
    "loss",
    "dropout",
    "caption_dropout",
    "backbone_lr_scale",
    "sentence_lr_scale",
)


def check_same_network(path: str | Path, model: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint of another network (`model`: the resolved cfg.model), naming the
    keys that differ, before any data is read; loading it would fail late with a raw state-dict error."""
    from mlcap.runs import differences, flatten

    stored = load_checkpoint(path).get("hyper_parameters", {}).get("model")
    if stored is None:
        return
    network = lambda config: flatten({"model": {k: v for k, v in config.items() if k not in TRAINING_KEYS}})  # noqa: E731
    diffs = differences(network(stored), network(model))
    if diffs:
        shown = ", ".join(f"{key} (there {old!r}, here {new!r})" for key, old, new in diffs[:8])
        raise CheckpointError(
            f"ckpt_path={path} holds another network: {shown}. Resume with the settings it was trained with, "
            "or leave ckpt_path unset to train this one from scratch"
        )


def saved_epoch(path: str | Path) -> int:
    """The epoch whose weights the checkpoint holds (so losses and F1 in metrics.json are one epoch's)."""
    return int(load_checkpoint(path)["epoch"])


def set_checkpoint_threshold(path: Path, threshold: float | list[float]) -> None:
    """Store a calibrated threshold in a checkpoint, atomically: a crash never leaves a half-written file."""
    checkpoint = load_checkpoint(path)
    checkpoint["hyper_parameters"]["threshold"] = threshold
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_best(
    checkpoint: ModelCheckpoint,
    model: pl.LightningModule,
    output_dir: Path,
    model_class: type[pl.LightningModule],
) -> tuple[Any, str]:
    """The best checkpoint's model, from this run's own folder (fast_dev_run and friends save none: then the
    weights in memory).

    Lightning restores the best path a resumed checkpoint recorded, which may lie in another run's folder
    (`ckpt_path=` from another run) or where this folder was before it moved: only a file in this run's
    checkpoints folder is this run's, so another run's files are never read as ours or rewritten.
    """
    recorded = checkpoint.best_model_path or checkpoint.last_model_path
    if not recorded:
        return model, ""
    own = output_dir / "checkpoints" / Path(recorded).name
    if not own.is_file():
        raise ExpectedError(
            f"training saved no checkpoint in {own.parent}: the run resumed from a checkpoint already at "
            "trainer.max_epochs (or early-stopped), so no epoch ran here. Raise trainer.max_epochs to train on, "
            "or predict with that checkpoint directly"
        )
    best = model_class.load_from_checkpoint(own, load_pretrained=False, map_location="cpu")
    return best, str(own)
