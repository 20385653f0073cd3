"""The training parts built from their config nodes (model.loss, model.optimizer, model.scheduler): one
builder each, called by the LightningModules (classifier, captioner) and by `check_parts`, the dry run before
any data is read, so the check builds exactly what training will."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from mlcap.settings import SettingsError, shown


def build_loss(node: Mapping[str, Any]) -> torch.nn.Module:
    """model.loss (its `_target_` with its keys; weighted_bce's pos_weight filled in already)."""
    return hydra.utils.instantiate(node)


def build_optimizer(node: Mapping[str, Any], params: Sequence[Any]) -> torch.optim.Optimizer:
    """model.optimizer (a `_partial_` node) over parameters or parameter groups (each with its own lr)."""
    return hydra.utils.instantiate(node)(params)


def build_scheduler(node: Mapping[str, Any], optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """model.scheduler (a `_partial_` node, e.g. one-cycle), called with the optimizer, each group's lr as
    `max_lr` and the run's optimizer steps as `total_steps`; stepped every step."""
    lrs = [group["lr"] for group in optimizer.param_groups]
    return hydra.utils.instantiate(node)(optimizer, max_lr=lrs, total_steps=total_steps)


def check_parts(cfg: DictConfig) -> None:
    """Fail before any data is read when the loss, optimizer or scheduler node does not build (a key or value
    its `_target_` refuses, which the settings cannot know): each is built once as the model builds it, on a
    dummy parameter (weighted_bce with a dummy pos_weight), and dropped; a failure is one SettingsError line."""
    nodes: dict[str, Any] = {
        name: OmegaConf.to_container(cfg.model[name], resolve=True) if cfg.model[name] is not None else None
        for name in ("loss", "optimizer", "scheduler")
    }

    def built(name: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except Exception as err:  # noqa: BLE001 - whatever the target raises, this node's settings are at fault
            cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
            options = ", ".join(f"{k}={shown(v)}" for k, v in nodes[name].items() if not k.startswith("_"))
            problem = " ".join(f"{type(cause).__name__}: {cause}".split())
            target = nodes[name]["_target_"]
            raise SettingsError(f"model.{name}={target}({options}) is not allowed: {problem}") from None

    loss = dict(nodes["loss"])
    if loss.get("pos_weight") == "???":  # filled from the train split when the model is built
        loss["pos_weight"] = [1.0]
    built("loss", lambda: build_loss(loss))
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = built("optimizer", lambda: build_optimizer(nodes["optimizer"], [parameter]))
    if nodes["scheduler"] is not None:
        schedule = nodes["scheduler"]
        built("scheduler", lambda: build_scheduler(schedule, optimizer, total_steps=100))
