"""Memory-aware scheduling: the plan's decisions on synthetic sizes, the snake order and its swap counts, size
estimates from headers, and real runs under budgets that force swapping or offload (same text as unconstrained,
weights really released)."""

import gc
import json
import shutil

import pytest
import torch

from tie_lite.checks import parse_size
from tie_lite.engine.sampler import DecodeSettings
from tie_lite.engine.tie import TieSettings
from tie_lite.errors import UserError
from tie_lite.runtime.loading import load_member
from tie_lite.runtime.registry import resolve
from tie_lite.runtime.scheduler import Need, Scheduler, make_plan, simulate
from tie_lite.runtime.session import Ensemble, LoadSettings
from tie_lite.runtime.sizes import estimate_member
from tie_lite.runtime.weights import WeightStore

MiB = 2**20
PROMPT = [{"role": "user", "content": "What is (23+41)*7?"}]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These members are tiny: one thread computes them fastest, and does not spin on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- sizes and plans on synthetic members ---------------------------------------------------------------


def test_parse_size():
    assert parse_size("10GiB") == 10 * 2**30
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("600MB") == 600_000_000
    assert parse_size("512m") == 512 * MiB
    assert parse_size(" 2048 ") == 2048
    assert parse_size(None) is None
    for bad in ("10xB", "GiB", "-1GiB", "0", "1e3", "ten", ""):
        with pytest.raises(UserError, match="--max-memory"):
            parse_size(bad)


def needs(*weights, working=10, layer=5):
    return [Need(f"m{k}", w, working, layer) for k, w in enumerate(weights)]


def test_plan_boundaries_resident_swap_offload():
    two = needs(100, 60)
    assert make_plan(two, 170).strategy == "resident"  # 160 of weights + 10 working: fits exactly
    plan = make_plan(two, 169)
    assert plan.strategy == "swap" and plan.placement == ["swap", "swap"] and plan.swaps_per_round == 1
    assert make_plan(two, 110).strategy == "swap"  # the larger member just fits alone
    plan = make_plan(two, 109)  # it no longer does: offload for it, swap for the other
    assert plan.strategy == "offload" and plan.placement == ["offload", "swap"]
    assert any("accelerate" in w for w in plan.warnings)
    assert make_plan(two, 15).placement == ["offload", "offload"]  # the largest layer (5) + working (10)
    with pytest.raises(UserError, match="too small for 'm0' even with layer offload"):
        make_plan(two, 14)
    with pytest.raises(UserError, match="needs --quant none"):  # bitsandbytes layers cannot offload on the CPU
        make_plan(two, 109, device="cpu", quant="4bit")
    plan = make_plan(two, 109, device="cuda", quant="4bit")
    assert any("unquantized" in w for w in plan.warnings)
    eight = [Need("a", 100, 10, 5, reload=True), Need("b", 100, 10, 5, reload=True)]
    plan = make_plan(eight, 150, device="cuda", quant="8bit")
    assert plan.reloads_per_round == 1 and any("1815" in w for w in plan.warnings)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_snake_order_and_swap_counts(m):
    sizes = [100] * m
    tcc = simulate(sizes, 100, rounds=4)
    assert [r["swaps"] for r in tcc["per_round"]] == [m - 1] * 4  # M-1 a round, the first round included
    for a, b in zip(tcc["orders"], tcc["orders"][1:]):
        assert b == list(reversed(a))  # the member that ends a round begins the next
    cross = simulate(sizes, 100, cross_model=True, rounds=4)  # decode, then every member scores: 2(M-1)
    assert [r["swaps"] for r in cross["per_round"]] == [2 * (m - 1)] * 4
    for seq in cross["orders"]:
        assert seq[m] == seq[m - 1]  # scoring starts with the member that decoded last
    roomy = simulate(sizes, 200, rounds=4)  # room for two members: M-2 swaps a round
    assert [r["swaps"] for r in roomy["per_round"]] == [m - 2] * 4
    plan = make_plan(needs(*sizes, working=0), 100)
    assert plan.strategy == "swap" and plan.swaps_per_round == m - 1 and plan.bytes_per_round == (m - 1) * 100


def test_scheduler_select_maps_subset_to_loaded_members():
    class Fake:
        def __init__(self, name):
            self.name, self.footprint_bytes = name, 10

    sched = Scheduler([Fake("a"), Fake("b"), Fake("c")], strategy="swap", capacity=10, initial=[2])
    sched.select([0])  # a member alone, as eval runs it
    assert sched.order(0) == [0]
    sched.use(0)
    assert sched.resident == {0} and sched.swaps == 1
    sched.select(None)
    assert sched.order(0)[0] == 0  # start with whoever is resident
    sched.use(0)
    assert sched.swaps == 0


# --- estimates from headers ---------------------------------------------------------------------------


def test_estimates_match_measured_footprints(tmp_path):
    path = str(random_checkpoint(tmp_path / "r128", hidden=128, layers=2, seed=1))  # 4-bit needs blocks of 64
    for quant in ("none", "8bit", "4bit"):
        est = estimate_member(path, quant=quant)
        member = load_member(path, quant=quant)
        assert est.exact
        assert abs(est.weight_bytes - member.footprint_bytes) <= 0.05 * member.footprint_bytes, quant
    assert estimate_member(path, device="cuda").weight_bytes < estimate_member(path).weight_bytes  # bfloat16


def test_plan_command_json_and_bad_input(capsys):
    from tie_lite.faces.cli import main

    assert main(["plan", "--max-memory", "2MiB", "--score", "tcc", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["strategy"] in ("swap", "offload") and data["budget_bytes"] == 2 * MiB
    assert [m["name"] for m in data["members"]] == ["tiny-sp", "tiny-bpe"]
    assert all(m["exact"] and m["weight_bytes"] > 0 for m in data["members"])
    assert data["lengths"]["batch"] == 1
    # a final selection by verify forwards every response through every member: M canvases a forward
    assert main(["plan", "--score", "tcc", "--select", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lengths"]["batch"] == 2
    assert main(["plan"]) == 0
    assert "resident" in capsys.readouterr().out
    assert main(["plan", "--max-memory", "10xB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a size" in err
    assert main(["plan", "--max-memory", "100KiB"]) == 2
    assert "even with layer offload" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["plan", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
        assert main(["plan", "--device", "cuda", "--max-memory", "8GiB"]) == 0  # planning for a GPU elsewhere


# --- real runs ----------------------------------------------------------------------------------------


def random_checkpoint(path, *, hidden, layers, seed, inter=None):
    """A random tie-tiny checkpoint with the shipped tiny-sp tokenizer (outputs are noise, but exact)."""
    from tie_lite.models.tiny import TieTinyConfig, TieTinyForMaskedLM

    src = resolve("tiny-sp")[1]
    base = json.loads(open(f"{src}/config.json").read())
    torch.manual_seed(seed)
    cfg = TieTinyConfig(vocab_size=base["vocab_size"], hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=inter or 2 * hidden, max_position_embeddings=256,
                        mask_token_id=base["mask_token_id"], eos_token_id=base["eos_token_id"],
                        pad_token_id=base.get("pad_token_id"))
    TieTinyForMaskedLM(cfg).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{src}/{name}", path)
    return path


def perturbed_copy(path, seed):
    """tiny-sp with noise on its weights: a different member that shares its tokenizer."""
    from safetensors.torch import load_file, save_file

    src = resolve("tiny-sp")[1]
    shutil.copytree(src, path)
    gen = torch.Generator().manual_seed(seed)
    weights = load_file(f"{src}/model.safetensors")
    save_file({k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in weights.items()},
              f"{path}/model.safetensors", metadata={"format": "pt"})
    return str(path)


def swap_budget(models, decode, tie_score="tcc", quant="none"):
    """(the resident ensemble, a budget in which the largest member fits alone but not all of them together, and
    the positions one forward of this request computes: its canvas length, times M for cross-model scores)."""
    resident = Ensemble(LoadSettings(models=tuple(models), quant=quant))
    total_len = max(len(m.prompt_ids(PROMPT)) for m in resident.members) + decode.gen_length
    batch = len(models) if tie_score != "tcc" else 1
    est = [estimate_member(spec, quant=quant) for spec in models]
    working = max(e.working_bytes(total_len, batch) for e in est)
    sizes = [e.weight_bytes for e in est]
    return resident, working + max(sizes) + min(sizes) // 2, total_len * batch


@pytest.mark.parametrize("score", ["tcc", "top1"])
def test_shipped_pair_under_swap_budget_matches_resident(score):
    models, decode, tie = ["tiny-sp", "tiny-bpe"], DecodeSettings(), TieSettings(score=score)
    resident, budget, tokens = swap_budget(models, decode, score)
    free = resident.run(PROMPT, decode, tie)
    assert free.memory["strategy"] == "resident" and free.memory["swaps"] == 0
    swapped = Ensemble(LoadSettings(models=tuple(models), max_memory=str(budget)), plan_tokens=tokens)
    assert swapped.scheduler.resident == {1}  # the initial loads: each member loaded once, the last stays
    events = []
    out = swapped.run(PROMPT, decode, tie, on_event=events.append)
    assert out.text == free.text and out.responses == free.responses and out.rounds == free.rounds
    mem, m, rounds = out.memory, 2, len(out.rounds)
    assert mem["strategy"] == "swap" and mem["resident_peak_bytes"] <= mem["capacity_bytes"] < sum(swapped.scheduler.sizes)
    kinds = [type(e).__name__ for e in events]
    last_round = len(kinds) - 1 - kinds[::-1].index("RoundScores")
    in_rounds = sum(1 for e in events[:last_round] if type(e).__name__ == "Swap" and e.direction == "in")
    per_round = (m - 1) * (1 if score == "tcc" else 2)  # cross-model scoring visits every member again
    assert in_rounds == per_round * rounds
    tail = sum(1 for e in events[last_round:] if type(e).__name__ == "Swap" and e.direction == "in")
    assert tail <= m - 1  # a member with another tokenizer may finish after the last round
    assert mem["swaps"] == in_rounds + tail and mem["bytes_moved"] > 0 and mem["swap_seconds"] >= 0
    alone = swapped.run(PROMPT, decode, TieSettings(), members=[0])  # eval's single-member runs share it
    assert alone.memory["swaps"] <= 1


def test_three_members_sharing_a_tokenizer_swap_m_minus_1_per_round(tmp_path):
    models = ["tiny-sp", perturbed_copy(tmp_path / "a", 1), perturbed_copy(tmp_path / "b", 2)]
    decode, tie = DecodeSettings(gen_length=32), TieSettings()
    resident, budget, tokens = swap_budget(models, decode)
    free = resident.run(PROMPT, decode, tie)
    swapped = Ensemble(LoadSettings(models=tuple(models), max_memory=str(budget)), plan_tokens=tokens)
    out = swapped.run(PROMPT, decode, tie)
    assert out.text == free.text and out.responses == free.responses
    assert len(out.rounds) >= 2 and out.memory["swaps"] == 2 * len(out.rounds)  # shared tokenizer: no tail


def test_8bit_members_swap_by_reloading():
    models, decode, tie = ["tiny-sp", "tiny-bpe"], DecodeSettings(gen_length=32), TieSettings()
    resident, budget, tokens = swap_budget(models, decode, quant="8bit")
    free = resident.run(PROMPT, decode, tie)
    out = Ensemble(LoadSettings(models=tuple(models), quant="8bit", max_memory=str(budget)), plan_tokens=tokens).run(PROMPT, decode, tie)
    assert out.text == free.text
    assert out.memory["strategy"] == "swap" and out.memory["swaps"] >= len(out.rounds)
    assert out.memory["reloads"] == out.memory["swaps"]


def test_4bit_weights_move_packed_and_come_back_exactly(tmp_path):
    path = random_checkpoint(tmp_path / "r128", hidden=128, layers=2, seed=3)
    member = load_member(str(path), quant="4bit")
    ids = torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(0))
    ref = member.logits(ids)  # on the CPU bitsandbytes repacks 4-bit weights at the first forward
    store = WeightStore(member, tmp_path / "spill")
    packed = member.model.layers[0].q_proj.weight
    for _ in range(2):
        store.release()
        assert packed.numel() == 0  # really released, same Parameter object
        assert store.restore() > 0
        assert packed.dtype == torch.uint8 and packed.numel() > 0  # packed, never dequantized
        assert torch.equal(member.logits(ids), ref)


def test_budget_is_honoured_by_measured_resident_memory(tmp_path):
    models = tuple(str(random_checkpoint(tmp_path / f"big{k}", hidden=512, layers=3, seed=k)) for k in range(3))
    size = estimate_member(models[0]).weight_bytes  # ~26 MB each
    decode, tie = DecodeSettings(gen_length=16), TieSettings()

    def measured(ensemble):
        ensemble.run(PROMPT, decode, tie)  # warm-up: the first forward faults in library code pages
        return ensemble.run(PROMPT, decode, tie)

    resident = Ensemble(LoadSettings(models=models))
    free = measured(resident)
    del resident
    gc.collect()
    swapped = Ensemble(LoadSettings(models=models, max_memory=str(size + 8 * MiB)))
    out = measured(swapped)
    assert out.text == free.text
    assert out.memory["swaps"] == 2 * len(out.rounds)
    # The resident run holds three members' weights at its peak, the swapping run one.
    assert free.memory["peak_bytes"] - out.memory["peak_bytes"] > 1.5 * size
    assert out.memory["peak_bytes"] - out.memory["baseline_bytes"] < size + 8 * MiB + 32 * MiB  # + the runtime


def test_member_larger_than_budget_runs_with_layer_offload(tmp_path):
    path = str(random_checkpoint(tmp_path / "big", hidden=512, layers=3, seed=5))
    est = estimate_member(path)
    decode, tie = DecodeSettings(gen_length=16), TieSettings()
    free = Ensemble(LoadSettings(models=(path,))).run(PROMPT, decode, tie)
    budget = est.layer_bytes * 2 + 4 * MiB  # room for a layer or two, not the member
    assert budget < est.weight_bytes
    offloaded = Ensemble(LoadSettings(models=(path,), max_memory=str(budget)))
    assert offloaded.plan.placement == ["offload"]
    assert any(t.is_meta for t in offloaded.members[0].model.parameters())  # layers stay on disk
    out = offloaded.run(PROMPT, decode, tie)
    assert out.text == free.text and out.memory["strategy"] == "offload"


def test_bad_budgets_are_one_line_user_errors():
    with pytest.raises(UserError, match="not a size"):
        Ensemble(LoadSettings(max_memory="lots"))
    with pytest.raises(UserError, match="even with layer offload"):
        Ensemble(LoadSettings(max_memory="64KiB"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            Ensemble(LoadSettings(device="cuda", max_memory="8GiB"))
    big = Ensemble(LoadSettings(models=("tiny-sp",), max_memory="3MiB"))
    with pytest.raises(UserError, match="--gen-length 1024 needs about"):  # this request's logits do not fit
        big.run(PROMPT, DecodeSettings(gen_length=1024), TieSettings())


def test_out_of_memory_mid_run_replans_or_says_what_to_change(monkeypatch):
    ensemble = Ensemble(LoadSettings(max_memory="1GiB"))
    reference = ensemble.run(PROMPT, DecodeSettings(), TieSettings())
    member = ensemble.members[0]
    original = member.forward
    state = {"raised": 0}

    def flaky(request, once=True):
        if state["raised"] < (1 if once else 10**9):
            state["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(request)

    monkeypatch.setattr(member, "forward", flaky)
    out = ensemble.run(PROMPT, DecodeSettings(), TieSettings())
    assert out.text == reference.text and state["raised"] == 1
    assert ensemble.scheduler.strategy == "swap"  # re-planned under a smaller budget, then ran again
    monkeypatch.setattr(member, "forward", lambda request: flaky(request, once=False))
    with pytest.raises(UserError, match="out of memory on cpu: this run needs about") as err:
        ensemble.run(PROMPT, DecodeSettings(), TieSettings())
    assert "\n" not in str(err.value)


def test_llada_and_dream_swap_and_offload_match_resident(tmp_path):
    """LLaDA and Dream (real configs, native classes) in one process, swapped; and LLaDA under layer offload,
    compared with its resident output rather than just 'it ran' (LLaDA issue 96: only '!' under a multi-device
    map)."""
    from real_checkpoints import build_dream, build_llada

    llada, dream = str(build_llada(tmp_path).path), str(build_dream(tmp_path).path)
    prompt = [{"role": "user", "content": "what is 2+3?"}]
    decode, tie = DecodeSettings(gen_length=16), TieSettings()
    settings = dict(models=(llada, dream))
    free = Ensemble(LoadSettings(**settings))
    for spec, member in zip((llada, dream), free.members):  # header estimates, with the families' tensor names
        assert abs(estimate_member(spec).weight_bytes - member.footprint_bytes) <= 0.05 * member.footprint_bytes
    pair = free.run(prompt, decode, tie)
    alone = free.run(prompt, decode, tie, members=[0])
    del free
    tokens = 64
    est = [estimate_member(m) for m in (llada, dream)]
    working = max(e.working_bytes(tokens) for e in est)
    budget = working + est[0].weight_bytes + est[1].weight_bytes // 2
    swapped = Ensemble(LoadSettings(**settings, max_memory=str(budget)), plan_tokens=tokens)
    out = swapped.run(prompt, decode, tie)
    assert out.text == pair.text and out.responses == pair.responses
    assert out.memory["strategy"] == "swap" and out.memory["swaps"] >= len(out.rounds)
    del swapped
    budget = est[0].working_bytes(tokens) + est[0].layer_bytes + 4 * MiB  # less than LLaDA's weights
    assert budget - est[0].working_bytes(tokens) < est[0].weight_bytes
    offloaded = Ensemble(LoadSettings(models=(llada,), max_memory=str(budget)), plan_tokens=tokens)
    assert offloaded.plan.placement == ["offload"]
    out = offloaded.run(prompt, decode, tie)
    assert out.text == alone.text and set(out.text) != {"!"}


def test_batch_limit_keeps_batched_forwards_in_the_budget():
    models = ("tiny-sp", "tiny-bpe")
    decode, tie = DecodeSettings(), TieSettings()
    assert Ensemble(LoadSettings(models=models)).batch_limit(PROMPT, decode, tie) == 64  # no budget
    est = [estimate_member(m) for m in models]
    tokens = 60 + decode.gen_length
    budget = max(e.weight_bytes for e in est) + 4 * max(e.working_bytes(tokens) for e in est)
    ensemble = Ensemble(LoadSettings(models=models, max_memory=str(budget)))
    ensemble.scheduler.select(None)
    b = ensemble.batch_limit(PROMPT, decode, tie)
    assert 1 <= b < 64
    assert max(ensemble.scheduler.sizes) + ensemble._working(PROMPT, decode, tie, times=b) <= budget
