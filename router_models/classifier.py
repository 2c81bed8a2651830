"""The light classifier: three calibrated linear heads (difficulty, sequential, search).

Each head is a scikit-learn ``LogisticRegression`` over the standardised hand-made features
and the hashed n-grams of ``router_models.features``, followed by Platt scaling fitted on a
held-out calibration split (Platt 1999; ``router_models.train.platt_knots``). At scoring time
both are plain arrays: one sparse dot product per head and a piecewise-linear map
(``numpy.interp`` over the tabulated sigmoid), so no scikit-learn object is loaded and nothing
is unpickled.

The artifact is a directory holding ``classifier.npz`` (arrays only, read with
``allow_pickle=False``) and ``classifier.json`` (version, training-data hash, seed, held-out
metrics). ``save`` writes both byte for byte the same for the same model.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_models.features import (
    FEATURE_NAMES,
    N_DENSE,
    N_HASH,
    Features,
    extract,
    prompt_form,
)
from router_models.plan import Scores

HEADS = ("difficulty", "sequential", "search")
ARTIFACT_VERSION = 1
DEFAULT_ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"


class ArtifactError(ValueError):
    """An artifact directory is missing, unreadable, or of another format version."""


class StaleFeaturesError(ArtifactError):
    """A readable classifier artifact built for another feature set (an older version of
    this package): its weights do not line up with today's features."""


@dataclass(frozen=True)
class Head:
    """One calibrated linear head.

    ``w_dense`` (N_DENSE,) applies to the raw dense features (standardisation folded in),
    ``w_hash`` (N_HASH,) to the hashed n-grams, ``intercept`` a float; ``calib_x`` and
    ``calib_y`` (n_knots,) map the linear score to a probability by linear interpolation,
    clipped at both ends.
    """

    w_dense: np.ndarray
    w_hash: np.ndarray
    intercept: float
    calib_x: np.ndarray
    calib_y: np.ndarray

    def decision(self, f: Features) -> float:
        """The uncalibrated linear score (log-odds of the logistic model)."""
        return float(self.w_dense @ f.dense + self.w_hash[f.hash_indices] @ f.hash_values
                     + self.intercept)

    def probability(self, f: Features) -> float:
        """The calibrated probability in [0, 1]."""
        return float(np.interp(self.decision(f), self.calib_x, self.calib_y))


@dataclass
class Classifier:
    """Scores prompts: ``score(messages) -> Scores``; the three heads are named by ``HEADS``."""

    heads: dict[str, Head]
    metadata: dict[str, Any] = field(default_factory=dict)

    def score(self, messages: Sequence[Any] | str) -> Scores:
        """Scores of the prompt being asked now (see ``features.extract`` for the shapes
        accepted; never raises on odd messages)."""
        return self.score_features(extract(messages))

    def score_features(self, f: Features) -> Scores:
        """Scores from already extracted features, with the prompt's form and steps."""
        p = {name: self.heads[name].probability(f) for name in HEADS}
        return Scores(difficulty=p["difficulty"], sequential=p["sequential"],
                      search=p["search"], form=prompt_form(f), steps=f.steps)

    # -- artifact ------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """The model as named float32 arrays (what ``classifier.npz`` holds)."""
        out: dict[str, np.ndarray] = {}
        for name in HEADS:
            head = self.heads[name]
            out[f"{name}.w_dense"] = head.w_dense.astype(np.float32)
            out[f"{name}.w_hash"] = head.w_hash.astype(np.float32)
            out[f"{name}.intercept"] = np.array([head.intercept], np.float32)
            out[f"{name}.calib_x"] = head.calib_x.astype(np.float32)
            out[f"{name}.calib_y"] = head.calib_y.astype(np.float32)
        return out

    def save(self, directory: Path) -> None:
        """Write ``classifier.npz`` and ``classifier.json`` into ``directory`` (created if
        needed), deterministically: the same model gives the same bytes."""
        directory.mkdir(parents=True, exist_ok=True)
        write_npz(directory / "classifier.npz", self.arrays())
        meta = dict(self.metadata, artifact_version=ARTIFACT_VERSION,
                    feature_names=list(FEATURE_NAMES), n_hash=N_HASH, heads=list(HEADS))
        (directory / "classifier.json").write_text(
            json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path = DEFAULT_ARTIFACT_DIR) -> Classifier:
        """Read a classifier saved by ``save``.

        Raises:
            ArtifactError: files missing, arrays missing, or another artifact version.
            StaleFeaturesError: built for another feature set.
        """
        try:
            meta = json.loads((directory / "classifier.json").read_text("utf-8"))
            with np.load(directory / "classifier.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read classifier artifact in {directory}: {exc}") \
                from exc
        if meta.get("artifact_version") != ARTIFACT_VERSION:
            raise ArtifactError(f"classifier artifact version {meta.get('artifact_version')} "
                                f"in {directory}; this code reads {ARTIFACT_VERSION}")
        if meta.get("n_hash") != N_HASH or meta.get("feature_names") != list(FEATURE_NAMES):
            raise StaleFeaturesError(f"classifier artifact in {directory} was built for other "
                                     "features; re-run `ttc-router train`")
        return cls(from_arrays(arrays), meta)


def from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, Head]:
    """Heads from the arrays of ``Classifier.arrays`` (float32 widened to float64).

    Raises:
        ArtifactError: an array is missing or has the wrong shape.
    """
    heads = {}
    try:
        for name in HEADS:
            w_dense = np.asarray(arrays[f"{name}.w_dense"], np.float64)
            w_hash = np.asarray(arrays[f"{name}.w_hash"], np.float64)
            if w_dense.shape != (N_DENSE,) or w_hash.shape != (N_HASH,):
                raise ArtifactError(f"head {name}: weights of shape {w_dense.shape}, "
                                    f"{w_hash.shape}")
            heads[name] = Head(w_dense, w_hash,
                               float(np.asarray(arrays[f"{name}.intercept"])[0]),
                               np.asarray(arrays[f"{name}.calib_x"], np.float64),
                               np.asarray(arrays[f"{name}.calib_y"], np.float64))
    except KeyError as exc:
        raise ArtifactError(f"classifier artifact lacks array {exc}") from exc
    return heads


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` with fixed timestamps and name order, so equal arrays give
    equal bytes (numpy stamps each member with the current time)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())
