"""The process that runs one student's notebook for the autograder (see ``coursekit.grading``).

It is started inside the sandbox (``coursekit.sandbox``) as ``python -s -P -m coursekit.gradeworker``
(coursekit never imports torch: a lab that needs torch imports it in its own cells) and talks to the grader over its standard
input (requests, one JSON object a line) and a private copy of its standard output (signed replies). Its
file descriptors 1 and 2 go to a log file, so output written by C code or ``os.write`` can never be taken
for a reply.

Cells arrive one at a time, so a hidden test is only in this process while it runs. Each request is a
*segment* of code with a trust level:

* ``student``: an answer cell, or a cell the student added. Runs like a notebook cell (IPython magics are
  translated); whatever it changes in the libraries is undone before the next trusted segment.
* ``trusted``: instructor code (setup cells, the visible and the hidden part of a test cell). Before it
  runs, the guard restores the trusted environment (library functions and classes, builtins, names the
  instructor's cells bound, ``sys`` hooks, signal handlers) and wraps every function and class the student
  defined, so that each call back into student code is checked: the environment must be intact when the
  call returns, and what it returns must be plain data (a tensor, an array, a number, a tuple...), not an
  object that could lie to a comparison (``__eq__`` that always returns True, ``__torch_function__``).

The limits of this design are in docs/INSTRUCTORS.md (threat model): it stops the tricks the course has
seen or can imagine from a student notebook, but code that reads this process's memory (``gc``, frames,
``ctypes``) could still forge a reply; the grader's static review flags such code for a human.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import io
import json
import operator
import os
import re
import signal
import sys
import threading
import time
import types
import warnings
from collections import namedtuple

_MISSING = object()
# Dunder methods through which an object can lie to a test: comparisons, truth, numeric conversions and
# arithmetic, and the protocols torch and numpy use to let objects take over their functions.
FORBIDDEN_DUNDERS = frozenset(
    "__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __bool__ __float__ __int__ __index__ __complex__ __abs__ "
    "__neg__ __pos__ __round__ __add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ "
    "__floordiv__ __rfloordiv__ __mod__ __pow__ __rpow__ __matmul__ __rmatmul__ __and__ __rand__ __or__ "
    "__ror__ __xor__ __invert__ __getattribute__ __instancecheck__ __subclasscheck__ __torch_function__ "
    "__torch_dispatch__ __array__ __array_ufunc__ __array_function__ __array_interface__ __array_struct__ "
    "__array_priority__ __array_wrap__ __array_finalize__".split()
)
_VOLATILE_SYS = frozenset("stdin stdout stderr __stdin__ __stdout__ __stderr__ last_type last_value last_traceback "
                          "last_exc ps1 ps2 _jupyter_stdout".split())
_STUDENT_FILE = "<student cell {}>"
_TRUSTED_FILE = "<instructor cell {}>"
_MAGIC = re.compile(r"^\s*[%!]", re.M)


class GradingRefused(TypeError):
    """Raised to the test when student code hands it something the grader does not accept."""


class TamperError(AssertionError):
    """Raised to the test when student code changed the trusted environment while the test ran."""


def _trusted_prefixes() -> tuple[str, ...]:
    """Folders whose Python files are trusted library code (read-only inside the sandbox)."""
    import importlib.util
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.abspath(__file__))}
    paths |= {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    spec = importlib.util.find_spec("llmcourse")  # the student library, wherever it is installed (not imported)
    paths |= set(spec.submodule_search_locations or ()) if spec else set()
    return tuple(sorted(os.path.realpath(p) + os.sep for p in paths))


class Guard:
    """The trusted environment of the test cells and the checks around student code (see module doc)."""

    def __init__(self, ns: dict):
        self.ns = ns
        self.prefixes = _trusted_prefixes()
        self.trusted_codes: set[int] = set()
        self._keep: list = []  # keeps trusted code objects alive, so their ids stay unique
        self.trusted_bindings: dict[str, object] = {}
        self.answer_names: set[str] = set()
        self.entries: list[list] = []  # [kind, owner, key, value, label]
        self._fast_maps: list = []  # the entries regrouped by _fast_index
        self._fast_funcs: list = []
        self._fast_lens: list = []
        self.dirs: dict[int, set[str]] = {}  # class id -> attribute names visible at snapshot time
        self.sys_state: dict = {}
        self.signals: dict = {}
        self.threads: set[int] = set()
        self.wrappers: set[int] = set()
        self.wrapped_classes: set[int] = set()
        self._type_trust: dict[int, bool] = {}
        self._namedtuples: dict = {}
        self.depth = 0  # nesting of calls into student code (0: trusted code is running)
        self.in_trusted = False
        self.tampered: list[str] = []

    # -------------------------------------------------------------- snapshot
    def snapshot(self, preload: list[str] = ()) -> None:
        """Record the trusted environment before any student code runs: the attributes of the modules
        the instructor's code imports (``preload``), of their parents, of every ``*.testing`` module
        under them and of builtins, sys, math, operator, functools and llmcourse; the attributes of the
        classes found there; the interpreter's hooks. (Every attribute of every module would be 150,000
        entries: too slow to check on each call into student code.)"""
        self.entries.clear()
        self.dirs.clear()
        self.preload = list(preload)
        wanted = {"builtins", "math", "operator", "functools", "sys"}
        for name in self.preload:
            parts = name.split(".")
            wanted |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        roots = {name.split(".")[0] for name in wanted}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated aliases warn when touched
            for name, module in list(sys.modules.items()):
                if name in ("__main__", "__mp_main__") or not isinstance(module, types.ModuleType):
                    continue
                root = name.split(".")[0]
                critical = name in wanted or root == "llmcourse" or (root in roots and ".testing" in name)
                namespace = getattr(module, "__dict__", None)
                if not critical or not isinstance(namespace, dict):
                    continue
                self.entries.append(["module", sys.modules, name, module, f"sys.modules[{name!r}]"])
                for key, value in list(namespace.items()):
                    if module is sys and key in _VOLATILE_SYS:
                        continue
                    self._record("dict", namespace, key, value, f"{name}.{key}")
                    if isinstance(value, type) and id(value) not in self.dirs and \
                            str(getattr(value, "__module__", "")).split(".")[0] in roots | {"llmcourse"}:
                        self._record_class(value, f"{name}.{key}")
        self.sys_state = {key: getattr(sys, key) for key in ("excepthook", "displayhook", "breakpointhook")}
        self.sys_state["meta_path"] = list(sys.meta_path)
        self.sys_state["path_hooks"] = list(sys.path_hooks)
        self.sys_state["import"] = builtins.__import__
        self.signals = {s: signal.getsignal(s) for s in signal.valid_signals() if signal.getsignal(s) is not None}
        self.threads = set(sys._current_frames())

    def _record(self, kind, owner, key, value, label) -> None:
        self.entries.append([kind, owner, key, value, label])
        if type(value) is types.FunctionType:  # in-place edits of a trusted function
            self.entries.append(["func", value, "__code__", value.__code__, label])
            self.entries.append(["func", value, "__defaults__", value.__defaults__, label])
            self.entries.append(["func", value, "__kwdefaults__", value.__kwdefaults__, label])

    def _record_class(self, cls: type, label: str) -> None:
        self.dirs[id(cls)] = set(dir(cls))
        if not cls.__flags__ & (1 << 9):  # not a heap type: a C type, immutable from Python
            return
        for key, value in list(vars(cls).items()):
            self._record("class", cls, key, value, f"{label}.{key}")
        self.entries.append(["classnew", cls, None, None, label])

    def trust_code(self, code: types.CodeType) -> None:
        """Mark an instructor cell's code (and every function defined in it) as trusted."""
        stack = [code]
        while stack:
            c = stack.pop()
            self.trusted_codes.add(id(c))
            self._keep.append(c)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))

    # -------------------------------------------------------------- restore / verify
    def _fast_index(self) -> None:
        """The snapshot regrouped for bulk identity checks (see :meth:`_unchanged`)."""
        maps: dict[int, tuple] = {}
        funcs: dict[str, tuple] = {}
        self._fast_lens = []
        for kind, owner, key, value, _ in self.entries:
            if kind in ("dict", "module", "class"):
                keys, values = maps.setdefault(id(owner), (owner, kind == "class", [], []))[2:]
                keys.append(key)
                values.append(value)
            elif kind == "func":
                objs, values = funcs.setdefault(key, ([], []))
                objs.append(owner)
                values.append(value)
            elif kind == "classnew":
                self._fast_lens.append((owner, len(owner.__dict__)))
        self._fast_maps = [(owner, is_class, operator.itemgetter(*keys), tuple(values))
                           for owner, is_class, keys, values in maps.values()]
        self._fast_funcs = [(operator.attrgetter(attr), objs, tuple(values)) for attr, (objs, values) in funcs.items()]

    def _unchanged(self) -> bool:
        """Whether every recorded library attribute is still the recorded object, checked in bulk
        (``itemgetter`` and ``map(operator.is_, ...)`` run in C). A test loop calls student code thousands
        of times and a Python loop over the 16,000 entries of a lab that imports transformers took 2.4 ms a
        call; this says only *whether* something changed, and :meth:`_drift` then finds what."""
        try:
            for owner, is_class, getter, saved in self._fast_maps:
                now = getter(owner.__dict__ if is_class else owner)
                if not all(map(operator.is_, now if len(saved) > 1 else (now,), saved)):
                    return False
        except KeyError:
            return False
        for getter, objs, saved in self._fast_funcs:
            if not all(map(operator.is_, map(getter, objs), saved)):
                return False
        return all(len(cls.__dict__) == n for cls, n in self._fast_lens)

    def _drift(self, restore: bool) -> list[str]:
        """Differences between the environment and the snapshot (restored when ``restore``)."""
        changed = []
        slow = not self._unchanged()
        for entry in self.entries if slow else ():
            kind, owner, key, value, label = entry
            if kind == "dict":
                current = owner.get(key, _MISSING)
                if current is not value:
                    if self._library_wrapper(current, value):
                        entry[3] = current  # e.g. importing torch._dynamo wraps torch.manual_seed
                        continue
                    changed.append(label)
                    if restore:
                        owner[key] = value
            elif kind == "module":
                if owner.get(key) is not value:
                    changed.append(label)
                    if restore:
                        owner[key] = value
            elif kind == "func":
                if getattr(owner, key) is not value:
                    changed.append(f"{label}.{key}")
                    if restore:
                        setattr(owner, key, value)
            elif kind == "class":
                current = owner.__dict__.get(key, _MISSING)
                if current is not value:
                    if self._library_wrapper(current, value):
                        entry[3] = current
                        continue
                    changed.append(label)
                    if restore:
                        try:
                            type.__setattr__(owner, key, value)
                        except (TypeError, AttributeError):
                            pass
            elif kind == "classnew":  # a new class attribute that shadows an inherited one
                for key2 in owner.__dict__.keys() - self.own_keys[id(owner)]:
                    if key2 in self.dirs[id(owner)]:
                        changed.append(f"{label}.{key2}")
                        if restore:
                            try:
                                type.__delattr__(owner, key2)
                            except (TypeError, AttributeError):
                                pass
        if slow:
            self._fast_index()  # after restoring, or after accepting a library's wrapper (entry[3] updated)
        for namespace, child, module, label in self.lazy_children:  # a lazily loaded submodule replaced
            current = namespace.get(child, _MISSING)
            if current is not _MISSING and current is not module:
                changed.append(label)
                if restore:
                    namespace[child] = module
        state_now = {key: getattr(sys, key) for key in ("excepthook", "displayhook", "breakpointhook")}
        for key, value in state_now.items():
            if value is not self.sys_state[key]:
                changed.append(f"sys.{key}")
                if restore:
                    setattr(sys, key, self.sys_state[key])
        if sys.meta_path != self.sys_state["meta_path"] or sys.path_hooks != self.sys_state["path_hooks"]:
            changed.append("sys.meta_path")
            if restore:
                sys.meta_path[:] = self.sys_state["meta_path"]
                sys.path_hooks[:] = self.sys_state["path_hooks"]
        if builtins.__import__ is not self.sys_state["import"]:
            changed.append("builtins.__import__")
            if restore:
                builtins.__import__ = self.sys_state["import"]
        if sys.gettrace() is not None or sys.getprofile() is not None:
            changed.append("sys.settrace/setprofile")
            if restore:
                sys.settrace(None)
                sys.setprofile(None)
        if threading._trace_hook is not None or threading._profile_hook is not None:
            changed.append("threading.settrace/setprofile")
            if restore:
                threading.settrace(None)
                threading.setprofile(None)
        return changed

    def _library_wrapper(self, current, original) -> bool:
        """A library replaced a function by a wrapper of it (``functools.wraps``, library code)."""
        return (type(current) is types.FunctionType and getattr(current, "__wrapped__", None) is original
                and self.trusted_code(current.__code__))

    def index(self) -> None:
        """Fast lookups, built once after the snapshot."""
        self.own_keys = {id(e[1]): set() for e in self.entries if e[0] == "classnew"}
        for e in self.entries:
            if e[0] == "class":
                self.own_keys[id(e[1])].add(e[2])
        self.lazy_children = []
        for name, module in list(sys.modules.items()):
            parent, _, child = name.rpartition(".")
            namespace = getattr(sys.modules.get(parent), "__dict__", None)
            if parent and isinstance(namespace, dict) and child not in namespace and isinstance(module, types.ModuleType):
                self.lazy_children.append((namespace, child, module, f"{name} (a submodule)"))
        self._fast_index()

    def before_trusted(self) -> list[str]:
        """Put the trusted environment back before instructor code runs; return what had changed."""
        changed = self._drift(restore=True)
        for s, handler in self.signals.items():
            if signal.getsignal(s) is not handler:
                changed.append(f"signal handler {signal.Signals(s).name}")
                try:
                    signal.signal(s, handler)
                except (OSError, ValueError, TypeError):
                    pass
        for which in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
            if signal.getitimer(which) != (0.0, 0.0):
                changed.append("signal.setitimer")
                signal.setitimer(which, 0)
        ns = self.ns
        if ns.get("__builtins__") is not builtins:
            changed.append("__builtins__")
            ns["__builtins__"] = builtins
        for name, value in self.trusted_bindings.items():
            if ns.get(name, _MISSING) is not value:
                changed.append(f"the name {name!r} (defined by an instructor cell)")
                if value is _MISSING:
                    ns.pop(name, None)
                else:
                    ns[name] = value
        for name, value in list(ns.items()):
            if name not in self.trusted_bindings:
                wrapped = self.guarded(value)
                if wrapped is not value:
                    ns[name] = wrapped
        return changed

    def student_threads(self) -> list[str]:
        """Threads started since the snapshot that are running student code."""
        out = []
        for ident, frame in sys._current_frames().items():
            if ident in self.threads or ident == threading.get_ident():
                continue
            f = frame
            while f is not None:
                if not self.trusted_code(f.f_code):
                    out.append(f"thread {ident} running {f.f_code.co_name}()")
                    break
                f = f.f_back
        return out

    def check(self) -> None:
        """After student code returns into a test: the environment must be as the test left it."""
        changed = self._drift(restore=True)
        if changed:
            self.tampered.extend(changed)
            raise TamperError("student code changed the test environment while the test ran: " + ", ".join(changed[:5]))

    # -------------------------------------------------------------- trust of code and types
    def trusted_code(self, code: types.CodeType) -> bool:
        if id(code) in self.trusted_codes:
            return True
        filename = code.co_filename
        if filename.startswith("<"):
            return filename.startswith("<frozen ")
        return os.path.realpath(filename).startswith(self.prefixes)

    def trusted_type(self, cls: type) -> bool:
        """A class from the libraries (C types, classes of the snapshot, classes that a library module
        defines), not one written in a student cell or dressed up as a library class."""
        known = self._type_trust.get(id(cls))
        if known is None:
            self._type_trust[id(cls)] = False  # (a class that inherits from itself through a metaclass)
            if not cls.__flags__ & (1 << 9) or id(cls) in self.dirs:  # a C type, or in the snapshot
                known = True
            else:
                known = self._library_class(cls) and all(self.trusted_type(b) for b in cls.__bases__)
            self._type_trust[id(cls)] = known
            self._keep.append(cls)
        return known

    def _library_class(self, cls: type) -> bool:
        module = sys.modules.get(getattr(cls, "__module__", None) or "")
        filename = getattr(module, "__file__", None)
        if module is None or module is sys.modules.get("__main__") or not filename:
            return False
        if not os.path.realpath(filename).startswith(self.prefixes):
            return False
        qualname = getattr(cls, "__qualname__", "")
        if "<locals>" not in qualname:  # it must really be where it says it is
            target = module
            for part in qualname.split("."):
                target = getattr(target, part, None)
            return target is cls
        # Made inside a library function (dataclasses, namedtuples): its code is library code or
        # generated by exec, never a student cell's.
        return all(self.trusted_code(f.__code__) or f.__code__.co_filename == "<string>"
                   for f in vars(cls).values() if isinstance(f, types.FunctionType))

    # -------------------------------------------------------------- wrapping student code
    def guarded(self, value):
        """A student function wrapped with the checks; a student class with its methods wrapped."""
        if type(value) is types.FunctionType:
            if id(value) in self.wrappers or self.trusted_code(value.__code__):
                return value
            return self._wrap(value)
        if isinstance(value, type) and not self.trusted_type(value):
            self._wrap_class(value)
        return value

    def _wrap(self, func, forbidden: bool = False):
        guard = self

        def call_student_code(*args, **kwargs):
            if forbidden and guard.depth == 0 and guard.in_trusted:
                raise GradingRefused(
                    f"{func.__qualname__}: the grader does not let an object's {func.__name__} method decide a test "
                    "(return plain values: tensors, arrays, numbers, tuples)")
            guard.depth += 1
            try:
                result = func(*args, **kwargs)
            finally:
                guard.depth -= 1
            if guard.depth == 0 and guard.in_trusted:
                guard.check()
                return guard.sanitize(result, func.__qualname__)
            return result

        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            try:
                setattr(call_student_code, attr, getattr(func, attr))
            except (AttributeError, TypeError):
                pass
        call_student_code.__wrapped__ = func
        self.wrappers.add(id(call_student_code))
        self._keep.append(call_student_code)
        return call_student_code

    def _wrap_class(self, cls: type) -> None:
        for klass in cls.__mro__:
            if id(klass) in self.wrapped_classes or self.trusted_type(klass):
                continue
            self.wrapped_classes.add(id(klass))
            self._keep.append(klass)
            for key, value in list(vars(klass).items()):
                bad = key in FORBIDDEN_DUNDERS
                try:
                    if type(value) is types.FunctionType and id(value) not in self.wrappers:
                        type.__setattr__(klass, key, self._wrap(value, bad))
                    elif isinstance(value, (staticmethod, classmethod)) and type(value.__func__) is types.FunctionType:
                        type.__setattr__(klass, key, type(value)(self._wrap(value.__func__, bad)))
                    elif isinstance(value, property):
                        parts = [self._wrap(f) if type(f) is types.FunctionType else f
                                 for f in (value.fget, value.fset, value.fdel)]
                        type.__setattr__(klass, key, property(*parts, value.__doc__))
                except (TypeError, AttributeError):
                    pass

    # -------------------------------------------------------------- sanitizing return values
    def sanitize(self, value, where: str, depth: int = 0):
        """Rebuild what student code returned from trusted types (see module doc)."""
        cls = type(value)
        if value is None or cls in (bool, int, float, complex, str, bytes):
            return value
        if depth > 50:
            raise GradingRefused(f"{where} returned a structure nested more than 50 levels deep")
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            if cls is not torch.Tensor and cls is not torch.nn.Parameter:
                with torch._C.DisableTorchFunctionSubclass():
                    value = torch.Tensor.as_subclass(value, torch.Tensor)
            instance = getattr(value, "__dict__", None)
            if instance:  # an instance attribute that shadows a tensor method (t.allclose = ...)
                for key in [k for k in instance if k in self.dirs.get(id(torch.Tensor), ())]:
                    del instance[key]
            return value
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray) and cls is not numpy.ndarray:
            return numpy.ndarray.view(value, numpy.ndarray)
        if cls in (list, tuple, set, frozenset):
            return cls(self.sanitize(v, where, depth + 1) for v in value)
        if cls is dict:
            return {self.sanitize(k, where, depth + 1): self.sanitize(v, where, depth + 1) for k, v in value.items()}
        if isinstance(value, (bool, int, float, complex, str, bytes)) and not self.trusted_type(cls):
            base = next(b for b in (bool, int, float, complex, str, bytes) if isinstance(value, b))
            return {int: int.__int__, bool: lambda v: bool(int.__int__(v)), float: float.__float__,
                    complex: complex.__complex__, str: str.__str__, bytes: bytes.__bytes__}[base](value)
        if isinstance(value, tuple) and not self.trusted_type(cls):
            fields = getattr(cls, "_fields", None)
            items = [self.sanitize(v, where, depth + 1) for v in tuple.__iter__(value)]
            if isinstance(fields, tuple) and all(type(f) is str for f in fields) and len(fields) == len(items):
                key = (cls.__name__, fields)
                if key not in self._namedtuples:
                    self._namedtuples[key] = namedtuple(re.sub(r"\W", "_", cls.__name__) or "Result", fields)
                return self._namedtuples[key](*items)
            return tuple(items)
        if isinstance(value, (list, dict, set)) and not self.trusted_type(cls):
            base = next(b for b in (list, dict, set) if isinstance(value, b))
            return self.sanitize(base(value), where, depth)
        if type(value) is types.FunctionType:
            return self.guarded(value)
        if not self.trusted_type(cls):
            bad = sorted(FORBIDDEN_DUNDERS & {k for k in _untrusted_attrs(cls, self)})
            if bad:
                raise GradingRefused(
                    f"{where} returned a {cls.__name__}, a class that defines {', '.join(bad[:4])}: the grader only "
                    "accepts plain values (tensors, arrays, numbers, tuples, modules) from graded functions")
            self._wrap_class(cls)
        return value


def _untrusted_attrs(cls: type, guard: Guard) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if not guard.trusted_type(klass):
            names |= set(vars(klass))
    if not guard.trusted_type(type(cls)):  # a metaclass written by the student
        names |= set(vars(type(cls)))
    return names


# ----------------------------------------------------------------------------- the loop
def _signed(key: bytes, message: dict) -> bytes:
    body = json.dumps(message, default=str)
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return f"{mac} {body}\n".encode()


def _error_info(exc: BaseException, filename: str) -> dict:
    """Exception type, message and the line of the segment where it happened (no other frames)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        line = exc.lineno
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a student exception whose __str__ fails
        message = "<unprintable message>"
    name = type(exc).__name__ if not isinstance(exc, (TamperError, GradingRefused)) else type(exc).__name__
    if isinstance(exc, MemoryError):
        message = "out of memory: the submission reached the grader's memory limit"
    if isinstance(exc, RecursionError):
        message = "maximum recursion depth exceeded (infinite recursion?)"
    return {"type": name, "message": message[:2000], "line": line}


def _display(*objs, **_):
    for obj in objs:
        print(repr(obj))


def main() -> int:
    reply_fd = os.dup(1)
    os.set_inheritable(reply_fd, False)
    log = os.open(os.environ.get("LLMCOURSE_WORKER_LOG", os.devnull), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)  # student code reading stdin gets EOF, never the grader's requests
    sys.stdin = io.StringIO("")
    sys.stdout = sys.__stdout__ = io.StringIO()
    sys.stderr = sys.__stderr__ = io.StringIO()
    init = json.loads(requests.readline())
    key = bytes.fromhex(init["key"])

    def reply(message: dict) -> None:
        os.write(reply_fd, _signed(key, message))

    main_module = types.ModuleType("__main__")
    ns = main_module.__dict__
    ns.update(__builtins__=builtins, display=_display)
    for name in init.get("preload", []):  # what instructor code imports, loaded before any student code
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - an optional module; the instructor cell will say if it matters
            pass
    sys.modules["__main__"] = main_module
    guard = Guard(ns)
    guard.answer_names = set(init.get("answer_names", []))
    guard.snapshot(init.get("preload", []))
    guard.index()
    shell_box: list = []

    def shell():
        if not shell_box:
            from IPython.core.interactiveshell import InteractiveShell

            sh = InteractiveShell.instance(user_module=main_module, user_ns=ns, history_length=0)
            sh.history_manager.enabled = False
            shell_box.append(sh)
            guard.snapshot(guard.preload)
            guard.index()
        return shell_box[0]

    ns["get_ipython"] = shell
    reply({"ready": True, "pid": os.getpid()})
    for raw in requests:
        request = json.loads(raw)
        if request.get("op") == "exit":
            break
        rid, trusted, source = request["id"], request["trusted"], request["source"]
        filename = (_TRUSTED_FILE if trusted else _STUDENT_FILE).format(rid)
        notes: list[str] = []
        start = time.perf_counter()
        out, err = io.StringIO(), io.StringIO()
        status, error = "ok", None
        try:
            if not trusted and _MAGIC.search(source):
                source = shell().transform_cell(source)
            code = compile(source, filename, "exec", dont_inherit=True)
        except BaseException as exc:  # noqa: BLE001 - a syntax error is the cell's result
            status, error = "error", _error_info(exc, filename)
        else:
            if trusted:
                guard.trust_code(code)
                restored = guard.before_trusted()
                if restored:
                    notes.append("restored before the test: " + ", ".join(sorted(set(restored))[:8]))
                threads = guard.student_threads()
                guard.tampered = []
                before = dict(ns)
            sys.stdout, sys.stderr = out, err
            guard.in_trusted = trusted
            try:
                if trusted and threads:
                    raise TamperError("a thread started by student code is still running: " + "; ".join(threads[:3]))
                exec(code, ns)
            except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are cell results too
                status, error = "error", _error_info(exc, filename)
            finally:
                guard.in_trusted = False
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            if trusted:
                late = guard._drift(restore=True)
                if (late or guard.tampered) and status == "ok":
                    status = "error"
                    error = {"type": "TamperError", "line": None, "message":
                             "student code changed the test environment while the test ran: "
                             + ", ".join(sorted(set(late + guard.tampered))[:5])}
                for name, value in ns.items():
                    if before.get(name, _MISSING) is not value and name not in guard.answer_names:
                        guard.trusted_bindings[name] = value
                for name in set(before) - set(ns):
                    if name not in guard.answer_names:
                        guard.trusted_bindings[name] = _MISSING
            else:
                changed = guard._drift(restore=False)
                if changed:
                    notes.append("changed library code: " + ", ".join(sorted(set(changed))[:8]))
        reply({"id": rid, "status": status, "error": error, "stdout": out.getvalue()[-4000:],
               "stderr": err.getvalue()[-4000:], "seconds": round(time.perf_counter() - start, 3), "notes": notes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
