"""Resumable training: the one training loop saves a checkpoint after every epoch.

Every trainer of the project runs its epochs through
:func:`DeepSimilarityLib.ctmr.sdae.run_epochs`, often several times per
training (the SDAE's layer-wise stages, then fine-tuning). The loop asks
:func:`active_checkpoint` whether a checkpoint scope is open; if so, after
each epoch it records the network's state (weights and buffers), the
optimiser's state, the epoch and the state of every random generator, and
writes all stages' records atomically to one file (``OUT.ckpt`` beside the
output). With ``resume`` the loop replays that file: finished stages load
their final state and random state and are skipped, the interrupted stage
continues after its last finished epoch. Because the random state is
restored exactly, a resumed run ends with the same weights as an
uninterrupted one with the same seed (on one thread).

Why a scope rather than an argument: the loop sits several calls deep inside
every trainer, and the trainers' signatures are also used by the Slicer
module; a context variable lets the command line switch checkpointing on for
one whole training without threading a parameter through all of them.
"""

from __future__ import annotations

import contextvars
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .torch_files import load_torch_file, save_torch_file

FILE_FORMAT = "DeepSimilarity training checkpoint"
SUFFIX = ".ckpt"

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("deepsim_training_checkpoint", default=None)


def checkpoint_path(out) -> Path:
    """Where the checkpoint of the training that writes ``out`` lives: ``OUT.ckpt``."""
    return Path(str(out) + SUFFIX)


def active_checkpoint() -> "EpochCheckpoint | None":
    return _ACTIVE.get()


# -- random state ------------------------------------------------------------------------------------
# The generators a training draws from: the loop's torch.Generator, any extra ones a trainer passes
# (numpy Generators, e.g. the Siamese pair sampler), and the global torch / numpy / Python generators.

def _capture_rng(generators) -> dict:
    legacy = np.random.get_state()
    return {"local": [g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state for g in generators],
            "torch": torch.get_rng_state(),
            "numpy": [legacy[0], torch.from_numpy(legacy[1].astype(np.int64)), *legacy[2:]],
            "python": random.getstate()}


def _restore_rng(state: dict, generators) -> None:
    for g, s in zip(generators, state["local"]):
        if isinstance(g, torch.Generator):
            g.set_state(s)
        else:
            g.bit_generator.state = s
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def _clone_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class EpochCheckpoint:
    """The checkpoint of one training; open it with :func:`training_checkpoint`.

    ``fingerprint`` describes the training (e.g. its command-line options): a
    checkpoint written by a training with another fingerprint is refused
    instead of silently mixing two trainings.
    """

    def __init__(self, path, fingerprint: dict | None = None, resume: bool = False):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint or {})
        self.records: list[dict] = []  # one per run_epochs call ("stage"), the latest epoch's state
        self.saved: list[dict] = []  # the records read from the file when resuming
        self.resumed_from: tuple[int, int] | None = None  # (stage, epoch) a resume started after
        # Training seconds of the interrupted runs up to their last saved epoch: a trainer times only its own
        # run, so callers add this to report the time the whole training took.
        self.earlier_seconds = 0.0
        self._stage = 0
        self._started = time.perf_counter()  # the scope encloses the training alone
        if resume and self.path.exists():
            self.saved = self._read()
            if self.saved:
                self.resumed_from = (len(self.saved) - 1, int(self.saved[-1]["epoch"]))
                self.earlier_seconds = float(self.saved[-1].get("elapsed", 0.0))

    def _read(self) -> list[dict]:
        blob = load_torch_file(self.path, "training checkpoint", "; delete it to start over")
        if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
            raise InputError(self.path, "not a DeepSimilarity training checkpoint; delete it to start over")
        if blob.get("fingerprint") != self.fingerprint:
            old, new = blob.get("fingerprint") or {}, self.fingerprint
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(self.path, f"was written by a training with other options ({', '.join(differ)}); "
                                        "rerun with the same options or delete it to start over")
        return list(blob.get("stages") or [])

    # -- called by the training loop ---------------------------------------------------------------
    def begin_stage(self, module: torch.nn.Module, optimizer, epochs: int, generators) -> tuple[int, int, list]:
        """Start the next stage; returns ``(stage, first_epoch, losses_so_far)``, restored from the file when
        resuming."""
        stage, self._stage = self._stage, self._stage + 1
        if stage >= len(self.saved):
            return stage, 0, []
        record = self.saved[stage]
        wanted = module.state_dict()
        state = record["state"]
        if int(record["epochs"]) != epochs or set(state) != set(wanted) or any(
                tuple(state[k].shape) != tuple(wanted[k].shape) for k in wanted):
            raise InputError(self.path, f"stage {stage} does not match this training (another network or "
                                        "schedule); delete it to start over")
        module.load_state_dict(state)
        if record.get("optimizer") is not None:
            optimizer.load_state_dict(record["optimizer"])
        _restore_rng(record["rng"], generators)
        self.records.append(record)
        return stage, int(record["epoch"]), list(record["losses"])

    def end_epoch(self, stage: int, epoch: int, epochs: int, module, optimizer, generators, losses) -> None:
        """Record the state after ``epoch`` epochs (1-based) of ``stage`` and write every record atomically."""
        record = {"epoch": epoch, "epochs": epochs, "state": _clone_state(module),
                  # the finished stage's optimiser is never needed again
                  "optimizer": optimizer.state_dict() if epoch < epochs else None,
                  "rng": _capture_rng(generators), "losses": list(losses),
                  "elapsed": self.earlier_seconds + time.perf_counter() - self._started}
        if stage < len(self.records):
            self.records[stage] = record
        else:
            self.records.append(record)
        blob = {"format": FILE_FORMAT, "version": 1, "fingerprint": self.fingerprint, "stages": self.records}
        save_torch_file(blob, self.path)

    def discard(self) -> None:
        """Remove the file once the training's output is written, with what killed writes of it left behind.

        A SIGKILL during a write leaves ``atomic_output``'s temporary file
        (nothing can remove it in the dying process); only this training
        writes this checkpoint, so its leftovers are safe to remove here.
        """
        self.path.unlink(missing_ok=True)
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)


@contextmanager
def training_checkpoint(out, fingerprint: dict | None = None, resume: bool = False):
    """Checkpoint every epoch of the trainings run inside the ``with`` block to ``OUT.ckpt``.

    Call ``discard()`` on the yielded :class:`EpochCheckpoint` after the output
    is written; on an error or a kill the checkpoint stays for ``resume``.
    """
    checkpoint = EpochCheckpoint(checkpoint_path(out), fingerprint, resume)
    if not resume and checkpoint.path.exists():
        print(f"starting over: {checkpoint.path} of an interrupted run will be replaced (--resume continues it)",
              file=sys.stderr)
    if checkpoint.resumed_from is not None:
        stage, epoch = checkpoint.resumed_from
        print(f"resuming from {checkpoint.path} (stage {stage + 1}, epoch {epoch})", file=sys.stderr)
    token = _ACTIVE.set(checkpoint)
    try:
        yield checkpoint
    finally:
        _ACTIVE.reset(token)
