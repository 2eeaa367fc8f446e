"""Multi-process training with torch.distributed, as launched by torchrun.

`torchrun --standalone --nproc-per-node N -m relvit.cli MODE ...` starts N processes with
WORLD_SIZE, RANK and LOCAL_RANK in their environment. `session()` joins them into one process
group (NCCL on CUDA, gloo on the CPU) and always leaves it again; the helpers below are no-ops in
a single process, so a run without torchrun behaves exactly as without this module.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

log = logging.getLogger("relvit")


class DistributedError(ValueError):
    """The torchrun environment cannot run this job (bad variables, too few GPUs, ...)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from err


def launched_world_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def launched_rank() -> int:
    """This process's rank among those torchrun started (0 without torchrun)."""
    return _env_int("RANK", 0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the run's files and logs (rank 0)."""
    return rank() == 0


def local_device(name: str) -> torch.device:
    """The device of this process: `name` (auto | cpu | cuda | cuda:N), per local rank under
    torchrun (auto and cuda -> cuda:LOCAL_RANK)."""
    cuda = torch.cuda.is_available()
    if name.startswith("cuda") and not cuda:
        raise DistributedError(f"device {name!r} requested but CUDA is not available")
    world = launched_world_size()
    if name == "cpu" or (name == "auto" and not cuda):
        return torch.device("cpu")
    if world == 1:
        return torch.device("cuda" if name == "auto" else name)
    if name not in ("auto", "cuda"):
        raise DistributedError(f"device {name!r} would put all {world} processes on one GPU; "
                               "use device auto or cuda (each process takes cuda:LOCAL_RANK)")
    local = _env_int("LOCAL_RANK", 0)
    if local >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK {local} but this machine has "
                               f"{torch.cuda.device_count()} GPU(s); start at most that many "
                               "processes per node")
    return torch.device("cuda", local)


@contextmanager
def session(device_name: str) -> Iterator[torch.device]:
    """Join torchrun's process group (if WORLD_SIZE > 1) for the block; yields this process's
    device. The group is destroyed on the way out, errors included."""
    device = local_device(device_name)
    world = launched_world_size()
    if device.type == "cuda" and device.index is not None:
        # the current device: what torch.cuda.Event().record() and streams default to (one
        # process on cuda:1 had recorded its loss copy's event on cuda:0's stream)
        torch.cuda.set_device(device)
    if world == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    if not is_main():  # one log for the whole job: other ranks report warnings and errors only
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    log.info("distributed training: %d processes (%s)", world, dist.get_backend())
    try:
        yield device
    finally:
        # The finished run is a reference cycle that holds DDP, whose reducer holds the group:
        # collected first, the group is freed by destroy_process_group, which joins the
        # backend's threads here. Otherwise it is torn down during the interpreter's exit,
        # which now and then aborted a rank ("terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, in place (the same result on every rank)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather(value: torch.Tensor) -> torch.Tensor:
    """[world_size, *value.shape]: every rank's `value`, in rank order."""
    if not dist.is_initialized():
        return value.unsqueeze(0)
    out = [torch.empty_like(value) for _ in range(world_size())]
    dist.all_gather(out, value.contiguous())
    return torch.stack(out)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any]:
    """Every rank's picklable `obj` in rank order on rank 0; an empty list elsewhere."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_global_batch(batch_size: int, world: int) -> None:
    """Every rank needs a sample of every global batch."""
    if batch_size < world:
        raise DistributedError(f"optim.batch_size {batch_size} (the global batch) is smaller "
                               f"than the {world} processes")


def global_batch_sizes(n: int, batch_size: int, world: int) -> list[int]:
    """Sizes of an epoch's global batches of `n` samples: `batch_size`, the last one shorter.

    A last batch with fewer samples than ranks is left out (every rank must take part in every
    step), so those samples sit this epoch out; the epoch order is reseeded, so which ones changes.
    """
    check_global_batch(batch_size, world)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return sizes[:-1] if sizes and sizes[-1] < world else sizes


def full_steps(global_sizes: list[int]) -> list[bool]:
    """Which of an epoch's steps have a full global batch, the size of the first: compiled
    training code serves those steps, and the last, shorter one runs eagerly (`Run.train_loss`).

    The same on every rank, from the global sizes rather than a rank's own share: with 255
    samples a batch on 2 ranks, a last global batch of 254 gives rank 1 a share of the full
    size (127, 127 against 128, 127), and a rank-local test would have sent one rank through the
    compiled model and the other through the eager one, in one DDP step.
    """
    return [size == global_sizes[0] for size in global_sizes]


def shard_batches(order: torch.Tensor, batch_size: int, rank: int,
                  world: int) -> list[torch.Tensor]:
    """This rank's share of each global batch of the epoch order `order`, one tensor per step.

    Global batch k is `order[k * batch_size:(k + 1) * batch_size]`, as in a single process; it
    is cut into `world` contiguous shards whose sizes differ by at most one (the first
    `size % world` ranks take one more) and rank r takes shard r. With one process the shards
    are the global batches themselves.
    """
    sizes = global_batch_sizes(len(order), batch_size, world)
    return [batch.tensor_split(world)[rank] for batch in order[:sum(sizes)].split(sizes)]


def reduce_sums(sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, float], int]:
    """Sum per-key device scalars and a sample count over ranks, in one reduction and one host
    sync (under torchrun the key names are exchanged first).

    A rank may lack keys (one without batches has none): every rank's keys count, in order of
    first appearance (rank 0's first), so every rank returns the same dict in the same order.
    """
    keys = list(sums)
    if dist.is_initialized():
        keys = list(dict.fromkeys(key for names in all_gather_objects(keys) for key in names))
    device = next(iter(sums.values())).device if sums else _collective_device()
    zero = torch.zeros((), dtype=torch.float64, device=device)
    packed = torch.stack([sums.get(key, zero).to(device, torch.float64) for key in keys]
                         + [torch.tensor(float(count), dtype=torch.float64, device=device)])
    values = all_reduce_sum(packed).tolist()
    return dict(zip(keys, values[:-1])), int(values[-1])


def _collective_device() -> torch.device:
    """A device the process group's backend reduces on."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
