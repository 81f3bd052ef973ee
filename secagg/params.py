"""What the server announces for a round and every participant checks: one immutable record."""

from __future__ import annotations

import dataclasses
import functools

from secagg import graph
from secagg.errors import SecAggError
from secagg.graph import MAX_PARTICIPANTS, choose_degree_and_threshold, neighbour_graph, neighbours_of
from secagg.quantize import FixedPoint

MAX_ID_BYTES = 64
MAX_VECTOR_LENGTH = 1 << 26


def _positive_int(name: str, value: object, upper: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise SecAggError(f"{name} must be an integer in 1..{upper}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SecAggParams:
    """One round: participants 0..n-1, the neighbour graph's degree and seed, the Shamir threshold,
    the fixed-point encoding and the vector length.

    Degree < n - 1 must be even (H(k, n)), degree = n - 1 is the complete graph; the threshold is any
    t in 2..k+1 (`graph.choose_degree_and_threshold` picks one from a dropout and collusion model).
    No majority is required: a majority is what stops a *malicious* server that tells different devices
    different survivor sets from collecting t shares of both secrets of one device, and we do not
    claim that (there is no consistency-check round). Instead each device reveals, per neighbour, only
    one kind of share, never both for the same neighbour, and answers one unmask request only.
    """

    round_id: bytes
    num_participants: int
    degree: int
    threshold: int
    fixed_point: FixedPoint
    vector_length: int
    graph_seed: bytes

    def __post_init__(self) -> None:
        for name in ("round_id", "graph_seed"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_ID_BYTES:
                raise SecAggError(f"{name} must be 1..{MAX_ID_BYTES} bytes")
        _positive_int("num_participants", self.num_participants, MAX_PARTICIPANTS)
        if self.num_participants < 2:
            raise SecAggError("secure aggregation needs at least 2 participants")
        _positive_int("degree", self.degree, self.num_participants - 1)
        if self.degree < self.num_participants - 1 and self.degree % 2:
            raise SecAggError(f"degree {self.degree} < n - 1 must be even")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) \
                or not 2 <= self.threshold <= self.degree + 1:
            raise SecAggError(f"threshold must be an integer in 2..{self.degree + 1} (degree + 1), "
                              f"got {self.threshold!r}")
        if not isinstance(self.fixed_point, FixedPoint):
            raise SecAggError("fixed_point must be a FixedPoint")
        _positive_int("vector_length", self.vector_length, MAX_VECTOR_LENGTH)

    @classmethod
    def for_round(cls, *, round_id: bytes, num_participants: int, fixed_point: FixedPoint,
                  vector_length: int, graph_seed: bytes,
                  dropout_tolerance: float = graph.DEFAULT_DROPOUT_TOLERANCE,
                  corrupt_fraction: float = graph.DEFAULT_CORRUPT_FRACTION,
                  privacy_bits: int = graph.DEFAULT_PRIVACY_BITS,
                  failure_probability: float = graph.DEFAULT_FAILURE_PROBABILITY) -> SecAggParams:
        """Parameters whose degree and threshold `graph.choose_degree_and_threshold` picks for this model."""
        degree, threshold = choose_degree_and_threshold(
            num_participants, dropout_tolerance=dropout_tolerance, corrupt_fraction=corrupt_fraction,
            privacy_bits=privacy_bits, failure_probability=failure_probability)
        return cls(round_id, num_participants, degree, threshold, fixed_point, vector_length, graph_seed)

    @functools.cached_property
    def graph(self) -> tuple[tuple[int, ...], ...]:
        """The round's neighbour graph: entry i holds participant i's sorted neighbours."""
        return tuple(neighbour_graph(self.num_participants, self.degree, self.graph_seed))

    def neighbours(self, index: int) -> tuple[int, ...]:
        """Participant i's sorted neighbours: from `graph` once the server laid it out, else computed
        for i alone (a device's cost does not grow with n)."""
        if "graph" in self.__dict__:
            return self.graph[index]
        return neighbours_of(self.check_index(index), self.num_participants, self.degree, self.graph_seed)

    def neighbourhood(self, index: int) -> tuple[int, ...]:
        """i's neighbours and i, sorted: the holder of position p gets Shamir x-coordinate p + 1."""
        return tuple(sorted((*self.neighbours(index), index)))

    def check_index(self, index: object, what: str = "participant index") -> int:
        """`index` if it is an int in 0..n-1, else SecAggError."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_participants:
            raise SecAggError(f"{what} must be an integer in 0..{self.num_participants - 1}, got {index!r}")
        return index
