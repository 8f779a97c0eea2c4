"""lm-evaluation-harness's `local-completions` and `local-chat-completions`, at their defaults, against
`tie-lite serve` on a tiny custom task: what they record is what `tie-lite generate` answers."""

from __future__ import annotations

import json
import os

import pytest

# the task's data is a local file and nothing is fetched: keep datasets and the hub from asking the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    from test_serve import generate_text, start_server
    from test_ui import tiny_models  # noqa: F401  (a fixture)
except ImportError:
    from .test_serve import generate_text, start_server
    from .test_ui import tiny_models  # noqa: F401

lm_eval = pytest.importorskip("lm_eval")

PROMPTS = ["What is (23+41)*7?", "What is 37+85?"]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, tiny_models):
    """A generate_until task whose targets are the CLI's answers to its prompts (exact match 1.0 = identical)."""
    folder = tmp_path_factory.mktemp("lm_eval_task")
    rows = [{"question": p, "answer": generate_text(prompt=p)} for p in PROMPTS]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tie_arith.yaml").write_text(
        "task: tie_arith\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'data.jsonl'}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


@pytest.fixture(scope="module")
def open_server(tiny_models):
    app, url, stop = start_server(api_key=None)  # lm-eval's tokenizer calls send no key by default
    yield url
    stop()


@pytest.mark.parametrize("model,endpoint,chat", [("local-completions", "/v1/completions", False),
                                                 ("local-chat-completions", "/v1/chat/completions", True)])
def test_lm_eval_runs_at_its_defaults_and_records_the_cli_answers(open_server, task_dir, model, endpoint, chat):
    import lm_eval.models  # noqa: F401  lm-eval's own models, whatever registered itself first in this process
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args={"base_url": open_server + endpoint, "model": "tie:tiny-sp+tiny-bpe"},
                          tasks=["tie_arith"], task_manager=TaskManager(include_path=str(task_dir)),
                          apply_chat_template=chat, log_samples=True)
    responses = [s["filtered_resps"][0] for s in out["samples"]["tie_arith"]]
    assert responses == [generate_text(prompt=p) for p in PROMPTS]
    assert out["results"]["tie_arith"]["exact_match,none"] == 1.0
