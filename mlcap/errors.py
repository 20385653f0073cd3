"""The errors an entry point (train.py, predict.py, a sweep's job) reports in one line `error: <message>`.

Bad settings, files and data are the user's to fix: their message names the key, file or row and what to do,
and a traceback would only bury it. Any other exception is a bug and keeps its traceback. `MLCAP_DEBUG=1`
keeps the traceback of expected errors too (then HYDRA_FULL_ERROR=1 shows Hydra's own frames as well).

Torch-free on purpose: the run-folder callback and the sweeper import it before torch.
"""

from __future__ import annotations

import os

from hydra.errors import InstantiationException

DEBUG_ENV = "MLCAP_DEBUG"


class ExpectedError(RuntimeError):
    """A failure the user can fix that is neither bad settings or data (ValueError) nor a file the system
    refuses (OSError): weights not at hand, a folder in use, a run that trained nothing."""


class DivergedError(ExpectedError, FloatingPointError):
    """The training loss became NaN or infinite: a learning rate too high (or bad inputs), not a bug."""


# Settings, checkpoints and data raise ValueError subclasses (SettingsError, CheckpointError, DataFormatError)
# or ValueError itself with a message naming the key, file or row; files the system refuses raise OSError.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, ExpectedError)


def debugging() -> bool:
    """Whether MLCAP_DEBUG asks for the traceback of expected errors too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def expected_error(err: BaseException) -> BaseException | None:
    """`err` if it is expected, or the expected error a wrapper carries (Hydra's instantiate wraps what a
    `_target_` raises in InstantiationException); None for a bug."""
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        return expected_error(err.__cause__)
    return err if isinstance(err, EXPECTED_ERRORS) else None


def one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError of the system (no message of mlcap's) names its path."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        text = (
            f"{where}: {err.strerror} ({type(err).__name__}); check that path: its folder must exist and be "
            "writable, and the disk not full"
        )
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())
