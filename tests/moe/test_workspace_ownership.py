# SPDX-License-Identifier: Apache-2.0
"""Who owns the MoE pipeline's buffers, on the CPU: one workspace per (device, stream, sizes), shared by the threads
that use one stream and held for a forward's whole launch sequence; the family module caches and the device facts
built once under concurrent first use. (The GPU side: tests/stress/stress_concurrency.py.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from flashinfer_sm12x.jit import arch
from flashinfer_sm12x.kernels import family
from flashinfer_sm12x.moe import pipeline


class _Stream:
    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle


@pytest.fixture
def streams(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """torch.cuda.current_stream answers per thread from this map (thread id -> stream handle, default 0)."""
    current: dict[int, int] = {}
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: _Stream(current.get(threading.get_ident(), 0)))
    monkeypatch.setattr(pipeline, "_WORKSPACES", {})
    return current


def test_each_stream_owns_its_workspace(streams: dict[int, int]) -> None:
    cpu = torch.device("cpu")
    seen: dict[int, pipeline.Workspace] = {}

    def on_stream(handle: int) -> None:
        streams[threading.get_ident()] = handle
        seen[handle] = pipeline.workspace(cpu, 256, 128, "mxfp4")

    threads = [threading.Thread(target=on_stream, args=(h,)) for h in (11, 22, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[11] is not seen[22]  # two streams: two workspaces, never the same buffers
    assert pipeline.workspace(cpu, 256, 128, "mxfp4") is not seen[11]  # this thread's stream (0) has its own
    assert pipeline.workspace(cpu, 384, 128, "mxfp4") is not pipeline.workspace(cpu, 256, 128, "mxfp4")  # sizes
    streams[threading.get_ident()] = 11
    assert pipeline.workspace(cpu, 256, 128, "mxfp4") is seen[11]  # one stream's threads share one


def test_one_streams_forwards_do_not_interleave(streams: dict[int, int]) -> None:
    """Threads on one stream take the workspace's lock for a forward's whole launch sequence: no second forward
    starts writing the workspace between the first one's plan and finalize."""
    cpu = torch.device("cpu")
    order: list[tuple[int, str]] = []

    def forward(i: int) -> None:
        ws = pipeline.workspace(cpu, 256, 128, "mxfp4")
        with ws.lock:
            for step in ("plan", "gemm1", "gemm2", "finalize"):
                order.append((i, step))
                time.sleep(0.001)

    threads = [threading.Thread(target=forward, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for start in range(0, len(order), 4):  # every forward's four steps are contiguous
        assert {i for i, _ in order[start:start + 4]} == {order[start][0]}


def test_grown_buffers_stay_alive_for_captured_graphs() -> None:
    ws = pipeline.Workspace(torch.device("cpu"))
    small = ws.take("x", 16, torch.uint8)
    big = ws.take("x", 1000, torch.uint8)
    assert big.numel() == 1000 and ws.retired and ws.retired[0].data_ptr() == small.data_ptr()
    assert ws.take("x", 500, torch.uint8).data_ptr() == big.data_ptr()  # a prefix of the grown buffer


def test_module_cache_loads_once_per_key_under_concurrent_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every thread gets the same module object; a key's spec is rendered only on a miss."""
    loads: list[Any] = []

    def slow_load(spec: Any) -> object:
        time.sleep(0.01)
        loads.append(spec)
        return object()

    monkeypatch.setattr(family, "load_module", slow_load)
    cache = family.ModuleCache()
    got: list[object] = []
    lock = threading.Lock()

    def use() -> None:
        module = cache.get(("t", "mxfp4"), lambda: "spec")
        with lock:
            got.append(module)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len({id(m) for m in got}) == 1
    assert cache.get(("t", "mxfp4"), lambda: pytest.fail("a hit must not render the spec")) is got[0]


def test_device_facts_are_one_object_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    class Props:
        major, minor, multi_processor_count = 12, 0, 170

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: (time.sleep(0.005), Props())[1])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    arch.clear_device_targets()
    got: list[arch.DeviceFacts] = []
    threads = [threading.Thread(target=lambda: got.append(arch.device_facts(torch.device("cuda", 0))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(f) for f in got}) == 1 and got[0].sm_count == 170 and got[0].target.name == "sm_120a"
    # "cuda" without an index is the current device, resolved before the cache: never a separate entry
    assert arch.device_facts(torch.device("cuda")) is got[0]


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("fused", [True, False])
def test_kernel_pipeline_names_the_gemm_format(monkeypatch: pytest.MonkeyPatch, act: str, fused: bool) -> None:
    """The kernel pipeline hands every grouped GEMM launcher its format (uint8 activations do not say it) and the
    device's target: run on CPU buffers with launchers and glue that only record their calls."""
    from flashinfer_sm12x.jit.arch import parse_target
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import gemm_format
    from flashinfer_sm12x.ops.grouped_mm_fp4 import gemm_format_of

    calls: list[str] = []

    def launcher(a: torch.Tensor, *args: Any, fmt: str | None = None, target: Any = None, **kw: Any) -> Any:
        assert gemm_format_of(a, fmt) == gemm_format(act) and target is not None
        calls.append(fmt)
        return lambda *a, **k: None

    monkeypatch.setattr(pipeline, "grouped_mm_fp4_launcher", launcher)
    monkeypatch.setattr(pipeline, "grouped_mm_fp4_swiglu_quantize_launcher", launcher)

    class Glue:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: calls.append(name)

    hp = ip = 128
    num_e, k = 4, 2
    plan = pipeline.row_plan(3, k, num_e, gemm_format(act), None, parse_target("sm_120a"))
    ws = pipeline.Workspace(torch.device("cpu"))
    views = ws.views_for(plan, hp, ip, act, fused)
    w = torch.zeros(num_e, 2 * ip, hp // 2, dtype=torch.uint8)
    experts = pipeline.Experts(act, w, torch.zeros(1, dtype=torch.uint8), None, torch.zeros(num_e, hp, ip // 2,
                               dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8), None, "interleaved", True,
                               1.702, 1.0, 7.0)
    pipeline._gemms_and_finalize(ws, plan, views, Glue(), experts, torch.zeros(3, hp), parse_target("sm_120a"))
    assert calls.count(gemm_format(act)) == 2 and calls[-1] == "finalize"
