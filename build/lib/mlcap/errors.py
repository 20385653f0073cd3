"""The errors an entry point (train.py, predict.py, a sweep's job) reports in one line `error: <message>`.

Bad settings, files and data are the user's to fix: their message names the key, file or row and what to do,
and a traceback would only bury it. Any other exception is a bug and keeps its traceback. `MLCAP_DEBUG=1`
keeps the traceback of expected errors too (then HYDRA_FULL_ERROR=1 shows Hydra's own frames as well).

Torch-free on purpose: the run-folder callback and the sweeper import it before torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import FrameType

from hydra.errors import InstantiationException

DEBUG_ENV = "MLCAP_DEBUG"
_PACKAGE = Path(__file__).resolve().parent


class ExpectedError(RuntimeError):
    """A failure the user can fix that is neither bad settings or data (ValueError) nor a file the system
    refuses (OSError): weights not at hand, a folder in use, a run that trained nothing."""


class DivergedError(ExpectedError, FloatingPointError):
    """The training loss became NaN or infinite: a learning rate too high (or bad inputs), not a bug."""


# Settings, checkpoints and data raise ValueError subclasses (SettingsError, CheckpointError, DataFormatError)
# or ValueError itself with a message naming the key, file or row (see expected_error); files the system
# refuses raise OSError.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, ExpectedError)


def debugging() -> bool:
    """Whether MLCAP_DEBUG asks for the traceback of expected errors too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def expected_error(err: BaseException) -> BaseException | None:
    """`err` if it is expected, or the expected error a wrapper carries (Hydra's instantiate wraps what a
    `_target_` raises in InstantiationException); None for a bug.

    A ValueError of a class that is not mlcap's own counts only when mlcap's code raised it (its message is
    mlcap's, naming the key or file): one that a library raises on its own, deep in training, is a bug.
    """
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        return expected_error(err.__cause__)
    if not isinstance(err, EXPECTED_ERRORS):
        return None
    if isinstance(err, ValueError) and not type(err).__module__.startswith("mlcap."):
        return err if _raised_in_mlcap(err) else None
    return err


def _raised_in_mlcap(err: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in the mlcap package."""
    frame: FrameType | None = None
    tb = err.__traceback__
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
    return frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError of the system (no message of mlcap's) names its path."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        text = (
            f"{where}: {err.strerror} ({type(err).__name__}); check that path (does it exist, may this user "
            "write there, is the disk full?)"
        )
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())
