"""`tie-lite chat`. (Filled in by the chat work.)"""


def add_chat_parser(sub) -> None:
    pass
