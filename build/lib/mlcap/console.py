"""What a user sees in the console: the data summary, cache hits and misses, progress and final metrics.

Libraries' chatter that says nothing about this run is silenced here, in one place: gensim's INFO lines
(vocabulary scans, lifecycle events, per-epoch word rates), Lightning's advertising tip, and warnings that
are known and harmless for this project.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

from mlcap.errors import EXPECTED_ERRORS, debugging, expected_error, one_line

_HARMLESS_WARNINGS = (
    # A frozen backbone is in eval mode on purpose (its batch-norm statistics stay the pretrained ones).
    r".*module\(s\) in eval mode at the start of training.*",
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; nothing for users to change.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_libraries() -> None:
    """Silence the noise above; idempotent, so every task may call it."""
    logging.getLogger("gensim").setLevel(logging.WARNING)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@contextmanager
def errors_in_one_line() -> Iterator[None]:
    """An entry point's expected errors (mlcap.errors: bad settings, files, data) leave as one line
    `error: <message>` and exit code 1 (SystemExit, which Hydra lets through), as the settings check's refusals
    do; anything else, a bug, keeps its traceback. MLCAP_DEBUG=1 keeps the traceback of expected errors too."""
    try:
        yield
    except (*EXPECTED_ERRORS, InstantiationException) as err:  # Hydra's instantiate wraps a target's error
        cause = expected_error(err)
        if cause is None or debugging():
            raise
        raise SystemExit(f"error: {one_line(cause)}") from None
