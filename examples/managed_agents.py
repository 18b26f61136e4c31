"""A manager agent delegating to a sub-agent: the sub-agent's run is recorded nested under its parent, inside the
same task, with its own model calls and tools.

    python examples/managed_agents.py
"""

import sop_telemetry  # noqa: F401
from smolagents import ToolCallingAgent, tool

from scripted_model import ScriptedModel
from sop_telemetry import TelemetryManager


@tool
def multiply(a: float, b: float) -> float:
    """Multiplies two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


calculator = ToolCallingAgent(
    tools=[multiply],
    model=ScriptedModel([("multiply", {"a": 6, "b": 7}), ("final_answer", {"answer": "42"})],
                        usage=(400, 25), model_id="gpt-4o-mini"),
    name="calculator",
    description="Does arithmetic.",
    verbosity_level=0,
)
manager_agent = ToolCallingAgent(
    tools=[],
    managed_agents=[calculator],
    model=ScriptedModel([("calculator", {"task": "What is 6 times 7?"}), ("final_answer", {"answer": "42"})],
                        usage=(1200, 80), model_id="gpt-4o"),
    verbosity_level=0,
)
print("Answer:", manager_agent.run("Ask the calculator for 6 times 7."))

session = TelemetryManager.get_instance().get_session_data()
task = session.tasks[-1]
children = {}
for agent in task.agents:
    children.setdefault(agent.parent_agent_id, []).append(agent)


def show(parent_id, depth):
    for agent in children.get(parent_id, []):
        calls = [c for c in task.llm_calls if c.agent_id == agent.agent_id]
        tools = [t.tool_name for t in task.tools if t.agent_id == agent.agent_id]
        used = sum(c.total_tokens or 0 for c in calls)
        print(f"{'  ' * depth}{agent.agent_name} ({agent.agent_type}, {agent.model}): "
              f"{len(calls)} model calls, {used} tokens, tools {tools}")
        show(agent.agent_id, depth + 1)


show(None, 0)
print(f"Session total: {session.total_tokens.total_tokens} tokens")
