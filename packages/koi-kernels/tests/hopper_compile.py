"""Every kernel launch the interpreter ran, compiled ahead of time for Hopper (sm_90) with no GPU.

The Triton interpreter runs kernels as numpy code, so it accepts programs the compiler refuses
(a non-constexpr ``tl.arange``, a scalar mask of the wrong type). Tests on a CPU would stay green
and the card would find the error. So conftest records each distinct launch (kernel, argument
types, constexpr values, ``num_warps``) while the tests run in the interpreter, and the last test
compiles each of them to an sm_90 cubin (Triton's own ptxas; no driver needed) in a process
without the interpreter.
"""

from __future__ import annotations

import inspect
import json

import torch

LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")
TRITON_TYPES = {
    torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5", torch.int64: "i64", torch.int32: "i32",
    torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1",
}
LAUNCHES: dict[str, dict] = {}  # distinct launches of this test session, by their JSON


def _argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + TRITON_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def record_launch(fn, args: tuple, kwargs: dict) -> None:
    """Remember one interpreter launch of ``fn`` (the kernel's Python function) in compilable form."""
    signature_of_fn = inspect.signature(fn)
    parameters = signature_of_fn.parameters
    options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
    bound = signature_of_fn.bind(*args, **{k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS})
    bound.apply_defaults()
    signature, constants = {}, {}
    for name, value in bound.arguments.items():
        if "constexpr" in str(parameters[name].annotation) or value is None:
            signature[name] = "constexpr"
            constants[name] = value
        else:
            signature[name] = _argument_type(value)
    launch = {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constants": constants, "options": options}
    try:
        LAUNCHES.setdefault(json.dumps(launch, sort_keys=True), launch)
    except TypeError:  # a constexpr that JSON cannot carry (a tl.dtype, say): this launch is not checked
        pass


def install_recorder() -> bool:
    """Wrap the interpreter's launch so that each launch is recorded; False when there is no interpreter to wrap."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        record_launch(self.fn, args, kwargs)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    return True


# Run as its own process (python hopper_compile.py launches.json), without TRITON_INTERPRET: @triton.jit then
# gives compilable functions. Exit 0: all compiled; 1: some did not (each listed); 3: this Triton has no such API.
COMPILE = """
import importlib, json, sys
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print(f"no ahead-of-time compile API in this triton: {exc}")
    sys.exit(3)
launches = json.load(open(sys.argv[1]))
failed = []
for launch in launches:
    kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    try:
        source = ASTSource(fn=kernel, signature=launch["signature"], constexprs=launch["constants"])
    except TypeError as exc:
        print(f"this triton's ASTSource takes other arguments: {exc}")
        sys.exit(3)
    try:
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options=launch["options"])
    except Exception as exc:
        failed.append(f"{launch['module']}.{launch['kernel']} {launch['constants']}: {type(exc).__name__}: {str(exc)[:600]}")
kernels = len({(l["module"], l["kernel"]) for l in launches})
print(f"compiled {len(launches) - len(failed)} of {len(launches)} launches ({kernels} kernels) for sm_90")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
