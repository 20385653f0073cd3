"""mlcap: multi-label image classification from an image and its caption (Lightning + Hydra)."""

import os

# Spinning OpenMP threads make small ops (the caption GRU's steps) 20x slower as soon as another process
# (a DataLoader worker, a parallel sweep job) shares the cores; passive waiting costs little for large ops.
# Only effective before torch is first imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
