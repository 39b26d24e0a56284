"""The grading kernel and nbgrader's ``Execute`` step under limits (see :mod:`autograder.limits`).

:class:`SandboxKernelManager` starts every kernel through ``autograder/sandbox.py``;
:class:`GradingExecute` is the ``Execute`` preprocessor ``python -m autograder grade``/``grade-all``
give nbgrader's ``Autograde`` (``Autograde.autograde_preprocessors``).
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from traitlets import Bool, Float, Integer, Unicode

from autograder.limits import (
    CELL_TIMEOUT,
    CRASH,
    GRADER_ERRORS,
    MEMORY,
    NOT_RUN,
    NOTEBOOK_TIMEOUT,
    TAMPERING,
    format_size,
)
from nbgrader.preprocessors import Execute

SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
GUARD_MODULE = "_autograder_guard"
_TIMEOUT_MARK = "_GraderCellTimeout"  # nbclient's timeout, told apart from a disabled function's CELL_TIMEOUT
_ENV_NAMES = {"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "MPLBACKEND", "CUDA_VISIBLE_DEVICES"}
_ENV_PREFIXES = ("LC_", "OMP_", "MKL_", "OPENBLAS_", "COURSE_", "RLHF_", "GPT2_", "NBGRADER_")
_MEMORY_PATTERNS = ("can't allocate memory", "Cannot allocate memory", "out of memory", "std::bad_alloc")


class SandboxKernelManager(AsyncKernelManager):
    """Starts ``python autograder/sandbox.py -f CONNECTION_FILE`` in place of ``python -m ipykernel_launcher``."""

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if "ipykernel_launcher" in cmd:
            cmd = cmd[cmd.index("ipykernel_launcher") + 1:]
        elif "-f" in cmd:
            cmd = cmd[cmd.index("-f"):]
        return [sys.executable, str(SANDBOX), *cmd]


_DISABLE = """
def _grader_disable():
    class {ename}(Exception):
        pass

    def {function}(*args, **kwargs):
        raise {ename}({sentence!r})
    return {function}


if "{function}" in globals():
    {function} = _grader_disable()
del _grader_disable
"""


def _error(ename: str, evalue: str, traceback: list[str] | None = None) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=traceback or [f"{ename}: {evalue}"])


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "Python stopped responding"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = {"SIGSEGV": "a segmentation fault (e.g. ctypes reading a bad address)",
                "SIGKILL": "SIGKILL (killed: often memory)", "SIGABRT": "SIGABRT (an abort in a C library)",
                "SIGBUS": "a bus error", "SIGFPE": "a floating-point exception", "SIGXCPU": "the CPU-time limit"}
        return f"Python was stopped by {what.get(name, name)}"
    return f"Python exited with code {code} (os._exit, or exit() from C code)"


class GradingExecute(Execute):
    """nbgrader's ``Execute`` with limits, crash recovery and the test-tool guard (see :mod:`autograder.limits`)."""

    notebook_time_limit = Float(600.0, help="Wall-clock seconds for the whole notebook.").tag(config=True)
    memory_limit = Integer(4 << 30, help="Bytes of memory per kernel (0: none).").tag(config=True)
    output_limit = Integer(200_000, help="Characters a cell may print per stream.").tag(config=True)
    max_restarts = Integer(8, help="Kernel restarts before the rest of the notebook is given up.").tag(config=True)
    sandbox = Bool(True, help="Landlock and the test-tool guard.").tag(config=True)
    file_size_limit = Integer(256 << 20, help="Largest file the kernel may write, bytes.").tag(config=True)
    report_dir = Unicode("", help="Where to write per-notebook notes (what the guard restored).").tag(config=True)

    # ------------------------------------------------------------------ nbgrader entry point

    def preprocess(self, nb, resources=None, km=None):
        from jupyter_core.utils import run_sync
        from nbclient import NotebookClient

        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        self.kernel_manager_class = SandboxKernelManager
        # nbclient's own coalescing runs a regex that is quadratic on long lines (minutes for 200 kB of prints):
        # _tidy_streams merges instead.
        self.coalesce_streams = False
        self.interrupt_on_timeout = True
        self.raise_on_iopub_timeout = False
        self.iopub_timeout = 2
        self.error_on_timeout = {"ename": _TIMEOUT_MARK, "evalue": "", "traceback": []}
        self._hide_notebook_on_disk()
        self._save_course_files()
        self.notes: list[str] = []
        self.sandbox_status: dict = {}
        self.restarts = 0
        self.kernel_start_s = self.run_s = self.recover_s = 0.0
        started = time.monotonic()
        try:
            run_sync(self._run_notebook)()
        finally:
            self.run_s = time.monotonic() - started
            self._write_report()
            if self._pristine is not None:
                shutil.rmtree(self._pristine, ignore_errors=True)
        self.set_widgets_metadata()
        return self.nb, self.resources

    def _hide_notebook_on_disk(self) -> None:
        """nbgrader wrote the notebook (with its hidden tests) where the kernel runs: remove it while it runs.

        The writer puts the graded notebook back afterwards."""
        path = (self.resources or {}).get("metadata", {}).get("path")
        name = (self.resources or {}).get("unique_key")
        if path and name:
            nb_file = Path(path) / f"{name}.ipynb"
            if nb_file.is_file():
                nb_file.unlink()

    COURSE_FILES = ("helpers", "minirlhf")

    def _save_course_files(self) -> None:
        """Copy helpers/ and minirlhf/ as nbgrader restored them, to put back before every kernel restart.

        The kernel may write in its own folder, so a student can rewrite its ``helpers/checks.py``; a kernel
        started after a crash must not import that."""
        self._pristine = None
        path = (self.resources or {}).get("metadata", {}).get("path")
        if not path:
            return
        self._workdir = Path(path)
        self._pristine = Path(tempfile.mkdtemp(prefix="rlhf-pristine-"))
        for name in self.COURSE_FILES:
            if (self._workdir / name).is_dir():
                shutil.copytree(self._workdir / name, self._pristine / name)

    def _restore_course_files(self) -> None:
        if self._pristine is None:
            return
        for name in self.COURSE_FILES:
            if (self._pristine / name).is_dir():
                target = self._workdir / name
                if target.is_symlink() or target.is_file():
                    target.unlink()
                elif target.exists():
                    shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(self._pristine / name, target, dirs_exist_ok=True)

    def _write_report(self) -> None:
        meta = (self.resources or {}).get("nbgrader", {})
        if not self.report_dir or not meta:
            return
        dest = Path(self.report_dir) / meta.get("student", "student") / meta.get("assignment", "assignment")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{meta.get('notebook', 'notebook')}.json").write_text(
            json.dumps({"notes": self.notes, "sandbox": self.sandbox_status, "restarts": self.restarts,
                        "kernel_start_s": round(self.kernel_start_s, 2), "run_s": round(self.run_s, 2),
                        "recover_s": round(self.recover_s, 2)}),
            encoding="utf-8")

    # ------------------------------------------------------------------------- the loop

    def _is_test(self, cell) -> bool:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        return bool(meta.get("grade")) and not meta.get("solution")

    async def _run_notebook(self) -> None:
        try:
            await self._run_cells()
        finally:
            await self._stop_kernel()

    async def _run_cells(self) -> None:
        self.deadline = time.monotonic() + self.notebook_time_limit
        self.crashed: set[int] = set()
        self.restarts = 0
        # A graded function that crashed Python or hung in its test is replaced, after the restart, by one
        # that raises at once: its later tests (and demos calling it) fail in a moment instead of crashing
        # or hanging again. Test cell index -> the function it tests (the solution cell above it).
        self.tested: dict[int, str] = {}
        self.disabled: dict[str, tuple[str, str]] = {}
        current = None
        for i, cell in enumerate(self.nb.cells):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("solution") and str(meta.get("grade_id", "")).isidentifier():
                current = meta["grade_id"]
            elif self._is_test(cell) and current:
                self.tested[i] = current
        stop: str | None = None
        try:
            await self._start_kernel()
        except Exception as exc:  # the kernel could not even start: every cell fails, saying so
            stop = f"not run: Python could not start ({type(exc).__name__}: {exc})"
        cell_timeout = self.timeout
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            if stop is None and self._remaining() <= 0:
                stop = (f"not run: the notebook used up its time limit of {self.notebook_time_limit:g} s "
                        "before this cell")
            if stop is not None:
                cell.outputs = [_error(NOT_RUN, stop)]
                continue
            is_test = self._is_test(cell)
            if is_test and self.sandbox:
                before = await self._guard("before")
                if before is None and not await self._alive():  # something run earlier ended Python meanwhile
                    cell.outputs = [_error(CRASH, f"{_describe_exit(await self._exit_code())} before this test; "
                                                  "the grader restarted Python and went on with the next cell")]
                    await self._stop_kernel()
                    stop = await self._recover(index)
                    continue
                if before is None:
                    cell.outputs = [_error(TAMPERING, "the grader could not check the test tools before this test: "
                                                      "the notebook changed Python's import system or the grader's check; "
                                                      "this test scores 0")]
                    continue
                for name in before.get("changed", []):
                    note = f"the notebook replaced {name}; the grader put the original back before each test"
                    if note not in self.notes:
                        self.notes.append(note)
                for name in before.get("shadowed", []):
                    note = f"the notebook defines `{name}`, which hides Python's built-in; tests use the built-in"
                    if note not in self.notes:
                        self.notes.append(note)
            self.timeout = max(1, min(int(cell_timeout), math.ceil(self._remaining())))
            outcome, exit_code = await self._execute(cell, index)
            if outcome in ("died", "timeout"):
                notebook_over = self._remaining() <= 0
                if outcome == "died":
                    cell.outputs.append(_error(CRASH, f"{_describe_exit(exit_code)} while this cell ran; the grader "
                                                      "restarted Python and went on with the next cell"))
                elif notebook_over:
                    cell.outputs = [o for o in cell.outputs if o.get("ename") != CELL_TIMEOUT]
                    cell.outputs.append(_error(NOTEBOOK_TIMEOUT, "stopped: the notebook used up its time limit of "
                                                                 f"{self.notebook_time_limit:g} s in this cell"))
                self.crashed.add(index)
                function = self.tested.get(index)
                if function and function not in self.disabled:
                    why = ("it crashed Python in an earlier test" if outcome == "died" else
                           f"it ran past the {self.timeout} s limit in an earlier test")
                    self.disabled[function] = (CRASH if outcome == "died" else CELL_TIMEOUT,
                                               f"`{function}` is not called again: {why}")
                if notebook_over:
                    stop = (f"not run: the notebook used up its time limit of {self.notebook_time_limit:g} s "
                            "before this cell")
                else:
                    stop = await self._recover(index)
            elif is_test and self.sandbox:
                after = await self._guard("after")
                if after is None or after.get("changed"):
                    what = "the grader's check"
                    if after:
                        more = len(after["changed"]) - 3
                        what = ", ".join(after["changed"][:3]) + (f" (and {more} more)" if more > 0 else "")
                    cell.outputs.append(_error(TAMPERING, f"the code under test replaced {what} while this test ran, "
                                                          "so the test cannot be trusted: it scores 0"))
            self._tidy_streams(cell, is_test)
            self._explain_memory_errors(cell)
        self.timeout = cell_timeout

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def _execute(self, cell, index) -> tuple[str, int | None]:
        """Run one cell: ``ok``, ``died`` (with the exit code) or ``timeout`` (the kernel is then stopped)."""
        if self.kc is None:
            return "died", None
        try:
            await self.async_execute_cell(cell, index, execution_count=self.code_cells_executed + 1)
        except (DeadKernelError, CellTimeoutError, asyncio.CancelledError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "kernel" not in str(exc).lower():
                raise
            code = await self._exit_code()
            if code is None and await self._alive():
                await self._stop_kernel()
                cell.outputs.append(_error(CELL_TIMEOUT, self._timeout_sentence()))
                return "timeout", None
            await self._stop_kernel()
            return "died", code
        timed_out = [o for o in cell.get("outputs", []) if o.get("ename") == _TIMEOUT_MARK]
        if timed_out:
            for o in timed_out:
                o["ename"] = CELL_TIMEOUT
                o["evalue"] = self._timeout_sentence()
                o["traceback"] = [f"{CELL_TIMEOUT}: {o['evalue']}"]
            await self._stop_kernel()  # an interrupt does not stop every loop: start afresh
            return "timeout", None
        return "ok", None

    def _timeout_sentence(self) -> str:
        return (f"this cell ran longer than {self.timeout} s and was stopped: is there an infinite loop, or a very "
                "slow computation, in the function it calls?")

    def _explain_memory_errors(self, cell) -> None:
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error" or out.get("ename") in GRADER_ERRORS:
                continue
            text = f"{out.get('ename', '')}: {out.get('evalue', '')}"
            if out.get("ename") == "MemoryError" or any(p in text for p in _MEMORY_PATTERNS):
                asked = re.search(r"allocate (\d+) bytes", text)
                what = f"one allocation asked for {format_size(int(asked.group(1)))}" if asked else out.get("ename", "")
                out["ename"] = MEMORY
                out["evalue"] = (f"this cell needed more memory than the {format_size(self.memory_limit)} a notebook may "
                                 f"use ({what})")
                out["traceback"] = [*out.get("traceback", [])[:-1], f"{MEMORY}: {out['evalue']}"]

    @staticmethod
    def _tidy_streams(cell, is_test: bool) -> None:
        """One stdout and one stderr output per cell, first, whatever way the kernel flushed them: the same
        outputs on every run. In a test cell stderr joins stdout: nbgrader gives a test cell 0 for any stderr
        output (a warning), which must not cost a correct answer its points."""
        texts: dict[str, list[str]] = {}
        others = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                name = "stdout" if is_test else out.get("name", "stdout")
                text = out.get("text", "")
                texts.setdefault(name, []).append("".join(text) if isinstance(text, list) else text)
            else:
                others.append(out)
        if texts:
            streams = [NotebookNode(output_type="stream", name=name, text="".join(texts[name]))
                       for name in ("stdout", "stderr") if name in texts]
            cell.outputs = streams + others

    # --------------------------------------------------------------------------- kernels

    def _kernel_env(self) -> dict[str, str]:
        home = Path(tempfile.mkdtemp(prefix="rlhf-kernel-"))
        self._kernel_home = home
        for sub in ("tmp", "ipython", "matplotlib", "cache"):
            (home / sub).mkdir()
        try:  # matplotlib's font list, so that a fresh config folder does not rebuild it (seconds)
            import matplotlib

            for f in Path(matplotlib.get_cachedir()).glob("fontlist-*.json"):
                shutil.copy(f, home / "matplotlib" / f.name)
        except Exception:
            pass
        # Only what a notebook needs from the grader's environment: no credentials, tokens or paths of its own.
        env = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
        env.update({
            "TMPDIR": str(home / "tmp"), "HOME": str(home), "IPYTHONDIR": str(home / "ipython"),
            "MPLCONFIGDIR": str(home / "matplotlib"), "XDG_CACHE_HOME": str(home / "cache"),
            "RLHF_COURSE_CACHE": str(home / "cache" / "rlhf-course"), "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",  # the same set/dict order of strings in every run: the same messages
        })
        self._guard_token = secrets.token_hex(8)
        env["AUTOGRADER_SANDBOX"] = json.dumps({
            "memory_limit": int(self.memory_limit),
            "cpu_limit": int(4 * self.notebook_time_limit + 120),
            "file_size_limit": int(self.file_size_limit),
            "output_limit": int(self.output_limit),
            "landlock": bool(self.sandbox),
            "guard_token": self._guard_token if self.sandbox else "",
            "write": [str(home)],
        })
        return env

    async def _start_kernel(self) -> None:
        started = time.monotonic()
        self.km = self.create_kernel_manager()
        env = self._kernel_env()
        self._kernel_log = open(self._kernel_home / "kernel.log", "wb")  # noqa: SIM115
        await self.async_start_new_kernel(env=env, stdout=self._kernel_log, stderr=self._kernel_log)
        await self.async_start_new_kernel_client()
        info = await self.async_wait_for_reply(self.kc.kernel_info())
        if info is not None and "language_info" in info["content"]:
            self.nb.metadata["language_info"] = info["content"]["language_info"]
        if self.sandbox and not self.sandbox_status:
            self.sandbox_status = await self._guard("status") or {}
        self.kernel_start_s += time.monotonic() - started

    async def _alive(self) -> bool:
        try:
            return bool(self.km is not None and await self.km.is_alive())
        except Exception:
            return False

    async def _exit_code(self) -> int | None:
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        if process is None:
            return None
        for _ in range(20):  # the process may take a moment to be reaped
            code = process.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        return None

    async def _stop_kernel(self) -> None:
        if self.km is not None:
            try:
                if await self.km.is_alive():
                    await self.km.shutdown_kernel(now=True)
            except Exception:
                pass
            try:
                await self.km.cleanup_resources()
            except Exception:
                pass
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        self.km = None
        self.kc = None
        log = getattr(self, "_kernel_log", None)
        if log is not None:
            log.close()
            self._kernel_log = None
        home = getattr(self, "_kernel_home", None)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
            self._kernel_home = None

    async def _recover(self, upto: int) -> str | None:
        """A fresh kernel with the earlier non-test cells replayed; a reason to stop if that is impossible."""
        started = time.monotonic()
        try:
            return await self._recover_loop(upto)
        finally:
            self.recover_s += time.monotonic() - started

    async def _recover_loop(self, upto: int) -> str | None:
        while True:
            if self.restarts >= self.max_restarts:
                return f"not run: Python crashed or hung {self.restarts + 1} times, the grader stopped here"
            if self._remaining() <= 0:
                return f"not run: the notebook used up its time limit of {self.notebook_time_limit:g} s before this cell"
            self.restarts += 1
            await self._stop_kernel()
            self._restore_course_files()
            try:
                await self._start_kernel()
            except Exception as exc:
                return f"not run: Python could not be restarted ({type(exc).__name__})"
            replay_ok = True
            for j in range(upto):
                cell = self.nb.cells[j]
                if cell.cell_type != "code" or not cell.source.strip() or j in self.crashed or self._is_test(cell):
                    continue
                outcome = await self._replay(cell.source)
                if outcome != "ok":
                    self.crashed.add(j)  # it crashed or hung this time: leave it out of the next replay
                    replay_ok = False
                    break
                defined = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                if defined in self.disabled:  # before any later cell can call it
                    ename, sentence = self.disabled[defined]
                    await self._replay(_DISABLE.format(ename=ename, function=defined, sentence=sentence))
            if replay_ok:
                for function, (ename, sentence) in self.disabled.items():
                    await self._replay(_DISABLE.format(ename=ename, function=function, sentence=sentence))
                return None

    async def _replay(self, source: str) -> str:
        msg_id = self.kc.execute(source, silent=False, store_history=False, stop_on_error=False)
        reply = await self._wait_reply(msg_id, min(float(self.timeout), self._remaining()))
        return "ok" if reply is not None else "failed"

    async def _wait_reply(self, msg_id: str, timeout: float) -> dict | None:
        """The shell reply to ``msg_id``; None if the kernel died or ``timeout`` passed."""
        from queue import Empty

        end = time.monotonic() + max(timeout, 0.1)
        while time.monotonic() < end:
            try:
                msg = await self.kc.shell_channel.get_msg(timeout=min(1.0, max(end - time.monotonic(), 0.01)))
            except Empty:
                if not await self._alive():
                    return None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        return None

    async def _guard(self, which: str) -> dict | None:
        """Call the sandbox's guard (``before``, ``after``, ``status``) silently; None if it did not answer."""
        if self.kc is None:
            return None
        expr = f"__import__('sys').modules['{GUARD_MODULE}_{self._guard_token}'].guard.{which}()"
        msg_id = self.kc.execute("", silent=True, store_history=False, user_expressions={"g": expr})
        reply = await self._wait_reply(msg_id, min(30.0, max(self._remaining(), 1.0)))
        try:
            result = reply["content"]["user_expressions"]["g"]
            if result.get("status") != "ok":
                return None
            return json.loads(ast.literal_eval(result["data"]["text/plain"]))
        except (TypeError, KeyError, ValueError, SyntaxError):
            return None
