"""Train one model (or a sweep with -m): `python train.py [overrides]`. See README for the config keys."""

import hydra
from omegaconf import DictConfig

import mlcap  # noqa: F401  (sets OpenMP waiting policy before torch loads)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mlcap.console import errors_in_one_line
    from mlcap.jobs import run_job

    with errors_in_one_line():  # expected errors (mlcap.errors) in one line; a sweep's job records its own
        return run_job(cfg)


if __name__ == "__main__":
    main()
