"""The execution server against real Jupyter kernels: E2B's /execute stream, contexts, languages, env
vars, timeouts, interrupts and reseeding after a restore."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx
import pytest

from tests.interpreter._server import SANDBOX_ENV, Interpreter


def kinds(lines: list[dict]) -> list[str]:
    return [line["type"] for line in lines if line["type"] != "keepalive"]


def only(lines: list[dict], kind: str) -> list[dict]:
    return [line for line in lines if line["type"] == kind]


def stdout_json(lines: list[dict]) -> Any:
    return json.loads("".join(line["text"] for line in only(lines, "stdout")))


def test_health_is_ok_once_ready(interpreter: Interpreter) -> None:
    r = httpx.get(f"{interpreter.url}/health")
    assert r.status_code == 200 and r.json() == "OK"


def test_stdout_then_the_main_result(interpreter: Interpreter) -> None:
    lines = interpreter.execute('print("hello")\n40 + 2')
    assert kinds(lines) == ["number_of_executions", "stdout", "result", "end_of_execution"]
    assert lines[1]["text"] == "hello\n" and lines[1]["timestamp"]
    result = only(lines, "result")[0]
    assert result["text"] == "42" and result["is_main_result"] is True


def test_a_string_result_loses_its_quotes_as_on_e2b(interpreter: Interpreter) -> None:
    (result,) = only(interpreter.execute("'abc'"), "result")
    assert result["text"] == "abc"


def test_an_error_has_name_value_and_traceback_and_the_kernel_goes_on(interpreter: Interpreter) -> None:
    lines = interpreter.execute("x_before = 7\n1 / 0")
    (error,) = only(lines, "error")
    assert error["name"] == "ZeroDivisionError" and error["value"] == "division by zero"
    assert "1 / 0" in error["traceback"] and "\x1b[" not in error["traceback"]  # no colours
    assert only(interpreter.execute("x_before"), "result")[0]["text"] == "7"


def test_stderr_and_display_data_are_not_the_main_result(interpreter: Interpreter) -> None:
    lines = interpreter.execute(
        "import sys\nfrom IPython.display import display, HTML, Markdown\n"
        "print('oops', file=sys.stderr)\ndisplay(HTML('<b>x</b>'))\ndisplay(Markdown('# t'))"
    )
    assert only(lines, "stderr")[0]["text"] == "oops\n"
    results = only(lines, "result")
    assert [r["is_main_result"] for r in results] == [False, False]
    assert results[0]["html"] == "<b>x</b>" and results[1]["markdown"] == "# t"


def test_execution_count_grows(interpreter: Interpreter) -> None:
    first = only(interpreter.execute("1"), "number_of_executions")[0]["execution_count"]
    second = only(interpreter.execute("2"), "number_of_executions")[0]["execution_count"]
    assert second == first + 1


def test_a_dataframe_comes_as_text_html_and_data(interpreter: Interpreter) -> None:
    (result,) = only(
        interpreter.execute("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})"), "result"
    )
    assert "<table" in result["html"] and "a" in result["text"]
    assert result["data"] == {"a": [1, 2], "b": ["x", "y"]}


def test_json_results_and_other_mime_types(interpreter: Interpreter) -> None:
    (result,) = only(
        interpreter.execute(
            "from IPython.display import JSON, display\n"
            "display({'application/json': {'k': [1, 2]}, 'text/csv': 'a,b', 'text/plain': 'j'}, raw=True)"
        ),
        "result",
    )
    assert (
        result["json"] == {"k": [1, 2]} and result["extra"] == {"text/csv": "a,b"} and result["text"] == "j"
    )


CHARTS = {
    "line": "plt.plot([1, 2, 3], [1, 4, 9], label='sq'); plt.title('Squares'); plt.xlabel('x'); plt.ylabel('y')",
    "scatter": "plt.scatter([1, 2, 3], [3, 1, 2], label='pts'); plt.title('Points')",
    "bar": "plt.bar(['a', 'b', 'c'], [3, 5, 2], label='n'); plt.title('Bars')",
    "pie": "plt.pie([30, 70], labels=['x', 'y']); plt.title('Share')",
    "box_and_whisker": "plt.boxplot([[1, 2, 3, 4, 5, 20], [2, 3, 4]], tick_labels=['p', 'q'], patch_artist=True); plt.title('Boxes')",
}


@pytest.mark.parametrize("kind", sorted(CHARTS))
def test_a_matplotlib_figure_is_a_structured_chart_and_a_png(interpreter: Interpreter, kind: str) -> None:
    lines = interpreter.execute(f"import matplotlib.pyplot as plt\nplt.figure()\n{CHARTS[kind]}\nplt.show()")
    (result,) = only(lines, "result")
    assert result["png"].startswith("iVBOR")  # base64 of the PNG signature
    chart = result["chart"]
    assert chart["type"] == kind and chart["title"] and chart["elements"]
    if kind == "line":
        assert chart["elements"][0]["points"] == [[1.0, 1.0], [2.0, 4.0], [3.0, 9.0]]
        assert chart["x_label"] == "x" and chart["y_label"] == "y"
    if kind == "bar":
        assert [(e["label"], e["value"]) for e in chart["elements"]] == [("a", 3.0), ("b", 5.0), ("c", 2.0)]
    if kind == "pie":
        assert [e["label"] for e in chart["elements"]] == ["x", "y"]
    if kind == "box_and_whisker":
        assert chart["elements"][0]["label"] == "p" and chart["elements"][0]["outliers"] == [20.0]


def test_the_sandbox_env_vars_are_in_the_kernel(interpreter: Interpreter) -> None:
    (result,) = only(interpreter.execute("import os\nos.environ['WRENN_SANDBOX_VAR']"), "result")
    assert result["text"] == SANDBOX_ENV["WRENN_SANDBOX_VAR"]


def test_request_envs_apply_to_that_cell_only(interpreter: Interpreter) -> None:
    code = "import os\n(os.environ.get('SHARED'), os.environ.get('ONLY_NOW'))"
    weird = 'it\'s "quoted"\n$(touch /tmp/nope) `x` \\ end'
    (during,) = only(interpreter.execute(code, env_vars={"SHARED": "mine", "ONLY_NOW": weird}), "result")
    assert during["text"] == repr(("mine", weird))
    (after,) = only(interpreter.execute(code), "result")
    assert after["text"] == repr(("global", None))


def test_bash_runs_in_its_own_default_context(interpreter: Interpreter) -> None:
    lines = interpreter.execute('X=5; echo "x is $X and $WRENN_SANDBOX_VAR"', language="bash")
    assert "".join(line["text"] for line in only(lines, "stdout")) == "x is 5 and from envd\n"
    again = interpreter.execute("echo $X", language="bash")
    assert "".join(line["text"] for line in only(again, "stdout")) == "5\n"
    weird = "a'b\"c $(echo no)"
    lines = interpreter.execute('echo "$V"', language="bash", env_vars={"V": weird})
    assert "".join(line["text"] for line in only(lines, "stdout")) == weird + "\n"


def test_javascript_runs_in_deno_with_stdout_a_result_and_the_sandbox_env(interpreter: Interpreter) -> None:
    lines = interpreter.execute(
        "console.log(1 + 1); const sandboxVar = Deno.env.get('WRENN_SANDBOX_VAR'); 40 + 2", language="js"
    )
    # Deno's kernel publishes stdout and results out of order with its status: all of them still come.
    assert sorted(kinds(lines)[:-1]) == ["number_of_executions", "result", "stdout"]
    assert kinds(lines)[-1] == "end_of_execution" and only(lines, "stdout")[0]["text"] == "2\n"
    (result,) = only(lines, "result")
    assert result["text"] == "42" and result["is_main_result"] is True
    (env,) = only(interpreter.execute("sandboxVar", language="javascript"), "result")
    assert env["text"] == SANDBOX_ENV["WRENN_SANDBOX_VAR"]  # state kept; a string loses its quotes
    weird = 'it\'s "quoted"\n${x} `y` \\ end'
    code = (
        "console.log(JSON.stringify([Deno.env.get('SHARED'), Deno.env.get('ONLY_NOW') ?? null, Deno.cwd()]))"
    )
    during = stdout_json(
        interpreter.execute(code, language="js", env_vars={"SHARED": "m", "ONLY_NOW": weird})
    )
    assert during == ["m", weird, str(interpreter.root / "home")]
    assert stdout_json(interpreter.execute(code, language="js"))[:2] == ["global", None]


def test_typescript_shares_deno_default_context_and_errors_are_named(interpreter: Interpreter) -> None:
    (result,) = only(
        interpreter.execute("interface P { x: number }\nconst p: P = { x: 20 };\np.x * 2 + 2", language="ts"),
        "result",
    )
    assert result["text"] == "42"
    # One Deno kernel for both languages' default contexts (memory): JavaScript's variables are there.
    (shared,) = only(interpreter.execute("typeof sandboxVar", language="typescript"), "result")
    assert shared["text"] == "string"
    languages = [c["language"] for c in httpx.get(f"{interpreter.url}/contexts").json()]
    assert "typescript" not in languages and "javascript" in languages
    (error,) = only(interpreter.execute("throw new TypeError('boom')", language="ts"), "error")
    assert error["name"] == "TypeError" and error["value"] == "boom"
    (error,) = only(interpreter.execute("notDefinedAnywhere + 1", language="ts"), "error")
    assert error["name"] == "ReferenceError" and "notDefinedAnywhere" in error["value"]
    assert only(interpreter.execute("p.x", language="ts"), "result")[0]["text"] == "20"


def test_unknown_languages_and_bad_requests_are_refused_clearly(interpreter: Interpreter) -> None:
    r = httpx.post(f"{interpreter.url}/execute", json={"code": "1", "language": "cobol"})
    assert r.status_code == 400 and "cobol" in r.text and "python" in r.text
    r = httpx.post(f"{interpreter.url}/execute", json={"code": "1", "language": "python", "context_id": "x"})
    assert r.status_code == 400 and "Only one of context_id or language" in r.text
    r = httpx.post(f"{interpreter.url}/execute", json={"code": "1", "context_id": "nope"})
    assert r.status_code == 404
    r = httpx.post(f"{interpreter.url}/execute", json={"code": "1", "env_vars": {"A=B": "x"}})
    assert r.status_code == 400 and "env var name" in r.text
    r = httpx.post(f"{interpreter.url}/execute", json={"code": 5})
    assert r.status_code == 400


def test_contexts_are_separate_kernels_with_their_own_directory(interpreter: Interpreter) -> None:
    cwd = interpreter.root / "home"
    r = httpx.post(f"{interpreter.url}/contexts", json={"language": "python", "cwd": "/tmp"}, timeout=60)
    assert r.status_code == 200, r.text
    context = r.json()
    assert context["language"] == "python" and context["cwd"] == "/tmp" and context["id"]
    listed = httpx.get(f"{interpreter.url}/contexts").json()
    assert context in listed and any(c["language"] == "python" and c["cwd"] == str(cwd) for c in listed)
    (where,) = only(interpreter.execute("import os\nos.getcwd()", context_id=context["id"]), "result")
    assert where["text"] == "/tmp"
    interpreter.execute("only_here = 1", context_id=context["id"])
    assert only(interpreter.execute("'only_here' in globals()"), "result")[0]["text"] == "False"
    assert only(interpreter.execute("only_here", context_id=context["id"]), "result")[0]["text"] == "1"

    r = httpx.post(f"{interpreter.url}/contexts/{context['id']}/restart", timeout=60)
    assert r.status_code == 204
    (error,) = only(interpreter.execute("only_here", context_id=context["id"]), "error")
    assert error["name"] == "NameError"
    (where,) = only(interpreter.execute("import os\nos.getcwd()", context_id=context["id"]), "result")
    assert where["text"] == "/tmp"  # a restarted context keeps its directory

    assert httpx.delete(f"{interpreter.url}/contexts/{context['id']}").status_code == 204
    assert context not in httpx.get(f"{interpreter.url}/contexts").json()
    r = httpx.post(f"{interpreter.url}/execute", json={"code": "1", "context_id": context["id"]})
    assert r.status_code == 404
    assert httpx.delete(f"{interpreter.url}/contexts/{context['id']}").status_code == 404


def test_a_cell_past_its_timeout_is_interrupted_and_the_kernel_stays(interpreter: Interpreter) -> None:
    interpreter.execute("kept = 'still here'")
    started = time.monotonic()
    lines = interpreter.execute("import time\nprint('start', flush=True)\ntime.sleep(30)", timeout=1.5)
    assert time.monotonic() - started < 15
    assert only(lines, "stdout")[0]["text"] == "start\n"
    (error,) = only(lines, "error")
    assert error["name"] == "TimeoutError"
    assert kinds(lines)[-1] == "end_of_execution"
    assert only(interpreter.execute("kept"), "result")[0]["text"] == "still here"


def test_a_long_cell_sends_keepalives(interpreter: Interpreter) -> None:
    lines = interpreter.execute("import time\ntime.sleep(2.5)\n'done'")
    assert len(only(lines, "keepalive")) >= 2
    assert only(lines, "result")[0]["text"] == "done"


def test_a_client_that_goes_away_interrupts_its_cell(interpreter: Interpreter) -> None:
    interpreter.execute("survivor = 3")
    with httpx.stream(
        "POST",
        f"{interpreter.url}/execute",
        json={"code": "import time\nprint('running', flush=True)\ntime.sleep(60)\nprint('not interrupted')"},
        timeout=30,
    ) as r:
        for line in r.iter_lines():
            if json.loads(line)["type"] == "stdout":
                break  # leave while the cell sleeps
    started = time.monotonic()
    lines = interpreter.execute("survivor * 2")
    assert time.monotonic() - started < 20  # not the 60 s of the abandoned cell
    assert only(lines, "result")[0]["text"] == "6"
    assert "not interrupted" not in json.dumps(lines)


def test_a_new_guest_identity_reseeds_the_kernels_generators(interpreter: Interpreter) -> None:
    """After a restore, envd's /init rewrites the identity file: the next cell must not continue the
    random streams the snapshot's siblings share."""
    seeded = "import random, numpy\nrandom.seed(1234); numpy.random.seed(1234)"
    draw = "(random.random(), float(numpy.random.rand()))"
    interpreter.execute(seeded)
    (same,) = only(interpreter.execute(draw), "result")
    random.seed(1234)
    assert same["text"].startswith(f"({random.random()!r},")  # nothing changed: the seeded stream goes on

    interpreter.execute(seeded)
    interpreter.identity.write_text("restored-guest-1\n")
    (fresh,) = only(interpreter.execute(draw), "result")
    assert fresh["text"] != same["text"]
    assert "kernel reseeded" in interpreter.logs["interpreter"].read_text()


def test_a_new_guest_identity_gives_javascript_a_fresh_math_random(interpreter: Interpreter) -> None:
    """V8 cannot reseed Math.random: after a restore a Deno context gets one seeded from the reseeded pool,
    so two capsules from one snapshot draw different numbers."""
    interpreter.execute("const original = Math.random", language="js")
    interpreter.identity.write_text("restored-guest-js\n")
    draws = "const d = Array.from({length: 2000}, () => Math.random());\n"
    stats = (
        "[Math.random === original, Math.min(...d) >= 0 && Math.max(...d) < 1,"
        " d.reduce((a, b) => a + b) / d.length]"
    )
    replaced, in_range, mean = stdout_json(
        interpreter.execute(f"{draws}console.log(JSON.stringify({stats}))", language="js")
    )
    assert replaced is False and in_range is True and 0.45 < mean < 0.55
    (again,) = only(interpreter.execute("Math.random()", language="js"), "result")
    assert 0 <= float(again["text"]) < 1


def test_env_vars_load_once_a_request_brings_envds_token(interpreter: Interpreter) -> None:
    """A cell without the envd token (the seed SDK sends none) cannot read the sandbox's env vars; the
    context asks envd again with the next request's token instead of keeping the refusal."""
    r = httpx.post(f"{interpreter.url}/contexts", json={}, timeout=60)
    context_id = r.json()["id"]
    code = "import os\n'WRENN_SANDBOX_VAR' in os.environ"
    with httpx.stream(
        "POST", f"{interpreter.url}/execute", json={"code": code, "context_id": context_id}
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert only(lines, "result")[0]["text"] == "False"
    assert only(interpreter.execute(code, context_id=context_id), "result")[0]["text"] == "True"
    httpx.delete(f"{interpreter.url}/contexts/{context_id}")
