"""Each member decodes as its authors decode it: a request's settings resolved against the member's recipe.

A member's recipe (Family.checkpoint_recipe: the family's, under the checkpoint's generation_config.json)
holds the decode settings its authors' `generate()` uses. For each member the settings that run are, in order
of precedence: the options given for that member by name, the settings the user gave for every member, the
member's recipe, and the request's own values (tie-lite's defaults, what the shipped members were trained on).
"""

from __future__ import annotations

from dataclasses import replace

from tie_lite.engine.sampler import RECIPE_KEYS, DecodeSettings
from tie_lite.engine.uniform import NOT_READ
from tie_lite.errors import UserError


def member_options(decode: DecodeSettings, name: str) -> dict:
    """The options given for the member called `name` (`--member-option NAME:KEY=VALUE`)."""
    return {k: v for member, options in decode.member_options if member == name for k, v in options}


def unused(member, settings: DecodeSettings, keys) -> list[str]:
    """Which of the settings `keys` the member's sampler does not read with its `settings`: a uniform-noise
    member runs its checkpoint's own sampler; Dream's schedule has no blocks; a threshold, top-k, eps or edit
    count belongs to one policy; a member without tie-lite's model classes keeps no cache."""
    if getattr(member, "denoising", None) is not None:
        return [k for k in keys if k in NOT_READ]
    idle = {
        "block_size": settings.dream,
        "threshold": settings.unmask not in ("threshold", "llada2", "fast_dllm_v2"),
        "sub_block": settings.unmask != "fast_dllm_v2",
        "topk": settings.unmask != "topk",
        "eps": not settings.dream,
        "edit_steps": settings.edit_threshold is None,
        "cache": settings.cache != "none" and not getattr(member, "caches", True),
    }
    return [k for k in keys if idle.get(k, False)]


def settings_for(member, decode: DecodeSettings) -> DecodeSettings:
    """The settings `member` decodes with, checked; a member's own settings that cannot run are one line
    naming it."""
    if decode.given is None and not decode.member_options:
        return decode  # settings built in code run as they are
    given = frozenset(RECIPE_KEYS) if decode.given is None else decode.given
    recipe = getattr(member, "recipe", None) or {}
    values = {k: v for k, v in recipe.items() if k in RECIPE_KEYS and k not in given}
    own = member_options(decode, member.name)
    settings = replace(decode, **(values | own), given=None, member_options=())
    idle = unused(member, settings, own)
    if idle:
        raise UserError(f"--member-option {member.name}:{idle[0]} does not apply to '{member.name}': "
                        f"{why_unused(member, settings, idle[0])}; leave it out")
    if getattr(member, "denoising", None) is not None:
        return settings  # a uniform-noise member reads the length, layout and seed only (engine/uniform.py)
    try:
        settings.validate()
    except UserError as exc:
        raise UserError(f"model '{member.name}': {exc}") from None
    return settings


def why_unused(member, settings: DecodeSettings, key: str) -> str:
    if getattr(member, "denoising", None) is not None:
        return "it runs its checkpoint's own sampler (generation_config.json)"
    return {"block_size": "Dream's schedule (--schedule dream) has no blocks",
            "threshold": f"its unmasking policy {settings.unmask} reads no threshold",
            "topk": f"its unmasking policy {settings.unmask} is not topk",
            "eps": "only Dream's schedule reads eps",
            "edit_steps": "it does not edit tokens (no edit_threshold)",
            "sub_block": f"its unmasking policy {settings.unmask} has no sub-blocks",
            "cache": "it runs its own model code, which keeps no cache"}[key]


def settings_of(members, decode: DecodeSettings) -> list[DecodeSettings]:
    """Every member's settings, in order."""
    return [settings_for(m, decode) for m in members]
