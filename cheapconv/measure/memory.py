"""Peak memory of one forward pass: CUDA allocator statistics on GPU, live tensor storage on CPU.

On CPU the peak of live tensor storage created during one forward is tracked per operator with a
``TorchDispatchMode``; weights and the input are not counted, and framework scratch buffers are not seen.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..counting import eval_mode
from .latency import default_device, parse_dtype, prepared_copy, timing_input


def _live_tensor_mode():
    class LiveStorage(TorchDispatchMode):
        """Sums the bytes of storages created by operators while they are alive; remembers the peak."""

        def __init__(self):
            super().__init__()
            self.live = 0
            self.peak = 0
            self._seen: set = set()

        def _free(self, key, nbytes):
            self._seen.discard(key)
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key = (storage.device, storage.data_ptr())
                nbytes = storage.nbytes()
                if nbytes == 0 or key in self._seen:
                    continue
                self._seen.add(key)
                self.live += nbytes
                weakref.finalize(storage, self._free, key, nbytes)
                self.peak = max(self.peak, self.live)
            return out

    return LiveStorage()


def peak_memory(model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device | None = None,
                dtype: str | torch.dtype = torch.float32, channels_last: bool = False) -> int:
    """Peak bytes allocated during one forward pass on ``input_shape`` (batch included), beyond the weights
    and the input (see the module docstring for how it is measured on CPU and CUDA)."""
    device = torch.device(device) if device is not None else default_device()
    dtype = parse_dtype(dtype)
    work = prepared_copy(model, device, channels_last)
    x = timing_input(input_shape, device, channels_last)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with eval_mode(work), torch.inference_mode(), autocast:
        work(x)  # warm-up: lazy initialisation is not the model's memory
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            work(x)
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base)
        mode = _live_tensor_mode()
        with mode:
            out = work(x)
        del out
        return int(mode.peak)
