"""What makes an accuracy table worth trusting: a 95% interval (Wilson) beside each accuracy, TIE against the best
member item by item (won, lost, tied), and how often and when the leader changed."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion, in percent: unlike p ± z·se it stays inside 0..100 and
    keeps its coverage for small n and for accuracies near 0 or 100."""
    if n == 0:
        return 0.0, 100.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def head_to_head(ensemble: list[bool], member: list[bool]) -> dict:
    """Item by item: the ensemble right where the member is wrong (won), the reverse (lost), or both alike."""
    won = sum(a and not b for a, b in zip(ensemble, member))
    lost = sum(b and not a for a, b in zip(ensemble, member))
    return {"won": won, "lost": lost, "tied": len(ensemble) - won - lost}


def summarise(results: dict, items: dict[str, list[bool]], members: list[str], traces: dict) -> dict:
    """Adds `interval95` to each method's results and returns the comparisons: for each ensemble method
    (postgen, tie, tie:SCORE) won/lost/tied against the best member measured in this run, and when leaders
    changed (by round N: percent of items whose leader at round N differs from round N-1's)."""
    for method, hits in items.items():
        low, high = wilson_interval(sum(hits), len(hits))
        results[method]["interval95"] = [round(low, 2), round(high, 2)]
    measured = [m for m in members if m in items]
    best = max(measured, key=lambda m: (sum(items[m]), -measured.index(m))) if measured else None
    versus = {}
    for method in items:
        if best is not None and (method == "postgen" or method == "tie" or method.startswith("tie:")):
            versus[method] = {"against": best, **head_to_head(items[method], items[best])}
    changes = {method: {"rate": results[method]["change_rate"],
                        "by_round": {k + 1: round(100.0 * share, 1) for k, share in trace.items()}}
               for method, trace in traces.items() if trace and method not in members and not results[method]["bound"]}
    return {"best_member": best, "versus": versus, "leader_changes": changes}


def report_lines(results: dict, summary: dict) -> list[str]:
    """Lines printed under the table."""
    lines = []
    for method, v in summary["versus"].items():
        gain = results[method]["accuracy"] - results[v["against"]]["accuracy"]
        lines.append(f"{method} vs best member {v['against']}: {gain:+.1f} points; won {v['won']}, lost {v['lost']}, "
                     f"tied {v['tied']} items")
    for method, c in summary["leader_changes"].items():
        when = ", ".join(f"round {k}: {share:.1f}%" for k, share in c["by_round"].items())
        rate = "-" if c["rate"] is None else f"{c['rate']:.1f}%"
        lines.append(f"{method} leader changes: {rate} of relays; items whose leader changed at {when}")
    return lines
