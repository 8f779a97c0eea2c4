"""`tie-lite plan`: the memory plan, printed before anything loads. (Filled in by the scheduler work.)"""


def add_plan_parser(sub) -> None:
    pass
