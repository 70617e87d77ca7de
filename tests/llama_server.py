"""llama.cpp's OpenAI-compatible server (llama-cpp-python) on 127.0.0.1, on a port of its own.

Usage: ``python tests/llama_server.py MODEL.gguf SERVED_NAME``

It loads the model, binds ``127.0.0.1:0``, prints ``{"port": N}`` on one line, then serves:
once that line is out, requests are accepted (the socket listens before uvicorn starts).
So a caller reads one line instead of guessing a free port or polling.
"""

from __future__ import annotations

import json
import socket
import sys


def main(model: str, served_name: str) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    app = create_app(
        server_settings=ServerSettings(host="127.0.0.1", port=0),
        model_settings=[
            ModelSettings(
                model=model, model_alias=served_name, n_ctx=4096, n_threads=1, verbose=False
            )
        ],
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/llama_server.py MODEL.gguf SERVED_NAME")
    main(sys.argv[1], sys.argv[2])
