"""The live terminal view of ``shardq watch``: a bar per round and phase, and the job's bar with its ETA.

Only imported when the output is a terminal (``Watch`` decides), so a pipe, a script or a
worker host never loads ``rich``. The view is a ``rich.live.Live`` over a ``rich.progress.Progress``:
lines printed with ``log`` (failures, late results) scroll above it, and its last frame stays
on screen when it stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.spinner import Spinner
from rich.text import Text

from shardq.cli.common import duration, terminal_console
from shardq.core.budgets import cost_of

if TYPE_CHECKING:
    from shardq.cli.watch import Snapshot
    from shardq.core.jobstore import JobRecord
    from shardq.core.operations import PhaseProgress

# The most recent (round, phase) rows shown; earlier ones fold into one line, so a 100-round job
# fits a terminal.
ROWS_SHOWN = 6
JOB_ROW = ("job", -1, "")


class MarkColumn(ProgressColumn):
    """A spinner on the phase that runs; ✓ or ✗ on a closed one."""

    def __init__(self) -> None:
        super().__init__()
        self.spinner = Spinner("dots", style="blue")

    def render(self, task: Task) -> RenderableType:
        """The task's mark, or the spinner's frame while it runs."""
        mark = task.fields.get("mark", "")
        return Text.from_markup(mark) if mark else self.spinner.render(task.get_time())


class LiveView:
    """Redraws a watched job in place: one bar per recent (round, phase) and the whole job's bar.

    Parameters
    ----------
    out:
        The terminal stream.
    clock:
        Monotonic seconds (the same clock ``Watch`` measures the elapsed time with).
    """

    def __init__(self, out: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.console = terminal_console(out)
        self.clock = clock
        self.started = clock()
        self.progress = Progress(
            MarkColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=32),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            auto_refresh=False,
        )
        self.rows: dict[tuple[str, int, str], TaskID] = {}
        self.folded = Text()
        self.footer: list[Text] = []
        self.deadline: float | None = None
        self.live = Live(
            console=self.console,
            get_renderable=self.renderable,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def start(self) -> None:
        """Show the view (hides the cursor until ``stop``)."""
        self.live.start()

    def stop(self) -> None:
        """Draw the last frame and leave it on screen."""
        self.live.stop()

    def log(self, text: str, colour: str | None = None) -> None:
        """A line above the view (it scrolls; the view stays at the bottom)."""
        self.console.print(Text(text, style=colour or ""))

    def renderable(self) -> RenderableType:
        """The current frame: folded rows, the bars, the late results and the round's deadline."""
        lines: list[RenderableType] = [self.folded] if self.folded else []
        lines.append(self.progress.get_renderable())
        lines.extend(self.footer)
        if self.deadline is not None:
            left = self.deadline - time.time()
            lines.append(Text(f"round closes at its deadline in {duration(max(0.0, left))}", style="dim"))
        return Group(*lines)

    def update(
        self,
        job: JobRecord,
        rows: Sequence[PhaseProgress],
        snap: Snapshot,
        *,
        left: int,
        late: int,
        stall: str | None = None,
        global_text: dict[int, str] | None = None,
    ) -> None:
        """Show one poll: each recent phase's counters, the job's, its rate and ETA, late results,
        and why the job stands still when it does (``stall``: the ETA is withheld meanwhile).

        ``global_text``: round → what its reduce reported of the global model, in words; shown on
        the round's reduce row, the round's headline (the shards' means are training metrics).
        """
        from shardq.core import rounds

        shown = rows[-ROWS_SHOWN:]
        hidden = len(rows) - len(shown)
        self.folded = Text()
        if hidden:
            last = rows[hidden - 1].round + 1
            which = "round 1" if last == 1 else f"rounds 1-{last}"
            self.folded = Text(f"  {which}: {hidden} earlier phase(s) closed", style="dim")
        keep = {("phase", p.round, p.phase) for p in shown} | {JOB_ROW}
        for key in [k for k in self.rows if k not in keep]:
            self.progress.remove_task(self.rows.pop(key))
        for p in shown:
            model = (global_text or {}).get(p.round) if p.phase == "reduce" else None
            self._phase_row(
                job, p, running=p is rows[-1] and not job.terminal, current=p is rows[-1], model=model
            )
        self._job_row(job, rows, snap, left)
        self.footer = (
            [Text(f"late: {late} result(s) arrived after their round closed (not counted)", style="yellow")]
            if late
            else []
        )
        if stall is not None:
            self.footer.append(Text(f"stalled: {stall}", style="yellow"))
        # What the job's counted outcomes cost so far, against its budget (shardq.core.spend).
        cost = cost_of(job.view().to_dict())
        if cost is not None:
            self.footer.append(Text(f"cost: {cost}", style="yellow" if job.budget_stop else ""))
        due = rounds.due_at(job) if job.phase == "train" and not job.terminal else None
        self.deadline = due
        self.live.refresh()

    def _phase_row(
        self, job: JobRecord, p: PhaseProgress, *, running: bool, current: bool, model: str | None = None
    ) -> None:
        key = ("phase", p.round, p.phase)
        finished = p.done + p.failed
        # A phase the job ended in without succeeding (failed, cancelled) is marked as failed too.
        ended_badly = current and job.terminal and job.status != "SUCCEEDED"
        mark = "" if running else ("[red]✗[/]" if p.failed or ended_badly else "[green]✓[/]")
        notes = [
            f"[red]{p.failed} failed[/]" if p.failed else "",
            f"[yellow]{p.diverged} diverged[/]" if p.diverged else "",
        ]
        # The global model's metrics (rich markup escaped: a metric name is the user's).
        notes.append(f"[bold]global[/] {escape(model)}" if model else "")
        detail = " · ".join(n for n in notes if n)
        if not current and finished < p.total and p.phase == "train":
            # The job moved on before every participant reported: the round closed at its quorum
            # or its deadline (the results still to come are late).
            detail = (detail + " · " if detail else "") + "[dim]closed early (quorum or deadline)[/]"
        description = f"round {p.round + 1}/{job.rounds} {p.phase}"
        if key not in self.rows:
            # Rows are added in (round, phase) order, so the job's row must move to the end.
            self._drop(JOB_ROW)
            self.rows[key] = self.progress.add_task(description, total=p.total, detail="", mark="")
        self.progress.update(self.rows[key], completed=finished, total=p.total, detail=detail, mark=mark)

    def _job_row(self, job: JobRecord, rows: Sequence[PhaseProgress], snap: Snapshot, left: int) -> None:
        finished = sum(p.done + p.failed for p in rows)
        diverged = sum(p.diverged for p in rows)
        parts = [f"{snap.rate:.1f} tasks/s" if snap.rate is not None else "-- tasks/s"]
        eta = "ETA —" if snap.stall is not None else f"ETA {duration(snap.eta_s)}"
        parts.append(eta if not job.terminal else job.status.lower())
        parts.append(f"elapsed {duration(self.clock() - self.started)}")
        if diverged:
            parts.append(f"[yellow]{diverged} diverged[/]")
        style = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(job.status, "bold")
        fields: dict[str, Any] = {
            "total": finished + left,
            "completed": finished,
            "detail": " · ".join(parts),
            "mark": "[green]✓[/]" if job.status == "SUCCEEDED" else ("[red]✗[/]" if job.terminal else ""),
        }
        if JOB_ROW not in self.rows:
            self.rows[JOB_ROW] = self.progress.add_task(f"[{style}]job[/]", **fields)
        else:
            self.progress.update(self.rows[JOB_ROW], description=f"[{style}]job[/]", **fields)

    def _drop(self, key: tuple[str, int, str]) -> None:
        if key in self.rows:
            self.progress.remove_task(self.rows.pop(key))
