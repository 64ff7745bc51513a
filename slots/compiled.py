"""Opt-in ``torch.compile`` (inductor) of a model's forward pass: :func:`compile_model`.

Slot attention on small sets (Table 1: 64 x 105 inputs, 5 slots) is bound by per-operation overhead, not
arithmetic. Inductor fuses the elementwise work of each iteration (the LayerNorms, the GRU cell's gates, the
MLP, SA's softmax and the normalization over the inputs) into a few generated C++ loops, and AOTAutograd
compiles the matching backward, so the step launches fewer operations; matrix products stay calls into the
BLAS library.

What runs eagerly between the compiled graphs: the optimal-transport plans (``kernels``' autograd functions
call the C++ loops or Triton, ``slots.attention._plan_sinkhorn`` / ``_plan_emd`` / ``_plan_mesh``), the
input-marginal network's hand-written autograd function (``_SetScalarMLP``) and the appendix MESH variants
(``MeshVariant``, which calls ``torch.autograd.grad``); each is marked ``torch.compiler.disable``, so an OT
variant's forward is cut into a graph before and a graph after every plan. SA's whole forward is one graph
per grad mode (implicit differentiation runs the first iterations under ``no_grad``).

Values: the compiled forward and backward equal the eager ones up to rounding (inductor reorders sums and
fuses operations); the random draws (initial slots, MESH noise) are the eager ones (``fallback_random``),
so a seeded compiled run draws what a seeded eager run draws.

Known limits: CPU inductor needs a C++ compiler at run time; the first call compiles (tens of seconds per
variant on a CPU; inductor caches the generated code on disk, so a second process compiles faster); a new
input shape (another batch size) compiles again, then with dynamic shapes; training, evaluation and
``no_grad`` calls each compile their own graphs. Tracing starts at the first frame outside torch's own files,
so a model built only of torch containers and layers (an ``nn.Sequential`` of ``nn.Linear``) stays eager: wrap
it in a module with a forward of its own. Whether compiling pays depends on the variant: every OT plan cuts the
graph, and each piece adds its own call overhead (guards, the compiled autograd function), which can outweigh
what fusion saves; the compiled roles of ``tests/tasks/test_bench_random_objects.py`` measure it.
"""
import torch
from torch import nn

__all__ = ["compile_model"]


def compile_model(model: nn.Module) -> nn.Module:
    """Compile ``model``'s forward in place with inductor (``nn.Module.compile``) and return it.

    The parameters, buffers and ``state_dict`` keys are those of the eager model (no ``_orig_mod.`` prefix),
    so checkpoints written with and without compilation are interchangeable. Compilation happens on the first
    call. Random draws inside the forward are the eager ones (inductor's ``fallback_random``).

    Args:
        model: any module; slot attention's OT kernels and hand-written autograd functions run eagerly.

    Returns:
        ``model`` itself.
    """
    model.compile(options={"fallback_random": True})
    return model
