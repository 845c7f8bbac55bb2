"""One process of the multi-process equivalence test (see test_multiprocess.py).

  python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUTPUT_JSON

Every process builds the same global batches (one data shard), contributes
its own contiguous rows, and trains a tiny decoder for three steps on a
("data") mesh over all 4 devices of the job; process 0 writes the losses.
"""

import json
import os
import sys

process_id, num_processes, port, output = (int(sys.argv[1]), int(sys.argv[2]),
                                           int(sys.argv[3]), sys.argv[4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
# The repository root replaces this script's folder on the path: tests/models would
# otherwise shadow gin's `models/...` includes as a namespace package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if num_processes > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)

from t5x_lite import gin_utils  # noqa: E402
from t5x_lite.common import partitioning  # noqa: E402
from t5x_lite.data import get_batches, register_tasks  # noqa: E402
from t5x_lite.training import optim  # noqa: E402
from t5x_lite.training.steps import make_step_functions  # noqa: E402

register_tasks()
config = gin_utils.model_config(["models/tiny_causal_decoder.gin"])
mesh = partitioning.create_mesh((-1, 1, 1))
assert mesh.devices.size == 4, mesh
optimizer = optim.make_optimizer(optim.OptimizerConfig(), optim.make_schedule(
    optim.ScheduleConfig(warmup_steps=1), total_steps=3))
steps = make_step_functions(config, optimizer, mesh)
state = steps.init()
batches = get_batches("pydocs.full_lm.byte", {"targets": 64}, "train", 8, "causal_decoder")
rows = 8 // num_processes
losses = []
for _ in range(3):
  batch = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in next(batches).items()}
  state, stats = steps.train(state, partitioning.global_batch(batch, mesh))
  losses.append(float(stats["loss"]) / float(stats["tokens"]))
if process_id == 0:
  with open(output, "w") as handle:
    json.dump({"losses": losses, "processes": jax.process_count(),
               "devices": jax.device_count()}, handle)
jax.distributed.shutdown() if num_processes > 1 else None
