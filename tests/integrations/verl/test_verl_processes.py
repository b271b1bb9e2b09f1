"""Fresh processes, as Ray starts them and as users launch: the plugin registers itself on `import verl`,
the TaskRunner (shipped by value, as Ray ships actor classes) finds the KTAE trainer, and the launcher
refuses a bad config before Ray starts. The subprocesses run together to keep the wall time short."""

from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
import pytest
from tests.integrations.verl.children import finish

from ktae.integrations.verl.trainer import KTAETaskRunner

CHECK_PLUGIN = """
import pickle, sys
import verl
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
assert get_adv_estimator_fn('ktae').__module__ == 'ktae.integrations.verl.estimator'
if len(sys.argv) > 1:
    from omegaconf import OmegaConf
    runner = pickle.loads(open(sys.argv[1], 'rb').read())()
    try:  # looks the trainer up, then stops at the first key this config lacks
        runner.run(OmegaConf.create({'trainer': {'v1': {'trainer_mode': 'ktae_sync'}}}))
    except Exception as error:
        print(type(error).__name__, error)
"""


@pytest.fixture(scope="module")
def finished(repo_root, tmp_path_factory):
    blob = tmp_path_factory.mktemp("ray") / "task_runner.pkl"
    blob.write_bytes(cloudpickle.dumps(KTAETaskRunner.__ray_metadata__.modified_class))
    base = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    commands = {
        "entry point": ([sys.executable, "-c", CHECK_PLUGIN], {**base, "VERL_USE_EXTERNAL_PLUGINS": "ktae"}),
        "module list": (
            [sys.executable, "-c", CHECK_PLUGIN, str(blob)],
            {**base, "VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "ktae.integrations.verl"},
        ),
        "launcher": (
            [
                sys.executable,
                "-m",
                "ktae.integrations.verl",
                "algorithm.adv_estimator=ktae",
                "actor_rollout_ref.rollout.n=1",
            ],
            {**base, "HYDRA_FULL_ERROR": "0"},
        ),
    }
    procs = {
        name: subprocess.Popen(
            command, env=env, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (command, env) in commands.items()
    }
    return finish(procs)


def test_verl_plugin_entry_point_registers_the_estimator(finished):
    returncode, _, stderr = finished["entry point"]
    assert returncode == 0, stderr[-2000:]


def test_task_runner_shipped_by_value_finds_the_ktae_trainer(finished):
    returncode, stdout, stderr = finished["module list"]
    assert returncode == 0, stderr[-2000:]
    assert "Unknown trainer" not in stdout
    assert "transfer_queue" in stdout  # got past the trainer lookup, to the first missing config key


def test_launcher_fails_before_ray_on_one_rollout_per_prompt(finished):
    returncode, stdout, stderr = finished["launcher"]
    assert returncode != 0
    assert "actor_rollout_ref.rollout.n to 2 or more" in stderr
    assert "ray init" not in stdout.lower()
