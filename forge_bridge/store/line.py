"""Where a queued task stands: its place among the tasks waiting for an agent slot, or the earlier task of its
own issue it waits for, and how busy the slots are — decided from what the scheduler says, without I/O."""
from __future__ import annotations

from dataclasses import dataclass, field

from forge_bridge.models import Task, TaskState


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Line:
    """A snapshot: the agent line (task ids in slot order), the tasks it names, and the slots."""
    order: list[str]                 # Scheduler.agent_line()
    tasks: dict[str, Task]           # at least every task named in `order` and every task asked about
    slots_busy: int
    slots: int
    hosts: dict[str, str] = field(default_factory=dict)   # task -> the host it waits for (Scheduler.waits_on)

    def waiting(self) -> list[str]:
        """The queued tasks of the agent line, in the order they will start."""
        return [tid for tid in self.order if tid in self.tasks and self.tasks[tid].state is TaskState.QUEUED]

    def stands(self, task: Task, issue_line: list[str]) -> str:
        """"2nd in line · 3 of 3 agent slots busy", or what of its own issue it waits for; "" once it started."""
        if task.state is not TaskState.QUEUED:
            return ""
        slots = f"{self.slots_busy} of {self.slots} agent slots busy"
        if issue_line and issue_line[0] != task.id:
            ahead = self.tasks.get(issue_line[0])
            if ahead is not None and ahead.state is TaskState.RUNNING:
                return f"waits for the running task of this issue · {slots}"
            return f"waits for an earlier task of this issue · {slots}"
        if task.id in self.hosts:
            return f"waits for a free agent on {self.hosts[task.id]}, which keeps its agent session · {slots}"
        waiting = self.waiting()
        if task.id in waiting:
            return f"{ordinal(waiting.index(task.id) + 1)} in line · {slots}"
        return f"about to start · {slots}"
