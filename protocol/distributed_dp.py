"""Distributed DP on the upload path: the device noises its own update in integers, SecAgg+ sums.

Under central DP the coordinator learns the exact sum of the cohort's clipped updates and adds the
Gaussian noise itself. Here each device adds a share of the noise before its upload is masked, so
the only sum anyone can decode already carries the full noise. The mechanism is TFF's
`DistributedDpSumFactory(mechanism="distributed_skellam", rotation_type="dft", beta=0)` (Agarwal,
Kairouz, Liu, NeurIPS 2021), written again in numpy because a device runs no TensorFlow:

    device:  clip to C -> pad to even -> random rotation (DFT, public seed) -> * scale
             -> stochastic rounding (OS entropy) -> + Skellam(local variance) -> mod 2^b
    SecAgg+: sum mod 2^b over the reporters
    server:  signed (centred) -> / scale -> inverse rotation -> unpad

Why Skellam and not the distributed discrete Gaussian: a sum of independent Skellam variables is
exactly Skellam, so the noise that reaches the server is one Skellam of known variance whatever the
number of reporters (a sum of discrete Gaussians is only close to one, and its accounting carries an
extra divergence term); it is sampled as the difference of two Poissons, which numpy draws, where
an exact discrete Gaussian sampler would have to be written by hand; and its paper shows the same
utility as the discrete Gaussian at these bit widths.

The noise rule (dropouts): every device adds the variance (z C)^2 / m, m = `noise_reporters`, the
fewest reporters a round may be released with. A released round therefore carries at least the
planned variance (z C)^2, however many devices vanish after masking (their inputs, noise shares
included, are removed by SecAgg+), and it is charged as planned; extra noise is not credited. As
for central DP-FedAvg, the number of reporters is outside the privacy model.

`tests/protocol/test_distributed_dp.py` checks this encode against TFF's own client-side steps on
the same inputs and random draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
import statistics

import numpy as np

from protocol.errors import ProtocolError
from protocol.generated import rounds_pb2

MECHANISM = "distributed_skellam"
MAX_BITS = 22  # TFF's limit (its float32 arithmetic represents integers exactly up to 2^24)
MAX_SCALE_FACTOR = 1e6  # TFF's cap on the scale (larger scales gain nothing and overflow int32)
DEFAULT_MODCLIP_PROBABILITY = 1e-4  # TFF's default: a coordinate of the sum wraps with about this probability
NORM_LEEWAY = 1e-5  # TFF's leeway on the inflated norm bound (numerical error in float32)


class DistributedDpError(ProtocolError, ValueError):
    """Distributed-DP parameters or an encoded vector that do not fit."""


def modclip_stddevs(probability: float) -> float:
    """k: the number of standard deviations of a normal within which all but `probability` lies
    (TFF's `_clip_prob_to_num_stddevs`, sqrt(2) erfcinv(p))."""
    if not 0 < probability < 1:
        raise DistributedDpError(f"the wrap probability must be in (0, 1), got {probability}")
    return statistics.NormalDist().inv_cdf(1 - probability / 2)


def heuristic_scale(*, local_stddev: float, l2_clip: float, bits: int, clients: int, dim: int, k_stddevs: float) -> float:
    """TFF's `_heuristic_scale_factor` (rho = 1), capped at MAX_SCALE_FACTOR: the scale for which k
    standard deviations of the noisy, rounded sum of `clients` vectors fit in 2^b,
    2^b = 2k sqrt(C^2 n^2 / d + (gamma^2 / 4 + sigma^2) n) / gamma."""
    numerator = 2.0 ** (2 * bits) - clients * k_stddevs**2
    if numerator <= 0:
        raise DistributedDpError(f"{bits} bits cannot hold a sum of {clients} devices (k = {k_stddevs:.2f})")
    denominator = 2.0 * k_stddevs * math.sqrt(l2_clip**2 * clients**2 / dim + clients * local_stddev**2)
    return min(math.sqrt(numerator) / denominator, MAX_SCALE_FACTOR)


@dataclasses.dataclass(frozen=True)
class DistributedDpSpec:
    """One round's distributed-DP parameters, the same on every device and on the server.

    `clients` is the expected number of devices summed (the scale keeps k standard deviations of
    their sum within 2^b); `noise_reporters` is m of the noise rule (module doc).
    """

    bits: int
    l2_clip: float
    noise_multiplier: float
    clients: int
    noise_reporters: int
    dim: int
    modclip_probability: float = DEFAULT_MODCLIP_PROBABILITY

    def __post_init__(self) -> None:
        for name, low, high in (("bits", 1, MAX_BITS), ("clients", 1, 1 << 30), ("noise_reporters", 1, 1 << 30),
                                ("dim", 1, 1 << 28)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise DistributedDpError(f"{name} must be an integer in {low}..{high}, got {value!r}")
        for name in ("l2_clip", "noise_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DistributedDpError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.l2_clip > 0:
            raise DistributedDpError("l2_clip must be > 0")
        if self.bits < math.log2(self.clients):
            raise DistributedDpError(f"bits {self.bits} < log2 of {self.clients} clients: the sum cannot fit")
        if self.scale <= 1:
            raise DistributedDpError(
                f"{self.bits} bits leave a scale of {self.scale:.3g} <= 1 for {self.clients} devices of dimension "
                f"{self.dim}: rounding would swamp the updates; raise the bit width")

    @property
    def k_stddevs(self) -> float:
        return modclip_stddevs(self.modclip_probability)

    @property
    def padded_dim(self) -> int:
        """The DFT rotation pairs coordinates into complex numbers: at most one zero of padding."""
        return self.dim + self.dim % 2

    @property
    def central_stddev(self) -> float:
        """The planned noise on the sum, in update units: z C."""
        return self.noise_multiplier * self.l2_clip

    @property
    def local_stddev(self) -> float:
        """Each device's share, in update units: z C / sqrt(m)."""
        return self.central_stddev / math.sqrt(self.noise_reporters)

    @property
    def scale(self) -> float:
        return heuristic_scale(local_stddev=self.local_stddev, l2_clip=self.l2_clip, bits=self.bits,
                               clients=self.clients, dim=self.padded_dim, k_stddevs=self.k_stddevs)

    @property
    def scaled_local_variance(self) -> float:
        """Each device's Skellam variance in the integer domain."""
        return (self.local_stddev * self.scale) ** 2

    @property
    def inflated_l2(self) -> float:
        """The L2 bound after stochastic rounding, in update units (beta = 0: C + gamma sqrt(d), a bound
        that always holds since rounding moves each coordinate by less than gamma = 1 / scale)."""
        return self.l2_clip + math.sqrt(self.padded_dim) / self.scale

    @property
    def scaled_l2_sensitivity(self) -> float:
        return (self.inflated_l2 + NORM_LEEWAY) * self.scale

    @property
    def scaled_l1_sensitivity(self) -> int:
        return l1_bound(self.scaled_l2_sensitivity, self.padded_dim)

    def noise_stddev(self, reporters: int) -> float:
        """The standard deviation of the total noise on each coordinate of a sum of `reporters`
        uploads, in update units (the rotation is orthogonal: it keeps i.i.d. noise i.i.d.)."""
        return math.sqrt(reporters * self.scaled_local_variance) / self.scale

    @property
    def upload_bytes(self) -> int:
        """What one device's masked upload occupies on the wire: b bits per padded coordinate."""
        return (self.padded_dim * self.bits + 7) // 8

    def describe(self) -> str:
        return (f"distributed DP (Skellam): b = {self.bits} bits, scale {self.scale:.4g}, "
                f"{self.padded_dim} values -> {self.upload_bytes} bytes per device upload, "
                f"noise shares for {self.noise_reporters} reporters")


def l1_bound(l2: float, dim: int) -> int:
    """The L1 bound of integer vectors of dimension `dim` within L2 norm `l2`: L1 <= sqrt(d) L2,
    and L1 <= L2^2 since every nonzero coordinate is at least 1 (TFF's bound)."""
    return math.ceil(l2 * min(math.sqrt(dim), l2))


def rotation_angles(seed: bytes, count: int) -> np.ndarray:
    """`count` fractions u in [0, 1) from the round's public rotation seed: the rotation multiplies
    complex coordinate j by e^(2 pi i u_j), as TFF's `sample_cis` (theta = pi * U[0, 2)). Device and
    server draw them from the same seed, so the server can undo the rotation."""
    if not isinstance(seed, bytes) or not 8 <= len(seed) <= 64:
        raise DistributedDpError("the rotation seed must be 8..64 bytes")
    key = int.from_bytes(hashlib.sha256(b"fedrec-ddp-rotation\0" + seed).digest(), "little")
    return np.random.Generator(np.random.PCG64(key)).random(count)


def rotate(padded: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """TFF's `DiscreteFourierTransformFactory` client step: halves as real and imaginary parts,
    times e^(2 pi i u), FFT, back to [real | imaginary], divided by sqrt(d / 2) (orthogonal)."""
    half = padded.size // 2
    z = (padded[:half] + 1j * padded[half:]) * np.exp(2j * np.pi * angles)
    z = np.fft.fft(z) / math.sqrt(half)
    return np.concatenate([z.real, z.imag])


def unrotate(rotated: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """The server step: the inverse of `rotate`."""
    half = rotated.size // 2
    z = (rotated[:half] + 1j * rotated[half:]) * math.sqrt(half)
    z = np.fft.ifft(z) * np.exp(-2j * np.pi * angles)
    return np.concatenate([z.real, z.imag])


def stochastic_round(scaled: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """floor(x) + [u < x - floor(x)]: unbiased, and each coordinate moves by less than 1."""
    floored = np.floor(scaled)
    return (floored + (uniforms < scaled - floored)).astype(np.int64)


def clip(vector: np.ndarray, l2_clip: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector * (l2_clip / norm) if norm > l2_clip else vector


def private_rng() -> np.random.Generator:
    """A generator seeded with 128 bits of OS entropy: the device's rounding and noise, never shared."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


@dataclasses.dataclass(frozen=True)
class EncodedUpload:
    """A device's upload in Z_{2^b} (`elements`, what SecAgg+ masks) and, for audits only, the same
    vector before the noise (`rounded`, signed integers)."""

    elements: np.ndarray
    rounded: np.ndarray


def discretize(vector: np.ndarray, spec: DistributedDpSpec, angles: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Clip, pad, rotate (by `angles`), scale and round (with `uniforms`) `vector` (float, length
    `spec.dim`): the deterministic part of the encoding, signed integers of length `padded_dim`."""
    vector = np.asarray(vector, np.float64).reshape(-1)
    if vector.size != spec.dim:
        raise DistributedDpError(f"a vector of {vector.size} values, the round's dimension is {spec.dim}")
    if not np.all(np.isfinite(vector)):
        raise DistributedDpError("cannot encode non-finite values")
    padded = np.zeros(spec.padded_dim)
    padded[:spec.dim] = clip(vector, spec.l2_clip)
    return stochastic_round(rotate(padded, angles) * spec.scale, uniforms)


def skellam_noise(variance: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Skellam noise of the given variance: Poisson(v / 2) - Poisson(v / 2), integers."""
    if variance == 0:
        return np.zeros(size, np.int64)
    lam = variance / 2.0
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


def encode(vector: np.ndarray, spec: DistributedDpSpec, rotation_seed: bytes,
           rng: np.random.Generator | None = None) -> EncodedUpload:
    """The device's whole encoding: `discretize`, plus its Skellam share, modulo 2^b."""
    rng = private_rng() if rng is None else rng
    angles = rotation_angles(rotation_seed, spec.padded_dim // 2)
    rounded = discretize(vector, spec, angles, rng.random(spec.padded_dim))
    noised = rounded + skellam_noise(spec.scaled_local_variance, spec.padded_dim, rng)
    elements = noised.view(np.uint64) & np.uint64((1 << spec.bits) - 1)
    return EncodedUpload(elements, rounded)


def signed(elements: np.ndarray, bits: int) -> np.ndarray:
    """Elements of Z_{2^b} as signed integers in [-2^(b-1), 2^(b-1))."""
    values = np.asarray(elements, np.uint64)
    if bits < 64 and values.size and int(values.max()) >> bits:
        raise DistributedDpError(f"a vector holds values >= 2^{bits}")
    out = values.astype(np.int64)
    out[out >= 1 << (bits - 1)] -= 1 << bits
    return out


def decode(summed_integers: np.ndarray, spec: DistributedDpSpec, rotation_seed: bytes) -> np.ndarray:
    """The server's decoding of a sum of signed integers (length `padded_dim`) back to update units."""
    values = np.asarray(summed_integers, np.float64).reshape(-1)
    if values.size != spec.padded_dim:
        raise DistributedDpError(f"a sum of {values.size} values, the round's padded dimension is {spec.padded_dim}")
    return unrotate(values / spec.scale, rotation_angles(rotation_seed, spec.padded_dim // 2))[:spec.dim]


def decode_sum(elements: np.ndarray, spec: DistributedDpSpec, rotation_seed: bytes) -> np.ndarray:
    """The server's decoding of SecAgg+'s sum (elements of Z_{2^b}) to update units."""
    return decode(signed(elements, spec.bits), spec, rotation_seed)


def to_wire(spec: DistributedDpSpec, rotation_seed: bytes) -> rounds_pb2.DistributedDp:
    """The round task's field: the spec and this round's public rotation seed."""
    return rounds_pb2.DistributedDp(
        bits=spec.bits, l2_clip=spec.l2_clip, noise_multiplier=spec.noise_multiplier, clients=spec.clients,
        noise_reporters=spec.noise_reporters, dim=spec.dim, modclip_probability=spec.modclip_probability,
        rotation_seed=rotation_seed)


def from_wire(message: rounds_pb2.DistributedDp) -> tuple[DistributedDpSpec, bytes]:
    """The spec and rotation seed a task announces; DistributedDpError names what does not fit."""
    spec = DistributedDpSpec(
        bits=int(message.bits), l2_clip=float(message.l2_clip), noise_multiplier=float(message.noise_multiplier),
        clients=int(message.clients), noise_reporters=int(message.noise_reporters), dim=int(message.dim),
        modclip_probability=float(message.modclip_probability))
    rotation_angles(message.rotation_seed, 1)  # refuses a seed of the wrong length
    return spec, bytes(message.rotation_seed)
