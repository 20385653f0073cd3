"""Write a Kaggle submission from a checkpoint: `python predict.py [ckpt_path=...] [data.root=...]`."""

import hydra
from omegaconf import DictConfig

import mlcap  # noqa: F401  (sets OpenMP waiting policy before torch loads)


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from mlcap.console import errors_in_one_line
    from mlcap.predict import predict

    with errors_in_one_line():  # expected errors (mlcap.errors) in one line, as train.py
        predict(cfg)


if __name__ == "__main__":
    main()
