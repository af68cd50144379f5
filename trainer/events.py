"""TensorBoard scalars for `pretrain --tensorboard`: RUN/tensorboard/events.out.tfevents.*, which
`tensorboard --logdir runs/` reads. Written with tensorboardX (pure Python); torch.utils.tensorboard would need the
`tensorboard` package itself, which pulls in grpcio and a compiled data server."""

from __future__ import annotations

from pathlib import Path

from tensorboardX import SummaryWriter


class EventWriter:
    """Scalar events of a run, flushed after every step, so TensorBoard shows a live run. A resumed run starts
    another event file in the same folder, opened with a purge mark at `first_step`: the steps a stopped run logged
    after its last checkpoint are taken again, and TensorBoard hides the earlier file's records of them, as the
    run's log.jsonl drops them. The resumed file's name ends with its first step: event files are named by the
    second they were opened in, and a run resumed within the same second would otherwise overwrite the first."""

    def __init__(self, folder: str | Path, first_step: int = 1) -> None:
        resumed = first_step > 1
        self._writer = SummaryWriter(
            logdir=str(folder),
            flush_secs=1,
            purge_step=first_step if resumed else None,
            filename_suffix=f".from-step-{first_step}" if resumed else "",
        )
        self.path = Path(self._writer.file_writer.get_logdir())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
