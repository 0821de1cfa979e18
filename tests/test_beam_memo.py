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


@pytest.fixture
def without_memo():
    """Beam's own functions at the start of the test, and the memo as it was afterwards."""
    was = beam_memo.installed()
    beam_memo.uninstall()
    yield
    beam_memo.uninstall()
    if was:
        beam_memo.install()


def test_the_local_runner_installs_it_unless_told_not_to(monkeypatch, without_memo):
    from pipeline import local_beam

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


# get_dofn_specs: the part a DoFn's class decides is remembered per class; what an instance can
# change is asked on every call. Each case compares the memo's answer (or error) with Beam's.

_OTHER = userstate.BagStateSpec("other", beam.coders.VarIntCoder())


class _Shadowed(beam.DoFn):
    """Some instances replace `process` with another DoFn's stateful method."""

    def process(self, element):
        yield element


class _ByProperty(beam.DoFn):
    """A property that gives a stateful bound method on some instances only."""

    def __init__(self, stateful: bool):
        super().__init__()
        self.stateful = stateful

    @property
    def flush_method(self):
        return _Counting().process if self.stateful else None

    def process(self, element):
        yield element


class _WithGetattr(beam.DoFn):
    def __getattr__(self, name):
        if name == "_inspect_process":
            return lambda: (["element", "count"], [beam.DoFn.StateParam(_OTHER)])
        raise AttributeError(name)

    def process(self, element):
        yield element


class _Duplicate(beam.DoFn):
    def process(self, element, a=beam.DoFn.StateParam(_COUNT), b=beam.DoFn.StateParam(_COUNT)):  # noqa: B008 - how Beam declares state
        yield element


class _Hooked(beam.DoFn):
    def process(self, element):
        yield element


class _ClassProperty(beam.DoFn):
    """An instance that names another class as its __class__ (as mocks and proxies do)."""

    __class__ = property(lambda self: object)  # noqa: PLE0237 - the point of the case

    def on_flush(self, t=beam.DoFn.TimerParam(_FLUSH)):  # noqa: B008 - how Beam declares timers
        return []


class _Raising(beam.DoFn):
    @property
    def broken(self):
        raise RuntimeError("this property cannot be read")

    def process(self, element):
        yield element


class _Decorated(beam.DoFn):
    @_wrapper
    def process(self, element, count=beam.DoFn.StateParam(_COUNT)):  # noqa: B008 - how Beam declares state
        yield element


class _CallableMethod:
    def __call__(self, dofn, element, count=beam.DoFn.StateParam(_OTHER)):  # noqa: B008 - how Beam declares state
        return [element]


def _specs_or_error(get_dofn_specs, dofn):
    try:
        return get_dofn_specs(dofn)
    except Exception as e:  # the memo must raise the same as Beam
        return type(e), str(e)


def _agree(*dofns):
    for dofn in dofns:
        for _ in range(2):  # the first answer computes the class's part, the second reads it
            mine = _specs_or_error(userstate.get_dofn_specs, dofn)
            assert mine == _specs_or_error(userstate.get_dofn_specs.__wrapped_beam__, dofn), dofn


def _dofn_cases():
    shadowed = _Shadowed()
    shadowed.process = _Counting().process  # an instance attribute: Beam sees this one
    hooked = _Hooked()
    hooked._inspect_process = lambda: (["element", "count"], [beam.DoFn.StateParam(_OTHER)])

    class _ClassLevelCallable(beam.DoFn):
        pass

    import types as _types

    _ClassLevelCallable.odd = _types.MethodType(_CallableMethod(), _ClassLevelCallable())
    odd_key = _Plain()
    vars(odd_key)[1] = "a name that is not a string"
    return {
        "plain": [_Plain()],
        "stateful with a timer": [_Counting()],
        "beam.Map's DoFn": [beam.Map(lambda x: x).fn, beam.Map(lambda x, n=1: x + n).fn],
        "beam.FlatMap with a window": [beam.FlatMap(lambda x, w=beam.DoFn.WindowParam: [x]).fn],
        "an instance's own method": [_Shadowed(), shadowed, _Shadowed()],
        "a property": [_ByProperty(False), _ByProperty(True), _ByProperty(False)],
        "__getattr__": [_WithGetattr()],
        "duplicate state parameters": [_Duplicate()],
        "an instance's _inspect_ hook": [_Hooked(), hooked, _Hooked()],
        "a bound method of a callable object": [_ClassLevelCallable()],
        "not a DoFn": [beam.transforms.core.RestrictionProvider(), object()],
        "a __class__ property": [_ClassProperty()],
        "a property that raises": [_Raising()],
        "a decorated method": [_Decorated()],
        "an attribute name that is not a string": [odd_key],
    }


@pytest.mark.parametrize("case", list(_dofn_cases()))
def test_dofn_specs_are_beams_own_answers(memo, case):
    _agree(*_dofn_cases()[case])


def test_instances_of_one_class_get_their_own_answers(memo):
    plain, shadowed = _Shadowed(), _Shadowed()
    shadowed.process = _Counting().process
    assert userstate.get_dofn_specs(plain) == (set(), set())
    assert userstate.get_dofn_specs(shadowed) == ({_COUNT}, {_FLUSH})
    assert userstate.get_dofn_specs(plain) == (set(), set())
    assert not userstate.is_stateful_dofn(_ByProperty(False))
    assert userstate.is_stateful_dofn(_ByProperty(True))


def test_a_class_changed_at_run_time_is_walked_again(memo):
    class Changing(beam.DoFn):
        def process(self, element):
            yield element

    dofn = Changing()
    assert userstate.get_dofn_specs(dofn) == (set(), set())

    def stateful(self, element, count=beam.DoFn.StateParam(_COUNT)):  # noqa: B008 - how Beam declares state
        yield element

    Changing.process = stateful  # a method replaced
    assert userstate.get_dofn_specs(dofn) == ({_COUNT}, set())
    stateful.__defaults__ = (beam.DoFn.StateParam(_OTHER),)  # its defaults replaced in place
    assert userstate.get_dofn_specs(dofn) == ({_OTHER}, set())

    def on_flush(self, t=beam.DoFn.TimerParam(_FLUSH)):  # noqa: B008 - how Beam declares timers
        return []

    Changing.on_flush = on_flush  # a method added
    assert userstate.get_dofn_specs(dofn) == ({_OTHER}, {_FLUSH})
    del Changing.on_flush
    assert userstate.get_dofn_specs(dofn) == ({_OTHER}, set())
    _agree(dofn, Changing())


def test_a_subclass_is_answered_for_its_own_methods(memo):
    class Base(beam.DoFn):
        def process(self, element):
            yield element

    class Child(Base):
        def process(self, element, count=beam.DoFn.StateParam(_COUNT)):  # noqa: B008 - how Beam declares state
            yield element

    assert userstate.get_dofn_specs(Base()) == (set(), set())
    assert userstate.get_dofn_specs(Child()) == ({_COUNT}, set())
    Base.process = Child.process  # the base changed under a class already answered
    assert userstate.get_dofn_specs(Base()) == ({_COUNT}, set())
    _agree(Base(), Child())


def test_a_remembered_class_is_not_walked_again():
    """The memo alone (not installed): Beam's walk runs only for what the memo must not answer."""
    calls = []

    def beams(dofn):
        calls.append(dofn)
        return (
            userstate.get_dofn_specs.__wrapped_beam__(dofn)
            if beam_memo.installed()
            else userstate.get_dofn_specs(dofn)
        )

    specs = beam_memo._memo_dofn_specs(beams)  # noqa: SLF001 - the part under test
    counting = _Counting()
    for _ in range(5):
        assert specs(counting) == ({_COUNT}, {_FLUSH})
        assert specs(_Plain()) == (set(), set())
    assert calls == []
    with pytest.raises(ValueError, match="duplicate process method parameters"):
        specs(_Duplicate())
    assert specs(object()) == (set(), set())
    assert len(calls) == 2  # Beam's own error, and an object that is no DoFn


def test_the_local_runner_installs_the_parts_it_is_told(monkeypatch, without_memo):
    from pipeline import local_beam

    monkeypatch.setenv(local_beam.MEMO_ENV, "signatures, options")
    local_beam.DirectRunner()
    assert hasattr(core.get_function_args_defaults, "__wrapped_beam__")
    assert hasattr(PipelineOptions.view_as, "__wrapped_beam__")
    assert not hasattr(userstate.get_dofn_specs, "__wrapped_beam__")
    beam_memo.uninstall()
    monkeypatch.setenv(local_beam.MEMO_ENV, "dofn_specs")
    local_beam.DirectRunner()
    assert hasattr(userstate.get_dofn_specs, "__wrapped_beam__")
    assert not hasattr(core.get_function_args_defaults, "__wrapped_beam__")
    beam_memo.uninstall()
    monkeypatch.setenv(local_beam.MEMO_ENV, "signatures,dofn-specs")
    with pytest.raises(
        ValueError, match=r"IMGPIPE_BEAM_MEMO='signatures,dofn-specs': unknown part\(s\) \['dofn-specs'\]"
    ):
        local_beam.DirectRunner()
    assert not beam_memo.installed()
    with pytest.raises(ValueError, match="unknown Beam memo part"):
        beam_memo.install(("signature",))


def test_a_decorated_method_follows_the_function_it_wraps(memo):
    dofn = _Decorated()
    assert userstate.get_dofn_specs(dofn) == ({_COUNT}, set())
    # inspect.signature reads the wrapped function's defaults: a change there is seen.
    _Decorated.process.__wrapped__.__defaults__ = (beam.DoFn.StateParam(_OTHER),)
    try:
        assert userstate.get_dofn_specs(dofn) == ({_OTHER}, set())
        _agree(dofn)
    finally:
        _Decorated.process.__wrapped__.__defaults__ = (beam.DoFn.StateParam(_COUNT),)


def test_a_wrapped_functions_arguments_follow_the_function_it_wraps(memo):
    def inner(a, b=1):
        return a

    outer = _wrapper(inner)
    assert core.get_function_args_defaults(outer) == (["a", "b"], [1])
    inner.__defaults__ = (2,)
    assert core.get_function_args_defaults(outer) == (["a", "b"], [2])
