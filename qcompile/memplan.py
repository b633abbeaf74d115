"""Static memory planning: every intermediate tensor of a schedule gets an offset in one arena.

A schedule is a list of `Step`s (one per kernel call). Each step defines tensors, reads tensors,
may need a scratch buffer for its own duration, and may declare

  * aliases: an output that is a *view* of an input (reshape, flatten, squeeze...), so both
    names share one buffer for the union of their lifetimes;
  * in-place candidates: an output the kernel can write over an input it reads element by
    element (requantize, lut, ...); the output takes the input's buffer when the input dies at
    this step and is at least as large.

Aliased and in-place tensors are merged into `Buffer`s (a union-find over names); buffers get
offsets with the greedy-by-size algorithm (largest first, each placed in the tightest gap left
by the already-placed buffers whose lifetimes overlap it, as in TFLite's "greedy by size"
arena planner). `lower_bound` is the largest total size of buffers live at one step: no
assignment of these buffers can use less, so `arena_size / lower_bound` measures the plan.

    plan = plan_memory(steps, external={"input", "logits"})
    plan.offsets["conv1"], plan.arena_size, plan.lower_bound
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from .errors import QCompileError


class MemPlanError(QCompileError):
    """A schedule that cannot be planned: a tensor used before it is defined, or defined twice."""


@dataclass
class Step:
    """One kernel call. `defines` maps each tensor it writes to its size in bytes."""

    name: str
    defines: dict[str, int] = field(default_factory=dict)
    uses: list[str] = field(default_factory=list)
    scratch: int = 0
    aliases: dict[str, str] = field(default_factory=dict)     # output -> input it is a view of
    inplace: dict[str, str] = field(default_factory=dict)     # output -> input it may overwrite


@dataclass(frozen=True)
class Buffer:
    """A block of the arena: the tensors sharing it, its size, and the steps it is live at
    (`start` to `end` inclusive)."""

    name: str
    size: int
    start: int
    end: int
    tensors: tuple[str, ...]

    def overlaps(self, other: "Buffer") -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    buffer_offsets: dict[str, int]          # buffer name -> offset
    offsets: dict[str, int]                 # tensor name -> offset (tensors of one buffer share it)
    arena_size: int
    lower_bound: int

    @property
    def overhead(self) -> float:
        """arena_size / lower_bound - 1 (0.0 is optimal)."""
        return self.arena_size / self.lower_bound - 1.0 if self.lower_bound else 0.0

    def buffer_of(self, tensor: str) -> Buffer:
        for b in self.buffers:
            if tensor in b.tensors:
                return b
        raise KeyError(tensor)

    def largest(self, n: int = 3) -> list[Buffer]:
        return sorted(self.buffers, key=lambda b: (-b.size, b.name))[:n]


def align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


# ---------------------------------------------------------------------------------- lifetimes

class _Groups:
    """Union-find over tensor names; the root keeps the group's size and live range."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}
        self.start: dict[str, int] = {}
        self.end: dict[str, int] = {}

    def add(self, name: str, size: int, step: int) -> None:
        self.parent[name] = name
        self.size[name], self.start[name], self.end[name] = size, step, step

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, keep: str, other: str) -> None:
        a, b = self.find(keep), self.find(other)
        if a == b:
            return
        self.parent[b] = a
        self.size[a] = max(self.size[a], self.size[b])
        self.start[a] = min(self.start[a], self.start[b])
        self.end[a] = max(self.end[a], self.end[b])

    def touch(self, name: str, step: int) -> None:
        root = self.find(name)
        self.end[root] = max(self.end[root], step)


def _last_uses(steps: Sequence[Step]) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, s in enumerate(steps):
        for u in s.uses:
            last[u] = i
    return last


def build_buffers(steps: Sequence[Step], external: Iterable[str] = (), alignment: int = 4,
                  keep_alive: Iterable[str] = ()) -> list[Buffer]:
    """Merge the schedule's tensors into buffers with live ranges.

    `external` tensors live outside the arena (the caller's input and output arrays); a view of
    an external tensor is external too, and nothing is written in place over one. Tensors in
    `keep_alive` stay live to the end of the schedule."""
    external = set(external)
    groups = _Groups()
    last = _last_uses(steps)
    scratch: list[Buffer] = []
    for i, step in enumerate(steps):
        for u in step.uses:
            if u not in groups.parent and u not in external:
                raise MemPlanError(f"step {i} ({step.name}) reads {u!r}, which no earlier step defines")
            if u in groups.parent:
                groups.touch(u, i)
        for name, size in step.defines.items():
            if name in groups.parent:
                raise MemPlanError(f"tensor {name!r} is defined twice (again by step {i}, {step.name})")
            src = step.aliases.get(name)
            if src is not None and src in external:
                external.add(name)  # a view of the caller's array
                continue
            if name in external:
                continue
            groups.add(name, align_up(size, alignment), i)
            if src is not None:
                groups.union(src, name)
                continue
            src = step.inplace.get(name)
            if (src is not None and src in groups.parent
                    and _group_last_use(groups, src, last) <= i
                    and groups.size[groups.find(src)] >= align_up(size, alignment)):
                groups.union(src, name)
        if step.scratch:
            scratch.append(Buffer(f"{step.name}.scratch", align_up(step.scratch, alignment), i, i,
                                  ()))
    end = len(steps) - 1
    for name in keep_alive:
        if name in groups.parent:
            groups.touch(name, end)
    members: dict[str, list[str]] = {}
    for name in groups.parent:
        members.setdefault(groups.find(name), []).append(name)
    out = [Buffer(root, groups.size[root], groups.start[root], groups.end[root], tuple(names))
           for root, names in members.items()]
    return out + scratch


def _group_last_use(groups: _Groups, name: str, last: Mapping[str, int]) -> int:
    """The last step reading any tensor of `name`'s group (a later use of another view of the
    same buffer forbids overwriting it)."""
    root = groups.find(name)
    return max((last.get(n, -1) for n in groups.parent if groups.find(n) == root), default=-1)


# ---------------------------------------------------------------------------------- placement

def lower_bound(buffers: Sequence[Buffer]) -> int:
    """The most bytes live at any one step: a floor for every offset assignment."""
    if not buffers:
        return 0
    horizon = max(b.end for b in buffers) + 1
    live = [0] * (horizon + 1)
    for b in buffers:  # difference array over steps
        live[b.start] += b.size
        live[b.end + 1] -= b.size
    best = run = 0
    for delta in live:
        run += delta
        best = max(best, run)
    return best


def greedy_by_size(buffers: Sequence[Buffer], alignment: int = 4) -> dict[str, int]:
    """Offsets for `buffers`: largest first, each at the start of the smallest gap (among the
    placed buffers whose lifetimes overlap it) that holds it, else after the highest of them.
    Ties break by name, so the plan is deterministic."""
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[str, int] = {}
    for buf in sorted(buffers, key=lambda b: (-b.size, b.start, b.name)):
        busy = sorted((off, off + b.size) for off, b in placed if b.overlaps(buf))
        best: Optional[tuple[int, int]] = None  # (gap size, offset)
        cursor = 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= buf.size and (best is None or gap < best[0]):
                best = (gap, cursor)
            cursor = max(cursor, align_up(hi, alignment))
        offset = best[1] if best is not None else cursor
        offsets[buf.name] = offset
        placed.append((offset, buf))
    return offsets


def plan_buffers(buffers: Sequence[Buffer], alignment: int = 4) -> MemoryPlan:
    buffer_offsets = greedy_by_size(buffers, alignment)
    offsets = {t: buffer_offsets[b.name] for b in buffers for t in b.tensors}
    arena = max((buffer_offsets[b.name] + b.size for b in buffers), default=0)
    return MemoryPlan(list(buffers), buffer_offsets, offsets, align_up(arena, alignment),
                      lower_bound(buffers))


def plan_memory(steps: Sequence[Step], external: Iterable[str] = (), alignment: int = 4,
                keep_alive: Iterable[str] = ()) -> MemoryPlan:
    """Lifetimes from `steps`, then greedy-by-size offsets (see the module docstring)."""
    return plan_buffers(build_buffers(steps, external, alignment, keep_alive), alignment)


def check_overlaps(plan: MemoryPlan) -> list[str]:
    """Pairs of buffers live at the same step whose arena ranges intersect (empty when the plan
    is valid); tests and the backend's self-check use it."""
    problems = []
    bufs = sorted(plan.buffers, key=lambda b: b.name)
    for i, a in enumerate(bufs):
        oa = plan.buffer_offsets[a.name]
        for b in bufs[i + 1:]:
            ob = plan.buffer_offsets[b.name]
            if a.overlaps(b) and oa < ob + b.size and ob < oa + a.size:
                problems.append(f"{a.name} [{oa}, {oa + a.size}) and {b.name} [{ob}, {ob + b.size}) "
                                f"are both live at steps {max(a.start, b.start)}..{min(a.end, b.end)}")
    return problems
