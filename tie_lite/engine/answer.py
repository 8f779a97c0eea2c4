"""The paper's answer marker, in a module of its own without torch, so that tasks and command-line flags can name
it without loading the engine (`tie-lite --help` stays fast)."""

PAPER_ANSWER_MARKER = "Answer:"  # reasoning-as-infilling: prompt · reasoning · marker · answer
