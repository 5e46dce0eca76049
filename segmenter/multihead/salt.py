"""SALT: softmax over an arbitrary label tree (Koitka et al., arXiv 2407.08878; code UMEssen/SALT).

A label tree is given as comma paths (``"Body,Thorax,Lung_L"``); every prefix is a node under an
implicit root. As in SALT: one parent per node, and no node may have exactly one child (a group
gets an ``other`` leaf instead). The network emits one logit per node. For every parent a softmax
over its children's logits gives P(child | parent); the marginal P(node) is the product of the
conditionals from the root down (computed in log space). Hence P(parent) = sum of P(children),
the leaves' probabilities sum to one, and P(child) <= P(parent) everywhere.

Decoding returns one *node per voxel* and is always tree-consistent: a voxel decoded as a node
belongs to all of that node's ancestors and to nothing else (:meth:`LabelTree.node_mask`).

* ``decode_top_down``: from the root, follow the most probable child at every level (greedy).
* ``decode_leaves``: argmax over the leaves' marginal probabilities (SALT's ``argmax_leaves``).

Loss (SALT's ``_compute_loss``): the target node of a voxel (a leaf, or an internal node where a
dataset labels only the coarse level) becomes multi-hot over its path via the reachability matrix;
CE = -sum over the path of log P(node); soft Dice over the nodes the dataset annotates only.
Voxels with target -1 are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from segmenter.core.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelTree:
    paths: tuple[str, ...]
    nodes: tuple[str, ...] = field(init=False)  # full paths, parents before children
    parent: tuple[int, ...] = field(init=False)  # -1 = child of the root
    children: tuple[tuple[int, ...], ...] = field(init=False)
    root_children: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        nodes: list[str] = []
        for path in self.paths:
            parts = [p.strip() for p in path.split(",")]
            if not all(parts):
                raise ModelError(f"label tree: empty component in path {path!r}")
            for depth in range(1, len(parts) + 1):
                prefix = ",".join(parts[:depth])
                if prefix not in nodes:
                    nodes.append(prefix)
        if not nodes:
            raise ModelError("label tree: no paths")
        index = {n: i for i, n in enumerate(nodes)}
        parent = tuple(index[n.rsplit(",", 1)[0]] if "," in n else -1 for n in nodes)
        children = tuple(tuple(j for j, p in enumerate(parent) if p == i) for i in range(len(nodes)))
        root_children = tuple(j for j, p in enumerate(parent) if p == -1)
        for group, owner in [(root_children, "<root>")] + [(c, nodes[i]) for i, c in enumerate(children)]:
            if len(group) == 1:
                raise ModelError(f"label tree: {owner!r} has exactly one child ({nodes[group[0]]!r}); "
                                 "add an 'other' leaf (SALT's rule)")
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "parent", parent)
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "root_children", root_children)

    # -- structure -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def index(self, node: str) -> int:
        """Index of a node given by its full path or, when unique, by its last component."""
        if node in self.nodes:
            return self.nodes.index(node)
        matches = [i for i, n in enumerate(self.nodes) if n.rsplit(",", 1)[-1] == node]
        if len(matches) != 1:
            raise ModelError(f"label tree: node {node!r} is {'ambiguous' if matches else 'unknown'}")
        return matches[0]

    def short(self, i: int) -> str:
        return self.nodes[i].rsplit(",", 1)[-1]

    @property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.children) if not c)

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Sibling groups (root's children first), each normalised by one softmax."""
        return (self.root_children, *(c for c in self.children if c))

    def depth(self, i: int) -> int:
        d = 0
        while i >= 0:
            i = self.parent[i]
            d += 1
        return d

    def path_of(self, i: int) -> list[int]:
        """Node and its ancestors, deepest first."""
        out = []
        while i >= 0:
            out.append(i)
            i = self.parent[i]
        return out

    def reachability(self) -> torch.Tensor:
        """R[a, b] = 1 where b is a or a descendant of a (SALT's I + A + A^2 + ...)."""
        n = len(self.nodes)
        r = torch.zeros((n, n), dtype=torch.bool)
        for b in range(n):
            for a in self.path_of(b):
                r[a, b] = True
        return r

    def annotated_nodes(self, labelled: Sequence[str]) -> torch.Tensor:
        """Boolean per node: labelled by a dataset; a parent counts once all its children do."""
        mask = torch.zeros(len(self.nodes), dtype=torch.bool)
        for name in labelled:
            mask[self.index(name)] = True
        for i in sorted(range(len(self.nodes)), key=self.depth, reverse=True):
            if self.children[i] and all(bool(mask[c]) for c in self.children[i]):
                mask[i] = True
        return mask

    # -- probabilities ---------------------------------------------------------------------------
    def conditional_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log P(node | parent) for logits (N, nodes, *spatial)."""
        self._check(logits)
        out = torch.empty_like(logits)
        for group in self.groups:
            idx = list(group)
            out[:, idx] = torch.log_softmax(logits[:, idx], dim=1)
        return out

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log P(node) (marginal) for logits (N, nodes, *spatial)."""
        cond = self.conditional_log_probs(logits)
        out = torch.empty_like(cond)
        for i in range(len(self.nodes)):  # parents precede their children
            p = self.parent[i]
            out[:, i] = cond[:, i] if p < 0 else cond[:, i] + out[:, p]
        return out

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_probs(logits))

    # -- decoding --------------------------------------------------------------------------------
    def decode_top_down(self, logits: torch.Tensor) -> torch.Tensor:
        """Leaf index per voxel (N, *spatial), choosing the most probable child at each level."""
        cond = self.conditional_log_probs(logits)
        n = len(self.nodes)
        best = torch.empty((n + 1, *cond.shape[:1], *cond.shape[2:]), dtype=torch.long, device=logits.device)
        for i in range(n):
            best[i] = i
        for owner, group in [(n, self.root_children)] + [(i, c) for i, c in enumerate(self.children) if c]:
            idx = torch.tensor(group, device=logits.device)
            best[owner] = idx[torch.argmax(cond[:, list(group)], dim=1)]
        cur = best[n]
        for _ in range(max(self.depth(i) for i in range(n))):
            cur = torch.gather(best, 0, cur.unsqueeze(0))[0]
        return cur

    def decode_leaves(self, logits: torch.Tensor) -> torch.Tensor:
        """Leaf index per voxel (N, *spatial): argmax of the leaves' marginal probabilities."""
        leaves = torch.tensor(self.leaves, device=logits.device)
        lp = self.log_probs(logits)[:, list(self.leaves)]
        return leaves[torch.argmax(lp, dim=1)]

    def node_mask(self, decoded: torch.Tensor, node: int) -> torch.Tensor:
        """Voxels whose decoded node is ``node`` or one of its descendants."""
        row = self.reachability()[node].to(decoded.device)
        return row[decoded]

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None,
             dice_weight: float = 1.0) -> torch.Tensor:
        """CE over the target's path + soft Dice over annotated nodes; target -1 = ignored voxel.

        ``logits`` (N, nodes, *spatial), ``target`` (N, *spatial) node indices.
        """
        self._check(logits)
        valid = target >= 0
        if not bool(valid.any()):
            return logits.sum() * 0.0
        lp = self.log_probs(logits)
        r = self.reachability().to(logits.device).to(lp.dtype)  # (nodes, nodes)
        y = r[:, target.clamp(min=0)].movedim(0, 1)  # (N, nodes, *spatial): ancestors of target
        w = valid.unsqueeze(1).to(lp.dtype)
        ce = -(y * lp * w).sum() / w.sum()
        if dice_weight <= 0:
            return ce
        mask = torch.ones(len(self.nodes), dtype=torch.bool) if annotated is None else annotated
        nodes = [i for i in range(len(self.nodes)) if bool(mask[i])]
        if not nodes:
            return ce
        p = torch.exp(lp[:, nodes]) * w
        t = y[:, nodes] * w
        dims = [0, *range(2, p.ndim)]
        inter = (p * t).sum(dims)
        denom = p.sum(dims) + t.sum(dims)
        dice = (2 * inter + 1e-5) / (denom + 1e-5)
        return ce + dice_weight * (1 - dice.mean())

    def _check(self, logits: torch.Tensor) -> None:
        if logits.ndim < 2 or logits.shape[1] != len(self.nodes):
            raise ModelError(f"label tree of {len(self.nodes)} nodes needs logits (N, {len(self.nodes)}, ...), "
                             f"got {tuple(logits.shape)}")
