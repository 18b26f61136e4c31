"""Wrappers generated with the wrapped function's own parameters (integrations/_signatures.py), on their own and as
the generate patches of real smolagents classes."""

from __future__ import annotations

import inspect
import traceback
from typing import Any, List

import pytest
from fakes import add
from smolagents import ToolCallingAgent
from smolagents.models import ChatMessage, MessageRole, Model
from test_integration_smolagents import written_session

from sop_telemetry.integrations import _signatures
from sop_telemetry.integrations import smolagents as integration

_SENTINEL = object()
SEEN: List[tuple] = []

# Records what the template sees, then calls the original.
TEMPLATE = '''
def make(original):
    def wrapped(PARAMS):
        SEEN.append((SELF, ARGS, KWARGS))
        return original(CALL)
    return wrapped
'''
make = _signatures.factory(TEMPLATE, {"SEEN": SEEN})


def plain(self, a, b=2, *, c=_SENTINEL):
    return (self, a, b, c)


def star(self, a, *rest, k, **extra):
    return (self, a, rest, k, extra)


def posonly(self, a, /, b=None, **extra):
    return (self, a, b, extra)


def kwonly_extra(self, a, *, c=1, **extra):
    return (self, a, c, extra)


def only_self(self):
    return self


def no_params():
    return "none"


def shadowing(self, original, SEEN=None):
    return (self, original, SEEN)


CASES = [
    (plain, [((1, 10), {}), ((1,), {"a": 10, "b": 3}), ((1, 10), {"c": 4})]),
    (star, [((1, 10, 11, 12), {"k": 5, "z": 6}), ((1,), {"a": 10, "k": 5})]),
    (posonly, [((1, 10), {}), ((1, 10, 20), {"x": 1}), ((1, 10), {"b": 20})]),
    (kwonly_extra, [((1, 10), {}), ((1, 10), {"c": 2}), ((1,), {"a": 10, "c": 2, "z": 3})]),
    (only_self, [((1,), {})]),
]


@pytest.mark.parametrize("original,calls", CASES, ids=[case[0].__name__ for case in CASES])
def test_a_generated_wrapper_takes_the_original_parameters_and_passes_every_argument_on(original, calls):
    wrapper = make(original)
    assert wrapper.__code__.co_varnames[:4] != ("self", "args", "kwargs")  # the specialized one, not the generic
    assert wrapper.__defaults__ is original.__defaults__ and wrapper.__kwdefaults__ is original.__kwdefaults__
    for args, kwargs in calls:
        SEEN.clear()
        assert wrapper(*args, **kwargs) == original(*args, **kwargs)
        assert SEEN[0][0] == args[0]
    assert inspect.signature(wrapper, follow_wrapped=False) == inspect.signature(original)


def test_with_no_extra_keywords_the_original_is_called_without_an_empty_dict():
    """`original(..., **extra)` builds a tuple and a dict even when `extra` is empty; smolagents passes no extra
    keywords to generate, so the wrapper calls the original plainly unless there are some. Both calls pass the same
    arguments; which one runs is read from the generated source (what tracebacks show), which, unlike the bytecode's
    op names, is the same on every Python version."""
    passing = _signatures.factory("def make(original):\n def w(PARAMS):\n  return original(CALL)\n return w", {})
    wrapper = passing(posonly)
    assert "return (original(self, a, b) if not extra else original(self, a, b, **extra))" in inspect.getsource(wrapper)
    assert wrapper(1, 10) == (1, 10, None, {}) and wrapper(1, 10, x=2) == (1, 10, None, {"x": 2})
    assert wrapper(1, 10, b=3) == (1, 10, 3, {})  # b is a parameter of its own, not an extra keyword


def test_what_the_template_sees_of_the_arguments():
    SEEN.clear()
    make(plain)(1, 10, c=4)
    make(star)(1, 10, 11, k=5, z=6)
    make(posonly)(1, 10)
    assert SEEN == [(1, (10, 2), {"c": 4}), (1, (10, 11), {"k": 5, "z": 6}), (1, (10, None), {})]


def test_a_default_object_reaches_the_original_as_that_very_object():
    assert make(plain)(1, 10)[3] is _SENTINEL


def _is_generic(wrapper: Any) -> bool:
    return wrapper.__code__.co_varnames[:3] == ("self", "args", "kwargs")


def test_a_function_with_no_positional_parameter_gets_the_generic_wrapper():
    assert _is_generic(make(no_params)) and _is_generic(make(lambda *a: a))
    assert make(lambda *a: a)(1, 2) == (1, 2)


def test_a_parameter_named_like_a_name_of_the_template_gets_the_generic_wrapper():
    wrapper = make(shadowing)
    assert _is_generic(wrapper)
    SEEN.clear()
    assert wrapper(1, 2, SEEN=3) == (1, 2, 3)
    assert SEEN == [(1, (2,), {"SEEN": 3})]


def test_a_callable_that_is_not_a_function_gets_the_generic_wrapper():
    wrapper = make(max)
    assert _is_generic(wrapper) and wrapper(1, 2) == 2


def test_a_traceback_through_a_generated_wrapper_shows_its_line():
    def failing(self, x):
        raise ValueError(x)

    with pytest.raises(ValueError) as info:
        make(failing)(1, 2)
    text = "".join(traceback.format_exception(info.value))
    assert "(generated wrapper" in text and "return original(self, x)" in text


# -- as the patches of smolagents ----------------------------------------------------------------------------------
class KeywordModel(Model):
    """A model whose generate has its own shape: a keyword-only option with a sentinel default, extra keywords."""

    def __init__(self) -> None:
        super().__init__(model_id="keyword-model")
        self.options: List[Any] = []

    def generate(self, messages, stop_sequences=None, *, temperature=_SENTINEL, **kwargs):  # noqa: ANN001
        self.options.append((temperature, sorted(kwargs)))
        from fakes import tool_calls_message

        if len(self.options) == 1:
            return tool_calls_message([("add", {"a": 1, "b": 2})], (7, 3))
        return tool_calls_message([("final_answer", {"answer": "3"})], (5, 1))


def test_a_model_with_its_own_generate_signature_is_recorded_and_called_unchanged(manager):
    model = KeywordModel()
    assert integration._is_ours(vars(KeywordModel)["generate"])
    assert "temperature" in vars(KeywordModel)["generate"].__code__.co_varnames  # specialized
    assert ToolCallingAgent(tools=[add], model=model, verbosity_level=0).run("add") == "3"
    assert [t for t, _ in model.options] == [_SENTINEL, _SENTINEL]
    assert model.options[0][1] == ["tools_to_call_from"]  # a keyword the signature does not name: in **kwargs
    model.generate([ChatMessage(role=MessageRole.USER, content="hi")], temperature=0.5, seed=1)
    assert model.options[-1] == (0.5, ["seed"])
    [task] = [t for t in written_session(manager)["tasks"] if t["description"] == "add"]
    assert [(c["prompt_tokens"], c["completion_tokens"]) for c in task["llm_calls"]] == [(7, 3), (5, 1)]
    assert [s["step_number"] for s in task["steps"]] == [1, 2]


def test_content_capture_reads_the_messages_however_they_were_passed(manager, storage_dir):
    manager.initialize({"storage_dir": str(storage_dir), "capture_content": True, "auto_cleanup": False,
                        "fsync": False})
    model = KeywordModel()
    model.generate([ChatMessage(role=MessageRole.USER, content="by position")])
    model.generate(messages=[ChatMessage(role=MessageRole.USER, content="by keyword")])
    calls = manager.get_collector().snapshot()["tasks"][0]["llm_calls"]
    assert [c["input_preview"] for c in calls] == ["by position", "by keyword"]
