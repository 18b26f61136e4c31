"""Quick start: one line of telemetry, an agent run, and where the numbers went.

Runs offline: the model is scripted (examples/scripted_model.py) but reports tokens like a real one.

    python examples/quickstart.py
"""

import sop_telemetry  # noqa: F401 - the one line: every smolagents agent run in this process is now recorded
from smolagents import ToolCallingAgent, tool

from scripted_model import ScriptedModel
from sop_telemetry import TelemetryManager


@tool
def get_weather(city: str) -> str:
    """Returns the weather for a city.

    Args:
        city: The city's name.
    """
    return {"Paris": "sunny, 21°C", "Oslo": "rain, 9°C"}.get(city, "unknown")


model = ScriptedModel([
    ("get_weather", {"city": "Paris"}),
    ("get_weather", {"city": "Oslo"}),
    ("final_answer", {"answer": "Paris is sunny (21°C); Oslo has rain (9°C)."}),
])
agent = ToolCallingAgent(tools=[get_weather], model=model, verbosity_level=0)
print("Agent:", agent.run("What is the weather in Paris and in Oslo?"))

manager = TelemetryManager.get_instance()
path = manager.flush_data()  # optional: the file is written when the task ends and at exit anyway
session = manager.get_session_data()
task = session.tasks[-1]
print(f"\nSession file: {path}")
print(f"Task {task.task_id}: {task.status.value} in {task.duration:.3f}s")
print(f"  model calls: {len(task.llm_calls)}, tool calls: {len(task.tools)}, steps: {len(task.steps)}")
usage = session.total_tokens
print(f"  tokens: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens}")
if usage.cost_estimate is not None:
    print(f"  estimated cost: ${usage.cost_estimate:.6f}")
for call in task.tools:
    print(f"  tool {call.tool_name} (step {call.step_number}): {call.status.value}, {call.duration * 1000:.2f} ms")
