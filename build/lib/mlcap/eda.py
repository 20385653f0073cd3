"""Exploratory data analysis: `python -m mlcap.eda [data=<format> data.root=...]` (default: the demo data).

Works on every format (the data node's reader gives the rows). Writes into the Hydra output folder
(outputs/eda/<time>/): `eda.md`, the tables as CSV, and PNG charts of the number of labels per image, the
images per label (flagging labels that never occur, such as COMP5329's 12) and the caption length after the
same preprocessing the model sees (which guides `data.max_len`), over every caption of every image.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from mlcap.config_files import CONF_DIR
from mlcap.data.datamodule import build_datamodule
from mlcap.data.reader import check_known_labels
from mlcap.data.text import preprocess_caption

__all__ = ["caption_lengths", "label_counts", "labels_per_image", "run_eda", "write_eda"]

log = logging.getLogger(__name__)


def labels_per_image(labels: Iterable[Sequence[object]]) -> pd.DataFrame:
    """How many images carry 1, 2, ... labels (and their share)."""
    sizes = pd.Series([len(set(row)) for row in labels], dtype="int64")
    table = sizes.value_counts().sort_index().rename_axis("labels per image").to_frame("images")
    table["share"] = table["images"] / table["images"].sum()
    return table


def label_counts(labels: Iterable[Sequence[object]], label_names: Sequence[object]) -> pd.DataFrame:
    """Images per label, over all the model's labels: a label with no image is flagged `never_seen`."""
    rows = [list(row) for row in labels]
    counts = Counter(label for row in rows for label in set(row))
    table = pd.DataFrame({"label": list(label_names)})
    table["images"] = table["label"].map(lambda label: counts.get(label, 0)).astype("int64")
    table["share"] = table["images"] / max(len(rows), 1)
    table["never_seen"] = table["images"] == 0
    return table.set_index("label")


def caption_lengths(captions: Iterable[str]) -> pd.Series:
    """Tokens per caption after `preprocess_caption` (lower-case lemmas, no punctuation or stop words)."""
    return pd.Series([len(preprocess_caption(c)) for c in captions], dtype="int64", name="tokens")


def _length_stats(lengths: dict[str, pd.Series], max_len: int) -> pd.DataFrame:
    rows = []
    for split, series in lengths.items():
        rows.append(
            {
                "split": split,
                "captions": len(series),
                "mean": series.mean(),
                "median": series.median(),
                "p95": series.quantile(0.95),
                "max": int(series.max()) if len(series) else 0,
                "empty": int((series == 0).sum()),
                f"> max_len ({max_len})": int((series > max_len).sum()),
            }
        )
    return pd.DataFrame(rows).set_index("split")


def _text_table(table: pd.DataFrame) -> str:
    """Markdown with ints as ints and floats to 3 significant decimals (tabulate would make all floats)."""
    shown = table.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map("{:.3g}".format if col != "share" else "{:.3f}".format)
        elif pd.api.types.is_bool_dtype(shown[col]):
            shown[col] = shown[col].map({True: "⚠ yes", False: ""})
        else:
            shown[col] = shown[col].astype(str)
    return shown.to_markdown(disable_numparse=True) + "\n"


def _bar(
    series: pd.Series, path: Path, xlabel: str, ylabel: str, title: str, flagged: Sequence[bool]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:red" if flag else "tab:blue" for flag in flagged]
    ax.bar(range(len(series)), series.to_numpy(), color=colors)
    ax.set_xticks(range(len(series)), [str(i) for i in series.index])
    for x, flag in enumerate(flagged):
        if flag:  # a zero-height bar is invisible: say it in the chart
            ax.annotate(
                "never\nseen",
                (x, 0),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                color="tab:red",
                fontsize=8,
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histogram(lengths: dict[str, pd.Series], path: Path, max_len: int, bins: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(int(s.max()) for s in lengths.values() if len(s))
    edges = bins or [x - 0.5 for x in range(longest + 2)]
    fig, ax = plt.subplots(figsize=(8, 4))
    for split, series in lengths.items():
        ax.hist(series, bins=edges, alpha=0.6, label=f"{split} ({len(series)})")
    ax.axvline(max_len + 0.5, color="tab:red", linestyle="--", label=f"data.max_len = {max_len}")
    ax.set_xlabel("tokens per caption after preprocessing")
    ax.set_ylabel("captions")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_eda(
    train: pd.DataFrame,
    label_names: Sequence[object],
    out_dir: str | Path,
    max_len: int,
    test: pd.DataFrame | None = None,
    source: str = "",
    length_bins: int | None = None,
) -> Path:
    """Write eda.md, CSVs and PNGs for a labelled table (and optionally a test table): columns `labels` and
    `captions` (a list of captions per image)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = labels_per_image(train["labels"])
    per_label = label_counts(train["labels"], label_names)
    lengths = {"train": caption_lengths(c for row in train["captions"] for c in row)}
    if test is not None:
        lengths["test"] = caption_lengths(c for row in test["captions"] for c in row)
    stats = _length_stats(lengths, max_len)
    vocabulary = len({t for row in train["captions"] for c in row for t in preprocess_caption(c)})

    _write_csvs(out_dir, per_image, per_label, lengths, stats)
    _write_charts(out_dir, per_image, per_label, lengths, max_len, length_bins)
    n_test = len(test) if test is not None else None
    lines = _overview_lines(source, len(train), n_test, len(label_names), vocabulary)
    lines += _section_lines(per_image, per_label, stats, max_len)
    report = out_dir / "eda.md"
    report.write_text("\n".join(lines))
    return report


def _write_csvs(
    out_dir: Path,
    per_image: pd.DataFrame,
    per_label: pd.DataFrame,
    lengths: dict[str, pd.Series],
    stats: pd.DataFrame,
) -> None:
    """The tables behind eda.md as CSV, so they can be read back without parsing markdown."""
    per_image.to_csv(out_dir / "labels_per_image.csv")
    per_label.to_csv(out_dir / "label_counts.csv")
    pd.concat([s.rename(split) for split, s in lengths.items()], axis=1).to_csv(
        out_dir / "caption_lengths.csv", index_label="row"
    )
    stats.to_csv(out_dir / "caption_length_stats.csv")


def _write_charts(
    out_dir: Path,
    per_image: pd.DataFrame,
    per_label: pd.DataFrame,
    lengths: dict[str, pd.Series],
    max_len: int,
    length_bins: int | None,
) -> None:
    """The three PNGs eda.md shows; never-seen labels in red, since a zero-height bar is invisible."""
    _bar(
        per_image["images"],
        out_dir / "labels_per_image.png",
        "labels per image",
        "images",
        "Number of labels per image (train)",
        [False] * len(per_image),
    )
    _bar(
        per_label["images"],
        out_dir / "label_counts.png",
        "label",
        "images",
        "Images per label (train; red: never seen)",
        list(per_label["never_seen"]),
    )
    _histogram(lengths, out_dir / "caption_length.png", max_len, length_bins)


def _overview_lines(
    source: str, n_train: int, n_test: int | None, n_labels: int, vocabulary: int
) -> list[str]:
    """eda.md's title and one-line summary: the data set's size before any detail."""
    return [
        f"# Data set: `{source}`" if source else "# Data set",
        "",
        f"{n_train} labelled images"
        + (f", {n_test} unlabelled test images" if n_test is not None else "")
        + f"; {n_labels} labels; training-caption vocabulary {vocabulary} words after preprocessing.",
        "",
    ]


def _section_lines(
    per_image: pd.DataFrame, per_label: pd.DataFrame, stats: pd.DataFrame, max_len: int
) -> list[str]:
    """eda.md's three sections, each a table and its chart, with what they mean for training."""
    never = per_label.index[per_label["never_seen"]].tolist()
    return [
        "## Labels per image",
        "",
        _text_table(per_image),
        "![labels per image](labels_per_image.png)",
        "",
        "## Images per label",
        "",
        (
            f"Never seen in the training data: {', '.join(str(label) for label in never)}. The model keeps an "
            "output for such a label but can never learn to predict it."
            if never
            else "Every label occurs at least once."
        ),
        "",
        _text_table(per_label),
        "![label counts](label_counts.png)",
        "",
        "## Caption length after preprocessing",
        "",
        f"Tokens per caption (lower-case lemmas without punctuation or stop words); `data.max_len` = {max_len} "
        "truncates longer captions.",
        "",
        _text_table(stats),
        "![caption length](caption_length.png)",
        "",
    ]


def run_eda(cfg: DictConfig) -> Path:
    """Read the data set of `cfg.data` through its reader (the demo is generated first), then write the files."""
    if "root" not in cfg.data or OmegaConf.is_missing(cfg.data, "root") or cfg.data.root is None:
        raise ValueError(
            "data.root is not set: pass data.root=<the data set's folder> "
            "(e.g. python -m mlcap.eda data=comp5329 data.root=/path/to/COMP5329)"
        )
    reader = build_datamodule(cfg.data).reader
    reader.prepare()
    train = reader.read("train")
    names = reader.label_names(train)
    check_known_labels(train, names)
    try:
        test = reader.read("predict")
    except FileNotFoundError:
        test = None  # a data set without a prediction file is still worth a look
    report = write_eda(
        train,
        names,
        cfg.paths.output_dir,
        max_len=int(cfg.data.max_len),
        test=test,
        source=reader.describe("train"),
        length_bins=cfg.get("length_bins"),
    )
    log.info("EDA of %s written to %s", reader.describe("train"), report)
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eda")
def main(cfg: DictConfig) -> None:
    run_eda(cfg)


if __name__ == "__main__":
    main()
