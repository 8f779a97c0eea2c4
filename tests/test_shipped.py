"""The shipped members load in every quantization and still decode; quantized logits stay close."""

import pytest
import torch

from tie_lite.loading import load_member
from tie_lite.sampler import DecodeSettings, Trajectory

PROMPT = [{"role": "user", "content": "What is (23+41)*7?"}]
# Relative L2 error of the logits against fp32. Measured on these checkpoints: int8 0.006-0.008,
# NF4 0.03-0.07 (4 bits per weight over 64-weight blocks). The bounds leave about 2x room and still
# catch a layer left random or dropped (errors near 1).
TOLERANCE = {"8bit": 0.05, "4bit": 0.15}


@pytest.mark.parametrize("name", ["tiny-char", "tiny-bpe"])
@pytest.mark.parametrize("quant,backend", [("8bit", "bitsandbytes"), ("4bit", "bitsandbytes"),
                                           ("8bit", "quanto"), ("4bit", "quanto")])
def test_quantized_shipped_member_is_close_and_decodes(shipped, name, quant, backend):
    full = shipped[name]
    member = load_member(name, quant=quant, backend=backend)
    settings = DecodeSettings()
    traj = Trajectory.start(member, PROMPT, settings)
    reference = full.logits(traj.ids[None])
    logits = member.logits(traj.ids[None])
    error = float((logits - reference).norm() / reference.norm())
    assert error < TOLERANCE[quant], error
    assert member.footprint_bytes < 0.6 * full.footprint_bytes
    traj.run_blocks(settings, 99)
    assert traj.done and "Answer:" in traj.text()


def test_shipped_members_differ_like_real_members(shipped):
    char, bpe = shipped["tiny-char"], shipped["tiny-bpe"]
    assert char.tokenizer_key != bpe.tokenizer_key  # relay between them goes through text
    assert bpe.shifted and not char.shifted  # Dream-style and LLaDA-style logit conventions
    assert char.model.config.model_type == bpe.model.config.model_type == "tie-tiny"
