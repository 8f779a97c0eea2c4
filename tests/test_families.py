"""The hub families (LLaDA, Dream) on tiny checkpoints with their real configs, and the remote-code path for
architectures tie-lite does not implement.

Every load goes through `load_member`, the path a hub id takes (config.json -> family adapter -> trust/pickle
checks -> the project's own model classes, or remote code when trusted -> tokenizer -> quantization). The
checkpoints are rebuilt from the reference fixtures (tests/real_checkpoints.py); tests/test_native_*.py compare
their logits and greedy decoding with the authors' code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    from real_checkpoints import (
        LLADA_SPECIALS,
        WORD_IDS,
        build_dream,
        build_llada,
        word_tokenizer,
    )
except ImportError:  # tests/ imported as a package
    from tests.real_checkpoints import (
        LLADA_SPECIALS,
        WORD_IDS,
        build_dream,
        build_llada,
        word_tokenizer,
    )

from tie_lite.engine.sampler import DecodeSettings, Trajectory
from tie_lite.errors import UserError
from tie_lite.runtime.loading import load_member

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
HI = [{"role": "user", "content": "hi"}]
FREE = DecodeSettings(gen_length=16, block_size=8, answer_length=None)
SHORT = DecodeSettings(gen_length=8, block_size=4, answer_length=None)  # quantized CPU kernels are slower

# What LLaDA's chat template must render for HI, spelled out from the vocabulary (not from the tokenizer):
# <|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
# BOS once: the template writes it, and the tokenizer's own BOS must not be added on top.
W = WORD_IDS
LLADA_PROMPT = [LLADA_SPECIALS["<|startoftext|>"], LLADA_SPECIALS["<|start_header_id|>"], W["user"],
                LLADA_SPECIALS["<|end_header_id|>"], W["hi"], LLADA_SPECIALS["<|eot_id|>"],
                LLADA_SPECIALS["<|start_header_id|>"], W["assistant"], LLADA_SPECIALS["<|end_header_id|>"]]


# --- checkpoints and members, built and loaded once per session --------------------------------------


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {"llada": build_llada(root), "dream": build_dream(root)}


@pytest.fixture(scope="session")
def members(checkpoints):
    """Unquantized LLaDA and Dream members, loaded into this one process, with no remote code."""
    return {name: load_member(str(checkpoints[name].path)) for name in ("llada", "dream")}


def _canvas(member, length=12, seed=0):
    vocab = len(member.tokenizer)
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def _decode(member, settings=FREE) -> Trajectory:
    traj = Trajectory.start(member, HI, settings)
    traj.run_blocks(settings, 99)
    return traj


# --- 1. native families, and the facts each family adapter reports ------------------------------------


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_native_load_reports_the_family_conventions(checkpoints, members, name):
    ckpt, member = checkpoints[name], members[name]
    assert not member.family.trust_remote_code and member.family.name == ckpt.family
    assert not ckpt.remote_code_marker.exists()  # the authors' files beside the weights never ran
    assert member.mask_id == ckpt.mask_id
    assert set(member.eos_ids) == set(ckpt.eos_ids)
    assert member.shifted is ckpt.shifted
    assert member.name == ckpt.path.name
    # The ids the adapter reports are the tokenizer's own special tokens.
    mask_token = "<|mdm_mask|>" if name == "llada" else "<|mask|>"
    assert member.tokenizer.convert_tokens_to_ids(mask_token) == member.mask_id
    assert member.tokenizer.eos_token_id in member.eos_ids
    assert member.max_length == {"llada": 4096, "dream": 131072}[name]


def _remote_checkpoint(root: Path) -> Path:
    """An MDLM architecture tie-lite does not know, shipping its code as hub repos do (auto_map)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tie_lite_remote_fixture", FIXTURES / "modeling_remote_mdlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    folder = root / "remote-mdlm"
    module.RemoteModelLM(module.RemoteConfig(architectures=["RemoteModelLM"])).save_pretrained(folder)
    shutil.copy(FIXTURES / "modeling_remote_mdlm.py", folder / "modeling_remote_mdlm.py")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_remote_mdlm.RemoteConfig",
                          "AutoModel": "modeling_remote_mdlm.RemoteModelLM"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = word_tokenizer(LLADA_SPECIALS, max(LLADA_SPECIALS.values()) + 1, bos=None)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"})
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(folder)
    return folder


def test_unknown_architecture_needs_trust_and_is_refused_before_its_code_runs(tmp_path):
    folder = _remote_checkpoint(tmp_path)
    mark = tmp_path / "remote-code-ran"
    code = folder / "modeling_remote_mdlm.py"
    original = code.read_text()
    code.write_text(original + f"\nopen({str(mark)!r}, 'w').close()\n")
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_member(str(folder))
    assert not mark.exists()
    member = load_member(str(folder), trust_remote_code=True)  # the explicit opt-in
    assert mark.exists() and member.family.name == "remote code" and member.mask_id == 126336
    traj = _decode(member)
    assert traj.done and not (traj.ids == member.mask_id).any()


def test_plan_says_how_each_member_loads(checkpoints, tmp_path, capsys):
    from tie_lite.faces.cli import main

    remote = _remote_checkpoint(tmp_path)
    assert main(["plan", "--model", str(checkpoints["llada"].path), "--model", str(checkpoints["dream"].path),
                 "--model", str(remote), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["members"]
    assert [r["loads"].split(":")[0] for r in rows] == ["native", "native", "cannot load"]
    assert "--trust-remote-code" in rows[2]["loads"]
    assert main(["plan", "--model", str(remote), "--trust-remote-code"]) == 0
    assert "remote code" in capsys.readouterr().out


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
    dream = load_member(str(checkpoints["dream"].path))
    llada = load_member(str(checkpoints["llada"].path))
    assert type(dream.model).__name__ == "DreamModel" and dream.model.config.model_type == "Dream"
    assert type(llada.model).__name__ == "LLaDAModelLM" and llada.model.config.model_type == "llada"
    assert type(dream.model).__module__ == "tie_lite.models.dream"
    assert type(llada.model).__module__ == "tie_lite.models.llada"
    assert llada.tokenizer_key != dream.tokenizer_key
    for member in (llada, dream):
        traj = _decode(member)
        assert traj.done
        assert not (traj.ids == member.mask_id).any()
        assert traj.forwards == FREE.gen_length  # one token per step
        assert traj.ids[: len(traj.prompt_ids)].tolist() == traj.prompt_ids == member.prompt_ids(HI)
        assert traj.ids.numel() == len(traj.prompt_ids) + FREE.gen_length
        assert isinstance(traj.text(), str)
    assert llada.prompt_ids(HI) == LLADA_PROMPT
    im_start, im_end = 151644, 151645
    prompt = dream.prompt_ids(HI)
    assert prompt[0] == im_start and prompt.count(im_start) == 3 and prompt.count(im_end) == 2  # system, user, assistant
    # The reloaded members compute what the session's members compute: nothing was swapped underneath.
    for fresh, old in ((llada, members["llada"]), (dream, members["dream"])):
        ids = _canvas(old)
        torch.testing.assert_close(fresh.logits(ids), old.logits(ids), rtol=0, atol=0)


def test_a_checkpoint_whose_weights_do_not_fit_the_architecture_is_refused(checkpoints, tmp_path):
    """Missing or foreign weights would otherwise start at random: a silently wrong member."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "wrong"
    shutil.copytree(checkpoints["llada"].path, folder)
    shard = sorted(folder.glob("*.safetensors"))[0]
    tensors = load_file(str(shard))
    tensors["model.transformer.wpe.weight"] = tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: shard.name if k in tensors else v for k, v in index["weight_map"].items()
                           if k in tensors or v != shard.name}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="do not fit the llada architecture"):
        load_member(str(folder))


# --- 4. pickle weights --------------------------------------------------------------------------------


def test_pickle_only_checkpoint_needs_allow_pickle(checkpoints, members, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "tiny-llada-pickle"
    shutil.copytree(checkpoints["llada"].path, path, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    state = {}
    for shard in checkpoints["llada"].path.glob("*.safetensors"):
        state.update(load_file(str(shard)))
    torch.save(state, path / "pytorch_model.bin")
    with pytest.raises(UserError, match="--allow-pickle"):
        load_member(str(path))
    member = load_member(str(path), allow_pickle=True)
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
        load_member("some-org/not-cached-model")
    message = str(info.value)
    assert "some-org/not-cached-model" in message
    assert "download" in message  # says what to do
    assert "\n" not in message
    assert dialled == []  # offline means offline: no lookups, no retries


def test_cli_offline_uncached_hub_id_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "tie_lite.faces.cli", "generate", "hi", "--model", "some-org/not-cached-model"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "some-org/not-cached-model" in lines[0]
    assert proc.stdout == ""


# --- 6. bitsandbytes 8-bit and 4-bit on the CPU (closeness to the authors' logits: test_native_*.py) -----


@pytest.mark.parametrize("name", ["llada", "dream"])
@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_members_are_smaller_and_decode(checkpoints, members, name, quant):
    full = members[name]
    member = load_member(str(checkpoints[name].path), quant=quant)
    assert member.quant == quant and member.footprint_bytes < full.footprint_bytes
    traj = _decode(member, SHORT)
    assert traj.done and not (traj.ids == member.mask_id).any()
    assert traj.forwards == SHORT.gen_length and traj.prompt_ids == full.prompt_ids(HI)


# --- 7. from the command line: plan, quantize and ensemble LLaDA + Dream (different tokenizers: text relay) ---


@pytest.mark.parametrize("score,extra", [("verify", []), ("tcc", []), ("tcc", ["--quant", "8bit"]),
                                         ("verify", ["--quant", "4bit"])])
def test_cli_ensembles_llada_and_dream(checkpoints, capsys, score, extra):
    from tie_lite.faces.cli import main

    models = ["--model", str(checkpoints["llada"].path), "--model", str(checkpoints["dream"].path)]
    assert main(["plan", *models, "--score", score, *extra]) == 0
    assert "native" in capsys.readouterr().out
    # Dream on blocks too (its own recipe is one whole-canvas schedule: a single round, tests/test_recipes.py)
    argv = ["generate", "What is 2+3?", *models, "--free", "--gen-length", "16", "--block-size", "8",
            "--schedule", "blocks", "--interval", "8", "--score", score, *extra, "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["members"] == [checkpoints["llada"].path.name, checkpoints["dream"].path.name]
    assert len(out["rounds"]) >= 2 and set(out["rounds"][0]["scores"]) == set(out["members"])
    assert set(out["responses"]) == set(out["members"]) and out["final_member"] in out["members"]
    assert out["text"] == out["responses"][out["final_member"]]
    leader = out["rounds"][0]["leader"]
    # after the first relay both members continue from the leader's text (relayed as text: two vocabularies)
    assert all(isinstance(r, str) for r in out["responses"].values()) and leader in out["members"]
    assert not checkpoints["llada"].remote_code_marker.exists()


def test_a_single_turn_family_reads_the_last_question_alone(shipped):
    """The shipped members read the last user message alone (their training had one question per prompt);
    a chat-template family gets the whole conversation in its template."""
    from dataclasses import replace

    member = shipped["tiny-sp"]
    question = {"role": "user", "content": "What is 37+85?"}
    conversation = [{"role": "user", "content": "What is (23+41)*7?"}, {"role": "assistant", "content": "Answer: 448"},
                    question]
    assert member.family.single_turn
    assert member.prompt_ids(conversation) == member.prompt_ids([question])
    multi_turn = replace(member.family, single_turn=False)
    whole = member.tokenizer.decode(multi_turn.prompt_ids(member.tokenizer, conversation))
    assert "(23+41)*7" in whole and "37+85" in whole
