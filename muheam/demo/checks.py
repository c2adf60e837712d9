"""The invariants ``muheam demo`` checks, each with the numbers that show it (pure functions over the run's data).

"No acknowledged commit lost": every transfer client keeps the balance changes of the transfers it was
acknowledged, and the transfers whose outcome it could not learn (its node died under it).  The final table
must equal the acknowledged changes plus *some* subset of the unknown ones; a lost acknowledged commit (or an
unacknowledged change that appeared from nowhere) leaves a difference no subset explains.
"""

from __future__ import annotations

from typing import Any, Sequence

def check(name: str, passed: bool, detail: str, **numbers: Any) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail, "numbers": numbers}


def explained(diff: dict[int, int], unknown: Sequence[tuple[int, int]]) -> tuple[bool, str]:
    """Whether ``diff`` (final minus acknowledged, per account) is the sum of some unknown transfers.

    Exact, as a flow problem: each unknown transfer is an arc src -> dst of capacity 1 (taking it moves 1 from src
    to dst); accounts short of their acknowledged balance are sources, accounts above it sinks.  Some subset
    explains ``diff`` iff the maximum flow saturates every source (an integral flow's arcs at 1 are that subset,
    up to cycles, which change nothing)."""
    diff = {k: v for k, v in diff.items() if v}
    if not diff:
        return True, "exact: every balance equals its acknowledged transfers"
    if sum(diff.values()) != 0:
        return False, f"the differences sum to {sum(diff.values())}: money appeared or vanished"
    cap: dict[Any, dict[Any, int]] = {}

    def arc(u: Any, v: Any, c: int) -> None:
        cap.setdefault(u, {})[v] = cap.get(u, {}).get(v, 0) + c
        cap.setdefault(v, {}).setdefault(u, 0)

    for src, dst in unknown:
        arc(src, dst, 1)
    for k, v in diff.items():
        arc("S", k, -v) if v < 0 else arc(k, "T", v)
    need, flow = sum(v for v in diff.values() if v > 0), 0
    while flow < need:
        parent: dict[Any, Any] = {"S": None}
        todo = ["S"]
        while todo and "T" not in parent:
            u = todo.pop()
            for v, c in cap.get(u, {}).items():
                if c > 0 and v not in parent:
                    parent[v] = u
                    todo.append(v)
        if "T" not in parent:
            break
        step: Any = "T"
        while parent[step] is not None:
            back = parent[step]
            cap[back][step] -= 1
            cap[step][back] += 1
            step = back
        flow += 1
    if flow == need:
        return True, (f"{len(diff)} accounts differ from their acknowledged transfers, all explained by transfers "
                      f"whose outcome the client could not learn ({len(unknown)} such)")
    return False, f"no subset of the {len(unknown)} unknown transfers explains {len(diff)} differing accounts"


def acknowledged(reports: Sequence[dict[str, Any]], rows: Sequence[tuple[int, int]]) -> dict[str, Any]:
    net: dict[int, int] = {}
    unknown: list[tuple[int, int]] = []
    acked = 0
    for r in reports:
        for k, v in r.get("net", {}).items():
            net[int(k)] = net.get(int(k), 0) + int(v)
        unknown.extend((int(a), int(b)) for a, b in r.get("unknown", []))
        acked += len(r.get("trace", []))
    final = dict(rows)
    diff = {k: final.get(k, 0) - net.get(k, 0) for k in set(final) | set(net)}
    ok, how = explained(diff, unknown)
    return check("no acknowledged commit lost", ok, how, acknowledged_transfers=acked,
                 unknown_outcome=len(unknown), accounts_differing=sum(1 for v in diff.values() if v))


def sums(violations: int, reads: int) -> dict[str, Any]:
    return check("bank sums always 0", violations == 0 and reads > 0,
                 f"{reads} full-table reads in one snapshot each, {violations} with a sum other than 0",
                 full_reads=reads, violations=violations)


def checksums(live: dict[str, str], replayed: str | None) -> dict[str, Any]:
    values = set(live.values()) | ({replayed} if replayed else set())
    ok = len(values) == 1 and replayed is not None and len(live) >= 2
    return check("checksums equal", ok,
                 "every node after the rejoin, and the merged WAL replayed into a scratch copy, read the same "
                 "accounts table" if ok else f"live {live}, replayed {replayed}",
                 nodes=len(live), live=sorted(set(live.values())), replayed=replayed)


def wal(summary: dict[str, Any] | None, error: str = "") -> dict[str, Any]:
    merge = (summary or {}).get("merge", {})
    ver = (summary or {}).get("verify", {})
    ok = summary is not None and not error and not ver.get("problems")
    return check("merged WAL verifies", ok, error or f"every node's WAL merged in GLSN order and verified: "
                 f"{ver.get('status', '?')}", records=merge.get("records"), per_node=merge.get("per_node"),
                 status=ver.get("status"), problems=len(ver.get("problems", [])))


def recovery(rec: dict[str, Any] | None, rejoined: bool) -> dict[str, Any]:
    ok = rec is not None and rec.get("state") == "recovered" and rejoined
    return check("killed node recovered by the survivors and rejoined", ok,
                 f"recovered by node {rec.get('by')} in {rec.get('duration_ms')} ms" if rec is not None
                 else "no recovery record",
                 **({k: rec.get(k) for k in ("by", "duration_ms", "chains", "records", "aborted", "committed")}
                    if rec is not None else {}), rejoined=rejoined)


def stopped(left: list[int]) -> dict[str, Any]:
    return check("every process it started is stopped", not left,
                 "etcd and every node process are gone" if not left else f"still running: pids {left}",
                 still_running=left)
