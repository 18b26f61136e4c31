"""The agents behind the README's sample outputs: a CodeAgent on "gpt-4o" that hands the arithmetic to a managed
ToolCallingAgent named "calculator" on "gpt-4o-mini", whose first tool call (fetch_rate) fails. Offline: the models
are scripted (examples/scripted_model.py) but report tokens as real ones do, so costs are priced as for those models.

    sop-telemetry run -- python examples/demo_agents.py          # prints 59.97
    sop-telemetry run -- python examples/demo_agents.py --fail   # the CodeAgent's model raises: a failed task, exit 1
"""

import sys

import sop_telemetry  # noqa: F401 - every agent run in this process is now recorded
from smolagents import CodeAgent, ToolCallingAgent, tool
from smolagents.monitoring import LogLevel

from scripted_model import ScriptedModel


@tool
def fetch_rate(currency: str) -> float:
    """Returns today's exchange rate from US dollars to a currency.

    Args:
        currency: An ISO 4217 code such as EUR.
    """
    raise ConnectionError(f"rate service unavailable for {currency}")


@tool
def multiply(a: float, b: float) -> float:
    """Multiplies two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


def build_agent(fail: bool) -> CodeAgent:
    calculator = ToolCallingAgent(
        tools=[fetch_rate, multiply],
        model=ScriptedModel([("fetch_rate", {"currency": "EUR"}),
                             ("multiply", {"a": 3, "b": 19.99}),
                             ("final_answer", {"answer": "59.97"})],
                            usage=(850, 40), model_id="gpt-4o-mini"),
        name="calculator",
        description="Does arithmetic; can look up exchange rates.",
        verbosity_level=LogLevel.OFF,
    )
    code = 'total = calculator(task="What is 3 times 19.99, in dollars?")\nfinal_answer(59.97)'
    reply = (RuntimeError("model service unavailable") if fail
             else f"Thought: ask the calculator.\n<code>\n{code}\n</code>")
    return CodeAgent(tools=[], managed_agents=[calculator], verbosity_level=LogLevel.OFF,
                     model=ScriptedModel([reply], usage=(2300, 120), model_id="gpt-4o"))


if __name__ == "__main__":
    fail = "--fail" in sys.argv[1:]
    try:
        print(build_agent(fail).run("What do three items at 19.99 cost?"))
    except Exception as exc:  # the task is recorded as failed either way; say so and exit 1 like any failing program
        print(f"the agent failed: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
