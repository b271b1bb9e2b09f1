"""The estimator from a forked child and from several threads at once (numba's threading layers)."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numba
import torch
import torch.utils.data

from ktae import compute_ktae_advantages
from tests.core.reference import random_batch

BATCH = random_batch(4, num_groups=6, max_group=8, max_len=40, vocab=50)


def _advantages_in_child(queue):
    queue.put(compute_ktae_advantages(*BATCH).numpy())
    try:
        queue.put(compute_ktae_advantages(*BATCH, backend="cpu-kernels").numpy())
    except RuntimeError as error:
        queue.put(str(error))


def test_forked_child_computes_the_same_advantages():
    expected = compute_ktae_advantages(*BATCH)  # the parent has run the CPU kernels before forking
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_advantages_in_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0, f"the forked child died (exit code {child.exitcode})"
    torch.testing.assert_close(torch.from_numpy(queue.get(timeout=5)), expected, atol=0, rtol=0)
    explicit = queue.get(timeout=5)
    if numba.threading_layer() == "omp":  # GNU OpenMP does not survive the fork: the kernels refuse, saying why
        assert "backend 'cpu-kernels' cannot run: this process was forked" in explicit
    else:
        torch.testing.assert_close(torch.from_numpy(explicit), expected, atol=0, rtol=0)


class _Advantages(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return compute_ktae_advantages(*BATCH)


def test_dataloader_workers_compute_the_same_advantages():
    expected = compute_ktae_advantages(*BATCH)
    for result in torch.utils.data.DataLoader(_Advantages(), batch_size=None, num_workers=2):
        torch.testing.assert_close(result, expected, atol=0, rtol=0)


def test_threads_compute_the_same_advantages():
    expected = compute_ktae_advantages(*BATCH)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: compute_ktae_advantages(*BATCH), range(8)))
    for result in results:
        torch.testing.assert_close(result, expected, atol=0, rtol=0)


# numba picks its threading layer once per process: run the workqueue layer (not thread-safe by
# itself) in a fresh interpreter, with threads and then a forked child.
_WORKQUEUE_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from concurrent.futures import ThreadPoolExecutor
    import numba, torch
    from ktae import compute_ktae_advantages
    from tests.core.reference import random_batch

    batch = random_batch(4, num_groups=6, max_group=8, max_len=40, vocab=50)
    expected = compute_ktae_advantages(*batch)
    assert numba.threading_layer() == "workqueue", numba.threading_layer()
    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(lambda _: compute_ktae_advantages(*batch), range(16)):
            assert torch.equal(result, expected)

    def child(queue):
        queue.put(compute_ktae_advantages(*batch).numpy())

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0, process.exitcode
    assert torch.equal(torch.from_numpy(queue.get(timeout=5)), expected)
    print("ok")
    """
)


def test_workqueue_layer_with_threads_and_fork():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "src"), root, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _WORKQUEUE_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
