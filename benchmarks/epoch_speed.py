"""An epoch of the default model through mlcap (Lightning) against a bare PyTorch loop over the same tensors.

    python benchmarks/epoch_speed.py [--rows 24000] [--epochs 4] [--threads 2] [override ...]

Both sides train the same network (`classifier_task.build_model` on the composed default config) on the same cached
frozen-backbone features, token ids and labels (one demo data set of `--rows` labelled rows at 32 px, so
extraction is quick; the features have the default encoder's size, which is all an epoch's cost depends on).
The bare loop is what a person would write by hand: shuffled index batches gathered from the tensors,
forward, BCE, Adam step, then a no-grad pass over the validation rows and samples-F1 once. The mlcap epoch is
a real `trainer.fit` epoch with the default callbacks (best and last checkpoints, early stopping, TensorBoard
logging, validation metrics). Timed per epoch, first epoch dropped (warm-up); the ratio is mlcap / bare.
Extra arguments are train.py overrides (e.g. `data.batch_size=128`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlcap.classifier_task import build_model  # noqa: E402
from mlcap.metrics import decide_labels, samples_f1  # noqa: E402
from mlcap.train import build_datamodule, build_trainer  # noqa: E402


def config(work: Path, rows: int, epochs: int, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.demo.n_train={rows}",
                "data.demo.n_test=50",
                "data.demo.image_size=32",
                "data.image_size=32",
                "data.cache_views=1",
                f"paths.cache_dir={work / 'cache'}",
                f"trainer.max_epochs={epochs}",
                f"trainer.min_epochs={epochs}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
    return cfg


class BareLoop:
    """The hand-written loop: the same network, tensors, batch size and optimiser, nothing else."""

    def __init__(self, cfg: DictConfig, datamodule) -> None:  # noqa: ANN001
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg, datamodule).net
        self.train = datamodule.dataset("train", train=True)
        self.val = datamodule.dataset("val", train=False)
        self.val_labels = datamodule.labels("val").int()
        self.optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=cfg.lr)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.size = cfg.data.batch_size

    def epoch(self) -> float:
        start = time.perf_counter()
        self.net.train()
        order = torch.randperm(len(self.train))
        for i in range(0, len(order) - self.size + 1, self.size):
            batch = self.train.__getitems__(order[i : i + self.size].tolist())
            loss = self.loss_fn(self.net(batch), batch.target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.net.eval()
        with torch.no_grad():
            rows = range(len(self.val))
            probs = [
                torch.sigmoid(self.net(self.val.__getitems__(rows[i : i + self.size])))
                for i in range(0, len(rows), self.size)
            ]
        samples_f1(decide_labels(torch.cat(probs), 0.5).int(), self.val_labels)
        return time.perf_counter() - start


class Interleaved(Callback):
    """Runs one bare epoch at the start of each mlcap epoch, then times the mlcap epoch (training start to the
    end of its validation), so the two alternate and a busy machine slows both alike."""

    def __init__(self, bare: BareLoop) -> None:
        self.bare = bare
        self.ours: list[float] = []
        self.theirs: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.theirs.append(self.bare.epoch())  # outside validation: gradients are on here
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if not trainer.sanity_checking:
            self.ours.append(time.perf_counter() - self._start)


def measure(cfg: DictConfig, datamodule) -> tuple[list[float], list[float]]:  # noqa: ANN001
    clock = Interleaved(BareLoop(cfg, datamodule))
    torch.manual_seed(cfg.seed)
    trainer, _, _ = build_trainer(cfg)
    trainer.callbacks.append(clock)
    trainer.fit(build_model(cfg, datamodule), datamodule=datamodule)
    return clock.theirs, clock.ours


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=24_000, help="labelled rows (80%% train, 20%% validation)"
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side (the first is not counted)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--work", type=Path, help="keep the demo data and cache here (default: a temp dir)")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mlcap-epoch-") as tmp:
        cfg = config(args.work or Path(tmp), args.rows, args.epochs, overrides)
        datamodule = build_datamodule(cfg)
        build_model(cfg, datamodule)  # attaches the encoders
        datamodule.train_dataloader()  # fills the feature cache before anything is timed
        bare, ours = (times[1:] for times in measure(cfg, datamodule))
    b, o = statistics.median(bare), statistics.median(ours)
    print(
        f"rows {args.rows} ({len(datamodule.tables['train'])} train / {len(datamodule.tables['val'])} val), "
        f"batch {cfg.data.batch_size}, threads {args.threads}, torch {torch.__version__}"
    )
    print(f"bare PyTorch loop: {b:.2f} s/epoch (epochs {', '.join(f'{s:.2f}' for s in bare)})")
    print(f"mlcap (Lightning): {o:.2f} s/epoch (epochs {', '.join(f'{s:.2f}' for s in ours)})")
    print(f"ratio mlcap / bare: {o / b:.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
