"""The caption section of a sweep's report.md: each captioner job's scores beside its baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd


def caption_sections(jobs: Sequence[Any]) -> list[str]:
    """Markdown lines for the finished jobs that wrote caption metrics (model=captioner); none otherwise.

    `jobs`: mlcap.report's JobRecords (name, metrics). A job that does not beat the nearest-neighbour caption
    on CIDEr-D is named below the table.
    """
    done = [job for job in jobs if "val_CIDEr-D" in job.metrics]
    if not done:
        return []
    rows = []
    for job in done:
        m, base = job.metrics, job.metrics.get("baselines", {})
        nn, frequent = base.get("nearest_neighbour", {}), base.get("most_frequent", {})
        rows.append(
            {
                "job": f"`{job.name}`",
                "CIDEr-D": m["val_CIDEr-D"],
                "BLEU-4": m["val_BLEU-4"],
                "ROUGE-L": m["val_ROUGE-L"],
                "nearest-neighbour CIDEr-D": nn.get("CIDEr-D"),
                "nearest-neighbour BLEU-4": nn.get("BLEU-4"),
                "most frequent CIDEr-D": frequent.get("CIDEr-D"),
                "beats nearest neighbour": "yes" if m.get("beats_nearest_neighbour") else "**no**",
            }
        )
    lines = [
        "## Captions",
        "",
        "Validation caption metrics of each captioner (best checkpoint, its `model.beam_size`) beside the "
        "nearest-neighbour and most-frequent training captions, on mlcap's preprocessed tokens "
        "(docs/captioning.md); example captions in each job's captions.md.",
        "",
        pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"),
        "",
    ]
    losing = [f"`{job.name}`" for job in done if not job.metrics.get("beats_nearest_neighbour")]
    if losing:
        lines += [
            f"**{len(losing)} of {len(done)} captioner(s) do not beat the nearest-neighbour caption on "
            f"CIDEr-D**: {', '.join(losing)}.",
            "",
        ]
    return lines
