"""What TensorBoard's HPARAMS tab shows for a run: the keys its sweep varies first, then the public keys.

Lightning's `log_hyperparams` would list every flattened config key (about 90, constants included) and
never mark which ones differ; the hparams protos are written here instead, through torch's `hparams()`
helper, with `differs` set on the keys the sweep varies so that TensorBoard shows them as columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tensorboard.plugins.hparams import metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def _scalar(value: Any) -> str | float:
    """TensorBoard takes numbers and strings: booleans, null and lists become their config text."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return float(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def log_hparams(
    writer: SummaryWriter, values: Mapping[str, Any], varied: Iterable[str], metrics: Mapping[str, float]
) -> None:
    """Write the run's hparams (in the order given) and its final metrics; mark the `varied` keys as differing."""
    params = {key: _scalar(value) for key, value in values.items()}
    experiment, start, end = hparams(params, dict(metrics))
    plugin_data = experiment.value[0].metadata.plugin_data
    described = metadata.parse_experiment_plugin_data(plugin_data.content)
    varied = set(varied)
    for info in described.hparam_infos:
        info.differs = info.name in varied
    plugin_data.content = plugin_data_pb2.HParamsPluginData(
        version=metadata.PLUGIN_DATA_VERSION, experiment=described
    ).SerializeToString()
    file_writer = writer._get_file_writer()  # noqa: SLF001 (torch's own add_hparams writes this way)
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value)
    writer.flush()
