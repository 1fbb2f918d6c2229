"""Build steps: one log file for the whole build, commands run into it, and a progress display."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

log = logging.getLogger("wrenn.images")

#: The steps of a build, in order (each one is a task on the progress display).
STEPS: tuple[str, ...] = (
    "kernel",
    "initramfs",
    "debootstrap",
    "python deps",
    "envd",
    "recipe",
    "rootfs image",
)


class BuildError(RuntimeError):
    """A build step failed. The full log of the build stays at `log_path`."""

    def __init__(self, step: str, message: str, log_path: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.log_path = log_path

    def __str__(self) -> str:
        where = f" (full log: {self.log_path})" if self.log_path else ""
        return f"step {self.step!r} failed: {self.message}{where}"


class CommandError(RuntimeError):
    """A command exited non-zero; the message carries the end of its output."""


class Progress(Protocol):
    def start(self, step: str) -> None: ...
    def finish(self, step: str, note: str = "") -> None: ...
    def fail(self, step: str) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class NullProgress:
    def start(self, step: str) -> None:
        pass

    def finish(self, step: str, note: str = "") -> None:
        pass

    def fail(self, step: str) -> None:
        pass

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


class RichProgress:
    """One task per step: a pulsing bar while it runs, then done (or failed) and its duration."""

    def __init__(self, title: str, console: object | None = None) -> None:
        from rich.console import Console, RenderableType
        from rich.progress import BarColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as _Progress
        from rich.text import Text

        class StateColumn(SpinnerColumn):
            """A spinner while a step runs; · before it starts, ✓ when done, ✗ when it failed."""

            def render(self, task: Task) -> RenderableType:
                state = task.fields.get("state")
                if state == "pending":
                    return Text("·", style="dim")
                if state == "failed":
                    return Text("✗", style="red")
                return super().render(task)

        self._progress = _Progress(
            StateColumn(finished_text="[green]✓"),
            TextColumn("{task.description:<14}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console if isinstance(console, Console) else Console(stderr=True),
        )
        self._progress.console.print(title)
        self._tasks = {
            step: self._progress.add_task(step, total=1, start=False, note="", state="pending")
            for step in STEPS
        }

    def start(self, step: str) -> None:
        self._progress.start_task(self._tasks[step])
        self._progress.update(self._tasks[step], total=None, state="running")

    def finish(self, step: str, note: str = "") -> None:
        self._progress.update(self._tasks[step], total=1, completed=1, note=note, state="done")
        self._progress.stop_task(self._tasks[step])

    def fail(self, step: str) -> None:
        self._progress.update(self._tasks[step], total=1, completed=0, note="[red]failed", state="failed")
        self._progress.stop_task(self._tasks[step])

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(et, ev, tb)


class BuildLog:
    """The build's log file: a header per step, then every command and its whole output."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8", errors="replace")

    def close(self) -> None:
        self._file.close()

    def write(self, text: str) -> None:
        self._file.write(text if text.endswith("\n") else text + "\n")
        self._file.flush()

    def run(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> None:
        """Run `cmd`, its output appended to the log; CommandError (with the output's tail) if it fails."""
        self._spawn(cmd, cwd=cwd, env=env, stdout=self._file, check=check)

    def capture(self, cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None) -> str:
        """Run `cmd` and return its stdout (stderr goes to the log)."""
        return self._spawn(cmd, cwd=cwd, env=None, stdout=subprocess.PIPE, check=True)

    def _spawn(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdout: IO[str] | int,
        check: bool,
    ) -> str:
        args = [os.fspath(a) for a in cmd]
        self.write("$ " + " ".join(args))
        start = self._file.tell()
        full_env = {**os.environ, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=self._file,
            text=True,
            check=False,
        )
        self._file.flush()
        if proc.returncode != 0 and not check:
            self.write(f"(exit status {proc.returncode}, ignored)")
        elif proc.returncode != 0:
            raise CommandError(f"{args[0]} exited with {proc.returncode}: {self._tail(start)}")
        return proc.stdout if stdout == subprocess.PIPE else ""

    def _tail(self, start: int, lines: int = 5) -> str:
        with self.path.open(encoding="utf-8", errors="replace") as f:
            f.seek(start)
            text = [line.rstrip() for line in f.read().splitlines() if line.strip()]
        return " | ".join(text[-lines:]) or "no output"


class Steps:
    """Runs the named steps of one build, reporting to the log, the logger and the progress display."""

    def __init__(self, build_log: BuildLog, progress: Progress) -> None:
        self.log = build_log
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[StepNote]:
        note = StepNote()
        self.log.write(f"\n=== step: {name} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ===")
        self.progress.start(name)
        log.debug("step %s started", name, extra={"step": name})
        began = time.monotonic()
        try:
            yield note
        except Exception as exc:
            self.log.write(f"=== step {name} FAILED ===\n{traceback.format_exc()}")
            self.progress.fail(name)
            message = str(exc) or type(exc).__name__
            raise BuildError(name, message, self.log.path) from exc
        took = time.monotonic() - began
        self.timings[name] = round(took, 2)
        self.log.write(f"=== step {name} done in {took:.1f} s {note.text} ===")
        self.progress.finish(name, note.text)
        log.debug("step %s done in %.1f s", name, took, extra={"step": name, "seconds": round(took, 2)})


class StepNote:
    """A short remark a step leaves on its progress line, e.g. 'cached'."""

    def __init__(self) -> None:
        self.text = ""
