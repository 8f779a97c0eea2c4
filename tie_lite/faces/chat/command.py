"""`tie-lite chat`: load the ensemble once, then serve the Gradio chat (127.0.0.1 unless --host)."""

from __future__ import annotations

import os
import sys

from tie_lite.errors import UserError
from tie_lite.faces.options import (
    add_decode_args,
    add_model_args,
    add_tie_args,
    decode_settings,
    load_settings,
    tie_settings,
    whole,
)


def add_chat_parser(sub) -> None:
    p = sub.add_parser(
        "chat", help="a local Gradio chat that shows the ensemble denoising",
        description="Serve the tie-lite chat in the browser. The members load once, before the server starts; "
                    "the decoding options below are the settings panel's starting values.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=whole, default=None, metavar="N", help="port (default: the first free from 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--login", metavar="USER:PASSWORD", default=None,
                   help="ask for this user name and password before the chat opens (default $TIE_LITE_CHAT_LOGIN; "
                        "needed whenever --host is not a loopback address)")
    p.add_argument("--open-to-network", action="store_true",
                   help="serve a non-loopback --host without a login: anyone who reaches it can use it")
    add_model_args(p)
    add_decode_args(p)
    add_tie_args(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> int:
    from . import (
        app,  # gradio loads only when the chat starts (seconds, and not for other commands)
    )
    from tie_lite.faces.client_settings import check_binding  # deferred: client settings load the engine (torch)
    from tie_lite.runtime.session import Ensemble  # deferred: loads torch, which `tie-lite --help` must not

    login = args.login or os.environ.get("TIE_LITE_CHAT_LOGIN") or None
    if login is not None and (":" not in login or not all(login.split(":", 1))):
        raise UserError("--login takes USER:PASSWORD, both non-empty")
    check_binding(args.host, login, args.open_to_network, what="--login USER:PASSWORD")
    if args.port is not None and not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number (1-65535)")
    decode, tie = decode_settings(args), tie_settings(args)
    load = load_settings(args)
    tie.validate(app.member_names(load.models))
    print(f"tie-lite chat: loading {', '.join(load.models)} …", file=sys.stderr, flush=True)
    ensemble = Ensemble(load)
    print(f"tie-lite chat: loaded in {ensemble.load_seconds:.1f} s", file=sys.stderr, flush=True)
    demo = app.build_app(ensemble, app.Defaults(load=load, decode=decode, tie=tie))
    try:
        app.serve(demo, host=args.host, port=args.port, share=args.share,
                  auth=tuple(login.split(":", 1)) if login else None)
    except OSError as exc:  # e.g. the port is taken
        raise UserError(f"cannot start the server on {args.host}:{args.port or 'auto'}: {exc}") from None
    return 0
