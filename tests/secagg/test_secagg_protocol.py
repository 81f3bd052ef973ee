"""Whole SecAgg+ rounds in memory: devices (`SecAggParticipant`) and server (`SecAggServer`)."""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import multiprocessing

import numpy as np
import pytest

from secagg import keys
from secagg.errors import SecAggError
from secagg.params import SecAggParams
from secagg.participant import SecAggParticipant
from secagg.phases import ROUND_PHASES, Waits
from secagg.quantize import fixed_point_for, pack
from secagg.server import SecAggServer
from secagg.shamir import combine_shares
from secagg.stages import PROTOCOL_STAGES, Stage

BOUND, FRACTION = 1.0, 20


def make_params(n: int, length: int = 200, seed: bytes = b"graph", **changes) -> SecAggParams:
    fp = fixed_point_for(max_summands=n, value_bound=BOUND, fraction_bits=FRACTION)
    params = SecAggParams.for_round(round_id=b"round-1", num_participants=n, fixed_point=fp,
                                    vector_length=length, graph_seed=seed)
    return dataclasses.replace(params, **changes) if changes else params


@dataclasses.dataclass
class Round:
    params: SecAggParams
    server: SecAggServer
    devices: dict[int, SecAggParticipant]
    inputs: np.ndarray
    encoded: np.ndarray
    masked: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    refused: dict[int, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, params: SecAggParams, rng_seed: int = 0) -> Round:
        n, length = params.num_participants, params.vector_length
        inputs = np.random.default_rng(rng_seed).uniform(-BOUND, BOUND, (n, length))
        encoded = np.stack([params.fixed_point.encode(x, value_bound=BOUND) for x in inputs])
        return cls(params, SecAggServer(params), {i: SecAggParticipant(params, i) for i in range(n)}, inputs, encoded)

    def advertise(self, absent=()):
        for i, device in self.devices.items():
            if i not in absent:
                self.server.receive_keys(i, *device.advertise_keys())

    def share(self, absent=()):
        for i in sorted(self.server._keys):  # who advertised
            if i in absent:
                continue
            try:
                self.server.receive_shares(i, self.devices[i].share_keys(self.server.keys_for(i)))
            except SecAggError as error:
                self.refused[i] = str(error)

    def mask(self, absent=()):
        for i in sorted(self.server._shares):
            if i in absent:
                continue
            try:
                self.masked[i] = self.devices[i].masked_input(self.encoded[i], self.server.shares_for(i))
            except SecAggError as error:
                self.refused[i] = str(error)
                continue
            self.server.receive_masked(i, self.masked[i])

    def unmask(self, absent=()):
        survivors, _ = self.server.unmask_request()
        for i in survivors:
            if i in absent:
                continue
            try:
                self.server.receive_unmask(i, self.devices[i].unmask(*self.server.unmask_request_for(i)))
            except SecAggError as error:
                self.refused[i] = str(error)

    def run(self, *, after_keys=(), after_shares=(), after_masked=()):
        self.advertise()
        self.share(absent=after_keys)
        self.mask(absent=after_shares)
        self.unmask(absent=after_masked)
        return self.server.result()

    def expected(self, members) -> np.ndarray:
        """The exact modular sum of the members' encodings."""
        total = np.zeros(self.params.vector_length, np.uint64)
        for i in members:
            total = self.params.fixed_point.add(total, self.encoded[i])
        return total


# (a) no dropouts

@pytest.mark.parametrize("n", [20, 37, 50])
def test_no_dropouts_sum_is_the_float_sum(n):
    game = Round.start(make_params(n))
    total, survivors = game.run()
    assert survivors == tuple(range(n)) and not game.refused
    fp = game.params.fixed_point
    assert np.array_equal(total, game.expected(range(n)))
    assert np.max(np.abs(fp.decode(total) - game.inputs.sum(axis=0))) <= n * 2.0**-FRACTION
    assert all(device.phase is Stage.DONE for device in game.devices.values())
    assert game.server.phase is Stage.DONE
    again, _ = game.server.result()
    assert np.array_equal(again, total)


def test_complete_graph_small_round():
    game = Round.start(make_params(5))  # degree 4 = n - 1: every pair masks
    assert (game.params.degree, game.params.threshold) == (4, 2)
    total, survivors = game.run(after_masked={2})
    assert survivors == tuple(range(5)) and np.array_equal(total, game.expected(range(5)))


# (b) dropouts at every stage

def test_dropouts_after_advertising_keys():
    game = Round.start(make_params(30))
    total, survivors = game.run(after_keys={3, 17})
    assert survivors == tuple(i for i in range(30) if i not in {3, 17})
    assert game.server.unmask_request()[1] == ()  # they never shared: nobody masked with them
    assert np.array_equal(total, game.expected(survivors))


def test_dropouts_after_sharing_keys():
    game = Round.start(make_params(30))
    dropped = {0, 9, 22, 29}
    total, survivors = game.run(after_shares=dropped)
    assert game.server.unmask_request() == (tuple(i for i in range(30) if i not in dropped), tuple(sorted(dropped)))
    assert np.array_equal(total, game.expected(survivors))


def _overloaded(params: SecAggParams, silent: set[int]) -> list[int]:
    """Participants whose neighbourhood (self included) keeps fewer than t members that answer unmask."""
    return [w for w in range(params.num_participants)
            if sum(h not in silent for h in params.neighbourhood(w)) < params.threshold]


def _random_fraction(n: int, fraction: float, seed: int = 0) -> set[int]:
    return set(np.random.default_rng(seed).choice(n, round(n * fraction), replace=False).tolist())


@pytest.mark.parametrize("stage", ["after_shares", "after_masked"])
def test_a_random_third_drops_with_the_default_parameters(stage):
    n = 60
    params = make_params(n)
    assert (params.degree, params.threshold) == (46, 15)  # 15 of 47: far from a majority
    gone = _random_fraction(n, 1 / 3)
    assert len(gone) == 20 and not _overloaded(params, gone)
    game = Round.start(params)
    total, survivors = game.run(**{stage: gone})
    assert not game.refused
    if stage == "after_masked":  # they sent masked inputs, so their inputs are in the sum
        assert survivors == tuple(range(n))
    else:  # their mask keys were rebuilt from the survivors' shares and their masks removed
        assert survivors == tuple(sorted(set(range(n)) - gone))
        assert game.server.unmask_request()[1] == tuple(sorted(gone))
    assert np.array_equal(total, game.expected(survivors))


def test_too_many_dropouts_abandon_the_round():
    n = 60
    params = make_params(n)
    gone = _random_fraction(n, 3 / 4)
    overloaded = _overloaded(params, gone)
    assert overloaded
    game = Round.start(params)
    game.advertise(), game.share(), game.mask()
    game.unmask(absent=gone)
    with pytest.raises(SecAggError, match="too few") as error:
        game.server.result()
    assert str(overloaded) in str(error.value)
    assert game.server.phase is Stage.UNMASK


def test_dropouts_at_every_stage_together():
    n = 45
    game = Round.start(make_params(n))
    total, survivors = game.run(after_keys={1, 30}, after_shares={7, 20, 44}, after_masked={2, 11, 25, 33, 40})
    assert set(survivors) == set(range(n)) - {1, 30, 7, 20, 44}
    assert np.array_equal(total, game.expected(survivors))
    fp = game.params.fixed_point
    assert np.max(np.abs(fp.decode(total) - game.inputs[list(survivors)].sum(axis=0))) <= n * 2.0**-FRACTION


# (c) too many dropouts

def _neighbourhood_minus(params: SecAggParams, owner: int, keep: int) -> set[int]:
    """All of owner's neighbourhood (owner included) except `keep` neighbours."""
    return set(params.neighbourhood(owner)) - set(params.graph[owner][:keep])


def test_a_survivor_seed_needs_threshold_responders():
    params = make_params(24)
    t = params.threshold
    ok = Round.start(params)
    total, survivors = ok.run(after_masked=_neighbourhood_minus(params, 5, t))  # exactly t responders
    assert np.array_equal(total, ok.expected(survivors))
    short = Round.start(params)
    short.advertise(), short.share(), short.mask()
    short.unmask(absent=_neighbourhood_minus(params, 5, t - 1))
    with pytest.raises(SecAggError, match="too few"):
        short.server.result()
    with pytest.raises(SecAggError, match="too few"):  # nothing changed: still unrecoverable
        short.server.result()
    assert short.server.phase is Stage.UNMASK


def test_a_dropped_key_needs_threshold_responders():
    params = make_params(24)
    t = params.threshold
    game = Round.start(params)
    owner = 4
    game.advertise(), game.share()
    game.mask(absent={owner})
    responders_needed = set(params.graph[owner][:t - 1])
    game.unmask(absent=set(params.graph[owner]) - responders_needed)
    with pytest.raises(SecAggError, match="too few.*dropped \\[4\\]"):
        game.server.result()


def test_devices_refuse_when_too_few_neighbours_take_part():
    params = make_params(20)
    game = Round.start(params)
    owner = 0
    absent = set(params.graph[owner][: params.degree + 2 - params.threshold])  # leaves t - 2 neighbours
    game.advertise(absent=absent)
    game.share()
    assert "too few neighbours advertised keys" in game.refused[owner]
    assert game.devices[owner].phase is Stage.SHARE_KEYS  # refused: unchanged


def test_too_few_survivors_overall():
    game = Round.start(make_params(20))
    with pytest.raises(SecAggError, match="too few"):
        game.run(after_shares=set(range(2, 20)))


# (d) what the server sees

def test_one_masked_vector_reveals_nothing_about_its_input():
    params = make_params(20, length=4000)
    game = Round.start(params)
    game.advertise(), game.share(), game.mask()
    fp = params.fixed_point
    masked = game.masked[3].astype(np.float64) / 2.0**fp.bit_width
    assert abs(masked.mean() - 0.5) < 0.02
    counts = np.histogram(masked, bins=10, range=(0, 1))[0]
    assert np.sum((counts - 400) ** 2 / 400) < 40  # 9 dof
    decoded = fp.decode(game.masked[3])
    assert abs(np.corrcoef(decoded, game.inputs[3])[0, 1]) < 0.1
    half_range = 2.0 ** (fp.bit_width - 1 - fp.fraction_bits)  # what the signed range decodes to
    assert np.max(np.abs(decoded)) > 0.99 * half_range and np.std(decoded) > 0.5 * half_range > 10 * BOUND


def test_a_server_asking_for_both_shares_of_one_neighbour_is_refused():
    params = make_params(20)
    game = Round.start(params)
    game.advertise(), game.share(), game.mask()
    survivors, _ = game.server.unmask_request()
    u = 6
    near, _ = game.server.unmask_request_for(u)
    v = next(w for w in near if w != u)
    device = game.devices[u]
    with pytest.raises(SecAggError, match="both"):
        device.unmask(near, [v])
    with pytest.raises(SecAggError, match="survivor"):
        device.unmask([w for w in near if w != u], [u])  # our own s_sk share is never revealed
    with pytest.raises(SecAggError, match="too few survivors"):
        device.unmask([u], [w for w in near if w != u])  # would hand out every neighbour's mask key
    assert device.phase is Stage.UNMASK
    shares = device.unmask(near, [])
    assert set(shares) == set(near) and all(len(s) == keys.B_SHARE_BYTES for s in shares.values())
    with pytest.raises(SecAggError, match="out of order"):
        device.unmask(near, [])  # once only: a second request could ask for the other shares


# (e) hostile input

@pytest.fixture()
def keyed():
    params = make_params(20, length=50, degree=8, threshold=4)  # sparse (n = 20 defaults to the complete graph)
    game = Round.start(params)
    game.advertise()
    return game


def test_server_refuses_bad_keys(keyed):
    server = keyed.server
    c_pk, s_pk = server._keys[0]
    fresh = keys.KeyPair.generate().public_bytes()
    for call in (lambda: server.receive_keys(0, fresh, keys.KeyPair.generate().public_bytes()),  # twice
                 lambda: server.receive_keys(20, fresh, fresh), lambda: server.receive_keys(-1, fresh, fresh),
                 lambda: server.receive_keys(True, fresh, fresh), lambda: server.receive_keys("1", fresh, fresh)):
        with pytest.raises(SecAggError):
            call()
    other = SecAggServer(keyed.params)
    for pair in ((c_pk[:31], s_pk), (c_pk, bytes(32)), (fresh, fresh)):
        with pytest.raises(SecAggError):
            other.receive_keys(1, *pair)
    other.receive_keys(1, c_pk, s_pk)
    with pytest.raises(SecAggError, match="already in use"):
        other.receive_keys(2, s_pk, fresh)
    assert set(other._keys) == {1}


def test_device_refuses_bad_neighbour_keys(keyed):
    device, params = keyed.devices[0], keyed.params
    good = keyed.server.keys_for(0)
    stranger = next(i for i in range(params.num_participants) if i not in params.graph[0] and i != 0)
    v = next(iter(good))
    own_c = keyed.server._keys[0][0]
    bad_maps = [
        {**good, stranger: keyed.server._keys[stranger]},  # not a neighbour
        {**good, v: (good[v][0], good[v][0])},  # same key twice
        {**good, v: (own_c, good[v][1])},  # our own key
        {**good, v: (good[v][0], bytes(32))},  # not a valid public key
        {**good, 99: good[v]},  # out of range
        {**good, v: [good[v][0], good[v][1]]},  # not a pair
    ]
    for bad in bad_maps:
        with pytest.raises(SecAggError):
            device.share_keys(bad)
    assert device.phase is Stage.SHARE_KEYS
    assert len(device.share_keys(good)) == params.degree


def test_out_of_phase_calls_are_refused(keyed):
    server, device = keyed.server, keyed.devices[0]
    with pytest.raises(SecAggError, match="out of order"):
        device.advertise_keys()
    with pytest.raises(SecAggError, match="out of order"):
        device.masked_input(keyed.encoded[0], {})
    with pytest.raises(SecAggError, match="out of order"):
        device.unmask([0], [])
    with pytest.raises(SecAggError):
        server.shares_for(0)
    with pytest.raises(SecAggError):
        server.receive_masked(0, keyed.encoded[0])
    with pytest.raises(SecAggError):
        server.unmask_request()
    with pytest.raises(SecAggError):
        server.result()
    with pytest.raises(SecAggError):
        server.receive_unmask(0, {})
    keyed.share()
    with pytest.raises(SecAggError, match="not accepted"):
        server.receive_keys(0, keys.KeyPair.generate().public_bytes(), keys.KeyPair.generate().public_bytes())


def test_server_refuses_bad_shares(keyed):
    server = keyed.server
    sealed = keyed.devices[0].share_keys(server.keys_for(0))
    v = next(iter(sealed))
    stranger = next(i for i in range(1, 20) if i not in sealed)
    for bad in ({**sealed, v: sealed[v][:-1]}, {k: c for k, c in sealed.items() if k != v},
                {**sealed, stranger: sealed[v]}, {**sealed, 0: sealed[v]}, {**sealed, 20: sealed[v]},
                {**sealed, v: "x"}, [(v, sealed[v])]):
        with pytest.raises(SecAggError):
            server.receive_shares(0, bad)
    with pytest.raises(SecAggError, match="not accepted in phase advertise"):
        SecAggServer(keyed.params).receive_shares(0, sealed)
    late = SecAggServer(keyed.params)
    for i in range(1, 20):
        late.receive_keys(i, *server._keys[i])
    late.keys_for(1)  # closes advertisement without participant 0
    with pytest.raises(SecAggError, match="did not advertise"):
        late.receive_shares(0, sealed)
    with pytest.raises(SecAggError, match="did not advertise"):
        late.keys_for(0)
    server.receive_shares(0, sealed)
    with pytest.raises(SecAggError, match="already"):
        server.receive_shares(0, sealed)


def test_the_server_keeps_its_own_copy_of_the_shares(keyed):
    """A caller's mutable buffers (bytearray values) are copied as bytes: changing them later changes nothing."""
    server = keyed.server
    sealed = keyed.devices[0].share_keys(server.keys_for(0))
    buffers = {v: bytearray(data) for v, data in sealed.items()}
    server.receive_shares(0, buffers)
    for data in buffers.values():
        data[:] = bytes(len(data))
    for v, data in sealed.items():
        stored = server._shares[0][v]
        assert type(stored) is bytes and stored == data


def test_device_refuses_tampered_or_misrouted_shares(keyed):
    keyed.share()
    server, params = keyed.server, keyed.params
    received = server.shares_for(0)
    v = next(iter(received))
    flipped = bytes([received[v][20] ^ 1])
    device = keyed.devices[0]
    misrouted_to_0 = server._shares[v][next(w for w in server._shares[v] if w != 0)]  # v's message to someone else
    for bad in ({**received, v: received[v][:20] + flipped + received[v][21:]},
                {**received, v: received[v][:-1]},
                {**received, v: misrouted_to_0},
                {**received, v: received[next(w for w in received if w != v)]}):  # another sender's message
        with pytest.raises(SecAggError):
            device.masked_input(keyed.encoded[0], bad)
    stranger = next(i for i in range(params.num_participants) if i not in params.graph[0] and i != 0)
    with pytest.raises(SecAggError, match="not a neighbour"):
        device.masked_input(keyed.encoded[0], {**received, stranger: received[v]})
    for encoded in (keyed.encoded[0][:-1], keyed.encoded[0].astype(np.int64),
                    keyed.encoded[0] | np.uint64(1 << 62)):
        with pytest.raises(SecAggError):
            device.masked_input(encoded, received)
    assert device.phase is Stage.MASKED_INPUT
    device.masked_input(keyed.encoded[0], received)  # the genuine messages still work


def test_server_refuses_bad_masked_input_and_unmask_messages(keyed):
    keyed.share()
    keyed.mask(absent={0, 1})
    server, fp = keyed.server, keyed.params.fixed_point
    masked = keyed.devices[0].masked_input(keyed.encoded[0], server.shares_for(0))
    for bad in (masked[:-1], masked.astype(np.int64), masked.reshape(1, -1), np.full_like(masked, 1 << fp.bit_width),
                list(masked)):
        with pytest.raises(SecAggError):
            server.receive_masked(0, bad)
    with pytest.raises(SecAggError, match="already"):
        server.receive_masked(2, keyed.masked[2])
    server.receive_masked(0, masked)
    survivors, dropped = server.unmask_request()
    assert dropped == (1,)
    with pytest.raises(SecAggError, match="not a survivor"):
        server.receive_unmask(1, {})
    shares = keyed.devices[2].unmask(*server.unmask_request_for(2))
    some = next(w for w in shares if w != 2)
    for bad in ({**shares, some: shares[some][:-1]}, {k: s for k, s in shares.items() if k != some},
                {**shares, 99: bytes(16)}, {**shares, some: "x" * 16}):
        with pytest.raises(SecAggError):
            server.receive_unmask(2, bad)
    server.receive_unmask(2, shares)
    with pytest.raises(SecAggError, match="already"):
        server.receive_unmask(2, shares)
    for i in survivors:
        if i != 2:
            server.receive_unmask(i, keyed.devices[i].unmask(*server.unmask_request_for(i)))
    total, who = server.result()
    assert 1 not in who and np.array_equal(total, keyed.expected(who))


def test_the_server_takes_masked_inputs_packed_as_they_travel_and_refuses_bad_packing(keyed):
    """The gRPC path hands the server the packed bytes (no range pass: a b-bit field cannot reach 2^b);
    the sum is the same as from unpacked arrays, and bad packing is refused without changing anything."""
    keyed.share()
    server, bits, length = keyed.server, keyed.params.fixed_point.bit_width, keyed.params.vector_length
    for i in sorted(server._shares):
        keyed.masked[i] = keyed.devices[i].masked_input(keyed.encoded[i], server.shares_for(i))
    packed = pack(keyed.masked[0], bits)
    padded_wrong = bytearray(packed)
    padded_wrong[-1] |= 0x80  # a padding bit (length * bits is not a multiple of 8 here)
    assert (length * bits) % 8
    for bad in (packed[:-1], packed + b"\0", bytes(padded_wrong), "x" * len(packed)):
        with pytest.raises(SecAggError, match="masked input of participant 0"):
            server.receive_masked(0, bad)
    assert server._masked == set() and not server._sum.any()
    for i in sorted(keyed.masked):  # even indices packed (bytes or bytearray), odd ones unpacked
        message = keyed.masked[i] if i % 2 else pack(keyed.masked[i], bits)
        server.receive_masked(i, bytearray(message) if i % 4 == 2 else message)
    keyed.unmask()
    total, survivors = server.result()
    assert np.array_equal(total, keyed.expected(survivors)) and survivors == tuple(sorted(keyed.masked))


def test_indices_out_of_range(keyed):
    with pytest.raises(SecAggError):
        SecAggParticipant(keyed.params, 20)
    with pytest.raises(SecAggError):
        SecAggParticipant(keyed.params, -1)
    with pytest.raises(SecAggError):
        keyed.server.keys_for(20)
    with pytest.raises(SecAggError):
        keyed.server.keys_for(None)


def test_inconsistent_mask_key_shares_are_detected():
    params = make_params(20)
    game = Round.start(params)
    game.advertise(), game.share()
    game.mask(absent={4})
    survivors, _ = game.server.unmask_request()
    for i in survivors:
        request = game.server.unmask_request_for(i)
        shares = game.devices[i].unmask(*request)
        if 4 in shares:
            shares[4] = bytes(16)  # a lying device
        game.server.receive_unmask(i, shares)
    with pytest.raises(SecAggError, match="mask key of participant 4 does not match"):
        game.server.result()
    assert game.server.phase is Stage.UNMASK


def test_the_server_rebuilds_a_dropped_mask_key_from_its_seed_shares():
    params = make_params(20)
    game = Round.start(params)
    game.advertise(), game.share()
    game.mask(absent={4})
    game.unmask()
    held = {holder: revealed[4] for holder, revealed in game.server._revealed.items() if 4 in revealed}
    assert len(held) >= params.threshold and all(len(share) == keys.KEY_SHARE_BYTES == 16 for share in held.values())
    xs, values, short = game.server._smallest_points([4])
    assert short == [] and xs.shape == (1, params.threshold)
    points = [(int(x), values[16 * j:16 * (j + 1)]) for j, x in enumerate(xs[0])]
    seed = combine_shares(points, threshold=params.threshold)
    assert keys.public_of(keys.mask_key_from_seed(seed, round_id=params.round_id, index=4)) == game.server._keys[4][1]
    total, survivors = game.server.result()
    assert 4 not in survivors and np.array_equal(total, game.expected(survivors))


# (f) parallel reconstruction

def test_result_with_a_process_pool_gives_the_same_sum():
    n = 40
    game = Round.start(make_params(n))
    game.advertise()
    game.share(absent={5})
    game.mask(absent={1, 12, 30})
    game.unmask(absent={2, 20})
    serial_server = copy.deepcopy(game.server)
    with pytest.raises(SecAggError, match="Executor"):
        game.server.result(executor=object())
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        total, survivors = game.server.result(executor=pool)
    serial, serial_survivors = serial_server.result()
    assert survivors == serial_survivors == tuple(i for i in range(n) if i not in {1, 5, 12, 30})
    assert np.array_equal(total, serial) and np.array_equal(total, game.expected(survivors))


def test_result_with_an_executor_refuses_inconsistent_shares_and_changes_nothing():
    params = make_params(20)
    game = Round.start(params)
    game.advertise(), game.share()
    game.mask(absent={4})
    for i in game.server.unmask_request()[0]:
        shares = game.devices[i].unmask(*game.server.unmask_request_for(i))
        if 4 in shares:
            shares[4] = bytes(16)
        game.server.receive_unmask(i, shares)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(SecAggError, match="participant 4"):
            game.server.result(executor=pool)
    assert game.server.phase is Stage.UNMASK and game.server._revealed


# the one stage enum and the round's table


def test_one_stage_enum_keeps_the_names_others_see_and_the_round_table_follows_the_protocol():
    # Status, round logs (phase_seconds), refusals and deployment tests quote these values.
    assert [stage.value for stage in Stage] == ["advertise_keys", "share_keys", "masked_input", "unmask",
                                                 "aggregating", "done", "abandoned"]
    assert Stage.MASKED_INPUT.label == "masked input"  # the server's refusals say it in words
    assert [entry.stage for entry in ROUND_PHASES] == list(PROTOCOL_STAGES[:-1])
    assert [entry.waits_for for entry in ROUND_PHASES] == [Waits.SELECTED, Waits.PREVIOUS, Waits.PREVIOUS,
                                                           Waits.SURVIVORS]
