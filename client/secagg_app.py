"""Client side of secure aggregation: Flower's `secaggplus_mod` around the same `train_round` as the plain path.

The mod runs the protocol's key steps itself and calls the train handler only in its masked-upload step, with a
legacy FitIns; the handler answers with a legacy FitRes holding the site's clipped change (not its weights), weight 1,
and the usual metrics. The mod then quantises, masks and uploads the change and empties the arrays of the reply, so
nothing of the update leaves the site in the clear.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fgssl.config import Config
from strategies.flower import from_config, to_config
from strategies.secagg import clipped_delta

from .site import SiteProvider, train_round


def secagg_router(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Hands SecAgg+ protocol messages to Flower's mod; plain train messages (secure aggregation off) pass through.

    One ClientApp serves both kinds of federation, because whether a run is secure is in its config, which the node
    only reads per message.
    """
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure_fit(msg: Message) -> bool:
    """Whether a train message is the SecAgg+ masked-upload step (a legacy FitIns) rather than a plain round."""
    return "fitins.parameters" in msg.content.array_records


def secure_fit_reply(msg: Message, cfg: Config, sites: SiteProvider, site: int) -> Message:
    """Train as in a plain round; reply with the clipped change for Flower's mod to mask."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    round_cfg = from_config(fitins.config)
    keys = [str(k) for k in round_cfg.pop("keys")]
    received = dict(zip(keys, parameters_to_ndarrays(fitins.parameters), strict=True))
    arrays, info = train_round(cfg, sites, site, received, round_cfg)
    metrics: dict[str, Any] = {"site": site, **info}
    if "refused" in info:
        # Over its privacy budget: weight 0 and a zero change keep the site in the protocol (its masks must still
        # cancel) without moving the mean.
        delta, weight = [np.zeros(v.shape, dtype=np.float64) for v in received.values()], 0
    else:
        delta, clipped = clipped_delta(received, arrays, cfg.federation.secagg_clipping_range)
        weight = 1
        metrics["secagg_clipped"] = clipped
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(delta), weight, dict(to_config(metrics)))
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
