"""The server's side of SecAgg+: route what it cannot read, sum what it cannot see.

Semi-honest server: it follows the protocol but may try to learn from what it sees. Devices can be
hostile, so every message is validated (index, phase, sizes, key sets) and a refused message raises
`SecAggError` without changing any state.

Stages (`stages.PROTOCOL_STAGES`) advance implicitly: the first `keys_for` closes key advertisement,
the first `shares_for` closes share collection, `unmask_request` closes masked-input collection, a
successful `result` ends the round. (The round driver decides when; these calls only mark the point
of no return.)

Which pairwise masks exist (the device does the same, see `participant`): u and
v are masked together iff they are neighbours and both sent their shares (S = who sent shares).
A device masks with exactly the senders of the ciphertexts routed to it, and `shares_for(u)` routes
one from every v in S adjacent to u. Then:
- survivors R = who sent a masked input (all in S); dropped D = S - R.
- participants that advertised keys but sent no shares are in neither set: nobody masked with them.
- the sum is sum_R y_u - sum_R PRG(b_u) - (for each v in D, each u in R adjacent to v) ±PRG(s_uv);
  masks between two survivors cancel, masks between two dropped participants never entered the sum.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from types import MappingProxyType

import numpy as np

from secagg import keys, prg
from secagg.errors import QuantizationError, SecAggError
from secagg.params import SecAggParams
from secagg.quantize import packed_size, unpack
from secagg.shamir import ShamirCombiner
from secagg.stages import PROTOCOL_STAGES, Stage


class SecAggServer:
    """One round of `params` on the server."""

    def __init__(self, params: SecAggParams) -> None:
        if not isinstance(params, SecAggParams):
            raise SecAggError("params must be SecAggParams")
        self.params = params
        self._phase = Stage.ADVERTISE_KEYS
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._all_keys: set[bytes] = set()
        self._shares: dict[int, dict[int, bytes]] = {}  # sender -> receiver -> sealed shares
        self._routed: dict[int, dict[int, bytes]] | None = None  # receiver -> sender -> the same, once closed
        self._masked: set[int] = set()  # who sent a masked input
        self._sum = np.zeros(params.vector_length, np.uint64)  # their running sum (wraps mod 2^64)
        self._request: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._request_sets: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        self._request_for: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # asked, then checked against
        self._expected_reveal: dict[int, frozenset[int]] = {}  # holder -> the owners it must reveal for
        # holder -> owner -> its share of b_owner (owner a survivor) or of owner's mask key seed (owner dropped)
        self._revealed: dict[int, dict[int, bytes]] = {}
        self._unmasked: set[int] = set()
        self._result: tuple[np.ndarray, tuple[int, ...]] | None = None

    @property
    def phase(self) -> Stage:
        return self._phase

    # helpers

    def _index(self, index: object) -> int:
        return self.params.check_index(index)

    def _require(self, what: str, *phases: Stage) -> None:
        if self._phase not in phases:
            raise SecAggError(f"{what} is not accepted in phase {self._phase.label}")

    def _advance(self, to: Stage) -> None:
        if PROTOCOL_STAGES.index(self._phase) < PROTOCOL_STAGES.index(to):
            self._phase = to

    # phase 1: advertise keys

    def receive_keys(self, index: int, c_pk: bytes, s_pk: bytes) -> None:
        """Participant `index`'s public channel key and public mask key."""
        self._require("advertised keys", Stage.ADVERTISE_KEYS)
        index = self._index(index)
        if index in self._keys:
            raise SecAggError(f"participant {index} already advertised keys")
        for key in (c_pk, s_pk):
            keys.check_public(key)
            if bytes(key) in self._all_keys:
                raise SecAggError(f"participant {index} advertised a public key already in use")
        if bytes(c_pk) == bytes(s_pk):
            raise SecAggError(f"participant {index} advertised the same key twice")
        self._keys[index] = (bytes(c_pk), bytes(s_pk))
        self._all_keys.update(self._keys[index])

    def keys_for(self, index: int) -> dict[int, tuple[bytes, bytes]]:
        """The keys of `index`'s neighbours that advertised; the first call closes advertisement."""
        index = self._index(index)
        if index not in self._keys:
            raise SecAggError(f"participant {index} did not advertise keys")
        self._advance(Stage.SHARE_KEYS)
        advertised = self._keys  # O(degree), in C loops: this runs for every device
        near = _present(self.params.graph[index], advertised, self.params.num_participants)
        return dict(zip(near, map(advertised.__getitem__, near)))

    # phase 2: share keys

    def receive_shares(self, index: int, shares: Mapping[int, bytes]) -> None:
        """`index`'s sealed shares: exactly one for each neighbour whose keys it was given."""
        self._require("shares", Stage.SHARE_KEYS)
        index = self._index(index)
        if index not in self._keys:
            raise SecAggError(f"participant {index} did not advertise keys")
        if index in self._shares:
            raise SecAggError(f"participant {index} already sent shares")
        if not isinstance(shares, Mapping):
            raise SecAggError("shares must be a mapping of receiver index -> bytes")
        neighbours = self.params.graph[index]  # sorted
        if len(self._keys) == self.params.num_participants:  # everyone advertised: the common case, in C loops
            expected: Collection[int] = neighbours
            matches = _all_of_type(shares.keys(), int) and tuple(sorted(shares)) == neighbours
        else:
            expected = self._keys.keys() & neighbours
            matches = shares.keys() == expected and _all_of_type(shares.keys(), int)
        if not matches:
            for v in shares:
                self.params.check_index(v, "receiver index")
            raise SecAggError(f"participant {index} sent shares for {sorted(shares)}, expected {sorted(expected)}")
        size = keys.SEALED_SHARES_BYTES
        self._shares[index] = _checked_copy(shares, size, lambda v: f"share message for {v}")

    def shares_for(self, index: int) -> Mapping[int, bytes]:
        """The sealed shares addressed to `index` (sender -> ciphertext, read-only); the first call closes
        share collection."""
        index = self._index(index)
        if PROTOCOL_STAGES.index(self._phase) < PROTOCOL_STAGES.index(Stage.SHARE_KEYS):
            raise SecAggError(f"shares are not available in phase {self._phase.label}")
        if index not in self._shares:
            raise SecAggError(f"participant {index} did not send shares")
        self._advance(Stage.MASKED_INPUT)
        if self._routed is None:
            self._routed = _by_receiver(self._shares)
        # every neighbour's message holds one for `index`: it went to each neighbour that advertised keys,
        # advertisement closed before any share was accepted, and `index` advertised (it sent shares)
        return MappingProxyType(self._routed[index])  # no copy: nobody can change what the server routed

    def _senders_to(self, index: int) -> set[int]:
        """Who masked with `index`: its neighbours that sent shares (if it sent shares itself)."""
        shares = self._shares
        return set(_present(self.params.graph[index], shares, self.params.num_participants)) if index in shares else set()

    # phase 3: masked input

    def receive_masked(self, index: int, masked: bytes | bytearray | np.ndarray) -> None:
        """`index`'s masked vector, as it travels (packed at b bits per value, `quantize.pack`) or
        unpacked (uint64, the round's length, values < 2^b).

        The packed form is unpacked here: its fields are b bits wide, so no value can reach 2^b and
        no range pass over the vector is needed (~10% of what `unpack` costs).
        """
        self._require("masked input", Stage.MASKED_INPUT)
        index = self._index(index)
        if index not in self._shares:
            raise SecAggError(f"participant {index} did not send shares, so it cannot send a masked input")
        if index in self._masked:
            raise SecAggError(f"participant {index} already sent its masked input")
        length, bits = self.params.vector_length, self.params.fixed_point.bit_width
        if isinstance(masked, (bytes, bytearray)):
            try:
                vector = unpack(masked, bits, length)  # checks the length and the padding bits
            except QuantizationError as error:
                raise SecAggError(f"masked input of participant {index}: {error}") from None
        elif not isinstance(masked, np.ndarray) or masked.dtype != np.uint64 or masked.shape != (length,):
            raise SecAggError(f"masked input of participant {index} must be {packed_size(length, bits)} packed "
                              f"bytes or a uint64 array of shape ({length},)")
        elif bits < 64 and int(masked.max()) >> bits:
            raise SecAggError(f"masked input of participant {index} holds values >= 2^{bits}")
        else:
            vector = masked
        self._sum += vector
        self._masked.add(index)

    def unmask_request(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(survivors, dropped): who sent a masked input, and who sent shares but no masked input.

        Closes masked-input collection. Each device is asked about its own neighbourhood only
        (`unmask_request_for`): shares of b for survivors, shares of the mask key seed for the dropped.
        """
        if self._request is None:
            self._require("an unmask request", Stage.MASKED_INPUT)
            survivors = tuple(sorted(self._masked))
            dropped = tuple(sorted(set(self._shares) - set(self._masked)))
            self._request = survivors, dropped
            self._request_sets = frozenset(survivors), frozenset(dropped)
            self._routed = None  # every survivor has its shares; a late `shares_for` routes them again
            self._advance(Stage.UNMASK)
        return self._request

    def unmask_request_for(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The request restricted to survivor `index`'s neighbourhood (itself among the survivors)."""
        index = self._index(index)
        if self._request is None:
            raise SecAggError("no unmask request yet")
        if index not in self._masked:
            raise SecAggError(f"participant {index} is not a survivor")
        if index not in self._request_for:
            # O(degree), never the whole request: its neighbourhood (sorted, itself included: a survivor
            # sent shares) less the neighbours that sent none, who masked with nobody
            near = tuple(filter(self._shares.__contains__, self.params.neighbourhood(index)))
            survivors, dropped = self._request_sets
            request = (tuple(filter(survivors.__contains__, near)), tuple(filter(dropped.__contains__, near)))
            self._request_for[index] = request
            self._expected_reveal[index] = frozenset(request[0]) | frozenset(request[1])
        return self._request_for[index]

    # phase 4: unmask

    def receive_unmask(self, index: int, shares: Mapping[int, bytes]) -> None:
        """Survivor `index`'s revealed shares, exactly its `unmask_request_for`.

        b-shares of the survivors, mask-key-seed shares of the dropped.
        """
        self._require("unmask shares", Stage.UNMASK)
        index = self._index(index)
        if index not in self._masked:
            raise SecAggError(f"participant {index} is not a survivor")
        if index in self._unmasked:
            raise SecAggError(f"participant {index} already sent its unmask shares")
        if not isinstance(shares, Mapping):
            raise SecAggError("unmask shares must be a mapping of participant index -> bytes")
        self.unmask_request_for(index)
        expected = self._expected_reveal[index]
        if shares.keys() != expected or not _all_of_type(shares.keys(), int):
            for w in shares:
                self.params.check_index(w, "participant index")
            raise SecAggError(f"participant {index} revealed shares for {sorted(shares)}, expected {sorted(expected)}")
        assert keys.B_SHARE_BYTES == keys.KEY_SHARE_BYTES  # one size check for both kinds
        # b-shares and mask-key shares are told apart by their owner (survivor or dropped)
        self._revealed[index] = _checked_copy(shares, keys.B_SHARE_BYTES, lambda w: f"share of participant {w}")
        self._unmasked.add(index)

    def result(self, *, executor: Executor | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
        """(sum of the survivors' encoded inputs mod 2^b, survivors); SecAggError "too few" if unrecoverable.

        One Shamir reconstruction per survivor and per dropped participant, each from the t shares with
        the smallest x-coordinates, all in one vectorized pass (`ShamirCombiner`). Then the masks are
        regenerated: one AES keystream per survivor's b, one key agreement and keystream per (dropped,
        surviving neighbour) pair; with `executor` (e.g. a ProcessPoolExecutor, owned by the caller)
        those run as a few jobs on it. A failed call changes nothing (more unmask shares may still
        arrive); a successful one ends the round and later calls return the same result.
        """
        if self._result is not None:
            return self._result[0].copy(), self._result[1]
        self._require("a result", Stage.UNMASK)
        if executor is not None and not isinstance(executor, Executor):
            raise SecAggError(f"executor must be a concurrent.futures.Executor or None, got {type(executor).__name__}")
        assert self._request is not None
        survivors, dropped = self._request
        t, fp, length = self.params.threshold, self.params.fixed_point, self.params.vector_length
        if len(survivors) < t:
            raise SecAggError(f"too few survivors: {len(survivors)} < threshold {t}; abandon the round")
        owners = survivors + dropped
        xs, values, short = self._smallest_points(owners)
        if short:
            short_b = [w for w in short if w in self._request_sets[0]]
            short_key = [v for v in short if v in self._request_sets[1]]
            raise SecAggError(f"too few shares (threshold {t}) to rebuild the self-mask seed of {short_b} "
                              f"and the mask key of dropped {short_key}; abandon the round")
        secrets = ShamirCombiner(t).combine_rows(xs, values, keys.B_SHARE_BYTES)
        self_seeds, key_seeds = secrets[:len(survivors)], secrets[len(survivors):]
        round_id, alive = self.params.round_id, set(survivors)
        peers_of_dropped = []
        for v, key_seed in zip(dropped, key_seeds):
            mask_key = keys.mask_key_from_seed(key_seed, round_id=round_id, index=v)
            if keys.public_of(mask_key) != self._keys[v][1]:
                raise SecAggError(f"the rebuilt mask key of participant {v} does not match its advertised mask "
                                  f"public key (inconsistent shares); abandon the round")
            peers = tuple((u, self._keys[u][1]) for u in sorted(self._senders_to(v) & alive))
            peers_of_dropped.append((v, key_seed, peers))
        total = self._sum.copy()
        total -= _masks_total(round_id, length, self_seeds, peers_of_dropped, executor)
        total &= fp.mask
        self._result = (total, survivors)
        self._phase = Stage.DONE
        self._revealed, self._request_for, self._expected_reveal = {}, {}, {}
        return total.copy(), survivors

    def _smallest_points(self, owners: Sequence[int]) -> tuple[np.ndarray, bytes, list[int]]:
        """(x-coordinates (owners, t), their shares side by side, owners with fewer than t shares revealed).

        For each owner, the t revealed shares with the smallest x: holder h has x = its position in the
        owner's neighbourhood + 1, so walking the neighbourhood in order finds them. The smallest x make
        most secrets share their x-coordinates, hence their Lagrange coefficients (`ShamirCombiner`).
        """
        t, revealed = self.params.threshold, self._revealed
        xs: list[int] = []
        values: list[bytes] = []
        short = []
        for owner in owners:
            found = 0
            for x, holder in enumerate(self.params.neighbourhood(owner), 1):
                held = revealed.get(holder)
                if held is not None and (share := held.get(owner)) is not None:
                    xs.append(x)
                    values.append(share)
                    found += 1
                    if found == t:
                        break
            if found < t:
                short.append(owner)
                del xs[len(xs) - found:], values[len(values) - found:]
        return np.array(xs, np.int64).reshape(-1, t), b"".join(values), short


def _by_receiver(shares: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[int, bytes]]:
    """receiver -> sender -> sealed shares (senders ascending), for every receiver that sent shares itself.

    One sequential pass over all messages when share collection closes: a lookup per (receiver,
    sender) at each `shares_for` touched a different sender's dict each time (cold in a real server).
    """
    routed: dict[int, dict[int, bytes]] = {receiver: {} for receiver in shares}
    for sender in sorted(shares):
        for receiver, sealed in shares[sender].items():
            box = routed.get(receiver)
            if box is not None:  # a neighbour that advertised keys but sent no shares asks for none
                box[sender] = sealed
    return routed


def _present(members: tuple[int, ...], table: Mapping[int, object], everyone: int) -> tuple[int, ...]:
    """The `members` that are keys of `table`; with no lookups when all `everyone` participants are in it."""
    return members if len(table) == everyone else tuple(filter(table.__contains__, members))


def _all_of_type(items: Iterable[object], kind: type) -> bool:
    """Whether every item is exactly of `kind` (not a subclass: bool is not an int here); one C-level pass."""
    return set(map(type, items)) <= {kind}


def _checked_copy(messages: Mapping[int, bytes], size: int, naming: Callable[[int], str]) -> dict[int, bytes]:
    """A copy of `messages` the caller cannot change, every value `size` bytes; else SecAggError naming it."""
    if _all_of_type(messages.values(), bytes) and set(map(len, messages.values())) <= {size}:
        return dict(messages)  # the common case in C loops; bytes are immutable
    copied: dict[int, bytes] = {}
    for key, data in messages.items():
        if not isinstance(data, (bytes, bytearray)) or len(copied.setdefault(key, bytes(data))) != size:
            raise SecAggError(f"{naming(key)} must be {size} bytes")  # the length of the copy: it is what is kept
    return copied


MaskJob = tuple[int, bytes, tuple[tuple[int, bytes], ...]]  # (dropped v, its mask key seed, (u, u's mask public key)...)


def _masks_total(round_id: bytes, length: int, self_seeds: Sequence[bytes], dropped: Sequence[MaskJob],
                 executor: Executor | None) -> np.ndarray:
    """What the survivors' masks add to their sum, mod 2^64 (the caller reduces mod 2^b).

    With `executor`, the masks are cut into a few jobs per worker (each returns one vector, so little
    crosses processes); the key agreements and AES keystreams of a round are nearly all its CPU.
    """
    if executor is None:
        return _masks_part(round_id, length, self_seeds, dropped)
    parts = 8
    futures = [executor.submit(_masks_part, round_id, length, self_seeds[k::parts], dropped[k::parts])
               for k in range(parts)]
    try:
        total = np.zeros(length, np.uint64)
        for future in futures:
            total += future.result()
        return total
    finally:
        for future in futures:
            future.cancel()  # after a failure, drop the jobs not yet started (a no-op once done)


def _masks_part(round_id: bytes, length: int, self_seeds: Sequence[bytes], dropped: Sequence[MaskJob]) -> np.ndarray:
    """sum PRG(b_w) over `self_seeds` and, for each dropped v and surviving neighbour u, the pairwise mask
    u added: +PRG(s_uv) when u < v, else -PRG(s_uv)."""
    masks = prg.KeystreamSum(length)
    for seed in self_seeds:
        masks.add(seed)
    for v, key_seed, peers in dropped:
        mask_key = keys.mask_key_from_seed(key_seed, round_id=round_id, index=v)
        for u, public in peers:
            masks.add(keys.mask_seed(mask_key, public, round_id=round_id, a=u, b=v), subtract=u > v)
    return masks.total
