"""The ledger of a real data set: every release about its images, over every run on them (docs/privacy.md, "The data
ledger").

A simulated site's own ledger lives in its run directory, and its images are a different share of the data set in
every run, so it cannot carry a lifetime. The data set's ledger does: one SQLite file per data set, named by the
content key of its prepared cache (`fgssl.data.cache.content_key`), in `privacy.ledger_dir` (default: the cache
folder). Each site copies its own ledger's new entries into it (`PrivacyLedger.import_entries`) before anything it
trained leaves it, under the run's id and the site as the entries' holder; training on the images without
sample-level DP (`fgssl train`, privacy.mode none or client) writes an unprotected entry. Its ε is Σ over runs of
the worst site's RDP curve (`accounting.worst_holder_curve`): in one run each image is at one site.

A data ledger also keeps its image ids and the content digests of their files, so that the lifetime of a data set
includes every ledger in the same folder that shares an image with it: a set prepared with one image more or fewer
(another key), or the same files read through another loader (other ids), does not start from 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import Config
from ..data.cache import cache_base, content_key, load_cache
from ..data.sources import synthetic_key
from .accounting import group_epsilon, rdp_curve, worst_holder_curve
from .ledger import DEFAULT_FILENAME, LedgerEntry, LedgerError, PrivacyLedger, by_run_and_holder, ledger_epsilon

LEDGER_DIR = "privacy-ledgers"
# Meta key set once a data ledger holds its images' ids and digests (ledgers from before digests lack it).
_IMAGES_RECORDED = "images"
ALL_SITES = "all"  # the holder of every entry of a run whose sites may share images: they then simply compose


@dataclass(frozen=True)
class DataLedgerRef:
    """Where a real data set's ledger is and what it is for; small and picklable (sent to every simulated site)."""

    path: Path  # the SQLite file
    key: str  # the data set's content key
    cache: Path  # the prepared cache, whose image ids and digests the ledger records
    disjoint: bool = True  # sites of a run hold disjoint images (so each run counts its worst site only)

    def holder(self, site: int | str) -> str:
        return str(site) if self.disjoint else ALL_SITES


def ledger_dir(cfg: Config) -> Path:
    """privacy.ledger_dir, else `privacy-ledgers/` in the cache folder (writable: the cache was written there)."""
    if cfg.privacy.ledger_dir:
        return Path(cfg.privacy.ledger_dir).resolve()
    return (cache_base(cfg.data) / LEDGER_DIR).resolve()


def data_ledger_ref(cfg: Config, cache: Path, parts: Sequence[Sequence[int]] | None = None) -> DataLedgerRef:
    """The ledger of the real data set prepared in `cache`; `parts`: each simulated site's images (pool indices)."""
    key = content_key(load_cache(cache))
    disjoint = parts is None or len({int(i) for p in parts for i in p}) == sum(len(p) for p in parts)
    return DataLedgerRef(ledger_dir(cfg) / f"{key}.sqlite3", key, Path(cache).resolve(), disjoint)


def open_data_ledger(ref: DataLedgerRef) -> PrivacyLedger:
    """The data set's ledger, created (with its key, image ids and digests) on first use by whichever process comes
    first; a ledger written before digests were kept gets them from its (rebuilt) cache."""
    ledger = PrivacyLedger(ref.path, timeout=60.0)  # several simulated sites write it at once: wait for each other
    try:
        if ledger.meta(_IMAGES_RECORDED) is None:
            data = load_cache(ref.cache)
            ledger.add_images(data.ids.tolist(), data.digests.tolist())
            ledger.bind(_IMAGES_RECORDED, "ids and file digests")
        bound = ledger.bind("data_key", ref.key)  # after the ids: a ledger with a key always has its ids
        if bound != ref.key:
            raise LedgerError(ref.path, f"belongs to data set {bound}, not {ref.key}")
    except BaseException:
        ledger.close()
        raise
    return ledger


class OtherDataError(LedgerError):
    """A node's state directory (its ledger) was first used with another data set."""


def check_node_data(state_dir: Path, key: str, *, changed: bool = False) -> None:
    """A deployed node's ledger belongs to the data set it was first used with: another data set in the same state
    directory is refused (its patients are not the ledger's), unless the node says its data changed (`changed`:
    images added or removed; the ledger then goes on counting, over-counting for any new image)."""
    with PrivacyLedger(state_dir) as ledger:
        bound = ledger.bind("data_key", key)
        if bound == key:
            return
        if not changed:
            raise OtherDataError(ledger.path, f"was first used with another data set ({bound}; this one is {key}). "
                                 "If these are the same patients' images, changed (added, removed, relabelled), "
                                 "start the node once with --data-changed: the ledger keeps counting their past "
                                 "releases. If it is another data set, give it its own --state-dir.")
        ledger.bind("data_key", key, replace=True)


def run_key(run_id: str, run_uid: str | None) -> str | None:
    """A run's id in a data ledger: its name and its uid (a fresh run in the same folder is another run)."""
    return f"{run_id}@{run_uid[:12]}" if run_uid else None


def copy_to_data_ledger(ref: DataLedgerRef, site_ledger: PrivacyLedger, *, run: str | None, site: int) -> None:
    """Copy a site's new entries into the data set's ledger. Without a run key (a coordinator that sends none), the
    site's ledger stands for its run: each site is then a run of its own, and the sites compose (an over-count)."""
    with open_data_ledger(ref) as ledger:
        ledger.import_entries(site_ledger, run_id=run or site_ledger.uid, holder=ref.holder(site))


def record_training_without_dp(ref: DataLedgerRef, *, run: str, what: str) -> None:
    """Training on the images without sample-level DP (e.g. `fgssl train`): their lifetime ε is ∞ from now on."""
    with open_data_ledger(ref) as ledger:
        ledger.record_unprotected(what, run_id=run, round=0, phase="train", delta=1e-5, holder="central")


@dataclass
class Lifetime:
    """What a data set's ledger (with every ledger sharing an image with it) says about its images."""

    path: Path
    epsilon: float
    delta: float | None
    runs: list[str]
    unprotected: LedgerEntry | None  # the first release without a DP guarantee, if any
    related: list[Path] = field(default_factory=list)  # other data sets' ledgers that share images with this one
    entries: list[LedgerEntry] = field(default_factory=list)  # its own and the related ledgers'


@dataclass(frozen=True)
class Groups:
    """How many images the largest group (lesion, patient) has: in each simulated site's training images, and in the
    whole data set; and where each site's own ledger is. The unit of the guarantee is one image; a group of k images
    is protected only by the group-privacy bound (`accounting.group_epsilon`)."""

    per_site: dict[int, int]
    data_set: int
    site_ledgers: dict[int, Path]


def largest_group(groups: Sequence[str]) -> int:
    """The size of the largest group among `groups` (one id per image; "" = unknown, an image on its own)."""
    from collections import Counter

    known = Counter(g for g in groups if g)
    return max(known.values(), default=1)


def related_ledgers(own: Path, ids: set[str], digests: set[str] = frozenset()) -> list[Path]:
    """The other ledgers in the folder of the ledger `own` that hold one of `ids` or a file with one of `digests`."""
    out = []
    for path in sorted(own.parent.glob("*.sqlite3")):
        if path.resolve() == own.resolve():
            continue
        try:
            with PrivacyLedger(path, readonly=True) as other:
                if not other.image_ids().isdisjoint(ids) or not other.image_digests().isdisjoint(digests):
                    out.append(path)
        except LedgerError:
            continue  # not a data ledger of this project: nothing of ours to count
    return out


def ledger_delta(entries: Sequence[LedgerEntry]) -> float | None:
    """The δ a ledger's lifetime ε is stated at: the smallest δ any of its releases was accounted at (ε at a smaller
    δ is the larger, so it holds for every entry's δ)."""
    deltas = [e.delta for e in entries if e.kind != "unprotected"] or [e.delta for e in entries]
    return min(deltas) if deltas else None


def lifetime(ref: DataLedgerRef) -> Lifetime:
    with open_data_ledger(ref) as ledger:
        entries, ids, digests = ledger.history(), ledger.image_ids(), ledger.image_digests()
    related = related_ledgers(ref.path, ids, digests)
    for path in related:
        with PrivacyLedger(path, readonly=True) as other:
            entries += other.history()
    delta = ledger_delta(entries)
    eps = ledger_epsilon(entries, delta) if delta is not None else 0.0
    runs = list(dict.fromkeys(e.run_id for e in entries))
    unprotected = next((e for e in entries if e.kind == "unprotected"), None)
    return Lifetime(ref.path, eps, delta, runs, unprotected, related, entries)


def unprotected_reason(e: LedgerEntry) -> str:
    return f"run {e.run_id} trained on them without sample-level DP ({e.label}, round {e.round})"


def group_statement(groups: Groups, life: Lifetime) -> dict[str, Any]:
    """The group-privacy bound at each site (its ledger in this run, its largest group k) and over the images'
    lifetime (the largest group in the data set: in another run a lesion's images may be at any site); `life` has
    at least one entry."""
    per_site = {}
    for site, k in sorted(groups.per_site.items()):
        path = groups.site_ledgers.get(site)
        if path is None or not (path / DEFAULT_FILENAME).is_file():
            continue
        with PrivacyLedger(path, readonly=True) as ledger:
            entries = ledger.history()
        delta = ledger_delta(entries)
        if delta is not None:
            eps = group_epsilon(rdp_curve([e.mechanism for e in entries]), k, delta)
            per_site[str(site)] = {"k": k, "epsilon": eps if math.isfinite(eps) else None, "delta": delta}
    curve = worst_holder_curve(by_run_and_holder(life.entries))
    lifetime_eps = group_epsilon(curve, groups.data_set, life.delta)
    sites = "; ".join(f"site {s}: k = {v['k']}, ε ≤ {_eps(v['epsilon'])} at δ = {v['delta']:g}"
                      for s, v in per_site.items())
    text = (f"Groups (lesion or patient ids): every ε above is for one image; a whole group of k images has only "
            f"the group-privacy bound, from the same RDP curves (Mironov 2017, Prop. 11: (α, ε)-RDP gives "
            f"(α/2^c, 3^c·ε)-RDP for up to 2^c images). This run, largest group in each site's training images: "
            f"{sites}; over the images' lifetime (largest group in the data set, k = {groups.data_set}): "
            f"ε ≤ {_eps(lifetime_eps)} at δ = {life.delta:g}.")
    return {"unit": "one image", "largest_group": groups.data_set, "per_site": per_site,
            "lifetime_epsilon": lifetime_eps if math.isfinite(lifetime_eps) else None, "text": text}


def _eps(value: float | None) -> str:
    return "∞" if value is None or not math.isfinite(value) else f"{value:.2f}"


def data_statement(cfg: Config, ref: DataLedgerRef | None, groups: Groups | None = None) -> dict[str, Any]:
    """The part of a simulation's privacy statement about the images' lifetime (real data) or its absence
    (synthetic data: per-run ledgers); with `groups` (real data with lesion or patient ids) and sample-level DP,
    the group-privacy bound too."""
    if ref is None:
        return {"scope": "run", "data_key": synthetic_key(cfg.data, cfg.seed),
                "text": "The images are synthetic: each site's ledger is per run "
                                        "(sites/site_<i>/privacy_ledger.sqlite3) and nothing carries over to another "
                                        "run; a real data set keeps one ledger over all runs on its images."}
    life = lifetime(ref)
    out: dict[str, Any] = {"scope": "data set", "data_key": ref.key, "ledger": str(life.path), "runs": len(life.runs),
                           "epsilon": life.epsilon if math.isfinite(life.epsilon) else None, "delta": life.delta,
                           "related_ledgers": [str(p) for p in life.related]}
    also = f" and {len(life.related)} ledger(s) of data sets sharing images with it" if life.related else ""
    if life.unprotected is not None:
        out["unbounded_by"] = life.unprotected.run_id
        if cfg.privacy.mode != "sample":
            out["text"] = (f"This run trained on these real images without sample-level DP, and their data ledger "
                           f"{life.path} records it: every run on them now states a lifetime ε = ∞.")
        else:
            out["text"] = (f"Lifetime of these images: ε = ∞, because {unprotected_reason(life.unprotected)} "
                           f"(data ledger {life.path}{also}); no finite ε holds for everything released about them.")
        return out
    if life.delta is None:  # no site recorded anything (every one failed before its first release)
        out["text"] = f"No release about these images is recorded in their data ledger {life.path} yet."
        return out
    out["text"] = (f"Lifetime of these images over all {len(life.runs)} run(s) recorded in their data ledger "
                   f"{life.path}{also}: ε = {life.epsilon:.2f} at δ = {life.delta:g} (RDP; each run counts its worst "
                   f"site, since one image is at one site). A simulated site's budget (privacy.max_epsilon) holds per "
                   f"run; this lifetime figure is what holds for everything the sites of all these runs released (not "
                   f"the simulation's own pooled test metrics).")
    if groups is not None and cfg.privacy.mode == "sample":
        out["groups"] = group_statement(groups, life)
        out["text"] += " " + out["groups"]["text"]
    return out
