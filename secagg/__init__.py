"""SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead").

The server learns the sum of the surviving devices' fixed-point vectors and nothing else about any
one of them, while a configured fraction of the devices (a third by default) may drop out.

One package for the whole protocol: the math, both roles (`participant.SecAggParticipant` on a
device, `server.SecAggServer` on the coordinator), the one `stages.Stage` enum both roles and the
coordinator's round share, and the round's stage table (`phases.ROUND_PHASES`: what each stage
waits for, its deadline, whether it closes early at the goal). No I/O, no network, no clock: the
device (`edge_client.round_client`) and the coordinator (`coordinator.round_run`) are thin adapters;
they carry these objects' messages over gRPC, and the coordinator walks the stage table with its
clock. It imports only `protocol`, numpy, cryptography and pycryptodome (and the standard library;
`tests/secagg/test_package_imports.py` checks), so it runs on devices without TensorFlow.

Stages of a round (`stages.Stage`; device: `participant`, server: `server`):
0. Setup: the server announces `SecAggParams` (participants 0..n-1, a seeded random k-regular
   neighbour graph with k = O(log n) (`graph`), the Shamir threshold t, the fixed-point encoding);
   k and t come from `graph.choose_degree_and_threshold` (dropout and collusion fractions).
1. Advertise keys: each device makes two fresh X25519 pairs, channel (c) and mask (s; s_sk derived
   from a 16-byte seed), and sends the public halves; the server hands each device its neighbours'.
2. Share keys: each device draws a self-mask seed b and Shamir-splits b and the seed of s_sk (t of
   k+1, one 16-byte block each) over its neighbourhood; each neighbour's shares go AES-GCM-sealed
   under an ECDH(c) key, through the server, which cannot read them.
3. Masked input: y_u = x_u + PRG(b_u) + sum_v ±PRG(ECDH(s_u, s_v)) mod 2^b, over the neighbours v
   that sent u shares (+ if u < v). Pairwise masks cancel in the sum; PRG(b_u) hides x_u even from
   someone who later learns u's pairwise seeds.
4. Unmask: the server says who survived (sent y) and who dropped (shared keys but sent no y);
   each surviving device reveals its share of b for surviving neighbours and of the s_sk seed for
   dropped ones, never both for the same participant. The server rebuilds the seeds (and from them
   s_sk, checked against s_pk), removes PRG(b) of the survivors and the dropped participants'
   unmatched pairwise masks, and decodes the sum.

Threat model, plainly: the server is semi-honest (honest-but-curious): it runs the protocol as
written and routes every message, but may inspect everything it sees. There is NO consistency-check
round (Bell et al.'s signatures over the survivor set), so a malicious server that tells different
devices different survivor sets could obtain both shares of one device's secrets and unmask its
input; devices only refuse requests that are inconsistent with what they themselves saw. Devices may
be hostile: every message is validated, but a device that sends wrong shares or a wrong masked
vector can corrupt the sum (integrity of the result is not protected, only confidentiality).
Security also needs fewer than t server colluders in any neighbourhood: t is not a majority but is
chosen (Bell et al.'s binomial model) so that, by default, this fails with probability <= 2^-40 when
2% of the devices collude; cohorts too small for that (below 46) get the complete graph and a
smaller margin, which `graph.privacy_bits_achieved` reports for a round's actual (k, t).

Modules: `errors`, `quantize` (fixed point in Z_2^b, packing), `prg` (AES-CTR masks), `keys`
(X25519, HKDF, AES-GCM, the sealed share message), `shamir` (multi-block Shamir over GF(2^128)),
`graph` (the neighbour graph, degree and threshold), `params` (the round's parameters), `stages`
(the `Stage` enum), `phases` (the round's stage table), `participant` (the device's side), `server`
(the server's side).
No pickle: every message is raw bytes of a fixed layout. No TensorFlow: this runs on devices.
"""
