"""Two of Beam's per-job Python costs, remembered instead of recomputed (local runners).

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

The answers are Beam's own (tests/test_beam_memo.py checks them against Beam's
functions for many kinds of callables, stateful DoFns included). `install()`
is called by imgpipe's local DirectRunner (pipeline/local_beam.py) when a
pipeline creates it, before any transform is applied; it is idempotent and
leaves Beam untouched when Beam's internals are not the ones this was written
against (then `installed()` is False and a debug line says why).
"""

from __future__ import annotations

import logging
import threading
import types
import weakref
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_installed: dict[str, Any] = {}  # name -> Beam's original function


def installed() -> bool:
    return bool(_installed)


def _snapshot(fn: types.FunctionType) -> tuple:
    """What inspect.signature reads from a function; a changed snapshot means ask again."""
    d = fn.__dict__
    return (fn.__code__, fn.__defaults__, fn.__kwdefaults__, d.get("__signature__"), d.get("__wrapped__"))


def _memo_args_defaults(original):
    """core.get_function_args_defaults, remembered per function object."""
    memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_function_args_defaults(f):
        bound = isinstance(f, types.MethodType)
        fn = f.__func__ if bound else f
        if type(fn) is not types.FunctionType:
            return original(f)
        snap = _snapshot(fn)
        entry = memo.get(fn)
        # By identity: a default may be an object whose == is not a bool (a NumPy array).
        if entry is None or any(a is not b for a, b in zip(entry[0], snap, strict=True)):
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


def install() -> bool:
    """Put the remembered versions in place (once per process). True when they are in place."""
    with _lock:
        if _installed:
            return True
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
            from apache_beam.transforms import core
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
        core.get_function_args_defaults = _memo_args_defaults(args_fn)
        PipelineOptions.view_as = _memo_view_as(view_as)
        _installed.update(get_function_args_defaults=args_fn, view_as=view_as)
        return True


def uninstall() -> None:
    """Beam's own functions back (tests, benchmarks)."""
    with _lock:
        if not _installed:
            return
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.transforms import core

        PipelineOptions.view_as = _installed["view_as"]
        core.get_function_args_defaults = _installed["get_function_args_defaults"]
        _installed.clear()
