"""pipeline/beam_memo.py gives Beam's own answers, follows changes, and keeps stateful DoFns working."""

from __future__ import annotations

import functools

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, TypeOptions
from apache_beam.options.pipeline_options_context import scoped_pipeline_options
from apache_beam.transforms import core, userstate
from apache_beam.typehints import typehints

from pipeline import beam_memo

_COUNT = userstate.ReadModifyWriteStateSpec("count", beam.coders.VarIntCoder())
_FLUSH = userstate.TimerSpec("flush", beam.TimeDomain.WATERMARK)


class _Counting(beam.DoFn):
    """Stateful: what get_dofn_specs must still find through the remembered signatures."""

    def process(self, element, count=beam.DoFn.StateParam(_COUNT), flush=beam.DoFn.TimerParam(_FLUSH)):  # noqa: B008 - how Beam declares state
        key, _ = element
        n = (count.read() or 0) + 1
        count.write(n)
        yield key, n

    @userstate.on_timer(_FLUSH)
    def on_flush(self):
        return []


class _Plain(beam.DoFn):
    def process(self, element, window=beam.DoFn.WindowParam, scale=2):
        yield element * scale

    @staticmethod
    def static(a, b=1):
        return a + b

    @classmethod
    def klass(cls, a, *rest, k=3, **kw):
        return a


def _function(a, b=2, *args, c, d=4, **kwargs):
    return a


def _wrapper(fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        return fn(*args, **kwargs)

    return inner


class _CallableObject:
    def __call__(self, x, y=0):
        return x


def _callables():
    plain = _Plain()
    return {
        "function": _function,
        "lambda": lambda x, y=1: x,
        "bound DoFn.process": plain.process,
        "stateful process": _Counting().process,
        "timer callback": _Counting().on_flush,
        "staticmethod": plain.static,
        "classmethod": plain.klass,
        "inherited DoFn method": plain.start_bundle,
        "functools.wraps": _wrapper(_function),
        "partial": functools.partial(_function, 1),
        "builtin": len,
        "builtin method": [].append,
        "callable object": _CallableObject(),
        "class": _Plain,
    }


@pytest.fixture
def memo():
    """The memo in place for the test, and Beam's own functions afterwards as before."""
    was = beam_memo.installed()
    assert beam_memo.install() and beam_memo.installed()
    yield
    if not was:
        beam_memo.uninstall()


@pytest.mark.parametrize("name", list(_callables()))
def test_args_and_defaults_are_beams_own_answers(memo, name):
    beams = core.get_function_args_defaults.__wrapped_beam__
    f = _callables()[name]
    for _ in range(3):  # the first answer computed, the next ones remembered
        assert core.get_function_args_defaults(f) == beams(f)


def test_a_changed_function_is_asked_again(memo):
    def f(a, b=1):
        return a

    assert core.get_function_args_defaults(f) == (["a", "b"], [1])
    f.__defaults__ = (5,)
    assert core.get_function_args_defaults(f) == (["a", "b"], [5])

    def g(x, y=0, z=1):
        return x

    f.__code__ = g.__code__
    f.__defaults__ = g.__defaults__
    assert core.get_function_args_defaults(f) == (["x", "y", "z"], [0, 1])


def test_defaults_without_a_boolean_equality_are_compared_by_identity(memo):
    import numpy as np

    def f(a, b=np.zeros(2)):  # noqa: B008 - the point of the test
        return a

    first = core.get_function_args_defaults(f)
    assert first[0] == ["a", "b"] and first[1][0] is f.__defaults__[0]
    f.__defaults__ = (np.ones(2),)  # == between the two arrays would raise
    again = core.get_function_args_defaults(f)
    assert again[1][0] is f.__defaults__[0]


def test_callers_get_their_own_lists(memo):
    args, defaults = core.get_function_args_defaults(_function)
    args.append("spoiled")
    defaults.clear()
    assert core.get_function_args_defaults(_function) == (["a", "b"], [2])


def test_bound_and_unbound_are_told_apart(memo):
    plain = _Plain()
    assert core.get_function_args_defaults(_Plain.process)[0][0] == "self"
    assert core.get_function_args_defaults(plain.process)[0][0] == "element"
    assert core.get_function_args_defaults(_Plain.process)[0][0] == "self"


def test_stateful_dofns_are_still_found(memo):
    assert userstate.is_stateful_dofn(_Counting())
    assert not userstate.is_stateful_dofn(_Plain())
    state, timers = userstate.get_dofn_specs(_Counting())
    assert state == {_COUNT} and timers == {_FLUSH}


def test_type_checks_give_beams_answers(memo):
    """is_consistent_with reads --disable_beartype through the remembered view: Beam's own answer."""
    beams_view = PipelineOptions.view_as.__wrapped_beam__
    pairs = [
        (int, float),
        (float, int),
        (typehints.List[int], typehints.List[typehints.Any]),
        (typehints.Tuple[int, str], typehints.Tuple[int, int]),
        (typehints.Union[int, str], typehints.Union[int, str, bytes]),
        (typehints.KV[str, int], typehints.Tuple[str, int]),
        (typehints.Dict[str, int], typehints.Dict[str, float]),
    ]
    for options in (None, PipelineOptions([]), PipelineOptions(["--disable_beartype"])):
        beartype = True if options is None else not beams_view(options, TypeOptions).disable_beartype
        with scoped_pipeline_options(options):
            for sub, base in pairs:
                expected = typehints.is_consistent_with(sub, base, use_beartype=beartype)
                assert typehints.is_consistent_with(sub, base) == expected, (options, sub, base)


def test_a_stateful_pipeline_runs_on_the_local_runner_with_the_memo():
    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline(argv=["--runner=pipeline.local_beam.DirectRunner"]) as p:
        counts = (
            p
            | beam.Create([("a", 1), ("b", 1), ("a", 1), ("a", 1)])
            | beam.ParDo(_Counting())
            | beam.combiners.Top.PerKey(1)
            | beam.MapTuple(lambda k, top: (k, top[0]))
        )
        assert_that(counts, equal_to([("a", 3), ("b", 1)]))
    assert beam_memo.installed()


def test_the_local_runner_installs_it_unless_told_not_to(monkeypatch):
    from pipeline import local_beam

    was = beam_memo.installed()
    beam_memo.uninstall()
    try:
        monkeypatch.setenv(local_beam.MEMO_ENV, "0")
        local_beam.DirectRunner()
        assert not beam_memo.installed()
        assert core.get_function_args_defaults.__name__ == "get_function_args_defaults"
        assert not hasattr(core.get_function_args_defaults, "__wrapped_beam__")
        assert not hasattr(PipelineOptions.view_as, "__wrapped_beam__")
        monkeypatch.delenv(local_beam.MEMO_ENV)
        local_beam.DirectRunner()
        assert beam_memo.installed()
        assert hasattr(core.get_function_args_defaults, "__wrapped_beam__")
        assert hasattr(PipelineOptions.view_as, "__wrapped_beam__")
        assert beam_memo.install()  # idempotent: still the one memo
        assert not hasattr(core.get_function_args_defaults.__wrapped_beam__, "__wrapped_beam__")
    finally:
        if not was:
            beam_memo.uninstall()


def test_option_views_are_shared_and_stay_live(memo):
    from apache_beam.options.pipeline_options import DebugOptions, StandardOptions

    beams = PipelineOptions.view_as.__wrapped_beam__
    options = PipelineOptions(
        ["--runner=DirectRunner", "--experiments=a", "--type_check_strictness=ALL_REQUIRED"]
    )
    first = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is first  # remembered
    for cls in (StandardOptions, DebugOptions, TypeOptions):
        mine, theirs = options.view_as(cls), beams(options, cls)
        assert type(mine) is cls
        assert {k: getattr(mine, k) for k in mine._visible_option_list()} == {  # noqa: SLF001
            k: getattr(theirs, k)
            for k in theirs._visible_option_list()  # noqa: SLF001
        }
    # A value set through any view (or Beam's own) is seen through the remembered one, both ways.
    beams(options, StandardOptions).runner = "Other"
    assert first.runner == "Other" and options.view_as(StandardOptions).runner == "Other"
    first.streaming = True
    assert beams(options, StandardOptions).streaming is True
    options.view_as(DebugOptions).add_experiment("b")
    assert beams(options, DebugOptions).experiments == ["a", "b"]
    # Another options object has its own views and values.
    other = PipelineOptions([])
    assert other.view_as(StandardOptions) is not first and other.view_as(StandardOptions).runner is None
    # An object whose values were replaced gets a new view of the new values.
    options._all_options = dict(options._all_options, runner="Third")  # noqa: SLF001
    assert options.view_as(StandardOptions) is not first
    assert options.view_as(StandardOptions).runner == "Third"
