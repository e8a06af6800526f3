"""Client of Cloister's training API, for bring-your-own trainers (standard library only).

``cloister train JOB -- python3 train.py`` runs the trainer inside the TEE with the socket of the
training API in ``CLOISTER_TRAIN_SOCKET``. Through it the trainer reads its job (hyperparameters,
seed, the paths of its unsealed inputs, the output folder), saves checkpoints (sealed by the runner
before anything is written, and chained so that a rollback is refused), resumes from the latest one,
reports metrics and says when it is done. Copy this file next to your trainer; it needs Python 3.9+
and nothing else (``save_torch_checkpoint`` / ``load_torch_checkpoint`` import PyTorch when called).

    from cloister_train import TrainingClient, load_torch_checkpoint, save_torch_checkpoint

    client = TrainingClient()
    job = client.job()
    state = load_torch_checkpoint(client)        # None on the first run
    ...
    client.metrics(step, loss=loss.item())
    save_torch_checkpoint(client, {"model": model.state_dict(), "step": step}, step)
    ...
    client.finish(accuracy=acc)

See docs/agent-api.md (section "Training API") for the routes and their errors.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import socket
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "SOCKET_ENV",
    "TrainingApiError",
    "TrainingClient",
    "load_torch_checkpoint",
    "save_torch_checkpoint",
]

#: The environment variable in which the runner names the training API's socket.
SOCKET_ENV = "CLOISTER_TRAIN_SOCKET"

_PROBLEM_PREFIX = "https://cloister.dev/problems/"


class TrainingApiError(Exception):
    """A refusal of the training API (an RFC 7807 problem), or a failure to reach it.

    ``code`` is the problem's type without its URL prefix: ``bad-step``, ``bad-metrics``,
    ``too-large``, ``finished``, ``checkpoint-conflict``, ``checkpoint-rollback``,
    ``session-failed``, ... or ``unreachable`` / ``bad-response`` when no problem came back.
    ``status`` is the HTTP status (None when there was no answer).
    """

    def __init__(self, code: str, message: str, status: Optional[int] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (the host name in the request is a placeholder)."""

    def __init__(self, path: str, timeout: Optional[float]):
        super().__init__("train", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class TrainingClient:
    """The training API of one job.

    ``socket_path``: the API's Unix socket; default: the ``CLOISTER_TRAIN_SOCKET`` environment
    variable. ``timeout``: seconds to wait on the socket per operation (default: none, since saving
    a large checkpoint waits for sealing and the key broker). Each call opens its own connection,
    so one client may be shared by threads.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = None):
        path = socket_path if socket_path is not None else os.environ.get(SOCKET_ENV)
        if not path:
            raise TrainingApiError(
                "unreachable",
                f"no training API socket: pass socket_path or set {SOCKET_ENV} "
                "(cloister train sets it for the trainer it runs)",
            )
        self.socket_path = path
        self.timeout = timeout

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: Optional[str] = None,
    ) -> Tuple[int, Dict[str, str], bytes]:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            try:
                conn.request(method, path, body=body, headers=headers)
                res = conn.getresponse()
                data = res.read()
            except (OSError, http.client.HTTPException) as e:
                raise TrainingApiError(
                    "unreachable", f"{method} {path} on {self.socket_path}: {e}"
                ) from e
            head = {k.lower(): v for k, v in res.getheaders()}
        finally:
            conn.close()
        if res.status >= 400:
            raise _problem(res.status, data, method, path)
        return res.status, head, data

    def _post_json(self, path: str, obj: Dict[str, Any]) -> None:
        body = json.dumps(obj, allow_nan=False).encode("utf-8")
        self._call("POST", path, body, "application/json")

    def job(self) -> Dict[str, Any]:
        """The job: ``{"job", "name", "hyperparameters", "seed", "inputs", "outputDir", "startModel"?, "base"?}``.

        ``inputs`` maps each manifest input name to the path of its unsealed plaintext; write the
        trained model's files into ``outputDir``, which the runner seals after ``finish``. ``base`` is
        the unsealed frozen base model of a fine-tuning job (also in ``CLOISTER_BASE``): read it, never
        copy it into ``outputDir`` (the base's owner approved this trainer for that promise).
        """
        _, _, data = self._call("GET", "/train/v1/job")
        return json.loads(data)

    def load_checkpoint(self) -> Optional[Tuple[int, int, bytes]]:
        """The latest checkpoint as ``(number, step, state)``, or None before the first one."""
        status, head, data = self._call("GET", "/train/v1/checkpoint")
        if status == 204:
            return None
        try:
            return int(head["cloister-checkpoint-number"]), int(head["cloister-checkpoint-step"]), data
        except (KeyError, ValueError) as e:
            raise TrainingApiError("bad-response", f"checkpoint headers missing or bad: {e}", status) from e

    def save_checkpoint(self, data: Any, step: int) -> Dict[str, Any]:
        """Saves ``data`` (bytes, bytearray or memoryview) as the next checkpoint at ``step``.

        Returns ``{"number", "sha256"}``. The state goes to the runner in memory and is sealed
        before it is written. A ``TrainingApiError`` with code ``checkpoint-conflict`` or
        ``checkpoint-rollback`` means the chain moved on without this trainer (another run of the
        same job); ``finished`` that ``finish`` was already called.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TrainingApiError("bad-step", f"step: must be an integer >= 0, not {step!r}")
        _, _, body = self._call(
            "POST",
            f"/train/v1/checkpoint?step={step}",
            memoryview(data).cast("B"),
            "application/octet-stream",
        )
        return json.loads(body)

    def metrics(self, step: int, **scalars: float) -> None:
        """Reports one step's scalars, e.g. ``client.metrics(10, loss=0.31, lr=1e-3)``.

        Values must be finite numbers (a NaN loss is refused here, before it is sent).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TrainingApiError("bad-metrics", f"step: must be an integer >= 0, not {step!r}")
        self._post_json("/train/v1/metrics", {"step": step, **_scalars(scalars, "")})

    def finish(self, **metrics: float) -> None:
        """Says the trainer is done (its outputs are in ``outputDir``), with final metrics.

        After this the API refuses further checkpoints and metrics (code ``finished``).
        """
        body = {"metrics": _scalars(metrics, "metrics.")} if metrics else {}
        self._post_json("/train/v1/finish", body)


def _scalars(m: Dict[str, Any], where: str) -> Dict[str, float]:
    out = {}
    for k, v in m.items():
        if hasattr(v, "item") and callable(v.item):  # a one-element tensor or NumPy scalar
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TrainingApiError("bad-metrics", f"{where}{k}: must be a finite number, not {v!r}")
        out[k] = v
    return out


def _problem(status: int, data: bytes, method: str, path: str) -> TrainingApiError:
    try:
        p = json.loads(data)
        code = str(p["type"])
        if code.startswith(_PROBLEM_PREFIX):
            code = code[len(_PROBLEM_PREFIX):]
        return TrainingApiError(code, str(p.get("detail", "")), status)
    except (ValueError, KeyError, TypeError):
        text = data[:200].decode("utf-8", "replace")
        return TrainingApiError("bad-response", f"{method} {path}: HTTP {status}: {text}", status)


def save_torch_checkpoint(client: TrainingClient, obj: Any, step: int) -> Dict[str, Any]:
    """``torch.save(obj)`` into memory and ``client.save_checkpoint`` it; returns ``{"number", "sha256"}``.

    Put everything a bit-identical resume needs into ``obj``: model and optimizer state dicts, the
    step, and the RNG states (``torch.get_rng_state()``, a ``torch.Generator``'s ``get_state()``).
    """
    import torch  # imported here so the client works without PyTorch

    buf = io.BytesIO()
    torch.save(obj, buf)
    # The buffer's own memory, not a copy: a checkpoint of gigabytes is held once.
    view = buf.getbuffer()
    try:
        return client.save_checkpoint(view, step)
    finally:
        view.release()


def load_torch_checkpoint(client: TrainingClient, **load_kwargs: Any) -> Any:
    """The object of the latest checkpoint (``torch.load`` from memory), or None before the first.

    ``load_kwargs`` go to ``torch.load`` (``map_location="cpu"``, ``weights_only=...``). The state
    is the trainer's own, sealed by the runner and checked against the job's checkpoint chain.
    """
    import torch

    latest = client.load_checkpoint()
    if latest is None:
        return None
    _, _, data = latest
    return torch.load(io.BytesIO(data), **load_kwargs)
