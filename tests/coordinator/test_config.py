"""coordinator.toml and the one configuration path (issue 16, items 2 and 3).

Item 2: values that were accepted and then misbehaved (port 70000 listened on 4464, a token of
123 failed every enrollment, port -1 died after importing TensorFlow) are refused when the file
is read, naming the key. Item 3: a hand-written `dp = "adaptive"` trained with the non-private
preset, and `fedrec up` printed one plan and ran another.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib

import pytest

from coordinator import up
from coordinator.config import ConfigError, DeploymentConfig, config_from_dict, load_config, planned
from coordinator.training import sampling_setting
from fedrec_cli import training_flags as cli
from tff_pipeline.config import PRIVATE_PRESET, training_config

BAD_VALUES = [
    ("[server]\nport = 70000", "[server] port", "must be in [0, 65535], got 70000"),
    ("[server]\nport = -1", "[server] port", "got -1"),
    ("[server]\nport = true", "[server] port", "must be an integer"),
    ("[server]\nport = 7443.0", "[server] port", "must be an integer"),
    ('[server]\nmetrics_port = "x"', "[server] metrics_port", "must be an integer"),
    ("[server]\nenroll_token = 123", "[server] enroll_token", "must be text"),
    ('[server]\nenroll_token = "short"', "[server] enroll_token", "16 to 256 printable ASCII"),
    ('[server]\nenroll_token = "sixteen chars with spaces"', "[server] enroll_token", "without spaces"),
    ('[server]\nhost = "not a host!"', "[server] host", "IP address or a host name"),
    ('[server]\nhost = ""', "[server] host", "IP address or a host name"),
    ("[server]\nhost = 127", "[server] host", "IP address or a host name"),
    ('[server]\nmetrics_host = "a..b"', "[server] metrics_host", "IP address or a host name"),
    ('[server]\nhostnames = "fedrec-coordinator"', "[server] hostnames", "must be a list"),
    ("[server]\nhostnames = [1]", "[server] hostnames", "is not a host name"),
    ("[server]\nenrollment_margin = -0.1", "[server] enrollment_margin", "must be in [0, 10]"),
    ('server = "x"', "[server]", "must be a table"),
    ("[server]\nprot = 1", "[server] prot", "unknown key"),
    ('[rounds]\nover_selection = "x"', "[rounds] over_selection", "must be a number"),
    ("[rounds]\nselection_timeout_s = true", "[rounds] selection_timeout_s", "must be a number"),
    ("[rounds]\nreport_window_s = nan", "[rounds] report_window_s", "must be a finite number"),
    ("[rounds]\npopulation = 1", "[rounds] population", "must be in [2,"),
    ('[rounds]\npopulation = "many"', "[rounds] population", "must be an integer"),
    ("[rounds]\npopulation = 10\nmin_reporters = 11", "[rounds] min_reporters", "no round could complete"),
    ('[rounds]\nselection = "random"', "[rounds] selection", "must be one of"),
    ('[training]\ndim = "x"', "[training] dim", "must be an integer"),
    ('[training]\ndp = "adaptve"', "[training] dp", "must be one of"),
    ("[training]\nrounds = 0", "[training] rounds", "must be in [1,"),
    ("[training]\nwhat = 1", "[training] what", "unknown key"),
    ('[training]\ndp = "fixed"', "[training] dp", "needs target_epsilon or noise_multiplier"),
    ('[training]\ndp = "fixed"\nnoise_multiplier = 1.0\ndp_bits = 12', "[training] dp_bits", "distributed only"),
    ("[training]\nclients_per_round = 500", "[training] clients_per_round", "more than the population of 400"),
    ("state_dir = 5", "state_dir", "non-empty path"),
    ('catalog = "c.json"', "[rounds] population", "required"),
]


@pytest.mark.parametrize("text, key, message", BAD_VALUES, ids=[b[0].replace("\n", " ") for b in BAD_VALUES])
def test_every_bad_value_is_refused_when_the_file_is_read_naming_its_key(tmp_path, text, key, message):
    path = tmp_path / "coordinator.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.field == f"{path}: {key}"
    assert message in refused.value.message
    assert "\n" not in str(refused.value)


def test_a_good_file_gives_every_value_and_ipv6_hosts_get_brackets(tmp_path):
    path = tmp_path / "coordinator.toml"
    path.write_text('[server]\nhost = "::1"\nport = 7443\nmetrics_host = "127.0.0.2"\nmetrics_port = -1\n'
                    'enroll_token = "0123456789abcdef"\nhostnames = ["fedrec-coordinator.fedrec.svc", "10.0.0.1"]\n'
                    "[rounds]\npopulation = 50\n")
    config = load_config(path)
    assert config.server.listen_address == "[::1]:7443" and config.server.metrics_bind_host == "127.0.0.2"
    assert config.population == 50 and config.max_devices == 55 and config.state_dir == tmp_path / "coordinator-state"


@pytest.mark.parametrize("text, key", [("[server]\nport = 70000", "[server] port"),
                                       ('[server]\nmetrics_port = "x"', "[server] metrics_port"),
                                       ("[server]\nenroll_token = 123", "[server] enroll_token"),
                                       ('[server]\nhost = "not a host!"', "[server] host")])
def test_fedrec_serve_refuses_at_once_and_creates_nothing(tmp_path, text, key):
    """The refusal is one line, before the state folder is created or TensorFlow imported."""
    path = tmp_path / "coordinator.toml"
    path.write_text('state_dir = "state"\n' + text + "\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedrec_cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and f"{path}: {key}:" in done.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "state").exists()


def _simulate_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_training_flags(parser)
    return parser.parse_args(list(flags))


def test_a_hand_written_dp_config_trains_what_simulate_trains(tmp_path):
    """Item 3: `dp = "adaptive"` in coordinator.toml trained with d = 16 and Adam (the non-private preset)."""
    config = config_from_dict({"training": {"dp": "adaptive", "noise_multiplier": 1.0}, "rounds": {"population": 100}},
                              base=tmp_path)
    simulate = cli.config_from_args(_simulate_args("--dp", "adaptive", "--noise-multiplier", "1.0"))
    assert config.training == simulate
    for key, value in PRIVATE_PRESET.items():
        assert getattr(config.training, key) == value, key
    # A key given in the file wins over the preset, as a flag does.
    config = config_from_dict({"training": {"dp": "fixed", "noise_multiplier": 1.0, "dim": 4}}, base=tmp_path)
    assert config.training.dim == 4 and config.training.server_optimizer == "sgdm"


def test_the_plan_fedrec_up_prints_is_the_plan_the_coordinator_runs(tmp_path):
    """Item 3: `fedrec up --devices 100 --rounds 10 --dp adaptive --target-epsilon 8` printed a plan
    for 400 users (q = 0.333, z = 0.944) and then ran q = 1.0, z = 1.84."""
    given = {"dp": "adaptive", "target_epsilon": 8.0, "rounds": 10}
    shown = up.coordinator_config(training_config(given), DeploymentConfig(), devices=100, given=given)
    assert shown.plan is not None and shown.plan.population == 100
    assert "privacy plan for 100 users: expected cohort 33 (q = 0.33)" in shown.plan.describe()
    # What `fedrec serve` makes of the coordinator.toml that `fedrec up` writes...
    written = up.write_coordinator_config(tmp_path, shown.training.to_dict(), shown.deployment)
    served = planned(config_from_dict(tomllib.loads(written.read_text()), base=tmp_path))
    # ...and the (z, q, T) the coordinator then stores and runs.
    ran = sampling_setting(served, served.population)
    assert (ran.noise_multiplier, ran.sampling_rate, ran.rounds) == \
        (shown.plan.noise_multiplier, shown.plan.sampling_rate, shown.plan.rounds)
    assert ran.sampling_rate == pytest.approx(0.33) and ran.rounds == 10


def test_a_cohort_the_fleet_cannot_hold_is_refused_when_given_and_sized_when_not(tmp_path):
    """Item 6: `fedrec up --devices 20 --rounds 2` selected forever (the default cohort of 50)."""
    given = {"dp": "none", "rounds": 2}
    sized = up.coordinator_config(training_config(given), DeploymentConfig(), devices=20, given=given)
    assert sized.training.clients_per_round == 15  # room for uniform selection's 30% over-selection
    assert sized.notes and "cohort sized to the fleet: 15 of 20 devices" in sized.notes[0]
    given = {"dp": "none", "rounds": 2, "clients_per_round": 21}
    with pytest.raises(ConfigError) as refused:
        up.coordinator_config(training_config(given), DeploymentConfig(), devices=20, given=given)
    assert refused.value.field == "clients_per_round" and "more than the population of 20" in refused.value.message
    # Under DP the planner sizes the cohort for the fleet (a third of it), never beyond it.
    given = {"dp": "adaptive", "target_epsilon": 8.0, "rounds": 2}
    dp = up.coordinator_config(training_config(given), DeploymentConfig(), devices=20, given=given)
    assert dp.training.clients_per_round == 7 and dp.plan is not None and dp.plan.sampling_rate == pytest.approx(0.35)
