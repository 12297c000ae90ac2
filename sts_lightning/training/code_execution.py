"""Run HumanEval-style completions against their tests in a subprocess: :func:`code_reward`.

A program is the problem's code prompt, the completion, the problem's ``test`` (which defines
``check(candidate)``) and ``check(<entry_point>)``. It passes when the process exits with status
0 before the timeout. Each program runs in its own temporary directory, as
``sys.executable -I`` (isolated: no user site-packages, no ``PYTHON*`` variables) in a new
session that is killed as a whole on timeout, with a minimal environment (no proxy variables,
no tokens, ``HOME`` in the temporary directory), an address-space and CPU-time limit, and the
``socket`` (and low-level ``_socket``) constructors replaced by a function that raises, so a
program cannot open a network connection through the standard library.

This is *not* a sandbox: the code runs as the current user and can read and write the files
the user can. Run untrusted model output in a container or VM without network.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sts_lightning.config import positive, positive_int
from sts_lightning.training.reward_calls import completion_text, prompt_text

__all__ = ["code_reward", "make_code_reward", "run_program"]

_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)
# Where a code prompt starts when it is preceded by an instruction ("Complete the function…").
_CODE_START_RE = re.compile(r"^(?:from |import |def |class |@)", re.M)
# Runs before the program in the child: limits and the network switch-off, then the program as
# __main__ (run_path keeps the program's own `from __future__` imports legal).
_LAUNCHER = """\
import _socket, resource, runpy, socket, sys
def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass  # not every platform enforces every limit
_limit(resource.RLIMIT_AS, {memory_bytes})
_limit(resource.RLIMIT_CPU, {cpu_seconds})
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in code_reward")
socket.socket = socket.create_connection = socket.getaddrinfo = _no_network
socket.socketpair = socket.fromfd = socket.SocketType = _no_network
_socket.socket = _socket.SocketType = _socket.socketpair = _socket.getaddrinfo = _no_network
del _socket, resource, socket, _limit, _no_network
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def run_program(program: str, *, timeout: float = 5.0, memory_mb: int = 1024) -> bool | None:
    """Run ``program`` in an isolated subprocess; ``True`` when it exits 0 within ``timeout``.

    Args:
        program: Python source.
        timeout: Wall-clock seconds before the whole process group is killed (a fail).
        memory_mb: Address-space limit of the child, in MiB.

    Returns:
        ``True`` (exit 0), ``False`` (non-zero exit, killed, timeout) or ``None`` when the
        interpreter could not be started.

    Example:
        >>> run_program("assert 1 + 1 == 2"), run_program("assert 1 + 1 == 3")
        (True, False)
    """
    launcher = _LAUNCHER.format(memory_bytes=memory_mb << 20, cpu_seconds=int(timeout) + 1)
    with tempfile.TemporaryDirectory(prefix="sts-code-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program, encoding="utf-8")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",  # a numpy-using solution must not grab every core
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", launcher, str(path)],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one on timeout
            )
        except OSError:
            return None
        try:
            return proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            # Not reaped yet, so its pid (= its group id) cannot have been reused: kill the
            # whole group, grandchildren included.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
            return False


def _code_block(text: str, entry_point: str) -> str:
    """The fenced block defining ``entry_point`` (else the first block, else ``text``)."""
    blocks = _FENCE_RE.findall(text)
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.M):
            return block
    return blocks[0] if blocks else text


def _code_prefix(prompt: str) -> str:
    """The code part of a prompt: a fenced block, else from the first line that starts code."""
    blocks = _FENCE_RE.findall(prompt)
    if blocks:
        return blocks[0]
    start = _CODE_START_RE.search(prompt)
    return prompt[start.start() :] if start else prompt


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program that checks ``completion``: code prompt + solution + tests + ``check``.

    A completion that (re)defines ``entry_point`` (a chat answer, fenced or not) is placed after
    the prompt's code, which it overrides while keeping the prompt's imports; any other
    completion continues the prompt's function body (HumanEval's native format).
    """
    prefix, code = _code_prefix(prompt), _code_block(completion, entry_point)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        solution = f"{prefix}\n\n{code}"
    else:
        solution = prefix + code
    return f"{solution}\n\n{test}\n\ncheck({entry_point})\n"


def make_code_reward(
    *, timeout: float = 5.0, max_workers: int = 2, memory_mb: int = 1024
) -> Callable[..., list[float | None]]:
    """A :func:`code_reward` with other limits (same name, so it logs as ``code_reward``).

    Args:
        timeout: Seconds per program; an infinite loop scores 0.0 after this.
        max_workers: Programs run at once (threads, each waiting on one subprocess).
        memory_mb: Address-space limit per program, in MiB.
    """
    positive("timeout", timeout)
    positive_int("max_workers", max_workers)
    positive_int("memory_mb", memory_mb)

    def code_reward(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        test: Sequence[str] | None = None,
        entry_point: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """1.0 when prompt + completion passes the problem's tests, 0.0 when it fails or times
        out, ``None`` when it could not be run (no ``test``/``entry_point``, no interpreter).

        Args:
            prompts: The user turns holding the code prompt (an instruction before it is
                skipped: code starts at a fenced block or the first ``def``/``import`` line);
                strings, or message lists (their last user turn).
            completions: The completions: strings or ``[{"role": "assistant", ...}]``.
            test: HumanEval's ``test`` column (defines ``check(candidate)``).
            entry_point: The function under test.
            **kwargs: Other columns, ignored.
        """
        if test is None or entry_point is None:
            return [None] * len(completions)

        def score(i: int) -> float | None:
            if not test[i] or not entry_point[i]:
                return None
            prompt, completion = prompt_text(prompts[i]), completion_text(completions[i])
            program = build_program(prompt, completion, test[i], entry_point[i])
            passed = run_program(program, timeout=timeout, memory_mb=memory_mb)
            return None if passed is None else float(passed)

        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(score, range(len(completions))))

    return code_reward


code_reward = make_code_reward()
"""HumanEval-style execution reward: 5 s per program, 2 at a time, 1 GiB each."""
