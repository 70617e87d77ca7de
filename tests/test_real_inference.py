"""Real inference: llama.cpp's OpenAI-compatible server (llama-cpp-python) on 127.0.0.1,
serving the tiny generated model of tiny_model.py, and the guide's code analyzer deployed
as a zone against it, unchanged.

The server runs in its own session, started once for this module and killed (its whole
process group) at teardown, whatever the tests did.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autonomy import Agent, Model

from .conftest import REPO, bounded
from .test_example_zones import _launch_marked_by_zone
from .tiny_model import SENTENCE, write_tiny_model

SERVED = "tiny-bigram"
"""The name the server serves the model under; the analyzer's "nova-micro-v1" maps to it."""
LAUNCHER = Path(__file__).with_name("llama_server.py")
START_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's base URL (``http://127.0.0.1:PORT/v1``)."""
    folder = tmp_path_factory.mktemp("llama")
    model = write_tiny_model(folder / "tiny.gguf")
    errors = (folder / "stderr.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(LAUNCHER), str(model), SERVED],
        stdout=subprocess.PIPE,
        stderr=errors,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(START_DEADLINE_S):
                pytest.fail(f"llama server not ready in {START_DEADLINE_S} s")
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"llama server exited: {(folder / 'stderr.log').read_text()}")
        yield f"http://127.0.0.1:{json.loads(line)['port']}/v1"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        errors.close()


async def test_the_tiny_model_answers_its_sentence_on_llamas_server(llama: str) -> None:
    messages = [{"role": "user", "content": "Analyze pallets/flask"}]
    for stream in (False, True):
        model = Model(SERVED, base_url=llama, stream=stream)
        answer = await bounded(model.complete_chat(messages), 30)
        assert answer.content == SENTENCE
        assert answer.finish_reason == "stop"


async def test_an_agent_answers_with_the_tiny_models_sentence(node, llama: str) -> None:
    agent = await Agent.start(node, "Summarize.", model=Model(SERVED, base_url=llama))
    receiver = await agent.send_message("Analyze psf/requests")
    analysis = await receiver.receive_message(timeout=30_000)
    assert str(analysis[0].content) == SENTENCE
    assert await node.send_and_receive(agent.name, "again", timeout=30_000) == SENTENCE
    await Agent.stop(node, agent.name)


@pytest.mark.timeout(180)
async def test_the_guides_code_analyzer_runs_unchanged_as_a_zone(
    llama: str, tmp_path: Path
) -> None:
    """`autonomy zone deploy examples/analyzer --exit-with main`: a main node and 3 runners;
    each runner's shipped CodeAnalyzer starts an agent per repository on its own node."""
    name = f"analyzer-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    shutil.copytree(
        REPO / "examples" / "analyzer", folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    zone_file = folder / "autonomy.yaml"
    zone_file.write_text(re.sub(r"^name: .*$", f"name: {name}", zone_file.read_text(), flags=re.M))
    env = {
        **os.environ,
        "AUTONOMY_STATE_DIR": str(tmp_path / "state"),
        "OPENAI_BASE_URL": llama,
        "AUTONOMY_MODEL_ALIASES": f"nova-micro-v1={SERVED}",
    }
    env.pop("OPENAI_API_KEY", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autonomy", "zone", "deploy", str(folder), "--exit-with", "main",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await bounded(process.communicate(), 150)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    output = out.decode()
    assert process.returncode == 0, f"{output}\n{err.decode()}"
    printed = [
        line.partition(" | ")[2]
        for line in output.splitlines()
        if line.partition(" | ")[0].strip() == "main-pod-main"
    ]
    expected = [
        "Analyzed 3 repositories:",
        f"  - pallets/flask: {SENTENCE}...",
        f"  - psf/requests: {SENTENCE}...",
        f"  - pandas-dev/pandas: {SENTENCE}...",
    ]
    assert printed[-4:] == expected, output
    assert "Traceback" not in output, output
    assert f"zone {name} stopped" in err.decode()
    assert not _launch_marked_by_zone(name)
