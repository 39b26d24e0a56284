"""The grading kernel's launcher: limits and a sandbox around a student's code, then an IPython kernel.

Run as a script by :class:`autograder.kernel.SandboxKernelManager` (never imported by the grader)::

    python autograder/sandbox.py -f CONNECTION_FILE [kernel options]

with its settings in ``$AUTOGRADER_SANDBOX`` (JSON, read and removed from the environment). Before any
thread exists and before a line of student code runs, in this order:

1. **Limits** (``resource.setrlimit``, soft = hard, so they cannot be raised again): memory
   (``RLIMIT_DATA``, plus ``RLIMIT_AS`` at twice that as a backstop for shared mappings), CPU seconds
   (a backstop for processes that outlive the kernel), the size of any file written (``RLIMIT_FSIZE``;
   ``SIGXFSZ`` ignored, so a write past it fails instead of killing the kernel).
2. **Landlock** (Linux >= 5.13, unprivileged): the kernel may read only the Python installation and
   the system folders, may write only its own graded folder and a private temporary folder, may not
   bind or connect TCP sockets except the kernel's own five ports (Linux >= 6.7), and may not signal
   processes outside the sandbox (Linux >= 6.12). The course's source (solutions, hidden tests), the
   gradebook and every other student's folder are out of reach. Where Landlock is missing, this step
   is skipped and :data:`STATUS` says so.
3. **Capabilities** dropped (a root kernel could otherwise raise its limits again), and
   ``no_new_privs`` set.

Then the kernel starts with a capped output stream (each cell may print at most ``output_limit``
characters per stream; the rest is dropped with one note) and a **guard** the grader calls around
every test cell (silent ``execute_request`` with a ``user_expressions`` entry): ``before()`` puts back
anything a student replaced in ``torch``, ``torch.Tensor``, ``torch.autograd``, ``math``, ``builtins``,
``helpers`` and ``helpers.checks`` (and hides globals that shadow built-ins) and reports what it found;
``after()`` reports what changed *while the test ran* (the test then scores 0) and restores it again.
These in-process measures stop accidents and casual cheating; code that sets out to defeat them
(``ctypes``, ``gc``) can. The README's threat model says what is and is not defended.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import types

GUARD_MODULE = "_autograder_guard"
STATUS: dict = {}

# ------------------------------------------------------------------------------------------ limits


def apply_rlimits(cfg: dict) -> None:
    def cap(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    memory = int(cfg.get("memory_limit") or 0)
    if memory > 0:
        cap(resource.RLIMIT_DATA, memory)
        cap(resource.RLIMIT_AS, 2 * memory + (1 << 30))
    cpu = int(cfg.get("cpu_limit") or 0)
    if cpu > 0:
        cap(resource.RLIMIT_CPU, cpu)
    fsize = int(cfg.get("file_size_limit") or 0)
    if fsize > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        cap(resource.RLIMIT_FSIZE, fsize)
    cap(resource.RLIMIT_CORE, 0)
    STATUS["limits"] = {"memory": memory, "cpu_s": cpu, "file_size": fsize}


# ---------------------------------------------------------------------------------------- landlock

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on x86_64 and arm64
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ALL_V1 = (1 << 13) - 1
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_PR_SET_NO_NEW_PRIVS = 38


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel (0: none)."""
    try:
        abi = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except Exception:
        return 0
    return max(int(abi), 0)


def apply_landlock(read: list[str], write: list[str], read_files: list[str], device_files: list[str],
                   ports: list[int]) -> int:
    """Restrict this (still single-threaded) process; returns the ABI used, 0 if Landlock is unavailable."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    libc = _libc()
    fs = _FS_ALL_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    file_rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    read_dir = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
    write_dir = fs & ~_FS_EXECUTE & ~(_FS_IOCTL_DEV if abi >= 5 else 0)

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = _PathBeneathAttr(rights & fs, fd)
            libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        finally:
            os.close(fd)

    for path in read:
        allow(path, read_dir)
    for path in read_files:
        allow(path, _FS_READ_FILE)
    for path in device_files:
        allow(path, _FS_READ_FILE | _FS_WRITE_FILE | (_FS_IOCTL_DEV if abi >= 5 else 0))
    for path in write:
        allow(path, read_dir | write_dir)
    if net:
        for port in ports:
            rule = _NetPortAttr(_NET_BIND_TCP, port)
            libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(2), ctypes.byref(rule), ctypes.c_uint32(0))
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    done = libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    os.close(ruleset)
    return abi if done == 0 else 0


def drop_capabilities() -> bool:
    """Empty the capability bounding set and the thread's capability sets (a no-op for a normal user)."""
    libc = _libc()
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (needs CAP_SETPCAP; fails quietly without it)
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    try:
        data = (Data * 2)()
        return libc.capset(ctypes.byref(Header(0x20080522, 0)), data) == 0
    except AttributeError:
        return False


def sandbox_paths(cfg: dict, connection_file: str) -> dict:
    """What the kernel may read and write."""
    import site
    import sysconfig

    # Not /opt, /home, /root, /tmp, /srv, /work ...: a course checkout may live there (its Python is added below).
    read = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev"]
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
              *site.getsitepackages(), *sysconfig.get_paths().values()}:
        if p and os.path.exists(p):
            read.append(os.path.realpath(p))
            read.append(p)
    devices = [d for d in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
               if os.path.exists(d)]
    write = [os.getcwd(), *cfg.get("write", [])]
    return {"read": read, "write": write, "read_files": [connection_file], "device_files": devices}


# ------------------------------------------------------------------------------------ output cap


def capped_outstream_class(limit: int):
    from ipykernel.iostream import OutStream

    class CappedOutStream(OutStream):
        """Publishes at most ``limit`` characters per cell (per execute request) on this stream."""

        _cap_key = None
        _cap_used = 0

        def write(self, string):  # type: ignore[override]
            if not isinstance(string, str) or limit <= 0:
                return super().write(string)
            parent = self.parent_header or {}
            key = parent.get("msg_id")
            if key != self._cap_key:
                self._cap_key, self._cap_used = key, 0
            room = limit - self._cap_used
            if room <= 0:
                return len(string)
            self._cap_used += len(string)
            if len(string) > room:
                super().write(string[:room])
                return super().write(f"\n[output truncated by the grader: a cell may print at most {limit:,} "
                                     f"characters on {self.name}]\n") and len(string)
            return super().write(string)

    return CappedOutStream


# ------------------------------------------------------------------------------------------- guard

_GUARDED = ("builtins", "math", "torch", "torch.autograd", "torch.autograd.gradcheck", "torch.testing",
            "torch.nn.functional", "helpers", "helpers.checks")
_FUNCTION_PARTS = ("__code__", "__defaults__", "__kwdefaults__")
# Names the tests compare with: any change to these is tampering. Elsewhere in torch, a change that wraps the
# original (``__wrapped__``, as torch._dynamo does to ``torch.manual_seed`` when something imports it) is taken
# as the library's own and kept.
_CRITICAL_EVERYTHING = {"builtins", "math", "helpers", "helpers.checks", "torch.testing", "torch.autograd.gradcheck"}
_CRITICAL = {
    "torch": {"allclose", "isclose", "equal", "isnan", "isfinite", "isinf", "all", "any", "where", "abs", "eq", "ne",
              "tensor", "as_tensor", "zeros_like", "ones_like", "is_tensor", "Tensor"},
    "torch.autograd": {"grad", "gradcheck", "gradgradcheck", "backward"},
    "torch.Tensor": {"allclose", "equal", "isclose", "isnan", "isfinite", "abs", "all", "any", "item", "tolist",
                     "sum", "max", "min", "detach", "clone", "to", "cpu", "double", "float", "eq", "ne", "backward"},
}


_CACHES = {"__slotnames__"}  # copyreg caches it on a class the first time an instance is copied or pickled


def _critical(namespace: str, key: str) -> bool:
    if namespace in _CRITICAL_EVERYTHING or key in _CRITICAL.get(namespace, ()):
        return True
    return namespace == "torch.Tensor" and key.startswith("__") and key.endswith("__")


def _same_constant(a: object, b: object) -> bool:
    """Equal immutable values (a reloaded module's constants are new objects, not a change)."""
    return type(a) is type(b) and isinstance(a, (str, bytes, int, float, bool, tuple, frozenset, type(None))) and a == b


def _wraps(new: object, old: object) -> bool:
    for _ in range(8):
        new = getattr(new, "__wrapped__", None)
        if new is None:
            return False
        if new is old:
            return True
    return False


class Guard:
    """Snapshot of the test tools at kernel start; ``before``/``after`` a test cell restore and report."""

    def __init__(self, shell) -> None:
        import importlib

        self.shell = shell
        self.modules: dict[str, types.ModuleType] = {}
        for name in _GUARDED:
            try:
                self.modules[name] = importlib.import_module(name)
            except Exception:
                pass
        # IPython adds and removes a few built-ins (exit, quit, get_ipython) around every execution.
        self.trap_keys = set(getattr(getattr(shell, "builtin_trap", None), "auto_builtins", {}))
        self.namespaces: dict[str, tuple[object, dict]] = {}
        for name, mod in self.modules.items():
            self.namespaces[name] = (mod, {k: v for k, v in vars(mod).items()
                                           if not (name == "builtins" and k in self.trap_keys)})
        if "torch" in self.modules:
            tensor = self.modules["torch"].Tensor
            self.namespaces["torch.Tensor"] = (tensor, dict(vars(tensor)))
        self.functions: dict[int, tuple[types.FunctionType, tuple]] = {}
        for name, (_, ns) in self.namespaces.items():
            if name == "builtins":
                continue
            for value in ns.values():
                if isinstance(value, types.FunctionType):
                    self.functions[id(value)] = (value, tuple(getattr(value, p) for p in _FUNCTION_PARTS))
        import builtins

        self.builtins = dict(vars(builtins))
        self.initial_user_ns = {k: v for k, v in shell.user_ns.items() if k in self.builtins}
        self.hidden: dict[str, object] = {}

    def _restore(self) -> list[str]:
        changed = []
        for name, mod in self.modules.items():
            if sys.modules.get(name) is not mod:
                sys.modules[name] = mod
                changed.append(f"sys.modules[{name!r}]")
        for name, (obj, snapshot) in self.namespaces.items():
            current = {k: v for k, v in vars(obj).items() if not (name == "builtins" and k in self.trap_keys)}
            is_class = isinstance(obj, type)
            for key, value in list(snapshot.items()):
                now = current.get(key, _MISSING)
                if now is value or (is_class and key in ("__dict__", "__weakref__")) or _same_constant(now, value):
                    continue
                if not _critical(name, key) and _wraps(now, value):
                    snapshot[key] = now  # the library wrapped its own function: keep it
                    continue
                setattr(obj, key, value)
                changed.append(f"{name}.{key}")
            if is_class or name in ("builtins", "helpers.checks"):
                for key in current.keys() - snapshot.keys() - _CACHES:
                    try:
                        delattr(obj, key)
                    except (AttributeError, TypeError):
                        continue
                    changed.append(f"{name}.{key}")
        for fn, parts in self.functions.values():
            for part, value in zip(_FUNCTION_PARTS, parts):
                if getattr(fn, part) is not value:
                    setattr(fn, part, value)
                    changed.append(f"{fn.__module__}.{fn.__qualname__}.{part}")
        return changed

    def before(self) -> str:
        """Called before a test cell: restore, and hide globals that shadow a built-in from the test."""
        changed = self._restore()
        ns = self.shell.user_ns
        for key in [k for k in ns if k in self.builtins and not k.startswith("_")]:
            if ns[key] is not self.builtins[key] and ns[key] is not self.initial_user_ns.get(key, _MISSING):
                self.hidden[key] = ns.pop(key)
        return json.dumps({"changed": _by_importance(changed), "shadowed": sorted(self.hidden)})

    def after(self) -> str:
        """Called after a test cell: what changed while it ran (the test is then void); restore again."""
        changed = self._restore()
        self.shell.user_ns.update(self.hidden)
        self.hidden = {}
        return json.dumps({"changed": _by_importance(changed)})

    def status(self) -> str:
        return json.dumps(STATUS)


_MISSING = object()


def _by_importance(names: list[str]) -> list[str]:
    """Public names first (``torch.allclose``), then dunders (``torch.Tensor.__eq__``), then private ones."""
    def rank(name: str) -> tuple[int, str]:
        last = name.rsplit(".", 1)[-1]
        return (2 if last.startswith("_") and not last.startswith("__") else 1 if last.startswith("__") else 0, name)

    return sorted(set(names), key=rank)

# -------------------------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    cfg = json.loads(os.environ.pop("AUTOGRADER_SANDBOX", "") or "{}")
    connection_file = argv[argv.index("-f") + 1] if "-f" in argv else ""
    # The script's folder (inside the course's source tree) must not be on the path: the kernel's
    # working folder comes first, as under `python -m ipykernel_launcher`.
    sys.path[0] = ""
    apply_rlimits(cfg)
    ports = []
    if connection_file:
        with open(connection_file, encoding="utf-8") as f:
            info = json.load(f)
        ports = [int(info[k]) for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port") if k in info]
    STATUS["landlock"] = 0
    if cfg.get("landlock", True):
        STATUS["landlock"] = apply_landlock(ports=ports, **sandbox_paths(cfg, connection_file))
    STATUS["capabilities_dropped"] = drop_capabilities()

    from ipykernel.kernelapp import IPKernelApp

    sys.modules["_autograder_sandbox"] = sys.modules[__name__]
    globals()["CappedOutStream"] = capped_outstream_class(int(cfg.get("output_limit") or 0))
    app = IPKernelApp.instance()
    app.initialize([*argv, "--IPKernelApp.outstream_class=_autograder_sandbox.CappedOutStream", "--IPKernelApp.quiet=True"])
    # IPython keeps a copy of everything a cell prints, for `%history -o`: 100 MB of prints would stay in
    # memory for good. Grading needs no history of outputs.
    import contextlib

    app.shell._tee = lambda channel: contextlib.nullcontext()
    token = cfg.get("guard_token", "")
    if token:
        guard = Guard(app.shell)
        mod = types.ModuleType(f"{GUARD_MODULE}_{token}")
        mod.guard = guard
        sys.modules[mod.__name__] = mod
    app.start()


if __name__ == "__main__":
    main(sys.argv[1:])
