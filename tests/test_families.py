"""The hub families (LLaDA, Dream) on checkpoints built here with the families' real conventions.

Every load goes through `load_member`, the path a hub id takes (config.json -> family adapter ->
trust/pickle checks -> AutoModel/AutoTokenizer with remote code -> quantization).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    from hub_checkpoints import DREAM_SPECIALS, LLADA_SPECIALS, WORD_IDS, build_dream, build_llada
except ImportError:  # tests/ imported as a package
    from tests.hub_checkpoints import DREAM_SPECIALS, LLADA_SPECIALS, WORD_IDS, build_dream, build_llada

from tie_lite.errors import UserError
from tie_lite.loading import load_member
from tie_lite.sampler import DecodeSettings, Trajectory

REPO = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "hi"}]
FREE = DecodeSettings(gen_length=16, block_size=8, answer_length=None)
SHORT = DecodeSettings(gen_length=8, block_size=4, answer_length=None)  # quantized CPU kernels are slower

# What the chat templates must render for HI, spelled out from the vocabularies (not from the tokenizer).
W = WORD_IDS
EXPECTED_PROMPT = {
    # <|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
    # BOS once: the template writes it, and the tokenizer's own BOS must not be added on top.
    "llada": [LLADA_SPECIALS["<|startoftext|>"], LLADA_SPECIALS["<|start_header_id|>"], W["user"],
              LLADA_SPECIALS["<|end_header_id|>"], W["hi"], LLADA_SPECIALS["<|eot_id|>"],
              LLADA_SPECIALS["<|start_header_id|>"], W["assistant"], LLADA_SPECIALS["<|end_header_id|>"]],
    # <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n
    "dream": [DREAM_SPECIALS["<|im_start|>"], W["system"], W["You"], W["are"], W["a"], W["helpful"], W["assistant"],
              W["."], DREAM_SPECIALS["<|im_end|>"], DREAM_SPECIALS["<|im_start|>"], W["user"], W["hi"],
              DREAM_SPECIALS["<|im_end|>"], DREAM_SPECIALS["<|im_start|>"], W["assistant"]],
}


# --- checkpoints and members, built and loaded once per session --------------------------------------


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    built = build_llada(root, pickle_copy=True)
    built["dream"] = build_dream(root)
    return built


@pytest.fixture(scope="session")
def members(checkpoints):
    """Unquantized LLaDA and Dream members, loaded into this one process."""
    return {name: load_member(str(checkpoints[name].path), trust_remote_code=True) for name in ("llada", "dream")}


def _canvas(member, length=12, seed=0):
    vocab = len(member.tokenizer)
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def _decode(member, settings=FREE) -> Trajectory:
    traj = Trajectory.start(member, HI, settings)
    traj.run_blocks(settings, 99)
    return traj


# --- 1. trust_remote_code, and the facts each family adapter reports ---------------------------------


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_remote_code_family_is_refused_without_trust(checkpoints, name):
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_member(str(checkpoints[name].path))


def test_refusal_happens_before_any_checkpoint_code_runs(checkpoints, tmp_path):
    """A checkpoint whose remote code leaves a mark when imported: refused, and the mark never appears."""
    folder = tmp_path / "tripwire"
    folder.mkdir()
    source = checkpoints["dream"].path
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (folder / f).symlink_to(source / f)
    mark = tmp_path / "remote-code-ran"
    (folder / "modeling_tiny_dream.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_member(str(folder))
    assert not mark.exists()


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_trusted_load_reports_the_family_conventions(checkpoints, members, name):
    ckpt, member = checkpoints[name], members[name]
    assert member.family.name == ckpt.family
    assert member.mask_id == ckpt.mask_id
    assert set(member.eos_ids) == set(ckpt.eos_ids)
    assert member.shifted is ckpt.shifted
    assert member.name == ckpt.path.name
    # The ids the adapter reports are the tokenizer's own special tokens.
    mask_token = "<|mdm_mask|>" if name == "llada" else "<|mask|>"
    assert member.tokenizer.convert_tokens_to_ids(mask_token) == member.mask_id
    assert member.tokenizer.eos_token_id in member.eos_ids
    assert member.max_length == 4096  # LLaDA: max_sequence_length; Dream: max_position_embeddings


# --- 2. logit alignment ------------------------------------------------------------------------------


def test_dream_logits_are_the_raw_output_shifted_by_one(members):
    member = members["dream"]
    ids = _canvas(member)
    raw = member.model(input_ids=ids).logits.detach().float()
    got = member.logits(ids)
    assert got.shape == raw.shape
    torch.testing.assert_close(got[:, 0], raw[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(got[:, 1:], raw[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(got[:, 1:], raw[:, 1:])  # the shift is visible on this canvas


def test_llada_logits_are_the_raw_output_unshifted(members):
    member = members["llada"]
    ids = _canvas(member)
    raw = member.model(input_ids=ids).logits.detach().float()
    torch.testing.assert_close(member.logits(ids), raw, rtol=0, atol=0)
    assert not torch.allclose(raw[:, 1:], raw[:, :-1])  # a shift would have been visible


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_first_commit_uses_the_aligned_prediction(members, name):
    """A greedy step commits, at the chosen position p, the argmax of raw output p (LLaDA) or p-1 (Dream)."""
    member = members[name]
    traj = Trajectory.start(member, HI, FREE)
    before = traj.ids.clone()
    raw = member.model(input_ids=before[None]).logits.detach().float()[0]
    traj.step(FREE, member.logits(before[None])[0])
    (pos,) = (traj.ids != before).nonzero().flatten().tolist()
    source = pos - 1 if member.shifted else pos
    assert traj.ids[pos] == raw[source].argmax()


# --- 3. both families in one process, decoding end to end --------------------------------------------


def test_llada_and_dream_load_and_decode_in_one_process(checkpoints, members):
    # Load again in the opposite order to the session fixture: the Auto registries must not hand one
    # family's classes to the other, whichever loaded first.
    dream = load_member(str(checkpoints["dream"].path), trust_remote_code=True)
    llada = load_member(str(checkpoints["llada"].path), trust_remote_code=True)
    assert type(dream.model).__name__ == "DreamModel" and dream.model.config.model_type == "Dream"
    assert type(llada.model).__name__ == "LLaDAModelLM" and llada.model.config.model_type == "llada"
    assert type(dream.tokenizer).__name__ == "DreamTokenizer"
    assert llada.tokenizer_key != dream.tokenizer_key
    for name, member in (("llada", llada), ("dream", dream)):
        traj = _decode(member)
        assert traj.done
        assert not (traj.ids == member.mask_id).any()
        assert traj.forwards == FREE.gen_length  # one token per step
        assert traj.prompt_ids == EXPECTED_PROMPT[name]
        assert traj.ids[: len(traj.prompt_ids)].tolist() == EXPECTED_PROMPT[name]
        assert traj.ids.numel() == len(EXPECTED_PROMPT[name]) + FREE.gen_length
        assert isinstance(traj.text(), str)
    # The reloaded members compute what the session's members compute: nothing was swapped underneath.
    for fresh, old in ((llada, members["llada"]), (dream, members["dream"])):
        ids = _canvas(old)
        torch.testing.assert_close(fresh.logits(ids), old.logits(ids), rtol=0, atol=0)


# --- 4. pickle weights --------------------------------------------------------------------------------


def test_pickle_only_checkpoint_needs_allow_pickle(checkpoints, members):
    path = str(checkpoints["llada_pickle"].path)
    assert not list(Path(path).glob("*.safetensors"))
    with pytest.raises(UserError, match="--allow-pickle"):
        load_member(path, trust_remote_code=True)
    member = load_member(path, trust_remote_code=True, allow_pickle=True)
    assert member.mask_id == 126336
    ids = _canvas(member)
    torch.testing.assert_close(member.logits(ids), members["llada"].logits(ids), rtol=0, atol=0)


# --- 5. hub ids that are not cached, offline ----------------------------------------------------------


def test_offline_uncached_hub_id_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    dialled = []

    def no_network(*args, **kwargs):
        dialled.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(UserError) as info:
        load_member("some-org/not-cached-model", trust_remote_code=True)
    message = str(info.value)
    assert "some-org/not-cached-model" in message
    assert "download" in message  # says what to do
    assert "\n" not in message
    assert dialled == []  # offline means offline: no lookups, no retries


def test_cli_offline_uncached_hub_id_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "tie_lite.cli", "generate", "hi", "--model", "some-org/not-cached-model"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "some-org/not-cached-model" in lines[0]
    assert proc.stdout == ""


# --- 6. bitsandbytes 8-bit and 4-bit on the CPU -------------------------------------------------------

# Closeness is the relative L2 error of the logits, ||q - f|| / ||f - mean(f)||, over a 24-token canvas.
# Top-1 agreement is no use on random weights: over a 126k vocabulary the top two logits are often
# closer than any quantization error.
#
# Two checks, with tolerances measured on these checkpoints:
# - against the fp32 model: the error weight rounding alone causes. int8 absmax rounding moves a
#   weight ~0.6% of its row, NF4 ~9% of its 64-block; this net (2 blocks, SwiGLU, random weights scaled so
#   every layer matters) carries that into the logits ~4x: 0.036 (8-bit) and 0.34-0.37 (4-bit) over
#   several canvases. Bounds 0.08 / 0.5 leave room for other CPUs' kernels and stay far below what a
#   lost layer does (zeroing one quantized Linear of block 0 moves the logits by 1.0-1.3; checked below).
# - against the same fp32 model with its weights rounded as the format rounds them (int8 row-wise absmax;
#   NF4, blocksize 64, double quant), computed in fp32: what is left is activation precision. LLM.int8
#   rounds activations row-wise to int8 too (measured 0.025-0.029); the 4-bit CPU kernel works in bf16
#   (0.012). Bound 0.05 for both; a different 4-bit type (FP4) or wrong blocksize lands near 0.3.
QUANT_TOLERANCE = {"8bit": 0.08, "4bit": 0.5}
ROUNDED_TOLERANCE = 0.05
# Footprint: int8 keeps 1 byte of each 4 (saves <= 3/4 of a quantized Linear's fp32 bytes, a little less
# with per-row scales); NF4 keeps 1/2 byte (saves <= 7/8, less the block absmax).
SAVED_FRACTION = {"8bit": (0.70, 0.75), "4bit": (0.80, 0.875)}


def _relative_error(logits, reference):
    return float((logits - reference).norm() / (reference - reference.mean(-1, keepdim=True)).norm())


def _rounded_copy(model, names, quant):
    """fp32 copy of `model` whose Linear weights at `names` are rounded as `quant` stores them."""
    import bitsandbytes.functional as bnbf

    rounded = copy.deepcopy(model)
    for name in names:
        linear = rounded.get_submodule(name)
        w = linear.weight.data
        if quant == "8bit":
            codes, scales, _ = bnbf.int8_vectorwise_quant(w.to(torch.float16))
            linear.weight.data = codes.float() * scales.float()[:, None] / 127
        else:
            packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            linear.weight.data = bnbf.dequantize_4bit(packed, state).float()
    return rounded


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_llada_is_close_to_fp32_and_smaller(checkpoints, members, quant):
    import bitsandbytes as bnb

    full = members["llada"]
    member = load_member(str(checkpoints["llada"].path), quant=quant, trust_remote_code=True)
    assert member.quant == quant
    layer = bnb.nn.Linear8bitLt if quant == "8bit" else bnb.nn.Linear4bit
    quantized = [n for n, m in member.model.named_modules() if isinstance(m, layer)]
    assert quantized, f"no {layer.__name__} layers: the model was not quantized"
    assert all(".blocks." in n for n in quantized)  # the output layer (model.transformer.ff_out) stays fp32
    assert len(quantized) == 7 * full.model.config.n_layers  # every block Linear, MLP ff_out included

    ids = _canvas(full, length=24, seed=3)
    reference = full.logits(ids)
    logits = member.logits(ids)
    error = _relative_error(logits, reference)
    assert error < QUANT_TOLERANCE[quant], f"{quant} logits differ from fp32 by {error:.3f}"
    with torch.no_grad():
        rounded = _rounded_copy(full.model, quantized, quant)(input_ids=ids).logits.float()
    assert _relative_error(logits, rounded) < ROUNDED_TOLERANCE

    # The tolerance can fail: losing one quantized layer moves the logits well past it.
    ablated = full.model.get_submodule(quantized[0])
    saved = ablated.weight.data.clone()
    try:
        ablated.weight.data.zero_()
        assert _relative_error(full.logits(ids), reference) > 1.5 * QUANT_TOLERANCE[quant]
    finally:
        ablated.weight.data.copy_(saved)

    linear_bytes = sum(full.model.get_submodule(n).weight.nbytes for n in quantized)
    low, high = SAVED_FRACTION[quant]
    saving = full.footprint_bytes - member.footprint_bytes
    assert member.footprint_bytes < full.footprint_bytes
    assert low * linear_bytes <= saving <= high * linear_bytes, (saving, linear_bytes)

    traj = _decode(member, SHORT)  # and it still decodes end to end
    assert traj.done and not (traj.ids == member.mask_id).any()
    assert traj.forwards == SHORT.gen_length and traj.prompt_ids == EXPECTED_PROMPT["llada"]
