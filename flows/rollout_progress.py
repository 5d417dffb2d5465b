"""Progress of a running rollout: a log line per look, and an updating markdown artifact.

Shadow windows and canary steps last hours to days in production; every look at the
pair stream or the counters logs where the stage stands (pairs so far, current step and
traffic share, gates so far, time left) and rewrites the ``rollout-progress-{model}``
artifact, so the Prefect UI shows the same without reading logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.artifacts import artifact_key


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a rollout stage stands at one look.

    Attributes:
        model, candidate: what is rolled out.
        stage: ``"shadow"`` or ``"canary step N/M"``.
        traffic_percent: candidate share of live traffic (0: shadow, mirrored only).
        observed: pairs (shadow) or candidate predictions (canary) so far.
        needed: how many the gate needs to judge.
        seconds_left: time left in the window or step.
        gates: the gates' standing so far, in words.
    """

    model: str
    candidate: str
    stage: str
    traffic_percent: float
    observed: int
    needed: int
    seconds_left: float
    gates: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One log line."""
        gates = "; ".join(self.gates) if self.gates else "no gate crossed"
        return (
            f"{self.model} v{self.candidate} {self.stage}: {self.traffic_percent:g} % of "
            f"traffic, {self.observed}/{self.needed} observed, {self.seconds_left:.0f} s "
            f"left; {gates}"
        )

    def markdown(self) -> str:
        """The progress table."""
        rows = [
            f"# Rollout of {self.model} version {self.candidate}: in progress",
            "",
            "| | |",
            "|---|---|",
            f"| stage | {self.stage} |",
            f"| candidate traffic | {self.traffic_percent:g} % |",
            f"| observed so far | {self.observed} (gate needs {self.needed}) |",
            f"| time left in stage | {self.seconds_left:.0f} s |",
            "",
        ]
        rows += [f"- {g}" for g in self.gates] or ["- no gate crossed so far"]
        return "\n".join(rows)


async def report_progress(progress: Progress) -> None:
    """Log the line and rewrite the progress artifact."""
    get_run_logger().info("%s", progress.line())
    await acreate_markdown_artifact(
        progress.markdown(),
        key=artifact_key("rollout-progress", progress.model),
        description=f"Progress of the rollout of {progress.model} v{progress.candidate}",
    )


async def finish_progress(model: str, candidate: str, outcome: str) -> None:
    """Close the progress artifact with the rollout's outcome (the report has the rest)."""
    await acreate_markdown_artifact(
        "\n".join(
            [
                f"# Rollout of {model} version {candidate}: {outcome}",
                "",
                f"Finished. The report is the {artifact_key('rollout', model)} artifact.",
            ]
        ),
        key=artifact_key("rollout-progress", model),
        description=f"Progress of the rollout of {model} v{candidate}",
    )
