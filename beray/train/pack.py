"""A pack: the members that one Ray Train job trains on one decoded stream.

Every run is a pack; a single run is a pack of one, whose folder is the job's.
A pack of several members keeps one folder per member inside the job's folder
(``STORAGE/NAME/MEMBER``, with its own ``config.yaml`` and ``tensorboard/``),
and each checkpoint of the job holds one ``MEMBER/state.pt`` per member
(``beray.train.checkpoint.find_state`` reads a member's folder as a run's).

Members may differ in what the data pipeline does not read: the noise and its
gamma, beta, the learning rate, a method's settings, the backbone. What the
pipeline reads (the data, augmentation set A, batch size, the views the methods
need, the seed, the run's resources and length) is the stream itself: members
that differ there are refused before Ray starts, naming the setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from beray.config import Config, ConfigError, _flat, load_config

# Settings a member may not change: the stream the pack shares, and the one job's run
SHARED = ("data.", "augment.", "optim.batch_size", "optim.epochs", "run.")


@dataclass(frozen=True)
class Member:
    name: str  # "" for a pack of one (its folder is the job's), else its folder inside the job's
    cfg: Config


def parse_member(text: str) -> list[str]:
    """``--member be.noise=none,be.gamma=0.5`` -> ["be.noise=none", "be.gamma=0.5"]."""
    items = [s.strip() for s in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", text) if s.strip()]
    if not items or any("=" not in s for s in items):
        raise ConfigError(f"--member {text!r}: expected KEY=VALUE[,KEY=VALUE...], e.g. be.noise=none")
    return items


def member_name(overrides: list[str]) -> str:
    """A folder name from a member's settings: be.noise=none,be.gamma=0.5 -> noise-none_gamma-0.5."""
    parts = []
    for item in overrides:
        key, value = item.split("=", 1)
        parts.append(f"{key.rsplit('.', 1)[-1]}-{re.sub(r'[^A-Za-z0-9._+-]+', '', value.strip()) or 'none'}")
    return "_".join(parts)


def make_pack(cfg: Config, members: list[list[str]], names: list[str] | None = None) -> list[Member]:
    """The members of ``cfg`` with each list of overrides (none: a pack of one, ``cfg`` itself), named
    ``names`` or after their overrides. ConfigError naming the member and the field for an invalid
    member, a repeated one, or one that would change the shared stream."""
    if not members:
        return [Member("", cfg)]
    base = cfg.model_dump(mode="json")
    pack, seen = [], {}
    for i, overrides in enumerate(members):
        name = names[i] if names else member_name(overrides)
        try:
            member = load_config(overrides=overrides, base=base)
        except ConfigError as e:
            raise ConfigError(f"member {name}: {e}") from None
        if name in seen:
            raise ConfigError(f"member {name} is given twice")
        seen[name] = True
        pack.append(Member(name, member))
    check_stream(pack)
    return pack


def shared_settings(cfg: Config) -> dict:
    """What the members of one pack must share: the settings the pipeline and the job read (its name and
    storage aside) and the views the method needs."""
    from beray.methods.build import method_views

    flat = _flat(cfg.model_dump(mode="json"))
    return {**{k: v for k, v in flat.items() if k.startswith(SHARED) and k not in ("run.name", "run.storage")},
            "views": method_views(cfg)}


def model_state_bytes(cfg: Config) -> int:
    """A member's memory on a worker besides activations: weights and buffers (MoCo's momentum encoder and
    queue among them) plus the optimiser's state (one tensor per parameter for SGD's momentum, two for AdamW)."""
    import torch

    from beray.methods.build import build_method

    with torch.device("meta"):  # shapes only: nothing allocated
        model = build_method(cfg)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state + trained * (2 if cfg.optim.name == "adamw" else 1)


def check_stream(pack: list[Member]) -> None:
    """ConfigError when members differ in a setting the pipeline or the job reads, naming it."""
    from beray.methods.build import method_views

    first = _flat(pack[0].cfg.model_dump(mode="json"))
    views = method_views(pack[0].cfg)
    for m in pack[1:]:
        flat = _flat(m.cfg.model_dump(mode="json"))
        differ = sorted(k for k in flat if k.startswith(SHARED) and flat[k] != first[k]
                        and k not in ("run.name", "run.storage"))
        if differ:
            raise ConfigError(f"member {m.name}: {differ[0]} {flat[differ[0]]!r} differs from member "
                              f"{pack[0].name}'s {first[differ[0]]!r}; the members of a pack share one data "
                              "stream and one job (data, augment, optim.batch_size, optim.epochs, run.*). "
                              "Run them as separate runs")
        if method_views(m.cfg) != views:
            raise ConfigError(f"member {m.name}: its method needs other views of each video "
                              f"({method_views(m.cfg)}) than member {pack[0].name}'s ({views}); the members "
                              "of a pack share one data stream")
