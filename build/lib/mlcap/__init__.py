"""mlcap: multi-label image classification from an image and its caption (Lightning + Hydra)."""

import os

# Spinning OpenMP threads make small ops (the caption GRU's steps) 20x slower as soon as another process
# (a DataLoader worker, a parallel sweep job) shares the cores; passive waiting costs little for large ops.
# Only effective before torch is first imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# logger=mlflow writes MLflow's local file store (mlruns/, conf/logger/mlflow.yaml), which MLflow 3 keeps in
# maintenance mode and refuses unless this is set; a tracking server or database URI is unaffected.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

from omegaconf import OmegaConf  # noqa: E402  (after the environment setting above, which must come first)

# `${pid:}` in conf/hydra/default.yaml: run folders unique among the processes alive at the same second.
# Cached, so a sweep's jobs (which copy the sweep config's resolver cache) see the sweep process's id.
if not OmegaConf.has_resolver("pid"):
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)

# `${mlcap.run_name:${paths.output_dir}}` in conf/logger/mlflow.yaml: a tracker's run is named after its run
# folder (a sweep job's folder carries its settings).
if not OmegaConf.has_resolver("mlcap.run_name"):
    OmegaConf.register_new_resolver("mlcap.run_name", lambda path: os.path.basename(str(path).rstrip("/")))
