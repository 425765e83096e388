"""Registers, spills and launch shape of the variants Triton compiled for a kernel in this
process. A memory-bound kernel's occupancy (its programs resident per SM, so its loads in
flight) is bounded by its registers: 65,536 per SM over (registers x 32 x warps) a program.
Read after the kernel ran; Triton's internals differ between versions, so a failure to read
is reported, not raised."""
from __future__ import annotations

REGISTERS_PER_SM = 65536


def compiled_variants(jit_fn) -> list[dict]:
    variants = []
    for cache in getattr(jit_fn, "device_caches", {}).values():
        kernels = cache[0] if isinstance(cache, (tuple, list)) else cache   # (kernel cache, ...) per device
        for kernel in kernels.values():
            try:
                kernel._init_handles()
                warps = kernel.metadata.num_warps
                per_program = max(1, kernel.n_regs * 32 * warps)
                variants.append(dict(n_regs=kernel.n_regs, n_spills=kernel.n_spills, num_warps=warps,
                                     num_stages=getattr(kernel.metadata, "num_stages", None),
                                     shared_bytes=kernel.metadata.shared,
                                     programs_per_sm_by_registers=REGISTERS_PER_SM // per_program))
            except Exception as error:   # noqa: BLE001 - a report, whatever this Triton keeps
                variants.append(dict(error=repr(error)))
    return variants


def describe(name: str, variants: list[dict]) -> str:
    rows = [f"{name}: {len(variants)} compiled variant(s)"]
    for v in variants:
        rows.append(f"  {v}" if "error" in v else
                    f"  {v['n_regs']} registers, {v['n_spills']} spilled, {v['num_warps']} warps, "
                    f"{v['num_stages']} stages, {v['shared_bytes']} B shared: at most "
                    f"{v['programs_per_sm_by_registers']} programs per SM by registers")
    return "\n".join(rows)
