"""Status values shared by the records and the recording code (kept apart from the pydantic models so that
recording can start without importing pydantic)."""

from enum import Enum


class TaskStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CallStatus(str, Enum):
    SUCCESS = "success"
    ERROR = "error"
    RUNNING = "running"
