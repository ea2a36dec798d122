"""Incidents as text in pytest's output: the failure of a test and the summary section."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._frames import Frame, is_user_file
from .._incidents import Incident

__all__ = ["failure_text", "group", "one_line", "short_path"]

_PHASES = {"setup": "in setup", "call": "while the test ran", "teardown": "in teardown"}


def short_path(file: str, root: Path) -> str:
    """``file`` relative to the rootdir when it is inside it, else as given."""
    try:
        relative = os.path.relpath(file, root)
    except ValueError:  # another drive on Windows
        return file
    return file if relative.startswith(os.pardir) else relative


def _where(frame: Frame | None, root: Path) -> str:
    if frame is None:
        return "no user frame on the stack"
    return f"{short_path(frame.file, root)}:{frame.line} in {frame.function}"


def group(incidents: Iterable[Incident]) -> list[tuple[Incident, int]]:
    """One entry per fingerprint (kind, api, site), first occurrence first, with its count."""
    first: dict[tuple[object, ...], Incident] = {}
    counts: dict[tuple[object, ...], int] = {}
    for incident in incidents:
        key = incident.fingerprint
        first.setdefault(key, incident)
        counts[key] = counts.get(key, 0) + 1
    return [(incident, counts[key]) for key, incident in first.items()]


def one_line(incident: Incident, root: Path, count: int = 1) -> str:
    """``kind: api at file:line in function (12.3 ms) x3``."""
    text = incident.kind
    if incident.api:
        text += f": {incident.api}"
    text += f" at {_where(incident.site, root)}"
    if incident.duration is not None:
        text += f" ({incident.duration * 1000:.1f} ms)"
    if count > 1:
        text += f" x{count}"
    return text


def _block(incident: Incident, count: int, root: Path, verbose: bool) -> list[str]:
    lines = [one_line(incident, root, count)]
    context = [f"thread {incident.thread}", f"loop {incident.loop}"]
    if incident.task:
        context.insert(0, f"task {incident.task}")
    if incident.action:
        context.append(f"action {incident.action}")
    lines.append("    " + " · ".join(context))
    if incident.framework != "none":
        lines.append(f"    {incident.framework} handler: {incident.handler}")
    shown = {k: v for k, v in incident.detail.items() if k != "sampled"}
    if shown:
        lines.append("    " + " ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    lines.append(f"    hint: {incident.hint}")
    if incident.stack:
        hidden = 0
        frames: list[str] = []
        for frame in incident.stack:
            if verbose or is_user_file(frame.file):
                frames.append(f"      {short_path(frame.file, root)}:{frame.line} in "
                              f"{frame.function}")
            else:
                hidden += 1
        title = "    stack, innermost first"
        if hidden:
            title += f" ({hidden} library frames hidden; -vv shows them)"
        lines.append(title + ":")
        lines.extend(frames)
    return lines


def failure_text(
    incidents: Sequence[Incident],
    failing: frozenset[str],
    when: str,
    root: Path,
    verbose: bool,
    report_failed: bool = False,
) -> str:
    """The report of a test that loopwatch fails (or the section added to a failed one).

    ``report_failed``: the phase failed on its own (its own error): an allow marker would
    not make it pass, so none is suggested.
    """
    grouped = group(incidents)
    kinds = sorted({i.kind for i, _ in grouped if i.kind in failing})
    lines = [
        f"loopwatch: {len(incidents)} event-loop incident(s) {_PHASES.get(when, when)}",
        "",
    ]
    for incident, count in grouped:
        lines.extend(_block(incident, count, root, verbose))
        lines.append("")
    raised = any(i.kind == "reentry" and i.action == "raised" for i, _ in grouped)
    if report_failed and raised:
        lines.append(
            "The policy is raise: the nested call was not run and asyncio's RuntimeError "
            "failed the test, so allowing the kind would not make it pass. Fix the call as "
            "the hint says, or run it with --loopwatch-on-reentry=offload."
        )
    elif kinds and not report_failed:
        quoted = ", ".join(f'"{k}"' for k in kinds)
        lines.append(
            f"If this is intended, allow it in this test: @pytest.mark.loopwatch(allow=[{quoted}])"
        )
    return "\n".join(lines).rstrip() + "\n"
