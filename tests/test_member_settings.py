"""Nothing ignored in silence (issue 46): a decoding flag a member's own sampler does not read is applied to the
others and said once on stderr (one line per flag, naming each member that does not read it and why), and --json and the API's trace report per member what its decode ran with."""

from __future__ import annotations

import json

import pytest

from tie_lite.engine.uniform import NOT_READ
from tie_lite.faces.cli import main

try:
    from test_serve import KEY, start_server
except ImportError:
    from .test_serve import KEY, start_server

PROMPT = "What is 37+85?"
# a value for each masked-sampler flag that differs from its default and is valid on its own
FLAG_VALUES = {"block_size": "32", "steps": "32", "temperature": "0.5", "unmask": "random", "threshold": "0.5",
               "topk": "1", "schedule": "dream", "eps": "0.01", "cache": "none", "edit_threshold": "0.9",
               "edit_steps": "4", "sub_block": "4"}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from diffusion_gemma_checkpoint import build_diffusion_gemma

    return str(build_diffusion_gemma(tmp_path_factory.mktemp("gemma")))


def generate(capsys, *argv) -> tuple[dict, list[str]]:
    capsys.readouterr()
    assert main(["generate", PROMPT, *argv, "--json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), [line for line in out.err.splitlines() if line.strip()]


def test_every_flag_is_a_setting_the_walk_covers():
    assert set(FLAG_VALUES) == set(NOT_READ)


@pytest.mark.parametrize("flag", sorted(NOT_READ))
def test_a_flag_a_uniform_noise_member_does_not_read_is_said_and_applied_to_the_others(capsys, gemma, flag):
    option = "--" + flag.replace("_", "-")
    out, err = generate(capsys, "--model", gemma, "--model", "tiny-sp", option, FLAG_VALUES[flag])
    notes = [line for line in err if line.startswith("tie-lite: note:")]
    assert len(notes) == 1 and "tiny-diffusion-gemma" in notes[0] and option in notes[0], err
    # tiny-sp (low-confidence remasking, no editing) reads every flag but those of other policies
    assert ("tiny-sp" in notes[0]) == (flag in ("threshold", "topk", "eps", "edit_steps", "sub_block")), notes
    ran = out["member_settings"]
    assert flag in ran["tiny-diffusion-gemma"]["ignored"]
    assert ran["tiny-diffusion-gemma"]["sampler"].startswith("entropy-bound")
    masked = ran["tiny-sp"]
    assert masked["sampler"] == "masked"
    if flag in masked:  # the masked member ran with what was asked (settings that apply to its policy only)
        want = FLAG_VALUES[flag]
        assert masked[flag] == (want if isinstance(masked[flag], str) else type(masked[flag])(float(want))), masked


def test_no_note_without_such_a_flag_and_settings_say_what_ran(capsys, gemma):
    out, err = generate(capsys, "--model", gemma, "--model", "tiny-sp", "--seed", "3")
    assert not [line for line in err if line.startswith("tie-lite: note:")]
    ran = out["member_settings"]
    assert ran["tiny-diffusion-gemma"]["seed"] == 3 and ran["tiny-diffusion-gemma"]["canvas_length"] == 16
    assert ran["tiny-sp"] | {"cache": "dual", "steps": 64, "gen_length": 64} == ran["tiny-sp"]


def test_the_server_trace_reports_what_each_member_ran(gemma):
    from openai import OpenAI

    from tie_lite.runtime.session import LoadSettings

    _, url, stop = start_server(load=LoadSettings(models=(gemma, "tiny-sp")))
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
        reply = client.chat.completions.create(model="tiny-diffusion-gemma", temperature=0.7,
                                               messages=[{"role": "user", "content": PROMPT}])
        ran = reply.model_extra["tie"]["member_settings"]["tiny-diffusion-gemma"]
        assert "temperature" in ran["ignored"] and ran["sampler"].startswith("entropy-bound")
        reply = client.chat.completions.create(model="tiny-sp", temperature=0.7,
                                               messages=[{"role": "user", "content": PROMPT}])
        assert reply.model_extra["tie"]["member_settings"]["tiny-sp"]["temperature"] == 0.7
    finally:
        stop()


def test_a_canvas_member_alone_takes_any_generation_length(capsys, gemma):
    """Blocks mean nothing to a uniform-noise member: --gen-length 60 is not refused for not being a multiple of a
    block size it does not have (its 16-position canvases cover it); beside a masked member the blocks apply."""
    out, _ = generate(capsys, "--model", gemma, "--gen-length", "60")
    assert out["member_settings"]["tiny-diffusion-gemma"]["canvases"] == 4
    capsys.readouterr()
    assert main(["generate", PROMPT, "--model", gemma, "--model", "tiny-sp", "--gen-length", "60"]) == 2
    assert "not a multiple of --block-size 16" in capsys.readouterr().err


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    from real_checkpoints import build_llada

    return str(build_llada(tmp_path_factory.mktemp("llada")).path)


def test_an_approximate_default_cache_is_said_and_reported(capsys, llada):
    """LLaDA's default dual cache is Fast-dLLM's approximation: said once after the run and marked in
    member_settings; --cache none (its authors' exact computation) says nothing; the shipped members, measured
    with the dual cache, say nothing either."""
    out, err = generate(capsys, "--model", llada, "--gen-length", "32")
    notes = [line for line in err if line.startswith("tie-lite: note:")]
    assert len(notes) == 1 and "--cache dual is approximate for tiny-llada-instruct" in notes[0]
    assert out["member_settings"]["tiny-llada-instruct"]["cache_exact"] is False
    out, err = generate(capsys, "--model", llada, "--gen-length", "32", "--cache", "none")
    assert not [line for line in err if line.startswith("tie-lite: note:")]
    assert out["member_settings"]["tiny-llada-instruct"]["cache_exact"] is True
    out, err = generate(capsys)
    assert not [line for line in err if line.startswith("tie-lite: note:")]
