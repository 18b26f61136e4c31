"""Status values shared by the records and the recording code (kept apart from the pydantic models so that
recording can start without importing pydantic)."""

from enum import Enum


class TaskStatus(str, Enum):
    """How a task or an agent run stands: `running` until it ends `completed`, `failed` or `cancelled` (interrupted,
    or a stream closed early). Pass one to `collector.end_task(task_id, TaskStatus.COMPLETED)`."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CallStatus(str, Enum):
    """How a model or tool call ended: `success` or `error` (`running` only while a streamed call is open)."""

    SUCCESS = "success"
    ERROR = "error"
    RUNNING = "running"
