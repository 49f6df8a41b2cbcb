"""Compile every Triton kernel for a real GPU target, ahead of time, on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``) runs the kernels' Python, never Triton's GPU compiler, so
a kernel the compiler rejects passes every CPU test: on 2026-12-04 the sampler compiled under
the interpreter and crashed Triton 3.6's ``TritonGPUOptimizeThreadLocality`` pass on an H200.
This script drives each launcher in ``sleepcore.kernels`` on small CPU tensors with the launch
replaced by a recorder: each launch's argument types, constexprs and ``num_warps`` become a
``triton.compile`` call for ``cuda:<arch>`` (TTIR -> TTGIR -> LLVM -> PTX -> cubin with Triton's
own ptxas). Nothing runs; launchers pick the block sizes they pick on a GPU (no interpreter).

Usage: ``python tests/ops/triton_aot.py [--arch 90]``; exit status 1 when any kernel fails, with
the compiler's message. ``tests/ops/test_triton_aot.py`` runs it; CI also runs it under the GPU
machine's Triton version.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported: real JIT functions
_CACHE = tempfile.mkdtemp(prefix="sleepcore-aot-")
os.environ["TRITON_CACHE_DIR"] = _CACHE  # compile, never reuse
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # about 10 MB of cubins per run

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                  torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
                  torch.bool: "i1"}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _scalar_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a {type(value).__name__} argument")


class Recorder:
    """Stands in for ``JITFunction.run``: compiles each distinct launch for ``target``."""

    def __init__(self, target: GPUTarget):
        self.target = target
        self.compiled: list[str] = []
        self.failures: list[str] = []
        self._seen: set = set()

    def __call__(self, kernel: JITFunction, *args, grid, warmup, **kwargs):
        options = {key: kwargs.pop(key) for key in _LAUNCH_OPTIONS if key in kwargs}
        bound = kernel.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        signature, constexprs = {}, {}
        for param in kernel.params:
            value = bound.arguments[param.name]
            if param.is_constexpr or value is None:
                signature[param.name] = "constexpr"
                constexprs[param.name] = value
            else:
                signature[param.name] = _scalar_type(value)
        label = f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}" \
                f"({', '.join(f'{k}={v}' for k, v in constexprs.items())}, {options})"
        key = (label, tuple(signature.values()))
        if key in self._seen:
            return None
        self._seen.add(key)
        try:
            triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=self.target, options=options)
            self.compiled.append(label)
        except Exception as error:  # the compiler's own exception types differ between Triton versions
            self.failures.append(f"{label}: {type(error).__name__}: {str(error).strip().splitlines()[-1:]}")
        return None


def _kernel_names() -> set[str]:
    """``module.name`` of every launched kernel (a JIT function named ``*_kernel``) in every module of
    sleepcore.kernels, so a new kernel file is caught too."""
    import sleepcore.kernels

    modules = [importlib.import_module(f"sleepcore.kernels.{info.name}")
               for info in pkgutil.iter_modules(sleepcore.kernels.__path__)]
    return {f"{module.__name__.rsplit('.', 1)[-1]}.{name}" for module in modules
            for name, value in vars(module).items() if isinstance(value, JITFunction) and name.endswith("_kernel")}


def _launch_every_kernel() -> None:
    """Each launcher with the options and sizes that select different constexprs or block sizes."""
    from sleepcore.kernels import batched_lora, jsd, logprobs, paged_attention, sampling

    for vocab, dtype in ((256, torch.float32), (49_152, torch.bfloat16), (262_144, torch.bfloat16)):
        rows = 3
        logits = torch.zeros(rows, vocab, dtype=dtype)
        row_f32 = torch.zeros(rows)
        ids = torch.zeros(rows, dtype=torch.int64)
        sampling.sample_rows(logits, torch.ones(rows, dtype=torch.float64), ids, row_f32, row_f32, ids, ids,
                             ids.clone(), row_f32.clone(), torch.zeros(rows, dtype=torch.int32))
        for grad in (None, torch.zeros_like(logits)):
            jsd.jsd_rows(logits, logits, row_f32, row_f32.clone(), grad, beta=0.5, temperature=1.0)
            top = torch.zeros(rows, 8, dtype=torch.int64)
            jsd.topk_jsd_rows(logits, top, torch.zeros(rows, 8), row_f32, row_f32.clone(), grad, beta=0.5,
                              temperature=1.0)
        for entropy in (None, row_f32.clone()):
            logprobs.logprob_rows(logits, ids, row_f32.clone(), entropy, row_f32.clone(), temperature=1.0)
            logprobs.logprob_grad_rows(logits, ids, row_f32, entropy, row_f32, None if entropy is None else row_f32,
                                       torch.zeros_like(logits), temperature=1.0)

    for head_dim, heads_q, heads_kv, dtype in ((64, 9, 3, torch.bfloat16), (256, 4, 1, torch.float32)):
        tokens, blocks, block_size = 5, 4, 16
        q = torch.zeros(tokens, heads_q, head_dim, dtype=dtype)
        kv = torch.zeros(tokens, heads_kv, head_dim, dtype=dtype)
        k_cache = torch.zeros(blocks, block_size, heads_kv, head_dim, dtype=dtype)
        v_cache = torch.zeros_like(k_cache)
        paged_attention.write_kv(kv, kv, k_cache, v_cache, torch.arange(tokens))
        paged_attention.copy_blocks(k_cache, v_cache, torch.tensor([[0, 1]]))
        tables = torch.zeros(2, blocks, dtype=torch.int32)
        for window, softcap in ((0, 0.0), (8, 30.0)):
            paged_attention.paged_attention(q, k_cache, v_cache, tables, torch.tensor([3, 2], dtype=torch.int32),
                                            torch.tensor([0, 3, 5], dtype=torch.int32), torch.zeros_like(q),
                                            scale=0.125, sliding_window=window, softcap=softcap)

    for dtype in (torch.float32, torch.bfloat16):
        adapters, rank, d_in, d_out, tokens = 3, 8, 96, 80, 7
        x = torch.zeros(tokens, d_in, dtype=dtype)
        A = torch.zeros(adapters, rank, d_in, dtype=dtype)
        B = torch.zeros(adapters, d_out, rank, dtype=dtype)
        index = torch.tensor([0, 1, 2, 0, 1, 2, 0])
        batched_lora.forward(x, A, B, index, 2.0)
        batched_lora.backward(torch.zeros(tokens, d_out, dtype=dtype), x, A, B, index, 2.0, True, True, True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    args = parser.parse_args(argv)
    recorder = Recorder(GPUTarget("cuda", args.arch, 32))
    original = JITFunction.run
    JITFunction.run = lambda kernel, *a, grid, warmup, **kw: recorder(kernel, *a, grid=grid, warmup=warmup, **kw)
    try:
        _launch_every_kernel()
    finally:
        JITFunction.run = original
    names = sorted({label.split("(")[0] for label in recorder.compiled + recorder.failures})
    print(f"triton {triton.__version__}, cuda:{args.arch}: {len(recorder.compiled)} launches compiled, "
          f"{len(recorder.failures)} failed, kernels: {', '.join(names)}")
    for failure in recorder.failures:
        print("FAILED", failure)
    missing = sorted(_kernel_names() - set(names))
    if missing:
        print("NOT LAUNCHED (add them to _launch_every_kernel):", ", ".join(missing))
    return 1 if recorder.failures or missing or not recorder.compiled else 0


if __name__ == "__main__":
    sys.exit(main())
