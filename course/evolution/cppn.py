"""The CPPN encoding: the genome is a small network that *draws* the image.

A Compositional Pattern-Producing Network maps a pixel's coordinates to its value. Nguyen et al.
feed it ``x``, ``y``, ``d = √(x² + y²)`` and a bias of 1 (we normalise x and y to [−1, 1]; the
authors' code feeds raw pixel indices, a quirk), and read one output (grey) or three (colour).
Every neuron has its own activation, drawn from::

    0  sin(x)                1  2(σ(x) − 0.5)
    2  exp(−x²)              3  clip(x, −3, 3) / 3

Because all four stay in [−1, 1], the pixel is ``|o|`` clipped to [0, 1] — the paper's
``|255·o|`` on the 0–255 scale, written on the course's [0, 1] scale.

Start: inputs fully connected to the outputs, no hidden neurons, weights uniform in [−10, 10] and
random activations (as in the authors' code: large weights make sin/Gaussian units produce stripes
and rings from the very first generation). Each offspring then mutates:

- every weight, with probability 0.1, by polynomial mutation (η = 15) on the [−10, 10] range;
- every activation, with probability 0.1, redrawn at random;
- add a connection (p 0.5), delete a connection (0.3), add a neuron by splitting a connection
  (0.5; NEAT-style: src→new weight 1, new→dst the old weight), delete a neuron (0.2).

The network stays feed-forward: a connection is only added where it closes no cycle. Outputs are
sinks (no connection leaves an output), and inputs receive none. No crossover.

Representation: a *population* of ``P`` genomes is a dict of padded tensors over ``N = 4 + outputs
+ max_hidden`` node slots (slots 0–3 the inputs x, y, d, bias; then the outputs; then hidden
slots, alive or free):

- ``weight`` (P, N, N): ``weight[p, dst, src]``, zero where there is no connection;
- ``conn``   (P, N, N) bool: which connections exist;
- ``act``    (P, N) int64: each node's activation id;
- ``alive``  (P, N) bool: which slots hold a node (inputs and outputs always).

Mutation works on the whole population at once: no Python loop over genomes. On the CPU, float32
genomes are drawn by a compiled renderer: per genome, a depth-first order of the nodes the outputs
need, then each node's own connections and its activation over a tile of pixels, in float64 up to
96×96 (exact to one rounding; MNIST's 28×28) and in float32 above (ImageNet's 224×224), both
by :mod:`.cppn_cpu`. Elsewhere the renderer plans
for the whole population: drop the nodes no output depends on, sort each genome's nodes by depth
(longest path from an input: a topological order), and sort the genomes by size, largest first.
The inputs' contribution to every node of every genome is one matmul with the shared (4, pixels)
coordinates. Then step k adds, for node k of every genome that
has one (a prefix of the sorted batch), the terms from its earlier hidden nodes — one batched
matmul ``(m, 1, k) @ (m, k, pixels)`` — and applies the activations, one call per activation type
(or, at pixel counts that are multiples of 64, one call per run of rows that share one).
So a population costs a dozen small steps whatever its size, and padding costs nothing. The plan
works on int64 bit masks of each node's sources (a few (P, N) ops per depth level), and on the
CPU the node values live in a scratch block reused from call to call (fresh pages cost more
than the arithmetic). On the CPU from ``PER_GENOME_PIXELS`` (40×40) up, the batched steps lose:
a chunk's node values are tens of megabytes, streamed from memory on every step, and the dense
steps compute a term for every earlier node, connected or not. There (for float64 genomes, or without numba) each genome is drawn on its own after the same plan
(``method="per-genome"``): node k sums its own connections only (a multiply, then one in-place
multiply-add per further source), then the in-place activation (numpy's or torch's, whichever
is faster: :data:`CPU_ACTIVATIONS_INPLACE`), on one genome's few rows,
which stay in the cache. On the CPU the plan itself is compiled (:mod:`.cppn_plan`).
``benchmarks/bench_cppn.py`` measures the renderer against the same genomes drawn one at a time
with numpy and against the pixel-math floor.
:func:`render_reference` is the slow per-pixel evaluator the tests compare it with.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import cppn_cpu, cppn_plan
from .direct import polynomial_mutation

N_INPUTS = 4  # x, y, d, bias
ACTIVATIONS = ("sin", "sigmoid", "gaussian", "linear")
RENDER_METHODS = ("compiled", "compiled-float32", "batched", "per-genome")
# The four activations, in place (the renderer applies them to freshly computed blocks).
_ACTIVATIONS_INPLACE = (torch.Tensor.sin_,                               # sin(x)
                        lambda z: z.sigmoid_().sub_(0.5).mul_(2.0),      # 2(σ(x) − 0.5)
                        lambda z: z.square_().neg_().exp_(),             # exp(−x²)
                        lambda z: z.clamp_(-3.0, 3.0).div_(3.0))         # clip(x, −3, 3) / 3


def coordinates(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The CPPN inputs for every pixel: (4, height·width) rows x, y, d, bias (row-major pixels)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height, dtype=dtype, device=device),
                          torch.linspace(-1, 1, width, dtype=dtype, device=device), indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([x, y, torch.sqrt(x * x + y * y), torch.ones_like(x)])


def node_depth(conn: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
    """Longest-path depth of every node, (P, N) int64: inputs 0, any other node ≥ 1.

    ``depth[dst] = 1 + max(depth[src] for src → dst)`` (1 with no source), found level by level
    (Kahn's algorithm for the whole population at once): level L holds the nodes whose sources
    all lie in levels < L. Each node's sources are one int64 bit mask, so a level costs a few
    ops on (P, N) whatever the number of connections. Graphs of more than 53 nodes (and MPS,
    which has no float64) fall back to
    :func:`_node_depth_relaxation` (the same result). ``sources``: :func:`_bit_masks`' first mask.
    """
    P, N, _ = conn.shape
    if not _bits_ok(conn):
        return _node_depth_relaxation(conn)
    bits = 2 ** torch.arange(N, device=conn.device)
    if sources is None:
        sources = _bit_masks(conn)[0]                                   # (P, N): bit src set for src → dst
    is_input = torch.arange(N, device=conn.device) < N_INPUTS
    done = torch.full((P, 1), int(bits[:N_INPUTS].sum()), dtype=torch.int64, device=conn.device)
    depth = torch.zeros((P, N), dtype=torch.int64, device=conn.device)
    waiting = (~is_input).expand(P, N)
    for level in range(1, N + 1):
        ready = waiting & ((sources & ~done) == 0)
        depth.masked_fill_(ready, level)
        waiting = waiting & ~ready
        done = done | (ready.long() * bits).sum(dim=1, keepdim=True)    # disjoint bits: sum = or
        if level % 4 == 0 and not bool(waiting.any()):
            break
    return depth


_MAX_BITS = 53  # node bit masks are summed in float64: exact up to 2^53


def _bits_ok(conn: torch.Tensor) -> bool:
    """Whether the bit-mask planning applies: at most 53 nodes, and float64 (MPS has none)."""
    return conn.shape[-1] <= _MAX_BITS and conn.device.type != "mps"


def _bit_masks(conn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (P, N) int64 bit masks of the connections ``conn[p, dst, src]`` (N ≤ 53 nodes): each
    node's sources (bit src of row dst) and the nodes each node feeds (bit dst of row src).
    Two batched products with the powers of two, exact in float64."""
    c = conn.to(torch.float64)
    bits = 2.0 ** torch.arange(conn.shape[-1], device=conn.device, dtype=torch.float64)
    return (c @ bits).long(), (bits @ c).long()


def _node_depth_relaxation(conn: torch.Tensor) -> torch.Tensor:
    """:func:`node_depth` by relaxation on (P, N, N): repeated until nothing changes."""
    P, N, _ = conn.shape
    c = conn.to(torch.float32)
    is_input = torch.arange(N, device=conn.device) < N_INPUTS
    depth = torch.where(is_input, 0.0, 1.0).expand(P, N).contiguous()
    for _ in range(N):
        reach = (c * (depth[:, None, :] + 1)).amax(dim=2)  # 1 + deepest source; 0 with no source
        new = torch.where(is_input, 0.0, reach.clamp(min=1))
        if torch.equal(new, depth):
            break
        depth = new
    return depth.long()


def feeds(conn: torch.Tensor, targets: torch.Tensor, fed: torch.Tensor | None = None) -> torch.Tensor:
    """(P, N) bool: the nodes that are ``targets`` (an (N,) mask) or have a path into one.
    ``fed``: :func:`_bit_masks`' second mask, if already computed."""
    P, N, _ = conn.shape
    if _bits_ok(conn):
        # Bit masks: a node is needed when one of the nodes it feeds (its bit mask) is needed.
        bits = 2 ** torch.arange(N, device=conn.device)
        if fed is None:
            fed = _bit_masks(conn)[1]                                   # (P, N): bit dst set for src → dst
        need = targets.expand(P, N)
        for step in range(N):
            needed = (need.long() * bits).sum(dim=1, keepdim=True)
            new = need | ((fed & needed) != 0)
            if step % 4 == 3 and torch.equal(new, need):
                break
            need = new
        return need
    c = conn.to(torch.float32)
    need = targets.expand(P, N).float()
    for _ in range(N):
        # A node is needed if it is a target or feeds a needed node: need @ conn over dst.
        new = ((torch.bmm(need[:, None, :], c).squeeze(1) + need) > 0).float()
        if torch.equal(new, need):
            break
        need = new
    return need > 0


def plan_tensors(conn: torch.Tensor, alive: torch.Tensor, n_outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The renderer's plan on any device: (order (P, N), size (P,)). A node is used when alive and
    an input or feeding an output; ``order`` lists the used nodes by depth (ties by slot, so the
    inputs stay in slots 0..3), then the rest; ``size`` counts the used ones.
    :func:`course.evolution.cppn_plan.plan` is the same, compiled for the CPU."""
    N = conn.shape[-1]
    idx = torch.arange(N, device=conn.device)
    is_input, is_output = idx < N_INPUTS, (idx >= N_INPUTS) & (idx < N_INPUTS + n_outputs)
    sources, fed = _bit_masks(conn) if _bits_ok(conn) else (None, None)
    used = alive & (feeds(conn, is_output, fed) | is_input)
    key = torch.where(used, node_depth(conn, sources), N + 1)
    return torch.sort(key, dim=1, stable=True).indices, used.sum(dim=1)


def reachability(conn: torch.Tensor) -> torch.Tensor:
    """(P, N, N) bool: ``R[p, dst, src]`` is True when a path src → … → dst exists (length ≥ 1).

    Repeated squaring: after round r, R holds every path of length ≤ 2^r.
    """
    R = conn.to(torch.float32)
    for _ in range(max(1, math.ceil(math.log2(conn.shape[-1])))):
        R = (R + torch.bmm(R, R)).clamp_(max=1.0)
    return R > 0


def _pick(candidates: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly random True entry per genome: (flat index over dims 1.., has_any) for (P, ...)."""
    flat = candidates.reshape(len(candidates), -1)
    r = torch.rand(flat.shape, generator=generator, device=flat.device)
    return torch.where(flat, r, -1.0).argmax(dim=1), flat.any(dim=1)


class CPPNEncoding:
    """CPPN genomes as padded tensors (see the module docstring) and their batched renderer.

    ``shape``: (channels, height, width); channels 1 → one output (grey), 3 → three (colour).
    ``max_hidden``: hidden-node capacity per genome (add-neuron does nothing when full).
    The remaining arguments are the mutation probabilities and ranges of the module docstring.
    ``dtype``: of the weights (and so of rendering); float64 for exact comparisons in tests.
    """

    def __init__(self, shape=(1, 28, 28), max_hidden: int = 32, weight_range: float = 10.0,
                 weight_rate: float = 0.1, eta: float = 15.0, activation_rate: float = 0.1,
                 add_connection: float = 0.5, delete_connection: float = 0.3,
                 add_neuron: float = 0.5, delete_neuron: float = 0.2, dtype=torch.float32,
                 max_floats: int = 1 << 24):
        if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
            raise ValueError(f"shape must be (1 or 3 channels, height, width), got {tuple(shape)}.")
        probs = dict(weight_rate=weight_rate, activation_rate=activation_rate, add_connection=add_connection,
                     delete_connection=delete_connection, add_neuron=add_neuron, delete_neuron=delete_neuron)
        bad = {k: v for k, v in probs.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"Mutation probabilities must lie in [0, 1]; got {bad}.")
        if max_hidden < 0:
            raise ValueError(f"max_hidden must be >= 0, got {max_hidden}.")
        self.image_shape = tuple(int(s) for s in shape)
        self.n_outputs = self.image_shape[0]
        self.max_hidden = int(max_hidden)
        self.n_nodes = N_INPUTS + self.n_outputs + self.max_hidden
        self.weight_range, self.eta = float(weight_range), float(eta)
        self.rates = probs
        self.dtype = dtype
        self.max_floats = int(max_floats)  # renderer memory budget: genomes per chunk × nodes × pixels

    def __repr__(self) -> str:
        return f"CPPNEncoding(shape={self.image_shape}, max_hidden={self.max_hidden})"

    # -- slots -------------------------------------------------------------------------------
    def _slot_masks(self, device):
        idx = torch.arange(self.n_nodes, device=device)
        is_input = idx < N_INPUTS
        is_output = (idx >= N_INPUTS) & (idx < N_INPUTS + self.n_outputs)
        return is_input, is_output, ~(is_input | is_output)

    # -- creation ----------------------------------------------------------------------------
    def random(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` fresh genomes: every input wired to every output, random weights and activations."""
        dev, N = generator.device, self.n_nodes
        is_input, is_output, _ = self._slot_masks(dev)
        conn = (is_output[:, None] & is_input[None, :]).expand(n, N, N).contiguous()
        u = torch.rand((n, N, N), generator=generator, device=dev, dtype=self.dtype)
        weight = torch.where(conn, (2 * u - 1) * self.weight_range, 0.0)
        act = torch.randint(len(ACTIVATIONS), (n, N), generator=generator, device=dev)
        alive = (is_input | is_output).expand(n, N).contiguous()
        return {"weight": weight, "conn": conn, "act": act, "alive": alive}

    # -- mutation ----------------------------------------------------------------------------
    def mutate(self, genomes: dict, generator: torch.Generator, generation: int = 0) -> dict:
        """Mutated copies of a population (the input is untouched). ``generation`` is unused.

        Hidden slots fill from the front, so only the first ``n`` slots (the last one in use
        anywhere in the population, plus one free slot) can change: we mutate that prefix only.
        """
        alive = genomes["alive"]
        n = min(self.n_nodes, int(alive.any(dim=0).nonzero().max()) + 2)
        part = self._mutate({"weight": genomes["weight"][:, :n, :n], "conn": genomes["conn"][:, :n, :n],
                             "act": genomes["act"][:, :n], "alive": alive[:, :n]}, generator)
        if n == self.n_nodes:
            return part
        out = {k: v.clone() for k, v in genomes.items()}
        out["weight"][:, :n, :n], out["conn"][:, :n, :n] = part["weight"], part["conn"]
        out["act"][:, :n], out["alive"][:, :n] = part["act"], part["alive"]
        return out

    def _mutate(self, genomes: dict, generator: torch.Generator) -> dict:
        g, r = generator, self.rates
        weight, conn = genomes["weight"], genomes["conn"].clone()
        act, alive = genomes["act"].clone(), genomes["alive"].clone()
        P, N = act.shape
        dev, W = act.device, self.weight_range
        is_input, is_output, is_hidden = self._slot_masks(dev)
        is_input, is_output, is_hidden = is_input[:N], is_output[:N], is_hidden[:N]
        rows = torch.arange(P, device=dev)

        # Point mutations, vectorised over every gene of every genome. The weights take the tensor
        # version of the mutation on every device (not the CPU's compiled one, another random
        # stream): the lessons' recorded CPPN runs drew this stream, and the weights' mutation is a
        # small share of a CPPN generation, which the render and the classifier dominate.
        weight = torch.where(conn, polynomial_mutation(weight, r["weight_rate"], self.eta, g, -W, W,
                                                       method="tensor"), 0.0)
        redraw = (torch.rand((P, N), generator=g, device=dev) < r["activation_rate"]) & alive & ~is_input
        act = torch.where(redraw, torch.randint(len(ACTIVATIONS), (P, N), generator=g, device=dev), act)

        def coin(p):
            return torch.rand(P, generator=g, device=dev) < p

        # Add a connection src → dst where it closes no cycle (no path dst → src yet).
        valid = (alive[:, :, None] & alive[:, None, :] & ~is_input[None, :, None] & ~is_output[None, None, :]
                 & ~conn & ~torch.eye(N, dtype=torch.bool, device=dev) & ~reachability(conn).transpose(1, 2))
        flat, has = _pick(valid, g)
        do = coin(r["add_connection"]) & has
        dst, src = flat // N, flat % N
        new_w = (2 * torch.rand(P, generator=g, device=dev, dtype=weight.dtype) - 1) * W
        conn[rows[do], dst[do], src[do]] = True
        weight[rows[do], dst[do], src[do]] = new_w[do]

        # Delete a connection.
        flat, has = _pick(conn, g)
        do = coin(r["delete_connection"]) & has
        dst, src = flat // N, flat % N
        conn[rows[do], dst[do], src[do]] = False
        weight[rows[do], dst[do], src[do]] = 0.0

        # Add a neuron: split src → dst into src → new (weight 1) → dst (the old weight).
        flat, has = _pick(conn, g)
        free = ~alive & is_hidden
        new = free.int().argmax(dim=1)  # the first free hidden slot
        new_act = torch.randint(len(ACTIVATIONS), (P,), generator=g, device=dev)
        do = coin(r["add_neuron"]) & has & free.any(dim=1)
        p, dst, src, h = rows[do], (flat // N)[do], (flat % N)[do], new[do]
        old = weight[p, dst, src]
        conn[p, dst, src], weight[p, dst, src] = False, 0.0
        conn[p, h, src], weight[p, h, src] = True, 1.0
        conn[p, dst, h], weight[p, dst, h] = True, old
        alive[p, h], act[p, h] = True, new_act[do]

        # Delete a hidden neuron and every connection touching it.
        flat, has = _pick(alive & is_hidden, g)
        do = coin(r["delete_neuron"]) & has
        p, h = rows[do], flat[do]
        alive[p, h] = False
        conn[p, h, :], conn[p, :, h] = False, False
        weight[p, h, :], weight[p, :, h] = 0.0, 0.0
        return {"weight": weight, "conn": conn, "act": act, "alive": alive}

    # -- rendering ---------------------------------------------------------------------------
    def render(self, genomes: dict, shape: tuple[int, int] | None = None,
               method: str | None = None) -> torch.Tensor:
        """Draw every genome: (P, channels, H, W) in [0, 1]. ``shape`` = (H, W) overrides the size.

        ``method="compiled"`` (the CPU default for float32 genomes up to 96×96 pixels,
        ``COMPILED_PIXELS``): one compiled call plans and draws each genome, node by node over tiles
        of pixels, in float64 (:mod:`.cppn_cpu`); the image is the exact CPPN of the weights up to
        one float32 rounding. ``method="compiled-float32"`` (the CPU default for float32 genomes
        above): the same in float32 (:mod:`.cppn_float32`'s activations), 1.9–2.4x as fast, as
        accurate as the other float32 renderers.

        The other two plan for the whole population at once: keep only the nodes some output
        depends on, sort each genome's nodes by depth (a topological order), and sort the genomes
        by size, largest first. Then, ``method="batched"`` (every device but the CPU, and float64
        genomes below ``PER_GENOME_PIXELS`` pixels on it): step k
        computes node k of every genome that has one — a *prefix* of the sorted batch — so each
        genome costs what its own size costs, padding costs nothing. Genomes are rendered in
        chunks that keep (genomes × nodes × pixels) under ``max_floats``. ``method="per-genome"``
        (the CPU default from ``PER_GENOME_PIXELS`` pixels for float64, and for float32 without
        numba): the same plan,
        then each genome drawn on its own with numpy, node by node over all its pixels, which
        keeps one genome's values in the cache and uses numpy's faster SIMD sin, exp and tanh.
        """
        H, W = shape if shape is not None else self.image_shape[1:]
        if method not in (None, *RENDER_METHODS):
            raise ValueError(f"method must be one of {RENDER_METHODS} or None (automatic), got {method!r}.")
        w = genomes["weight"]
        if method == "per-genome" and not _per_genome_ok(w):
            raise ValueError("method='per-genome' draws with numpy: it needs float32 or float64 genomes "
                             f"on the CPU, got {w.dtype} on {w.device}.")
        if method in ("compiled", "compiled-float32") and not _compiled_ok(w):
            raise ValueError(f"method={method!r} needs float32 genomes on the CPU that need no gradient (and "
                             f"numba), got {w.dtype} on {w.device}: pass method=None to pick the renderer "
                             "that applies.")
        if method is None:
            method = render_method(w, H * W)
        P = len(genomes["alive"])
        out = genomes["weight"].new_empty((P, self.n_outputs, H, W))
        if P == 0:
            return out
        # Hidden slots fill from the front: slots after the last one alive anywhere are empty.
        N = int(genomes["alive"].any(dim=0).nonzero().max()) + 1
        if method in ("compiled", "compiled-float32"):     # plans and draws in one compiled call
            dtype = torch.float64 if method == "compiled" else torch.float32    # the precision drawn in
            cppn_cpu.render(genomes["weight"].numpy(), genomes["conn"].numpy(), genomes["act"].numpy(), N,
                            coordinates(H, W, dtype=dtype).numpy(), out.view(P, self.n_outputs, H * W).numpy(),
                            ACTIVATION_AT_ZERO)
            return out
        conn, alive, weight = genomes["conn"][:, :N, :N], genomes["alive"][:, :N], genomes["weight"][:, :N, :N]
        inputs = coordinates(H, W, dtype=weight.dtype, device=weight.device)
        planned = cppn_plan.plan(conn, alive, self.n_outputs)    # compiled, on the CPU
        order, size = planned if planned is not None else plan_tensors(conn, alive, self.n_outputs)
        by_size = torch.sort(size, descending=True, stable=True).indices
        sizes = size[by_size].tolist()
        weight_all, act_all = genomes["weight"].contiguous(), genomes["act"].contiguous()
        if method == "per-genome":
            oc = order[:, :sizes[0]]
            ws, act = _in_order(weight_all, act_all, torch.arange(P, device=oc.device), oc)
            out_pos = _inverse(oc, N)[:, N_INPUTS:N_INPUTS + self.n_outputs]
            _render_each(ws.numpy(), act.numpy(), size.tolist(), out_pos.numpy(), inputs.numpy(),
                         out.view(P, self.n_outputs, H * W).numpy())
            return out
        i = 0
        while i < P:
            n = sizes[i]
            chunk = by_size[i:i + max(1, self.max_floats // (n * H * W))]
            # The chunk's weights and activations, rows and columns in each genome's order.
            oc = order[chunk, :n]
            ws, act = _in_order(weight_all, act_all, chunk, oc)
            o = self._render_chunk(ws, act, oc, size[chunk], inputs, N)
            out.index_copy_(0, chunk, o.view(len(chunk), self.n_outputs, H, W))
            i += len(chunk)
        return out

    def _render_chunk(self, ws, act, order, size, inputs, N) -> torch.Tensor:
        """Genomes sorted by ``size`` (descending); ``order`` (P, n) their nodes in topological order
        (of their N slots), ``ws`` (P, n, n) and ``act`` (P, n) the weights and activations in it."""
        P, n = order.shape
        # Step k computes node k of the genomes that have one: a prefix of the batch. Within the
        # step, rows are grouped by activation (``group``, ``counts``) so each function runs once on
        # a contiguous block. Planned for all steps at once, so there is one host sync per chunk.
        has = torch.arange(n, device=size.device)[None, :] < size[:, None]      # (P, n)
        acts = torch.where(has, act, len(ACTIVATIONS))                          # sentinel sorts last
        group = torch.sort(acts, dim=0, stable=True).indices                   # (P, n)
        counts = (acts[:, :, None] == torch.arange(len(ACTIVATIONS), device=acts.device)).sum(dim=0).tolist()
        # Node values, node-major: V[j, p] is node 4 + j of genome p (inputs are not stored).
        # First every node's input term, for all genomes at once: one matmul with the shared
        # (4, pixels) coordinates. Then, node by node, add the terms from earlier hidden nodes.
        HW = inputs.shape[1]
        V = _scratch("V", (n - N_INPUTS, P, HW), inputs)
        X = _scratch("X", (P * self.n_outputs * HW,), inputs)              # x below, then the outputs
        runs = _activation_runs(acts, has, HW) if inputs.device.type == "cpu" else None
        for k in range(N_INPUTS, n):
            j, m = k - N_INPUTS, sum(counts[k])          # m: genomes that have a k-th node
            # Rows m and beyond (genomes too small to have node k) are never read: computed only
            # up to 4 rows, for the BLAS kernel of 4+ rows (the one for 1-3 rows rounds differently).
            r = min(P, max(m, 4))
            torch.mm(ws[:r, k, :N_INPUTS], inputs, out=V[j, :r])
            if j:
                hidden = torch.bmm(ws[:m, k:k + 1, N_INPUTS:k], V[:j, :m].transpose(0, 1),
                                   out=X[:m * HW].view(m, 1, HW))
                V[j, :m] += hidden.squeeze(1)
            if runs is not None and runs[k]:
                # Few long runs of one activation among the rows: apply it where they lie.
                ends = [p for p, _ in runs[k][1:]] + [m]
                for (start, a), end in zip(runs[k], ends):
                    _ACTIVATIONS_INPLACE[a](V[j, start:end])
                continue
            rows = group[:m, k]
            x = torch.index_select(V[j, :m], 0, rows, out=X[:m * HW].view(m, HW))
            start = 0
            for a, c in enumerate(counts[k]):
                if c:
                    _ACTIVATIONS_INPLACE[a](x[start:start + c])
                start += c
            V[j, :m].index_copy_(0, rows, x)
        # Where did each genome's output nodes land in its order?
        out_pos = _inverse(order, N)[:, N_INPUTS:N_INPUTS + self.n_outputs] - N_INPUTS
        rows = (out_pos * P + torch.arange(P, device=V.device)[:, None]).view(-1)   # genome-major, then channel
        o = torch.index_select(V.view(-1, HW), 0, rows, out=X[:len(rows) * HW].view(len(rows), HW))
        return o.abs_().clamp_(max=1.0)

    # -- inspection --------------------------------------------------------------------------
    def sizes(self, genomes: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden neurons, connections) per genome, two (P,) int tensors."""
        _, _, is_hidden = self._slot_masks(genomes["alive"].device)
        return (genomes["alive"] & is_hidden).sum(dim=1), genomes["conn"].sum(dim=(1, 2))


# The four activations in place on numpy arrays, with numpy's own functions (2(σ(z) − 0.5) =
# tanh(z / 2)): the benchmark's numpy baseline. The per-genome renderer mixes in torch's where
# torch's is faster (CPU_ACTIVATIONS_INPLACE).
def _np_sin(z):
    np.sin(z, out=z)


def _np_sigmoid(z):
    z *= 0.5
    np.tanh(z, out=z)


def _np_gaussian(z):
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)


def _np_linear(z):
    np.clip(z, -3.0, 3.0, out=z)
    z *= 1.0 / 3.0


def _torch_sigmoid(z):
    torch.from_numpy(z).sigmoid_()
    z *= 2.0                 # numpy's scalar ops: a third of torch's per-call cost on 50,000 floats
    z -= 1.0


def _torch_linear(z):
    torch.from_numpy(z).clamp_(-3.0, 3.0)
    z *= 1.0 / 3.0


NP_ACTIVATIONS_INPLACE = (_np_sin, _np_sigmoid, _np_gaussian, _np_linear)
# The fastest of numpy's and torch's in place, per activation: what the per-genome renderer uses.
# Measured on 1,000 evolved genomes at 224×224 (2-core AMD EPYC, AVX2, one thread, torch 2.14,
# numpy 2.4): torch's sigmoid instead of numpy's tanh(z/2) saved 0.107 s of 0.61; torch's sin and
# exp(−z²) cost 0.03–0.04 s more than numpy's on the genomes' own values; torch's clamp_ is 2x
# np.clip; a scalar multiply or add costs ~17 µs a call in torch, 3–8 in numpy.
CPU_ACTIVATIONS_INPLACE = (_np_sin, _torch_sigmoid, _np_gaussian, _torch_linear)


def _at_zero(activation) -> float:
    z = np.zeros(1)
    activation(z)
    return float(z[0])


# Each activation at 0 (sin 0, 2(σ(0) − 0.5), exp(−0²), 0/3, all exact): the value of a node
# without connections. (A fifth of evolved genomes' computed nodes have none: a fill, not an activation.)
ACTIVATION_AT_ZERO = tuple(_at_zero(f) for f in CPU_ACTIVATIONS_INPLACE)
# From this many pixels the CPU renders genome by genome (measured on a 2-core AMD EPYC, one
# thread: at 28×28 the batched renderer is 1.4x faster; at 48×48 the per-genome one is 1.2x, at
# 224×224 2.8x).
PER_GENOME_PIXELS = 40 * 40
# Up to this many pixels the CPU draws float32 genomes with the compiled renderer in float64
# (exact to one rounding: MNIST's lessons), above it in float32. The float32 one is 1.9x as fast
# at 28×28 and 96×96 and 2.4x at 224×224, where it takes 0.4–0.5 of the per-genome numpy
# renderer's time (1,000 evolved genomes, 2-core AMD EPYC, one thread); the float64 one keeps the
# MNIST lessons' images (and so their recorded results) exact.
COMPILED_PIXELS = 96 * 96


def _per_genome_ok(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)


def _compiled_ok(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and not weight.requires_grad
            and cppn_cpu.available())


def render_method(weight: torch.Tensor, pixels: int) -> str:
    """The renderer :meth:`CPPNEncoding.render` uses by default for genomes with these weights."""
    if _compiled_ok(weight):
        return "compiled" if pixels <= COMPILED_PIXELS else "compiled-float32"
    return "per-genome" if _per_genome_ok(weight) and pixels >= PER_GENOME_PIXELS else "batched"


def _render_each(ws, act, sizes, out_pos, inputs, out) -> None:
    """Each genome on its own, with numpy: ``ws`` (P, n, n) and ``act`` (P, n) in each genome's
    topological order (inputs first), ``sizes`` its node counts, ``out_pos`` (P, channels) where its
    outputs lie in that order, ``inputs`` (4, pixels); writes |output| clipped to 1 into ``out``
    (P, channels, pixels). Node k = activation(Σ weight · source) over its connections only (most
    nodes have one or two): the first term a multiply, each further one an in-place ``add_`` with
    ``alpha`` (one pass over the pixels), then the in-place activation."""
    values = _scratch("F", (ws.shape[1], inputs.shape[1]), torch.from_numpy(inputs)).numpy()
    values[:N_INPUTS] = inputs
    rows = list(torch.from_numpy(values))
    for w, a, n, pos, o, o_t in zip(ws, act, sizes, out_pos, out, torch.from_numpy(out)):
        dst, src = np.nonzero(w[:n, :n])                 # row-major: by destination, in order
        wv, dst, src = w[dst, src].tolist(), dst.tolist(), src.tolist()
        i, m = 0, len(dst)
        for k in range(N_INPUTS, n):
            v = values[k]
            if i < m and dst[i] == k:
                np.multiply(values[src[i]], wv[i], out=v)
                i += 1
                while i < m and dst[i] == k:
                    rows[k].add_(rows[src[i]], alpha=wv[i])
                    i += 1
                CPU_ACTIVATIONS_INPLACE[a[k]](v)
            else:                                        # no connection: the constant activation(0)
                v.fill(ACTIVATION_AT_ZERO[a[k]])
        np.abs(values[pos], out=o)
        o_t.clamp_max_(1.0)                              # (np.minimum with a scalar: 4x slower)


# Applying an activation to each run of rows that share it, instead of gathering the rows into
# one block per activation and scattering them back, costs a call per run instead of two copies.
# It is worth it when a run's copy costs more than a call: about 10,000 floats. And it gives the
# same bits only when no element falls in the scalar tail of a vectorised loop (two SIMD vectors,
# at most 32 floats): so only for images whose pixel count is a multiple of 64.
_FLOATS_PER_CALL = 10_000


def _activation_runs(acts: torch.Tensor, has: torch.Tensor, HW: int):
    """For each step k, [(first row, activation), ...] of the runs of equal activations among the
    rows that have node k, or [] where gathering is cheaper; None when HW is not a multiple of 64."""
    if HW % 64:
        return None
    starts = has.clone()
    starts[1:] &= acts[1:] != acts[:-1]                                      # (P, n): a run starts here
    n_runs, m = starts.sum(dim=0).tolist(), has.sum(dim=0).tolist()
    step, row = starts.T.nonzero(as_tuple=True)
    runs = [[] for _ in m]
    for k, p, a in zip(step.tolist(), row.tolist(), acts[row, step].tolist()):
        if n_runs[k] * _FLOATS_PER_CALL < m[k] * HW:
            runs[k].append((p, a))
    return runs


# Scratch memory of the CPU renderer, kept between calls: fresh blocks of many megabytes come
# from the kernel as new pages on every call (page faults and zeroing cost more than the pixel
# math at 224×224). At most two blocks per dtype, each within ``max_floats``. On a GPU the
# caching allocator already reuses memory.
_SCRATCH: dict = {}


def _scratch(name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (like ``like``), from a reused block on the CPU."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    numel, key = math.prod(shape), (name, like.dtype)
    block = _SCRATCH.get(key)
    if block is None or block.numel() < numel:
        block = _SCRATCH[key] = like.new_empty(numel)
    return block[:numel].view(shape)


def _in_order(weight: torch.Tensor, act: torch.Tensor, rows: torch.Tensor, order: torch.Tensor):
    """The weights (len(rows), n, n) and activations (len(rows), n) of genomes ``rows`` of a
    contiguous population, rows and columns in each genome's ``order`` (len(rows), n). (``weight``
    is zero wherever there is no connection: every operator keeps it so.)"""
    Nf = weight.shape[1]
    at = (rows * Nf)[:, None] + order                                   # (genome, node) in act
    at_w = (at * Nf)[:, :, None] + order[:, None, :]                    # (genome, dst, src) in weight
    return weight.view(-1).index_select(0, at_w.view(-1)).view(at_w.shape), act.take(at)


def _inverse(order: torch.Tensor, n: int) -> torch.Tensor:
    """position[p, node] = k where order[p, k] = node, for a partial order (P, k ≤ n) of slots."""
    P, k = order.shape
    position = torch.full((P, n), n, dtype=order.dtype, device=order.device)
    return position.scatter_(1, order, torch.arange(k, device=order.device).expand(P, k))


# --------------------------------------------------------------------------------------------
# The slow reference: one genome, one pixel at a time, plain Python floats.

_REFERENCE_ACTIVATIONS = (
    math.sin,
    lambda z: 2.0 * (1.0 / (1.0 + math.exp(-z)) - 0.5) if z > -700 else -1.0,
    lambda z: math.exp(-z * z),
    lambda z: min(max(z, -3.0), 3.0) / 3.0,
)


def render_reference(genome: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """Render ONE genome (a dict of unbatched tensors, e.g. ``{k: v[i] for k, v in pop.items()}``)
    pixel by pixel with a memoised recursive evaluation. Returns (channels, H, W) float64."""
    C, H, W = shape
    w = genome["weight"].cpu().double().numpy()  # (MPS has no float64: to the CPU first)
    conn = genome["conn"].cpu().numpy()
    act = genome["act"].cpu().numpy()
    sources = {dst: [int(s) for s in np.flatnonzero(conn[dst])] for dst in range(len(act))}
    out = np.zeros((C, H, W))
    for i in range(H):
        for j in range(W):
            x = -1.0 + 2.0 * j / (W - 1) if W > 1 else -1.0
            y = -1.0 + 2.0 * i / (H - 1) if H > 1 else -1.0
            values = {0: x, 1: y, 2: math.sqrt(x * x + y * y), 3: 1.0}

            def value(node):
                if node not in values:
                    s = sum(w[node, src] * value(src) for src in sources[node])
                    values[node] = _REFERENCE_ACTIVATIONS[act[node]](s)
                return values[node]

            for c in range(C):
                out[c, i, j] = min(abs(value(N_INPUTS + c)), 1.0)
    return out
