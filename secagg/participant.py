"""The device's side of SecAgg+: one `SecAggParticipant` per device and round.

A small state machine over `stages.PROTOCOL_STAGES`: advertise_keys -> share_keys -> masked_input
-> unmask, each callable once and only in its turn. A refused call raises `SecAggError` and leaves
the participant as it was. Secrets (the seed the mask private key s_sk is derived from, the
self-mask seed b) never leave the device except as Shamir shares sealed to neighbours, and in
`unmask` the device reveals, for each neighbour, either its share of b or its share of the mask key
seed, never both (a participant listed in both sets is refused, and unmask runs once). This, not a
majority threshold, is what keeps a device's two secrets from being rebuilt together (see
`SecAggParams`).

Which pairwise masks exist: u masks with neighbour v iff u received v's share ciphertext in
`masked_input` (v advertised keys to u and then sent its shares through the server). The server
delivered exactly those ciphertexts, so it knows every pair that was masked: pairs where both ends
sent shares. A neighbour that advertised keys but sent no shares is left out of the masks (nobody
holds shares of its key, so a mask with it could never be removed); a neighbour that sent shares but
then no masked input is kept (its mask key is rebuilt from the survivors' shares and removed).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

import numpy as np

from secagg import keys, prg
from secagg.errors import SecAggError
from secagg.params import SecAggParams
from secagg.shamir import split_secret
from secagg.stages import Stage


class SecAggParticipant:
    """Participant `index` (0..n-1) of one round of `params`; fresh keys and seed every round."""

    def __init__(self, params: SecAggParams, index: int) -> None:
        if not isinstance(params, SecAggParams):
            raise SecAggError("params must be SecAggParams")
        self.params = params
        self.index = params.check_index(index)
        neighbourhood = params.neighbourhood(self.index)  # its own only: O(degree), whatever n is
        self._neighbours = frozenset(neighbourhood) - {self.index}
        self._positions = {w: p for p, w in enumerate(neighbourhood)}
        self._phase = Stage.ADVERTISE_KEYS
        self._channel: keys.KeyPair | None = None
        self._mask: keys.KeyPair | None = None
        self._mask_key_seed: bytes | None = None
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        self._self_seed: bytes | None = None
        self._own_b_share: bytes | None = None
        self._held: dict[int, tuple[bytes, bytes]] = {}  # v -> (share of b_v, share of v's mask key seed)

    @property
    def phase(self) -> Stage:
        return self._phase

    def _expect(self, phase: Stage) -> None:
        if self._phase is not phase:
            raise SecAggError(f"{phase.value} called out of order: participant {self.index} is at {self._phase.value}")

    def advertise_keys(self) -> tuple[bytes, bytes]:
        """(c_pk, s_pk): the public channel key and the public mask key, both new for this round.

        The mask key is derived from a fresh 16-byte seed, which is what gets shared (one Shamir block).
        """
        self._expect(Stage.ADVERTISE_KEYS)
        seed = os.urandom(keys.MASK_KEY_SEED_BYTES)
        mask = keys.KeyPair(keys.mask_key_from_seed(seed, round_id=self.params.round_id, index=self.index))
        self._channel, self._mask, self._mask_key_seed = keys.KeyPair.generate(), mask, seed
        self._phase = Stage.SHARE_KEYS
        return self._channel.public_bytes(), self._mask.public_bytes()

    def share_keys(self, neighbour_keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Shamir-share b and the mask key seed over the neighbourhood; one sealed message per advertised neighbour.

        `neighbour_keys` may omit neighbours that never advertised, but must hold nothing else, no key
        twice and none of our own keys, and at least threshold - 1 neighbours (else no secret of ours
        could ever be rebuilt and the round cannot succeed for us).
        """
        self._expect(Stage.SHARE_KEYS)
        assert self._channel is not None and self._mask is not None and self._mask_key_seed is not None
        if not isinstance(neighbour_keys, Mapping):
            raise SecAggError("neighbour keys must be a mapping of index -> (c_pk, s_pk)")
        own = {self._channel.public_bytes(), self._mask.public_bytes()}
        seen: set[bytes] = set()
        checked: dict[int, tuple[bytes, bytes]] = {}
        for v, pair in neighbour_keys.items():
            self.params.check_index(v, "neighbour index")
            if v not in self._neighbours:
                raise SecAggError(f"participant {v} is not a neighbour of {self.index}")
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise SecAggError(f"keys of {v} must be a (c_pk, s_pk) pair")
            for key in pair:
                keys.check_public(key)
                if key in own:
                    raise SecAggError(f"participant {v} advertised one of our own public keys")
                if key in seen:
                    raise SecAggError(f"public key of {v} appears twice")
                seen.add(bytes(key))
            checked[v] = (bytes(pair[0]), bytes(pair[1]))
        if len(checked) + 1 < self.params.threshold:
            raise SecAggError(f"too few neighbours advertised keys: {len(checked)} + self < threshold "
                              f"{self.params.threshold}")
        seed = os.urandom(keys.SELF_SEED_BYTES)
        count = self.params.degree + 1
        b_shares = split_secret(seed, threshold=self.params.threshold, num_shares=count)
        key_shares = split_secret(self._mask_key_seed, threshold=self.params.threshold, num_shares=count)
        round_id, u = self.params.round_id, self.index
        sealed = {}
        for v, (c_pk, _) in sorted(checked.items()):
            key = keys.channel_key(self._channel.private, c_pk, round_id=round_id, a=u, b=v)
            p = self._positions[v]
            sealed[v] = keys.seal_shares(key, round_id=round_id, sender=u, receiver=v,
                                         b_share=b_shares[p], key_share=key_shares[p])
        self._peer_keys, self._self_seed, self._mask_key_seed = checked, seed, None
        self._own_b_share = b_shares[self._positions[u]]
        self._phase = Stage.MASKED_INPUT
        return sealed

    def masked_input(self, encoded: np.ndarray, received: Mapping[int, bytes]) -> np.ndarray:
        """encoded + PRG(b) + sum over senders v of ±PRG(s_uv) (+ if u < v) mod 2^b.

        `received` are the share messages the server routed to us; each must open with our channel key
        and name its sender, us and this round. We mask with exactly these senders (see module doc).
        """
        self._expect(Stage.MASKED_INPUT)
        assert self._channel is not None and self._mask is not None and self._self_seed is not None
        fp, length = self.params.fixed_point, self.params.vector_length
        if not isinstance(encoded, np.ndarray) or encoded.dtype != np.uint64 or encoded.shape != (length,):
            raise SecAggError(f"the encoded input must be a uint64 array of shape ({length},)")
        if fp.bit_width < 64 and int(encoded.max()) >> fp.bit_width:
            raise SecAggError(f"the encoded input holds values >= 2^{fp.bit_width}")
        if not isinstance(received, Mapping):
            raise SecAggError("received shares must be a mapping of sender index -> bytes")
        round_id, u = self.params.round_id, self.index
        held: dict[int, tuple[bytes, bytes]] = {}
        for v, data in received.items():
            self.params.check_index(v, "sender index")
            if v not in self._peer_keys:
                raise SecAggError(f"participant {v} is not a neighbour whose keys we received")
            key = keys.channel_key(self._channel.private, self._peer_keys[v][0], round_id=round_id, a=u, b=v)
            held[v] = keys.open_shares(key, data, round_id=round_id, sender=v, receiver=u)
        if len(held) + 1 < self.params.threshold:
            raise SecAggError(f"too few neighbours sent shares: {len(held)} + self < threshold "
                              f"{self.params.threshold}; our input would be too weakly masked")
        masked = encoded + prg.expand(self._self_seed, length, fp.bit_width)
        for v in sorted(held):
            seed = keys.mask_seed(self._mask.private, self._peer_keys[v][1], round_id=round_id, a=u, b=v)
            pairwise = prg.expand(seed, length, fp.bit_width)
            if u < v:
                masked += pairwise
            else:
                masked -= pairwise
        masked &= fp.mask
        self._held, self._self_seed = held, None
        self._phase = Stage.UNMASK
        return masked

    def unmask(self, survivors: Collection[int], dropped: Collection[int]) -> dict[int, bytes]:
        """Our share of b_v for each survivor v (ourselves included), of v's mask key seed for each dropped v.

        Refused if a participant is in both sets, if we are not a survivor, if a listed participant did
        not send us shares, or if fewer than `threshold` of our neighbourhood survived (the server could
        then rebuild too much from too few). Runs once, so no participant's two shares ever both leave.
        """
        self._expect(Stage.UNMASK)
        assert self._own_b_share is not None
        u = self.index
        lists = {}
        for name, members in (("survivors", survivors), ("dropped", dropped)):
            if isinstance(members, (str, bytes)) or not isinstance(members, Collection):
                raise SecAggError(f"{name} must be a collection of indices")
            items = list(members)
            for w in items:
                self.params.check_index(w, f"index in {name}")
            if len(set(items)) != len(items):
                raise SecAggError(f"{name} lists a participant twice")
            lists[name] = set(items)
        alive, gone = lists["survivors"], lists["dropped"]
        if alive & gone:
            raise SecAggError(f"participants {sorted(alive & gone)} are listed both as survivors and as dropped")
        if u in gone or u not in alive:
            raise SecAggError(f"participant {u} sent its masked input and must be listed as a survivor")
        for w in (alive | gone) - {u}:
            if w not in self._neighbours:
                raise SecAggError(f"participant {w} is not a neighbour of {u}")
            if w not in self._held:
                raise SecAggError(f"participant {w} did not send shares to {u}")
        if len(alive) < self.params.threshold:
            raise SecAggError(f"too few survivors in our neighbourhood: {len(alive)} < threshold "
                              f"{self.params.threshold}")
        out = {v: self._held[v][0] for v in alive if v != u}
        out[u] = self._own_b_share
        out.update({v: self._held[v][1] for v in gone})
        self._held, self._own_b_share, self._channel, self._mask = {}, None, None, None
        self._phase = Stage.DONE
        return dict(sorted(out.items()))
