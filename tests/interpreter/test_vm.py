"""The code interpreter through the whole platform on real VMs: the `code-interpreter` image (built once per
session), a control plane over a host agent, and three clients, none of them modified: E2B's
`e2b-code-interpreter`, the seed's `wrenn.code_runner` (its PyPI release, in a virtualenv of its own) and
our `wrenn.code_interpreter`. The module's first capsule boots the image and becomes its ready snapshot;
the others restore it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox

from wrenn.code_interpreter import AsyncCapsule, Capsule
from wrenn.images import Image

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root"),
    # The first test pays for the session's code-interpreter image build (about 5 min from nothing) and the
    # platform's first cold boot that waits for the kernel (1-5 min under emulation): its setup, timed with it.
    pytest.mark.timeout(2400),
]


@pytest.fixture(scope="module")
def platform(image: Image, interpreter_image: Image) -> Iterator[tuple[str, str]]:
    """A control plane and host agent (which wants `minimal` too) whose code-interpreter ready snapshot
    exists before the tests start: one first capsule makes it, its cold boot waiting for the interpreter."""
    from tests.agent._agent import running_agent
    from tests.conftest import _control_plane

    with (
        running_agent(f"ci{os.getpid() % 1000:03d}k") as agent,
        contextlib.closing(_control_plane(agent.url, agent.token_file)) as control_plane,
    ):
        base_url, api_key = next(control_plane)
        started = time.monotonic()
        # The first capsule cold-boots the image and waits for its kernel before the ready snapshot:
        # minutes under emulation on a busy machine, past the SDK's create timeout, so it is made here.
        headers = {"X-API-Key": api_key}
        made = httpx.post(
            f"{base_url}/v1/capsules", json={"template": "code-interpreter"}, headers=headers, timeout=1500
        )
        assert made.status_code == 201, made.text
        with Capsule.connect(made.json()["id"], api_key=api_key, base_url=base_url) as first:
            assert first.run_code("1 + 1", timeout=120).text == "2"
        took = time.monotonic() - started
        print(f"\nfirst code-interpreter capsule (cold boot, ready snapshot): {took:.1f} s")
        yield base_url, api_key


@pytest.fixture(scope="module")
def opts(platform: tuple[str, str]) -> dict[str, Any]:
    base_url, api_key = platform
    return {"api_key": api_key, "api_url": base_url, "sandbox_url": base_url, "request_timeout": 120}


@pytest.fixture(scope="module")
def sbx(opts: dict[str, Any]) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(envs={"FROM_CREATE": "yes, from Sandbox.create"}, **opts)
    yield sandbox
    sandbox.kill()


def test_e2b_run_code_stdout_result_and_error(sbx: Sandbox) -> None:
    execution = sbx.run_code("x = 20\nprint('hello')\nx + 22")
    assert execution.logs.stdout == ["hello\n"] and execution.text == "42" and execution.error is None
    failed = sbx.run_code("undefined_name")
    assert failed.error is not None and failed.error.name == "NameError"
    assert "undefined_name" in failed.error.traceback
    assert sbx.run_code("x").text == "20"  # the kernel lives on


def test_e2b_dataframe_and_chart(sbx: Sandbox) -> None:
    frame = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2, 3], 'b': [4, 5, 6]})")
    (result,) = frame.results
    assert "<table" in result.html and result.text.split()[:2] == ["a", "b"]
    chart = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.bar(['x', 'y', 'z'], [3, 1, 2]); plt.title('Counts'); plt.xlabel('key'); plt.ylabel('n')\nplt.show()"
    )
    (result,) = chart.results
    assert result.png and result.chart is not None
    assert result.chart.type.value == "bar" and result.chart.title == "Counts"
    assert [(e.label, e.value) for e in result.chart.elements] == [("x", 3.0), ("y", 1.0), ("z", 2.0)]


def test_e2b_env_vars_from_create_and_per_call(sbx: Sandbox) -> None:
    assert sbx.run_code("import os\nos.environ['FROM_CREATE']").text == "yes, from Sandbox.create"
    assert sbx.run_code("os.environ.get('ONCE')", envs={"ONCE": "1"}).text == "1"
    assert sbx.run_code("'ONCE' in os.environ").text == "False"


def test_e2b_streaming_callbacks(sbx: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)"
    sbx.run_code(code, on_stdout=lambda m: seen.append((time.monotonic(), m.line)))
    assert [line for _, line in seen] == ["0\n", "1\n", "2\n"]
    assert seen[-1][0] - seen[0][0] > 1.5  # they came as they were printed, not at the end


def test_e2b_contexts(sbx: Sandbox) -> None:
    context = sbx.create_code_context(cwd="/tmp")
    assert sbx.run_code("import os\nos.getcwd()", context=context).text == "/tmp"
    sbx.run_code("mine = 1", context=context)
    assert sbx.run_code("'mine' in globals()").text == "False"
    assert context.id in [c.id for c in sbx.list_code_contexts()]
    sbx.restart_code_context(context)
    assert sbx.run_code("'mine' in globals()", context=context).text == "False"
    sbx.remove_code_context(context)
    assert context.id not in [c.id for c in sbx.list_code_contexts()]
    bash = sbx.run_code("echo $((6 * 7))", language="bash")
    assert bash.logs.stdout == ["42\n"]


def test_e2b_javascript_and_typescript_in_deno(sbx: Sandbox) -> None:
    # The image's own memory, asked for by no one: a Deno kernel beside the warm Python one needs it.
    assert sbx.get_info().memory_mb == 1024
    js = sbx.run_code("console.log(1+1); 40+2", language="js")
    assert js.logs.stdout == ["2\n"] and js.text == "42" and js.error is None
    env = sbx.run_code(
        "Deno.env.get('FROM_CREATE') + ' ' + Deno.env.get('ONCE')", language="js", envs={"ONCE": "1"}
    )
    assert env.text == "yes, from Sandbox.create 1"
    ts = sbx.run_code(
        "const n: number = 6;\nfunction twice(x: number): number { return 2 * x }\ntwice(n) * 3.5",
        language="ts",
    )
    assert ts.text == "42" and ts.error is None
    failed = sbx.run_code("throw new RangeError('too far')", language="typescript")
    assert failed.error is not None and failed.error.name == "RangeError" and failed.error.value == "too far"
    languages = [c.language for c in sbx.list_code_contexts()]  # one Deno kernel runs both: memory
    assert "javascript" in languages and "typescript" not in languages


def test_e2b_timeout_interrupts_and_the_kernel_stays(sbx: Sandbox) -> None:
    sbx.run_code("kept = 'yes'")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time\ntime.sleep(120)", timeout=3)
    assert time.monotonic() - started < 30
    after = sbx.run_code("kept", timeout=60)  # the interrupted cell does not hold the kernel
    assert after.text == "yes"


def test_capsules_restored_from_one_snapshot_draw_different_random_numbers(opts: dict[str, Any]) -> None:
    draws = []
    for _ in range(2):
        sandbox = Sandbox.create(**opts)
        try:
            started = time.monotonic()
            execution = sandbox.run_code(
                "import random, numpy\n(random.random(), float(numpy.random.rand()))"
            )
            took = time.monotonic() - started
            js = sandbox.run_code("Math.random()", language="js")  # its kernel starts after the restore
            draws.append((execution.text, took, js.text, time.monotonic() - started - took))
        finally:
            sandbox.kill()
    assert draws[0][0] != draws[1][0] and draws[0][2] != draws[1][2]
    print(f"\nfirst run_code after Sandbox.create: {', '.join(f'{d[1]:.2f} s' for d in draws)}")
    print(f"first JavaScript run_code (starts Deno's kernel): {', '.join(f'{d[3]:.2f} s' for d in draws)}")


def test_our_sdk_sync_and_async(platform: tuple[str, str]) -> None:
    base_url, api_key = platform
    with Capsule(api_key=api_key, base_url=base_url) as capsule:
        chunks: list[str] = []
        execution = capsule.run_code(
            "print('a')\nimport numpy\nint(numpy.arange(3).sum())", on_stdout=chunks.append
        )
        assert chunks == ["a\n"] and execution.text == "3" and execution.execution_count
        chart = capsule.run_code("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]); plt.show()")
        assert chart.results[0].chart["type"] == "line" and "png" in chart.results[0].formats()
        slow = capsule.run_code("import time\ntime.sleep(60)", timeout=2)
        assert slow.error is not None and slow.error.name == "TimeoutError"
        context = capsule.create_code_context(language="bash")
        assert capsule.run_code("echo hi", context=context).logs.stdout == ["hi\n"]
        capsule.remove_code_context(context)

    async def run() -> None:
        capsule = await AsyncCapsule.create(api_key=api_key, base_url=base_url)
        async with capsule:
            assert (await capsule.run_code("6 * 7")).text == "42"
            assert [c.language for c in await capsule.list_code_contexts()] == ["python"]

    asyncio.run(run())


SEED_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    # The seed SDK reaches a port as {port}-{id}.{host}; on a test host that name must resolve to it.
    real = socket.getaddrinfo
    socket.getaddrinfo = lambda host, *a, **k: real(
        "127.0.0.1" if isinstance(host, str) and host.endswith(".127.0.0.1") else host, *a, **k
    )
    from wrenn.code_runner import Capsule
    with Capsule(api_key=sys.argv[2], base_url=sys.argv[1]) as capsule:  # a create returns once it runs
        first = capsule.run_code("x = 21\\nprint(x * 2)", timeout=120, jupyter_timeout=120)
        value = capsule.run_code("x")
        failed = capsule.run_code("1 / 0")
    print(json.dumps({"stdout": first.logs.stdout, "text": value.text, "error": failed.error.name}))
    """
)


def test_the_seed_sdks_code_runner(platform: tuple[str, str], seed_sdk_python: Path) -> None:
    base_url, api_key = platform
    done = subprocess.run(
        [str(seed_sdk_python), "-c", SEED_SCRIPT, base_url, api_key],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"stdout": ["42\n"], "text": "21", "error": "ZeroDivisionError"}


def test_the_seed_runs_outside_our_package(seed_sdk_python: Path) -> None:
    """The seed's wrenn is not ours: the subprocess above really exercised the PyPI release."""
    where = subprocess.run(
        [str(seed_sdk_python), "-c", "import wrenn, sys; print(wrenn.__file__)"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""},
    ).stdout  # fmt: skip
    assert str(Path(sys.prefix)) not in where and "site-packages" in where
