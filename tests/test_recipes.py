"""Each member decodes as its authors decode it (issue 46): with no decode flag, a member's settings are its
recipe, and its ids equal what the authors' own generate() returned at those settings.

The figures come from scripts/reference/{llada,llada_moe,dream,llada2}.py (the authors' code run in a scratch
virtualenv, `generate_recipe*` keys): LLaDA's and LLaDA-MoE's generate() as LLaDA's main() calls it (128 new tokens,
blocks of 32), Dream's diffusion_generate() as its README calls it (entropy, one token a step; greedy) and
LLaDA2.0's / LLaDA2.1's generate() at every default but gen_length 64. The settings come from the command line as
a user types it, parsed by the CLI's own parser; only the prompt ids are the fixtures' (the tiny checkpoints'
vocabularies spell no real chat prompt).
"""

from __future__ import annotations

import json

import pytest
from real_checkpoints import build_dream, build_llada, build_llada2, build_llada_moe, load_figures

from tie_lite.engine.recipe import settings_for
from tie_lite.engine.tie import run_tie
from tie_lite.faces.cli import build_parser, main
from tie_lite.faces.options import decode_settings
from tie_lite.runtime.loading import load_member
from tie_lite.runtime.scheduler import Scheduler

# LLaDA2.1's generate() signature as its modeling file declares it: what tells a 2.1 folder from a 2.0 one
LLADA21_SIGNATURE = ("    def generate(self, inputs=None, temperature: float = 0.0, block_length: int = 32, steps: int = 32,\n"
                     "                 gen_length: int = 2048, threshold: float = 0.95, editing_threshold: float = 0.9,\n"
                     "                 max_post_steps: int = 16):\n")


def _settings(folder, *flags):
    args = build_parser("generate").parse_args(["generate", "hi", "--model", str(folder), *flags])
    return decode_settings(args)


def _decode(member, prompt: list[int], settings, monkeypatch) -> tuple[list[int], int]:
    monkeypatch.setattr(member, "prompt_ids", lambda messages: list(prompt))
    result = run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings)
    return result.token_ids, result.steps


def _cut(ids: list[int], length: int, eos: int) -> list[int]:
    """LLaDA2's generate() returns gen_length ids cut after the first end-of-text."""
    ids = ids[:length]
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    folders = {"llada": build_llada(root), "dream": build_dream(root), "llada2.0": build_llada2(root),
               "llada-moe": build_llada_moe(root), "llada2.1": build_llada2(root, name="tiny-llada2.1-mini")}
    (folders["llada2.1"].path / "modeling_llada2_moe.py").write_text(
        "raise RuntimeError('the authors\\' code never runs here')\n\n\nclass LLaDA2MoeModelLM:\n" + LLADA21_SIGNATURE
        + "        ...\n")
    return folders


@pytest.fixture(scope="module")
def members(checkpoints):
    return {name: load_member(str(c.path)) for name, c in checkpoints.items()}


@pytest.mark.parametrize("family,fixture", [("llada", "llada"), ("llada-moe", "llada_moe")])
def test_llada_families_decode_as_generate_at_its_main_settings(members, checkpoints, monkeypatch, family, fixture):
    """No decode flag but the exact cache (the default dual cache is approximate, and says so)."""
    member = members[family]
    settings = settings_for(member, _settings(checkpoints[family].path, "--cache", "none"))
    assert (settings.gen_length, settings.block_size, settings.total_steps, settings.unmask, settings.answer_length) \
        == (128, 32, 128, "low_confidence", None)
    runs = load_figures(fixture)["generate_recipe"]
    assert {len(r["prompt"]) % 32 for r in runs} != {0}
    for run in runs:
        assert (run["gen_length"], run["block_length"], run["steps"]) == (128, 32, 128)
        ids, forwards = _decode(member, run["prompt"], settings, monkeypatch)
        assert ids == run["output"] and forwards == run["forwards"]


def test_dream_decodes_as_diffusion_generate_with_its_readme_settings(members, checkpoints, monkeypatch):
    member = members["dream"]
    settings = settings_for(member, _settings(checkpoints["dream"].path, "--gen-length", "64", "--cache", "none"))
    assert (settings.schedule, settings.unmask, settings.total_steps, settings.answer_length) == ("dream", "entropy", 64,
                                                                                                None)
    for run in load_figures("dream")["generate_recipe"]:
        assert (run["alg"], run["max_new_tokens"], run["steps"], run["top_k"]) == ("entropy", 64, 64, None)
        ids, forwards = _decode(member, run["prompt"], settings, monkeypatch)
        assert ids == run["output"]


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_llada2_decodes_as_generate_at_its_defaults_with_the_default_cache(members, checkpoints, monkeypatch,
                                                                            version):
    """--gen-length 64 and nothing else: blocks of 32 numbered from the sequence start, threshold 0.95, and for a
    folder whose modeling file edits (LLaDA2.1) token editing at 0.9 for at most 16 passes; the default cache is
    exact for block diffusion."""
    name = f"llada2.{version[-1]}"
    member = members[name]
    settings = settings_for(member, _settings(checkpoints[name].path, "--gen-length", "64"))
    editing = (0.9, 16) if version == "2.1" else (None, 16)
    assert (settings.block_size, settings.unmask, settings.threshold, settings.cache, settings.edit_threshold,
            settings.edit_steps) == (32, "llada2", 0.95, "dual", *editing)
    runs = load_figures("llada2")["generate_recipe_2" + version[-1]]
    assert runs and all(len(r["prompt"]) % 32 for r in runs)
    for run in runs:
        ids, forwards = _decode(member, run["prompt"], settings, monkeypatch)
        assert _cut(ids, run["gen_length"], 156892) == run["output"] and forwards == run["forwards"]


def test_a_flag_sets_every_member_and_a_member_option_one(members, checkpoints):
    """Flags over recipes, --member-option over flags, by member name."""
    llada, dream = members["llada"], members["dream"]
    folders = [str(checkpoints["llada"].path), str(checkpoints["dream"].path)]
    args = build_parser("generate").parse_args(
        ["generate", "hi", "--model", folders[0], "--model", folders[1], "--temperature", "0.5",
         "--member-option", f"{dream.name}:steps=32", "--member-option", f"{llada.name}:block-size=64"])
    decode = decode_settings(args)
    a, b = settings_for(llada, decode), settings_for(dream, decode)
    assert (a.temperature, b.temperature) == (0.5, 0.5)
    assert (a.block_size, a.gen_length, a.steps) == (64, 128, None) and (b.steps, b.schedule, b.gen_length) == (
        32, "dream", 512)


@pytest.mark.parametrize("option,words", [
    ("NAME:threshold=0.5", "reads no threshold"),
    ("NAME:block-size=8", "has no blocks"),
    ("NAME:bogus=1", "unknown setting 'bogus'"),
    ("NAME:steps=many", "'many' is not a whole number"),
    ("nobody:steps=8", "which is not a member"),
    ("NAME-steps-8", "is not NAME:KEY=VALUE"),
])
def test_a_member_option_that_cannot_apply_is_refused_in_one_line(checkpoints, capsys, option, words):
    folder = checkpoints["dream"].path
    code = main(["generate", "hi", "--model", str(folder), "--gen-length", "16", "--member-option",
                 option.replace("NAME", folder.name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from diffusion_gemma_checkpoint import build_diffusion_gemma

    return build_diffusion_gemma(tmp_path_factory.mktemp("gemma"))


def _check_recipes(ran: dict, l2: str, dream: str, gemma: str) -> None:
    """LLaDA2 on blocks of 32 from the sequence start with its threshold, Dream on its whole-canvas schedule, and
    DiffusionGemma on its checkpoint's own sampler, each on the free layout."""
    assert (ran[l2]["block_size"], ran[l2]["unmask"], ran[l2]["threshold"], ran[l2]["cache_exact"]) == (
        32, "llada2", 0.95, True)
    assert (ran[dream]["schedule"], ran[dream]["unmask"], ran[dream]["gen_length"]) == ("dream", "entropy", 64)
    assert ran[gemma]["sampler"].startswith("entropy-bound")
    assert all(r["layout"] == "free" for r in ran.values())


def test_an_ensemble_of_recipes_runs_from_the_cli_each_member_its_own_way(checkpoints, gemma, capsys):
    capsys.readouterr()
    folders = [checkpoints["llada2.0"].path, checkpoints["dream"].path, gemma]
    assert main(["generate", "What is 2+3?", *[a for f in folders for a in ("--model", str(f))], "--gen-length", "64",
                 "--json"]) == 0
    out = capsys.readouterr()
    _check_recipes(json.loads(out.out)["member_settings"], *(f.name for f in folders))
    assert "approximate for" in out.err  # Dream's default dual cache, said once


def test_an_ensemble_of_recipes_runs_from_the_server_and_the_chat(checkpoints, gemma):
    """The same ensemble launched with no decoding flag: an API request with a token cap (rounded to whole blocks
    of every member: LLaDA2's 32) and a chat message, each member on its recipe, per-member settings in the trace."""
    from test_serve import served_and_chatted

    from tie_lite.runtime.session import LoadSettings

    folders = [checkpoints["llada2.0"].path, checkpoints["dream"].path, gemma]
    ran, text = served_and_chatted(LoadSettings(models=tuple(str(f) for f in folders)), 40, {"gen_length": 64})
    _check_recipes(ran, *(f.name for f in folders))
    assert ran[folders[0].name]["block_size"] == 32 and ran[folders[1].name]["gen_length"] == 64
    assert isinstance(text, str) and text.strip(), text


# a value for each decoding flag that is valid on its own and differs from every recipe's
FLAG_VALUES = {"block_size": "16", "steps": "32", "temperature": "0.5", "unmask": "random", "threshold": "0.5",
               "topk": "1", "schedule": "blocks", "eps": "0.01", "cache": "prefix", "edit_threshold": "0.5",
               "edit_steps": "4"}
# per family, on its recipe, the flags its sampler does not read
NOT_READ_BY = {"llada": {"threshold", "topk", "eps", "edit_steps"},
               "dream": {"block_size", "threshold", "topk", "edit_steps"},
               "llada2.1": {"topk", "eps"}}


@pytest.mark.parametrize("flag", sorted(FLAG_VALUES))
@pytest.mark.parametrize("family", sorted(NOT_READ_BY))
def test_every_flag_a_member_does_not_read_is_said_once(members, checkpoints, family, flag):
    """The flag/family matrix: a flag given for every member that a member's sampler, on its recipe, does not
    read is one note naming the member and why; a flag it reads is no note."""
    from tie_lite.faces.options import settings_notes

    args = build_parser("generate").parse_args(["generate", "hi", "--model", str(checkpoints[family].path),
                                                "--gen-length", "64", "--cache", "none",
                                                "--" + flag.replace("_", "-"), FLAG_VALUES[flag]])
    notes = [n for n in settings_notes([members[family]], decode_settings(args)) if "does not apply" in n]
    if flag in NOT_READ_BY[family]:
        assert len(notes) == 1 and "--" + flag.replace("_", "-") in notes[0] and members[family].name in notes[0]
    else:
        assert notes == []


def test_the_chat_panel_says_which_members_decode_on_their_own_recipes(members):
    from tie_lite.faces.client_settings import Defaults, own_recipes, parse_settings

    _, decode, _ = parse_settings({}, Defaults())
    words = own_recipes([members["llada2.1"], members["dream"]], decode)
    assert "blocks of 32, llada2, editing above 0.9" in words and "entropy" in words
    _, given, _ = parse_settings({"gen_length": 64, "block_size": 32, "unmask": "llada2", "edit_threshold": 0.9}, Defaults())
    assert members["llada2.1"].name not in own_recipes([members["llada2.1"]], given)  # the boxes say it all
