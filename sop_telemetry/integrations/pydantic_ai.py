"""pydantic-ai instrumentation: agent runs, model requests, tool calls and steps, with no change to user code.

Usage::

    import sop_telemetry                       # installs this when pydantic_ai is imported (the registry's hook)
    from sop_telemetry.integrations import pydantic_ai as integration
    integration.uninstall()                    # every patched attribute back to the original object
    integration.install()

What is patched (all undone by `uninstall()`), through the shared patching helpers:
- `Agent.iter`: every run goes through it (`run`, `run_sync`, `run_stream`, `run_stream_events`, `iter` itself, and
  the wrapper agents, which call the wrapped agent's `iter`). The async context manager it returns is proxied: a run
  outside any other is a task; a run started inside another (a tool of agent A runs agent B) is an AgentExecution
  nested under A in A's task. The run is the current context's run between entering and leaving the block, so the
  asyncio tasks pydantic-ai starts for tools inherit it, and concurrent runs in one event loop stay apart.
- `request` and `request_stream` of `Model` and of every subclass that defines them (and those defined later): the
  innermost call records, so a wrapper model (InstrumentedModel, FallbackModel, a user's WrapperModel) does not
  count its wrapped model's request twice, and each attempt of a fallback is its own call. Tokens are the
  response's own `RequestUsage`, per request: never the run's `RunUsage`. A response that omitted usage
  (`unmeasured_requests`) is "not reported".
- `call_tool` of `AbstractToolset` and of every subclass that defines it: the innermost toolset records (the
  wrapper and combined toolsets delegate); the output toolset records nothing (its "tool" is the run's answer). A
  tool that raises `ModelRetry` is a call with `retry_requested`, distinct from a tool that raised.

Why method wrappers and not a capability injected into each run (pydantic-ai's hook API, which sees the same
events): pydantic-ai resolves and composes its capabilities for every run, and one more capability, even an empty
one, costs a run several times the whole budget (docs/pydantic_ai.md has the measurement). Nor
`Agent.instrument_all`: that setting is the user's (Logfire sets it), and nothing here touches it, so their spans
keep flowing whatever order things are set up in.

Steps: each model request and the tool calls that answer it are one step, numbered by pydantic-ai's `run_step`.
A model response is recorded when the run moves on from it (a tool starts, the next request starts, the run ends):
if the run then fails on that very response (`UsageLimitExceeded`, `UnexpectedModelBehavior`), the call fails
with the run's error type while keeping the tokens the provider reported.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Callable, Optional, Tuple

from .. import recorder
from ..collector import current, switch
from ..error_handler import guard, report
from ..registry import DidNotEnable, Integration
from .patching import Patcher, subclasses

FRAMEWORK = "pydantic_ai"
_clock = recorder.clock


class _Slot:
    """The model request or tool call in progress in this context: a nested one (a wrapper delegating) marks it,
    and only the innermost records."""

    __slots__ = ("inner",)

    def __init__(self) -> None:
        self.inner = False


_request: ContextVar[Optional[_Slot]] = ContextVar("sop_telemetry_pydantic_ai_request", default=None)
_tool: ContextVar[Optional[_Slot]] = ContextVar("sop_telemetry_pydantic_ai_tool", default=None)

# Filled by setup(): pydantic-ai's exception classes and its current-RunContext reader.
_retry_errors: Tuple[type, ...] = ()
_model_failures: Tuple[type, ...] = ()
_run_context: Callable[[], Any] = lambda: None


def _reset(var: ContextVar, token: Any) -> None:
    try:
        var.reset(token)
    except ValueError:  # left in another context than it was entered in (counted; the run still ends)
        report("pydantic_ai.run", RuntimeError("a run was left in another context than it was entered in"))


def _model_name(model: Any) -> Optional[str]:
    if model is None or isinstance(model, str):
        return model
    return getattr(model, "model_name", None)


def _usage(usage: Any) -> Optional[recorder.Usage]:
    """A snapshot of a RequestUsage, or None when the response omitted usage."""
    if usage is None or getattr(usage, "unmeasured_requests", None):
        return None
    input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
    if not input_tokens and not output_tokens and not usage.has_values():
        return None  # (pydantic-ai before `unmeasured_requests`: an empty usage is an omitted one)
    return recorder.Usage(input_tokens, output_tokens, cached_tokens=getattr(usage, "cache_read_tokens", None),
                          reasoning_tokens=getattr(usage, "output_reasoning_tokens", None))


# -- per-run state -------------------------------------------------------------------------------------------------
class _RunState:
    """What one run remembers between events (kept in its handle's `ext`): the step in progress and the model call
    it has not recorded yet."""

    __slots__ = ("step", "step_start", "step_end", "pending", "tokens", "agent_run")

    def __init__(self) -> None:
        self.step: Optional[int] = None
        self.step_start = 0.0
        self.step_end = 0.0
        self.pending: Optional[tuple] = None  # model_call's (model, usage, start, end, streamed, step, previews)
        self.tokens: Optional[tuple] = None  # (current run, tool slot, request slot) as before the run
        self.agent_run: Any = None


def _state(run: Any) -> Optional[_RunState]:
    ext = getattr(run, "ext", None)
    return ext if ext.__class__ is _RunState else None


def _flush(run: Any, state: _RunState, error: Any = None) -> None:
    pending, state.pending = state.pending, None
    if pending is not None:
        model, usage, start, end, streamed, step, previews = pending
        if error is None and not streamed and previews is None and recorder.model_returned(run, model, usage, step,
                                                                                            start, end):
            return
        sent, answer = previews or (None, None)
        recorder.model_call(model, usage, start, end, run=run, streamed=streamed, step=step, error=error,
                            input=sent, output=answer)


def _capturing(run: Any) -> bool:
    # A run's handle has no queue of its own exactly when content is captured (or it has no collector): only then
    # is the manager asked.
    return getattr(run, "pending", None) is None and recorder.capturing()


def _text(parts: Any) -> Optional[str]:
    """The text of a message's parts, for a preview: text and prompts as they are, anything else by its repr."""
    texts = [content if isinstance(content, str) else repr(content)
             for content in (getattr(part, "content", None) for part in parts or ()) if content is not None]
    return "\n".join(texts) if texts else None


def _model_previews(messages: Any, response: Any) -> tuple:
    """(the last message sent, the reply), read at once: the messages list is the run's."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    return _text(getattr(last, "parts", None)), _text(getattr(response, "parts", None))


def _close_step(run: Any, state: _RunState, error: Any = None) -> None:
    if state.step is not None:
        recorder.record_step(state.step, "action", state.step_start, state.step_end, run=run, error=error)
        state.step = None


def _enter_step(run: Any, state: _RunState, step: Optional[int], t0: float) -> None:
    """A model request of step `step` starts: the step before it, if another, is over."""
    if step != state.step or step is None:
        _close_step(run, state)
        state.step, state.step_start = step, t0
    state.step_end = t0


# -- model requests ------------------------------------------------------------------------------------------------
def _step_now(ctx: Any = None) -> Optional[int]:
    """The run step of the request starting now: from the RunContext `request_stream` is given, else from the one
    pydantic-ai makes current around `request`."""
    if ctx is None:
        ctx = _run_context()
    step = getattr(ctx, "run_step", None)
    return step if step.__class__ is int else None


def _request_ended(run: Any, step: Optional[int], model: Any, usage: Any, t0: float, t1: float, streamed: bool,
                   exc: Optional[BaseException], previews: Optional[tuple] = None) -> None:
    """Records a finished model request of `run` (read when it started): the response the run moved on from is
    recorded first, and this one waits for the run to move on from it (see the module's docstring)."""
    name = _model_name(model)
    usage = _usage(usage)
    state = _state(run)
    if state is not None:
        _flush(run, state)
        _enter_step(run, state, step, t0)
        state.step_end = t1
        if exc is None:
            state.pending = (name, usage, t0, t1, streamed, step, previews)
            return
    sent, answer = previews or (None, None)
    recorder.model_call(name, usage, t0, t1, run=run, streamed=streamed, step=step, error=exc, input=sent,
                        output=answer)


def _request_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    async def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not switch.enabled:
            return await original(self, *args, **kwargs)
        outer = _request.get()
        if outer is not None:
            outer.inner = True  # a wrapper model delegating to this one: this call records, not the wrapper's
        slot = _Slot()
        token = _request.set(slot)
        run, step = current.get(), _step_now()
        t0 = _clock()
        try:
            response = await original(self, *args, **kwargs)
        except BaseException as exc:
            _request.reset(token)
            if not slot.inner:
                _record_request(self, run, step, t0, None, exc, args)
            raise
        _request.reset(token)
        if not slot.inner:
            _record_request(self, run, step, t0, response, None, args)
        return response

    return request


def _record_request(model: Any, run: Any, step: Optional[int], t0: float, response: Any,
                    exc: Optional[BaseException], args: tuple) -> None:
    try:
        t1 = _clock()
        if run is recorder.DISABLED:
            return
        name = getattr(response, "model_name", None) or _model_name(model)
        previews = _model_previews(args[0] if args else None, response) if _capturing(run) else None
        _request_ended(run, step, name, getattr(response, "usage", None), t0, t1, False, exc, previews)
    except Exception as error:  # noqa: BLE001 - the guard
        report("pydantic_ai.model", error)


class _ContextProxy:
    """Stands in for an async context manager of pydantic-ai's: what entering it gives is the original's, and
    `_done(exc)` is told how the block was left (None: normally), after the original has been left."""

    __slots__ = ("_cm",)

    def __init__(self, cm: Any) -> None:
        self._cm = cm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cm, name)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            suppressed = await self._cm.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            self._done(error)
            raise
        self._done(None if suppressed else exc)
        return suppressed

    def _done(self, exc: Optional[BaseException]) -> None:
        raise NotImplementedError


class _TracedStream(_ContextProxy):
    """Stands in for the async context manager `request_stream` returns: the same stream object, and the request
    recorded (with the usage the stream reported by then) when the block is left, however it is left."""

    __slots__ = ("_model", "_ctx", "_messages", "_t0", "_stream", "_slot", "_run", "_step")

    def __init__(self, cm: Any, model: Any, ctx: Any, messages: Any) -> None:
        super().__init__(cm)
        self._model, self._ctx, self._messages = model, ctx, messages
        self._run: Any = None
        self._step: Optional[int] = None
        self._t0 = 0.0
        self._stream: Any = None
        self._slot: Optional[_Slot] = None

    async def __aenter__(self) -> Any:
        outer = _request.get()
        if outer is not None:
            outer.inner = True
        slot = self._slot = _Slot()
        token = _request.set(slot)
        self._run, self._step = current.get(), _step_now(self._ctx)
        self._ctx = None
        self._t0 = _clock()
        try:
            self._stream = await self._cm.__aenter__()
        except BaseException as exc:
            _request.reset(token)
            if not slot.inner:
                self._done(exc)
            raise
        _request.reset(token)
        return self._stream

    def _done(self, exc: Optional[BaseException]) -> None:
        slot = self._slot
        if slot is None or slot.inner:
            return
        self._slot = None
        try:
            stream, usage = self._stream, None
            if stream is not None:
                usage = stream.usage
                if callable(usage):
                    usage = usage()  # (pydantic-ai before 2.x's property)
            t1 = _clock()
            if self._run is recorder.DISABLED:
                return
            name = getattr(stream, "model_name", None) or _model_name(self._model)
            previews = None
            if _capturing(self._run):
                previews = guard("pydantic_ai.model", _model_previews, self._messages, stream.get() if stream is not
                                 None else None)
            self._messages = None
            _request_ended(self._run, self._step, name, usage, self._t0, t1, True, exc, previews)
        except Exception as error:  # noqa: BLE001 - the guard
            report("pydantic_ai.model", error)


def _request_stream_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def request_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        cm = original(self, *args, **kwargs)
        if not switch.enabled:
            return cm
        return _TracedStream(cm, self, args[3] if len(args) > 3 else kwargs.get("run_context"),
                             args[0] if args else kwargs.get("messages"))

    return request_stream


# -- tool calls ----------------------------------------------------------------------------------------------------
def _call_tool_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    async def call_tool(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not switch.enabled:
            return await original(self, *args, **kwargs)
        outer = _tool.get()
        if outer is not None:
            outer.inner = True  # a wrapper or combined toolset delegating: the innermost toolset records
        slot = _Slot()
        token = _tool.set(slot)
        _tool_started()
        t0 = _clock()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            _tool.reset(token)
            if not slot.inner:
                _record_tool(args, kwargs, t0, exc, None)
            raise
        _tool.reset(token)
        if not slot.inner:
            _record_tool(args, kwargs, t0, None, result)
        return result

    return call_tool


def _silent_call_tool_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    """The output toolset's: its "tool" is how the model gives the run's answer, not a tool call; it only keeps the
    toolsets around it from recording the call."""

    async def call_tool(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = _tool.get()
        if outer is not None:
            outer.inner = True
        return await original(self, *args, **kwargs)

    return call_tool


def _tool_started() -> None:
    """The run acts on the response it has in hand: it did not fail on it, and it is recorded now (before the calls
    its tools make, a delegated agent's included)."""
    try:
        run = current.get()
        state = _state(run)
        if state is not None and state.pending is not None:
            _flush(run, state)
    except Exception as error:  # noqa: BLE001 - the guard
        report("pydantic_ai.tool", error)


def _record_tool(args: tuple, kwargs: dict, t0: float, exc: Optional[BaseException], result: Any) -> None:
    try:
        t1 = _clock()
        run = current.get()
        if run is recorder.DISABLED:
            return
        name = args[0] if args else kwargs.get("name")
        ctx = args[2] if len(args) > 2 else kwargs.get("ctx")
        step = getattr(ctx, "run_step", None)
        state = _state(run)
        if state is not None and state.step == step:
            state.step_end = max(state.step_end, t1)
        retry = False
        if exc is not None and isinstance(exc, _retry_errors):
            retry = True
            cause = exc.__cause__
            if cause is not None and isinstance(cause, _retry_errors):
                exc = cause  # a ToolRetryError made from the tool's ModelRetry: the tool's own error
        if step.__class__ is not int:
            step = None
        if exc is None and recorder.tool_returned(run, name, step, t0, t1):
            return
        arguments = output = None
        if _capturing(run):
            arguments = args[1] if len(args) > 1 else kwargs.get("tool_args")
            output = result
        recorder.tool_call(name, t0, t1, run=run, step=step, error=exc, retry_requested=retry, arguments=arguments,
                           output=output)
    except Exception as error:  # noqa: BLE001 - the guard
        report("pydantic_ai.tool", error)


# -- agent runs ----------------------------------------------------------------------------------------------------
class _TracedRun(_ContextProxy):
    """Stands in for the async context manager `Agent.iter` returns: the same AgentRun, the run recorded from
    entering the block to leaving it, and the current context's run meanwhile."""

    __slots__ = ("_agent", "_model", "_prompt", "_run", "_state", "_start")

    def __init__(self, cm: Any, agent: Any, model: Any, prompt: Any) -> None:
        super().__init__(cm)
        self._agent, self._model, self._prompt = agent, model, prompt
        self._run: Any = None
        self._state: Optional[_RunState] = None
        self._start = 0.0

    async def __aenter__(self) -> Any:
        self._start = time.time()
        try:
            agent_run = await self._cm.__aenter__()
        except BaseException as exc:
            self._begin(None)  # a run that could not start is a failed one
            self._done(exc)
            raise
        self._begin(agent_run)
        return agent_run

    def _begin(self, agent_run: Any) -> None:
        try:
            agent = self._agent
            # The name is read after the original's __aenter__: pydantic-ai infers it (`infer_name`) there.
            name = getattr(agent, "name", None)
            model = self._model if self._model is not None else getattr(agent, "model", None)
            # The prompt is content: kept (as the task's description) only when the user opted in.
            task = self._prompt if self._prompt is not None and recorder.capturing() else ""
            run = recorder.begin_run(FRAMEWORK, type(agent).__name__, name, task=task,
                                     model=_model_name(model), owner=agent, start=self._start)
            if run is recorder.DISABLED:
                return
            state = run.ext = _RunState()
            state.agent_run = agent_run
            # A run inside a tool call (delegation) is not part of that call: the calls it makes record themselves.
            state.tokens = (recorder.enter(run), _tool.set(None), _request.set(None))
            self._run, self._state = run, state
        except Exception as error:  # noqa: BLE001 - the guard
            report("pydantic_ai.run", error)

    def _done(self, exc: Optional[BaseException]) -> None:
        run, state = self._run, self._state
        if run is None or state is None:
            return
        self._run = self._state = None
        try:
            if state.tokens is not None:
                run_token, tool_token, request_token = state.tokens
                _reset(_request, request_token)
                _reset(_tool, tool_token)
                recorder.leave(run_token)
            # The run failed on the response it had in hand (over a usage limit, an answer it could not use):
            # that call failed too.
            _flush(run, state, exc if exc is not None and isinstance(exc, _model_failures) else None)
            _close_step(run, state, exc)
            status = None
            if exc is None and getattr(state.agent_run, "result", True) is None:
                status = "cancelled"  # the block was left before the run finished (an `iter` stopped early)
            state.agent_run = None
            recorder.end_run(run, error=exc, status=status)
        except Exception as error:  # noqa: BLE001 - the guard
            report("pydantic_ai.run", error)


def _iter_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def iter(self: Any, *args: Any, **kwargs: Any) -> Any:
        cm = original(self, *args, **kwargs)
        if not switch.enabled:
            return cm
        prompt = args[0] if args else kwargs.get("user_prompt")
        return _TracedRun(cm, self, kwargs.get("model"), prompt)

    return iter


# -- the contract --------------------------------------------------------------------------------------------------
class PydanticAIIntegration(Integration):
    name = "pydantic_ai"
    module = "pydantic_ai"
    distribution = "pydantic-ai-slim"
    # 2.x: tested on 2.78. The hooks used exist since 1.0 except `get_current_run_context` (step numbers of model
    # requests), but 1.x is not tested, so it is left alone with one warning.
    supported = ">=2.0,<3"

    def __init__(self) -> None:
        super().__init__()
        self.patches = Patcher("pydantic_ai")

    def setup(self) -> None:
        global _retry_errors, _model_failures, _run_context
        try:
            from pydantic_ai import Agent, exceptions, models
            from pydantic_ai._output import OutputToolset
            from pydantic_ai.toolsets import AbstractToolset
        except ImportError as exc:
            raise DidNotEnable(f"pydantic_ai does not have what this integration hooks ({exc})") from None
        try:
            from pydantic_ai._run_context import get_current_run_context

            _run_context = get_current_run_context
        except ImportError:
            _run_context = lambda: None  # noqa: E731 - model requests then record no step number
        _retry_errors = tuple(cls for cls in (exceptions.ModelRetry, getattr(exceptions, "ToolRetryError", None))
                              if cls is not None)
        _model_failures = (exceptions.UsageLimitExceeded, exceptions.UnexpectedModelBehavior)

        patches = self.patches

        def patch_model(cls: type) -> None:
            patches.wrap(cls, "request", _request_wrapper)
            patches.wrap(cls, "request_stream", _request_stream_wrapper)

        def patch_toolset(cls: type) -> None:
            silent = isinstance(cls, type) and issubclass(cls, OutputToolset)
            patches.wrap(cls, "call_tool", _silent_call_tool_wrapper if silent else _call_tool_wrapper)

        try:
            patches.wrap(Agent, "iter", _iter_wrapper)
            for cls in subclasses(models.Model):
                patch_model(cls)
            patches.hook_subclasses(models.Model, patch_model)
            for cls in subclasses(AbstractToolset):
                patch_toolset(cls)
            patches.hook_subclasses(AbstractToolset, patch_toolset)
        except BaseException:
            patches.undo()
            raise

    def teardown(self) -> None:
        self.patches.undo()


integration = PydanticAIIntegration()
install, uninstall, is_installed = integration.install, integration.uninstall, integration.is_installed

__all__ = ["integration", "install", "uninstall", "is_installed", "PydanticAIIntegration"]
