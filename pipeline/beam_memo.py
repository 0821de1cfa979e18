"""Three of Beam's per-job Python costs, remembered instead of recomputed (local runners).

Profiling a small `imgpipe run` (BENCHMARKS.md, "Beam's fixed cost per job") found
most of a Beam job's time on the in-process runner in Beam's own bookkeeping, not
in the data work:

- **Signatures.** Beam asks for the argument names and defaults of every method
  of every DoFn again and again: to tell whether a DoFn keeps state or timers
  (`userstate.get_dofn_specs` runs `inspect.signature` on each of the ~50
  methods of a DoFn, for each transform, at construction and for each bundle).
  One small run made ~180,000 such calls for a few hundred distinct functions.
  `get_function_args_defaults` here remembers the answer per function object
  (a bound method by its function: binding only drops the first parameter) and
  computes it again when the function's code, defaults, `__signature__` or
  `__wrapped__` changed. Anything that is not a plain Python function or a
  method of one (builtins, partials, callable objects) goes to Beam each time.
- **Option views.** `PipelineOptions.view_as(cls)` parses the pipeline's flags
  again with argparse over every registered option (~1 ms) each time it is
  called, and Beam calls it several times for every transform it applies (to
  read a type-check or label setting, or a flag for each type-hint comparison):
  ~2,200 times in one small run. Every view of one options object shares that
  object's option values (a view's `_all_options` is the object's own dict;
  setting an option through any view sets it for all), so the view made first
  per (options object, class) is handed out again, while it still shares that
  dict.
- **State and timer specs.** `userstate.get_dofn_specs` answers "which state and
  timers does this DoFn declare" by walking `dir()` of the DoFn instance (~100
  names) and building a `MethodWrapper` for each bound method, every time it is
  asked: ~3,500 times in one small pipeline run, for each transform at
  construction and again for each bundle (BENCHMARKS.md, "The DoFn specs
  memo"). Most of the answer is decided by the DoFn's class: a method that is a
  plain function of the class reads the same defaults through every instance.
  That part is remembered per class, and checked on each call against the
  class's attributes along its MRO and its functions' code and defaults (a
  class changed at run time is walked again). The rest is asked again on every
  call, as Beam does: names the instance sets itself, properties and other
  descriptors whose value may depend on the instance, methods Beam inspects
  through an `_inspect_<name>` hook (the DoFn of `beam.Map` and friends), and
  bound methods of anything but a plain function or of a decorated one. Objects
  that are not DoFns, classes that customise attribute lookup (`__getattribute__`,
  `__getattr__`, `__class__`), `dir()` or the MRO, instances with attribute
  names that are not strings, and a DoFn with duplicate state parameters go to
  Beam's function, so its errors are its own; an error
  raised by a DoFn's own attribute (a property) propagates as from Beam's walk,
  which reads the attributes in the same order.

The answers are Beam's own (tests/test_beam_memo.py checks them against Beam's
functions for many kinds of callables, stateful DoFns included). `install()`
is called by imgpipe's local DirectRunner (pipeline/local_beam.py) when a
pipeline creates it, before any transform is applied; it is idempotent and
leaves Beam untouched when Beam's internals are not the ones this was written
against (then `installed()` is False and a debug line says why). Each part can
be left out (`install(parts=...)`, or e.g. `IMGPIPE_BEAM_MEMO=signatures,options` for
the local runner): the benchmarks measure them one at a time.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import types
import weakref
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_installed: dict[str, Any] = {}  # name -> Beam's original function


def installed() -> bool:
    return bool(_installed)


_MAX_WRAPPED = 32  # `__wrapped__` links followed before a function counts as not rememberable


def _snapshot(fn: types.FunctionType) -> tuple | None:
    """What inspect.signature reads from a function and the functions it wraps (`__wrapped__`,
    as functools.wraps sets it); a changed snapshot means ask again. None when the chain reaches
    something that is not a plain function (its signature may change with its state)."""
    out: list = []
    for _ in range(_MAX_WRAPPED):
        if type(fn) is not types.FunctionType:
            return None
        d = fn.__dict__
        wrapped = d.get("__wrapped__")
        out += (fn.__code__, fn.__defaults__, fn.__kwdefaults__, d.get("__signature__"), wrapped)
        if wrapped is None:
            return tuple(out)
        fn = wrapped
    return None


def _memo_args_defaults(original):
    """core.get_function_args_defaults, remembered per function object."""
    memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_function_args_defaults(f):
        bound = isinstance(f, types.MethodType)
        fn = f.__func__ if bound else f
        if type(fn) is not types.FunctionType:
            return original(f)
        snap = _snapshot(fn)
        if snap is None:
            return original(f)
        entry = memo.get(fn)
        # By identity: a default may be an object whose == is not a bool (a NumPy array).
        if entry is None or not _same(entry[0], snap):
            entry = (snap, {})
            memo[fn] = entry
        answers = entry[1]
        if bound not in answers:
            args, defaults = original(f)
            answers[bound] = (tuple(args), tuple(defaults))
        args, defaults = answers[bound]
        return list(args), list(defaults)  # callers get their own lists, as from Beam

    get_function_args_defaults.__wrapped_beam__ = original
    return get_function_args_defaults


def _memo_view_as(original):
    """PipelineOptions.view_as, one view per (options object, class) while it shares the values."""
    views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def view_as(self, cls):
        try:
            mine = views.get(self)
            if mine is None:
                mine = views[self] = {}
        except TypeError:  # not weak-referenceable or hashable: Beam's own view each time
            return original(self, cls)
        view = mine.get(cls)
        if view is None or view.__dict__.get("_all_options") is not self.__dict__.get("_all_options"):
            view = mine[cls] = original(self, cls)
        return view

    view_as.__wrapped_beam__ = original
    return view_as


_INSPECT = "_inspect_"  # Beam reads a method's arguments from `_inspect_<name>()` when it exists
_MAX_CLASSES = 4096  # DoFn classes remembered at once (the memo is emptied past it)

# Class attributes whose value through an instance is the same for every instance, and a bound
# method only when it is a function of the class: plain functions, static and class methods, and
# the descriptors of built-in types (slot wrappers, `__dict__`). Anything else with a `__get__`
# (properties, slots, user descriptors) may give each instance its own value.
_FIXED_DESCRIPTORS = (
    types.FunctionType,
    staticmethod,
    classmethod,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.BuiltinFunctionType,
    types.GetSetDescriptorType,
)


class _Fallback(Exception):
    """Ask Beam's own function: this DoFn or call is not one the memo answers."""


def _fixed(value: Any) -> bool:
    return isinstance(value, _FIXED_DESCRIPTORS) or not hasattr(type(value), "__get__")


_FUNCTION_STATE = operator.attrgetter("__code__", "__defaults__", "__kwdefaults__")
_FUNCTION_DICT = operator.attrgetter("__dict__")


def _same(a: tuple | list, b: tuple | list) -> bool:
    """Equal element by element by identity (a default's == need not be a bool)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


class _ClassSpecs:
    """What one DoFn class decides of get_dofn_specs' answer (see the module docstring), and what
    that was read from: every attribute along the MRO (but object's, which cannot change) and the
    code, defaults and attributes of its functions, compared by identity on each call.
    """

    __slots__ = ("mro", "attrs", "functions", "function_state", "function_dicts", "names", "fixed", "asked")

    def __init__(self, cls: type):
        self.mro = cls.__mro__
        self.attrs = [(c, tuple(c.__dict__), tuple(c.__dict__.values())) for c in self.mro if c is not object]
        functions = []
        for c in self.mro:
            if c is not object:
                for v in c.__dict__.values():
                    for _ in range(_MAX_WRAPPED):  # a classmethod around a staticmethod around ...
                        if not isinstance(v, (classmethod, staticmethod, types.MethodType)):
                            break
                        v = v.__func__
                    if type(v) is types.FunctionType:
                        functions.append(v)
        self.functions = tuple(functions)
        self.function_state = self._function_state()
        self.function_dicts = self._function_dicts()
        self.names: frozenset = frozenset()  # every name the class gives `dir()`
        self.fixed: tuple = ()  # (name, state specs, timer specs) of the class's methods that declare any
        self.asked: frozenset = frozenset()  # names whose answer may differ between instances

    def _function_state(self) -> tuple:
        return tuple(itertools.chain.from_iterable(map(_FUNCTION_STATE, self.functions)))

    def _function_dicts(self) -> tuple:
        # What inspect.signature reads from a function's __dict__: the number of entries, and the
        # two it follows where there are any.
        dicts = tuple(map(_FUNCTION_DICT, self.functions))
        marks = tuple(map(len, dicts))
        followed = tuple(x for d in dicts if d for x in (d.get("__signature__"), d.get("__wrapped__")))
        return marks, followed

    def unchanged(self, cls: type) -> bool:
        if cls.__mro__ != self.mro:  # tuples of classes: == is identity for classes
            return False
        for c, keys, values in self.attrs:
            d = c.__dict__
            if not (_same(keys, tuple(d)) and _same(values, tuple(d.values()))):
                return False
        if not _same(self.function_state, self._function_state()):
            return False
        marks, followed = self._function_dicts()
        return marks == self.function_dicts[0] and _same(followed, self.function_dicts[1])


def _method_specs(dofn: Any, name: str, wrapper: type, params: tuple) -> tuple[set, set]:
    """Beam's get_dofn_specs for one name of `dir(dofn)` (userstate.py, the loop's body)."""
    do_fn_param, state_param, timer_param = params
    if not isinstance(getattr(dofn, name, None), types.MethodType):
        return set(), set()
    method = wrapper(dofn, name)
    param_ids = [d.param_id for d in method.defaults if isinstance(d, do_fn_param)]
    if len(param_ids) != len(set(param_ids)):
        raise _Fallback  # Beam raises its own error for it
    return (
        {d.state_spec for d in method.defaults if isinstance(d, state_param)},
        {d.timer_spec for d in method.defaults if isinstance(d, timer_param)},
    )


def _memo_dofn_specs(original):
    """userstate.get_dofn_specs, with the part each DoFn class decides remembered per class."""
    from apache_beam.runners.common import MethodWrapper
    from apache_beam.transforms.core import DoFn, _DoFnParam, _StateDoFnParam, _TimerDoFnParam

    params = (_DoFnParam, _StateDoFnParam, _TimerDoFnParam)
    # By class, for the process's life as Beam's own caches are (an entry refers to its class
    # through the class's attributes, so weak keys would not let it go); emptied if a process
    # makes DoFn classes without end.
    memo: dict[type, _ClassSpecs] = {}

    def analyse(cls: type, dofn: Any) -> _ClassSpecs:
        entry = _ClassSpecs(cls)
        own = vars(dofn)
        names: dict[str, Any] = {}
        for c in reversed(cls.__mro__):  # the first class in the MRO that has a name wins
            names.update(c.__dict__)
        fixed, asked = [], set()
        for name, value in names.items():
            if not _fixed(value) or name in own or _INSPECT + name in names or _INSPECT + name in own:
                asked.add(name)  # the instance's own value, or one Beam reads through a hook
                continue
            bound = getattr(dofn, name, None)
            if isinstance(bound, types.MethodType) and (
                type(bound.__func__) is not types.FunctionType
                or "__wrapped__" in bound.__func__.__dict__
                or "__signature__" in bound.__func__.__dict__
            ):
                # A method of a callable object, whose state may change, or a decorated function,
                # whose signature is read through the function it wraps: asked on every call (the
                # signatures' own memo checks the whole chain).
                asked.add(name)
                continue
            state, timers = _method_specs(dofn, name, MethodWrapper, params)
            if state or timers:
                fixed.append((name, frozenset(state), frozenset(timers)))
        entry.names, entry.fixed, entry.asked = frozenset(names), tuple(fixed), frozenset(asked)
        return entry

    def answer(dofn: Any) -> tuple[set, set]:
        cls = type(dofn)
        if (
            not isinstance(dofn, DoFn)
            or cls.__getattribute__ is not object.__getattribute__
            or cls.__dir__ is not object.__dir__
            or hasattr(cls, "__getattr__")  # it could answer any `_inspect_<name>` Beam looks for
            or dofn.__class__ is not cls  # dir() lists what `__class__` names: a proxy or mock
            or type(cls).mro is not type.mro  # dir() follows __bases__, a custom mro() may not
            or type(getattr(dofn, "__dict__", None)) is not dict
            or not all(type(k) is str for k in vars(dofn))  # dir() would fail to sort them
        ):
            raise _Fallback
        entry = memo.get(cls)
        if entry is None or not entry.unchanged(cls):
            if len(memo) >= _MAX_CLASSES:
                memo.clear()
            entry = memo[cls] = analyse(cls, dofn)
        own = vars(dofn)
        again = set(entry.asked).union(own)
        for key in own:
            if key.startswith(_INSPECT) and key[len(_INSPECT) :] in entry.names:
                again.add(key[len(_INSPECT) :])
        state: set = set()
        timers: set = set()
        for name, s, t in entry.fixed:
            if name not in again:
                state |= s
                timers |= t
        for name in sorted(again):  # dir()'s order: properties read in the order Beam reads them
            s, t = _method_specs(dofn, name, MethodWrapper, params)
            state |= s
            timers |= t
        return state, timers

    def get_dofn_specs(dofn):
        # An error from reading the DoFn's own attributes (a property that raises) propagates as
        # from Beam's walk, which reads them in the same order; only what the memo declines goes to
        # Beam's function (so a property is not read twice).
        try:
            return answer(dofn)
        except _Fallback:
            return original(dofn)

    get_dofn_specs.__wrapped_beam__ = original
    return get_dofn_specs


PARTS = ("signatures", "options", "dofn_specs")


def unknown_parts(parts: Sequence[str]) -> list[str]:
    """The names in `parts` that are not parts of the memo (PARTS), sorted."""
    return sorted(set(parts) - set(PARTS))


def install(parts: tuple[str, ...] | None = None) -> bool:
    """Put the remembered versions of `parts` (default: all of PARTS) in place, once per process.

    True when they are in place. A second call leaves the parts of the first one as they are.
    """
    parts = PARTS if parts is None else tuple(parts)
    unknown = unknown_parts(parts)
    if unknown:
        raise ValueError(f"unknown Beam memo part(s) {unknown}: choose from {list(PARTS)}")
    with _lock:
        if _installed:
            return True
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
            from apache_beam.transforms import core, userstate
        except ImportError as e:
            log.debug("Beam memo not installed: %s", e)
            return False
        args_fn = getattr(core, "get_function_args_defaults", None)
        if args_fn is None:
            log.debug("Beam memo not installed: this Beam has no core.get_function_args_defaults")
            return False
        view_as = PipelineOptions.__dict__.get("view_as")
        if view_as is None:
            log.debug("Beam memo not installed: PipelineOptions defines no view_as")
            return False
        specs_fn = getattr(userstate, "get_dofn_specs", None)
        if specs_fn is None:
            log.debug("Beam memo not installed: this Beam has no userstate.get_dofn_specs")
            return False
        if "signatures" in parts:
            core.get_function_args_defaults = _memo_args_defaults(args_fn)
            _installed["get_function_args_defaults"] = args_fn
        if "options" in parts:
            PipelineOptions.view_as = _memo_view_as(view_as)
            _installed["view_as"] = view_as
        if "dofn_specs" in parts:
            userstate.get_dofn_specs = _memo_dofn_specs(specs_fn)
            _installed["get_dofn_specs"] = specs_fn
        return bool(_installed)


def uninstall() -> None:
    """Beam's own functions back (tests, benchmarks)."""
    with _lock:
        if not _installed:
            return
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.transforms import core, userstate

        if "view_as" in _installed:
            PipelineOptions.view_as = _installed["view_as"]
        if "get_function_args_defaults" in _installed:
            core.get_function_args_defaults = _installed["get_function_args_defaults"]
        if "get_dofn_specs" in _installed:
            userstate.get_dofn_specs = _installed["get_dofn_specs"]
        _installed.clear()
