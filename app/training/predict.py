"""Predictions on new images for a finished run; nothing is stored.

Each file is checked by the same validation as ingest (`inspect_image` under the same limits), so a refusal
reads as it would in an upload report. Accepted images take the path every other scoring of the run took: the
same decode (`app.ml.decoding`), then the run's model.onnx (its backbone's verified export plus its head) in
ONNX Runtime, without torch in the web process. A run without that file (made before it existed, or whose export
failed verification), or a server set to ERRORBOOK_INFERENCE_RUNTIME=torch, is scored from its checkpoint
through the worker's path instead (imports torch once).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from app.core.artefacts import ArtefactStore
from app.core.errors import Conflict, Invalid, TooLarge
from app.core.settings import Settings
from app.ml.images import ImageLimits, Rejection, inspect_image
from app.ml.input_spec import InputSpec
from app.models import Run
from app.training import service
from app.training.inference import MODEL_ONNX
from app.training.schemas import LabelProbability, PredictItem, PredictOut, Refusal
from app.training.states import RunStatus

TOP_K = 5
KEPT_MODELS = 4  # models kept loaded per web process (an EfficientNet-Lite0 session holds ~20 MB)
Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class _Scorer:
    runtime: str
    predict: Callable[[Sequence[Path]], npt.NDArray[np.float32]]


_SCORERS: dict[tuple[str, float, str], _Scorer] = {}
_SCORERS_LOCK = threading.Lock()


def too_many_files(limit: int) -> TooLarge:
    return TooLarge(f"a prediction takes at most {limit} files (ERRORBOOK_PREDICT_MAX_FILES); send fewer per request")


def predict(
    session: Session,
    *,
    run_id: int,
    files: Sequence[tuple[str, Opener]],
    settings: Settings,
    artefacts: ArtefactStore,
) -> PredictOut:
    run = service.get_run(session, run_id=run_id)
    status = service.run_status(session, run)
    if status != RunStatus.SUCCEEDED or not run.model_path:
        raise Conflict(f"run {run_id} is {status}; only a finished run can predict")
    if not files:
        raise Invalid("send one or more image files in the form field 'files'")
    if len(files) > settings.predict_max_files:
        raise too_many_files(settings.predict_max_files)
    scorer = _scorer(run, settings, artefacts)
    limits = ImageLimits(max_pixels=settings.max_image_pixels, min_side=settings.min_image_side)
    items: list[PredictItem] = []
    with tempfile.TemporaryDirectory(prefix="predict-") as directory:
        accepted: list[tuple[int, Path]] = []
        for index, (filename, opener) in enumerate(files):
            path = Path(directory) / f"{index}"
            with path.open("wb") as target:
                shutil.copyfileobj(opener(), target, 1 << 20)
            inspected = inspect_image(path, filename=filename, limits=limits)
            refused = None
            if isinstance(inspected, Rejection):
                refused = Refusal(code=inspected.code, reason=inspected.reason)
            items.append(PredictItem(filename=filename, top=[], refused=refused))
            if refused is None:
                accepted.append((index, path))
        probabilities = scorer.predict([path for _, path in accepted]) if accepted else None
    names = list(run.label_names)
    for row, (index, _path) in enumerate(accepted):
        assert probabilities is not None
        order = np.argsort(-probabilities[row])[:TOP_K]
        items[index].top = [LabelProbability(label=names[k], probability=float(probabilities[row, k])) for k in order]
    return PredictOut(items=items, runtime=scorer.runtime)


def _scorer(run: Run, settings: Settings, artefacts: ArtefactStore) -> _Scorer:
    onnx_path = service.run_file(artefacts, run, MODEL_ONNX) if settings.inference_runtime != "torch" else None
    use_onnx = onnx_path is not None
    source = onnx_path or service.run_file(artefacts, run, "model.pt")
    try:
        if source is None:
            raise FileNotFoundError
        key = (str(source), source.stat().st_mtime, settings.inference_runtime)
    except FileNotFoundError:
        raise Conflict(f"the model files of run {run.id} are missing from the store") from None
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            while len(_SCORERS) >= KEPT_MODELS:  # the oldest loaded goes first: memory stays bounded
                del _SCORERS[next(iter(_SCORERS))]
            _SCORERS[key] = _onnx_scorer(source) if use_onnx else _checkpoint_scorer(source, settings)
        return _SCORERS[key]


def _onnx_scorer(path: Path) -> _Scorer:
    from app.ml.onnx_classifier import OnnxClassifier

    classifier = OnnxClassifier(path, threads=_cores())
    metadata = classifier.session.get_modelmeta().custom_metadata_map
    preprocessing = InputSpec.from_dict(json.loads(metadata["input_spec"])).preprocessing
    return _Scorer("onnxruntime (model.onnx)", lambda paths: classifier.predict(paths, preprocessing))


def _checkpoint_scorer(path: Path, settings: Settings) -> _Scorer:
    from app.ml.backbones import model_from_checkpoint
    from app.ml.features import extract_features
    from app.ml.training import predict_from_features
    from app.training.inference import worker_runtime

    loaded = model_from_checkpoint(path)
    runtime = worker_runtime(settings, loaded.backbone)
    head_state = loaded.head.state_dict()

    def predict_paths(paths: Sequence[Path]) -> Any:
        # In this process (no decoding processes forked from a web server's thread).
        features = extract_features(
            backbone=loaded.backbone, image_paths=paths, cache_dir=None, num_workers=0, runtime=runtime
        ).features
        return predict_from_features(head_state=head_state, features=features)

    return _Scorer(f"{runtime.report.runtime} (checkpoint)", predict_paths)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
