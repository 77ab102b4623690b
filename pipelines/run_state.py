"""What ``fml run --resume`` needs to continue an interrupted run: ``<output_dir>/run_state.json``.

Written when the MLflow run starts and after each algorithm's meta-training: the run id, the options it
was started with (a resume with other options is refused: its tables would not be the run's), which
algorithms finished (their final, checkpoint-selected state is saved beside their checkpoints as
``final.pt``) and whether the whole run completed. An unfinished algorithm continues from its Lightning
``last.ckpt`` (round, server-optimizer state and checkpoint selection included), so the resumed run ends
with the tables of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.config import to_plain

STATE_FILE = "run_state.json"


class ResumeError(ValueError):
    """Nothing to resume, or not the same run."""


def options_key(cfg: Any) -> str:
    """A hash of every option that shapes the run's results (``resume`` itself, the output folder and the device
    excluded: a run interrupted on one machine may continue on another, its numbers equal up to rounding; and the
    ``flower`` section, which ``fml run`` does not read)."""
    plain = {k: v for k, v in to_plain(cfg).items() if k not in {"resume", "output_dir", "device", "flower"}}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunState:
    folder: Path
    run_id: str
    options: str
    trained: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    completed: bool = False

    @classmethod
    def start(cls, folder: Path, cfg: Any, run_id: str) -> "RunState":
        state = cls(folder, run_id, options_key(cfg))
        state.save()
        return state

    @classmethod
    def resume(cls, folder: Path, cfg: Any) -> "RunState":
        path = folder / STATE_FILE
        if not path.exists():
            raise ResumeError(f"--resume: {path} does not exist: no interrupted run in --output-dir {folder}; "
                              "run without --resume, or point --output-dir at the interrupted run's folder")
        raw = json.loads(path.read_text())
        state = cls(folder, raw["run_id"], raw["options"], list(raw["trained"]), dict(raw["seconds"]),
                    bool(raw["completed"]))
        if state.completed:
            raise ResumeError(f"--resume: the run in {folder} (MLflow run {state.run_id}) finished; nothing to resume")
        if state.options != options_key(cfg):
            raise ResumeError(f"--resume: the options differ from those the interrupted run in {folder} started with "
                              f"(see its MLflow run {state.run_id}, config.yaml); resume with the same options")
        return state

    def final_path(self, algorithm: str) -> Path:
        return self.folder / "checkpoints" / algorithm / "final.pt"

    def final(self, algorithm: str) -> dict:
        return torch.load(self.final_path(algorithm), map_location="cpu", weights_only=False)

    def finish(self, algorithm: str, learner: Any, seconds: float) -> None:
        """Record that ``algorithm``'s meta-training finished with ``learner``'s (checkpoint-selected) state."""
        path = self.final_path(algorithm)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": learner.state_dict(), "diverged_at": learner.diverged_at}, path)
        self.trained.append(algorithm)
        self.seconds[algorithm] = seconds
        self.save()

    def complete(self) -> None:
        self.completed = True
        self.save()

    def save(self) -> None:
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "options": self.options, "trained": self.trained,
                                   "seconds": self.seconds, "completed": self.completed}, indent=1))
        os.replace(tmp, self.folder / STATE_FILE)  # never a half-written state
