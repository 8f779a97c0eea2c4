"""Architectures tie-lite does not implement: a checkpoint that ships its own model code (`auto_map` in
config.json) and names its mask token. Loading it runs that code, so it needs --trust-remote-code."""

from .base import Family

REMOTE = Family(name="remote code", model_types=(), auto_class="AutoModel", trust_remote_code=True)
