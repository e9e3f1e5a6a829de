"""Flower ClientApp for one hospital: turns Flower messages into calls to fgssl's training and evaluation."""

from __future__ import annotations

from typing import Callable

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fgssl.config import Config
from strategies.flower import from_config, from_record, to_config, to_record

from .replies import ReplyCache
from .site import SiteProvider, cross_site_evaluate, evaluate_global, train_round
from .secagg_app import is_secure_fit, secagg_router, secure_fit_reply


def _site_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


Resolver = Callable[[Context], tuple[Config, SiteProvider]]


def make_client_app(resolve: Resolver) -> ClientApp:
    """`resolve` gives the run's config and this node's data/state for a message's context."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Identity handshake: the server keys everything by site id, never by Flower's random node ids."""
        return Message(RecordDict({"site": ConfigRecord({"site": _site_id(context)})}), reply_to=msg)

    @app.train(mods=[secagg_router])
    def train(msg: Message, context: Context) -> Message:
        cfg, sites = resolve(context)
        site = _site_id(context)
        if is_secure_fit(msg):
            return secure_fit_reply(msg, cfg, sites, site)
        round_cfg = from_config(msg.content["config"])
        received = from_record(msg.content["arrays"])
        # A request asked again (its first reply was lost) is answered from the cache: trained and charged once.
        with ReplyCache(sites.state_dir(site)).task("train", int(round_cfg["round"]), received, round_cfg) as task:
            if (cached := task.load()) is None:
                cached = train_round(cfg, sites, site, received, round_cfg)
                task.save(*cached)
        arrays, info = cached
        metrics = {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(metrics),
                                   "info": to_config({"site": site, **info})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg, sites = resolve(context)
        site = _site_id(context)
        round_cfg = from_config(msg.content["config"])
        received, rnd = from_record(msg.content["arrays"]), int(round_cfg["round"])
        with ReplyCache(sites.state_dir(site)).task("evaluate", rnd, received, round_cfg) as task:
            if (result := task.load()) is None:
                result = (cross_site_evaluate(cfg, sites, site, received, round_cfg) if "cross_site" in round_cfg
                          else ({}, evaluate_global(cfg, sites, site, received, rnd)))
                task.save(*result)
        arrays, info = result
        content = RecordDict({"info": to_config({"site": site, **info})})
        if arrays:  # a site's local groups, passed on to the others in a cross-site evaluation
            content["arrays"] = to_record(arrays)
        return Message(content, reply_to=msg)

    return app
