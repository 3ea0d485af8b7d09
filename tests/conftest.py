import gc
import os

import pytest

# Parity is checked in float32 on CPU; keep XLA from using reduced-precision matmuls.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def pytest_configure(config):
    # The suite's models are tiny: compiling is most of its time, running little. Without LLVM's
    # optimisation passes a compile is ~30% cheaper (the Chronos-2 and Llama parity files: 195 ->
    # 140 s CPU) and the parity tolerances all hold. Not for `-m slow` (the real SmolLM2 model,
    # where running dominates). Set before any test touches JAX, whose backend starts lazily.
    if (config.option.markexpr or "").strip() != "slow":
        os.environ.setdefault("XLA_FLAGS", FAST_COMPILE)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. `make test` runs the whole suite in
    one process per xdist worker; five parity modules alone peaked at 4.9 GB with their programs kept
    alive and 2.6 GB with this (CI once died of an abort late in a serial run)."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()
