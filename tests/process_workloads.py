"""fastdl ops under processes and threads: the workload tests/test_processes.py runs in a
subprocess (so a deadlock is a timeout, not a hung suite), as

    python tests/process_workloads.py <scenario>

Each scenario computes the same seeded workload (every op family, forward and backward) in
some concurrent or reconfigured setting and compares it with the serial result computed in the
same process before; it prints ``ok <n>`` (n results compared) or the first mismatch and exits 1.
"""

from __future__ import annotations

import sys
import threading

import torch

import fastdl.functional as FF
import fastdl.nn as fnn

ITEMS = 8


def workload(i: int) -> list[torch.Tensor]:
    """Results of every op family on inputs drawn from seed ``i`` (float64, with gradients)."""
    g = torch.Generator().manual_seed(1000 + i)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    out = []
    x = rnd(3, 5, 17)
    y = FF.layer_norm(x, (17,), rnd(17), rnd(17))
    out += [y, *torch.autograd.grad(y.square().sum(), x)]
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    y = FF.batch_norm(x, rm, rv, training=True)
    out += [y, rm, rv, *torch.autograd.grad(y.square().sum(), x)]
    img = rnd(2, 4, 13, 11)
    y = FF.max_pool2d(FF.conv2d(img, rnd(6, 4, 3, 3), rnd(6), padding=1), 2)
    out += [y, *torch.autograd.grad(y.sum(), img)]
    q, k, v = rnd(2, 3, 40, 8), rnd(2, 3, 70, 8), rnd(2, 3, 70, 8)
    y = FF.scaled_dot_product_attention(q, k, v)
    out += [y, *torch.autograd.grad(y.square().sum(), [q, k, v])]
    bags = torch.rand(2, 60, 4, generator=g, dtype=torch.float64).requires_grad_()
    y = FF.histogram(
        bags,
        torch.linspace(0.1, 0.9, 8, dtype=torch.float64),
        torch.full((8,), 8.0, dtype=torch.float64),
    )
    out += [y, *torch.autograd.grad(y.sum(), bags)]
    lstm = fnn.LSTM(5, 7, num_layers=2, bidirectional=True).double()
    with torch.no_grad():  # from g, not the global generator other threads also draw from
        for p in lstm.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    seq = rnd(9, 3, 5)
    y, _ = lstm(seq)
    out += [y, *torch.autograd.grad(y.sum(), [seq, *lstm.parameters()])]
    return [t.detach() for t in out]


def serial() -> list[list[torch.Tensor]]:
    return [workload(i) for i in range(ITEMS)]


def compare(expected, got, what: str, exact: bool = True) -> int:
    n = 0
    for i, (e_item, g_item) in enumerate(zip(expected, got)):
        assert len(e_item) == len(g_item), (
            f"{what}: item {i} has {len(g_item)} results, expected {len(e_item)}"
        )
        for j, (e, a) in enumerate(zip(e_item, g_item)):
            same = torch.equal(e, a) if exact else torch.allclose(e, a, rtol=1e-12, atol=1e-12)
            if not same:
                print(f"{what}: item {i} result {j} differs by {(e - a).abs().max().item():.3g}")
                sys.exit(1)
            n += 1
    assert len(expected) == len(got), f"{what}: {len(got)} items, expected {len(expected)}"
    return n


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return ITEMS

    def __getitem__(self, i):
        return workload(i)


def dataloader(context: str) -> int:
    serial()  # OpenMP's pool is live in the parent before the workers fork
    # The workers run with one thread (DataLoader sets it), and a float64 GEMM's result may
    # depend on the thread count (BLAS splits its sums): the serial results on one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    expected = serial()
    torch.set_num_threads(threads)
    loader = torch.utils.data.DataLoader(
        Items(), batch_size=None, num_workers=2, multiprocessing_context=context
    )
    return compare(expected, list(loader), f"DataLoader workers ({context})")


def num_threads() -> int:
    expected = serial()
    n = 0
    for threads in (1, 3, 2, torch.get_num_threads()):
        torch.set_num_threads(threads)
        # Parallel reductions split by thread count: equal to rounding, not bit for bit.
        n += compare(expected, serial(), f"torch.set_num_threads({threads})", exact=False)
    return n


def python_threads() -> int:
    expected = serial()
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(t: int):
        try:
            results[t] = [workload(i) for i in range(ITEMS)]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(compare(expected, results[t], f"Python thread {t}") for t in range(4))


def compiled() -> int:
    expected = serial()
    step = torch.compile(workload_compilable, fullgraph=True, backend="aot_eager")
    n = 0
    for i in range(3):
        eager = workload_compilable(*_compile_inputs(i))
        got = step(*_compile_inputs(i))
        n += compare([eager], [got], "torch.compile", exact=False)
    return n + compare(expected[:1], [workload(0)], "eager after compile")


def _compile_inputs(i: int):
    g = torch.Generator().manual_seed(i)
    return (
        torch.randn(3, 5, 17, generator=g),
        torch.randn(2, 4, 13, 11, generator=g),
        torch.randn(6, 4, 3, 3, generator=g),
        torch.randn(2, 3, 40, 8, generator=g),
        torch.rand(2, 60, 4, generator=g),
    )


def workload_compilable(x, img, w, q, bags):
    """Forward of every op family on float32 inputs, traceable (no autograd.grad inside)."""
    a = FF.layer_norm(x, (17,))
    b = FF.batch_norm(x, None, None, training=True)
    c = FF.avg_pool2d(FF.conv2d(img, w, padding=1), 2)
    d = FF.scaled_dot_product_attention(q, q, q, is_causal=True)
    e = FF.histogram(bags, torch.linspace(0.1, 0.9, 8), torch.full((8,), 8.0))
    return [a, b, c, d, e]


SCENARIOS = {
    "dataloader-fork": lambda: dataloader("fork"),
    "dataloader-spawn": lambda: dataloader("spawn"),
    "num-threads": num_threads,
    "python-threads": python_threads,
    "compile": compiled,
}

if __name__ == "__main__":
    name = sys.argv[1]
    if len(sys.argv) > 2:  # before any parallel work, as torch requires
        torch.set_num_interop_threads(int(sys.argv[2]))
    print(f"ok {SCENARIOS[name]()}")
