"""A second opinion on the images new since validate's last fit: the registered champion model.

validate scores images that arrived since its last fit with that fit's fold models (trained from
scratch on a share of the earlier images). The champion was trained on earlier images too, all of them
and for longer, and none of the new ones, so its probabilities for them are out of sample as well;
averaging the two ranks flips better than the fold models alone (BENCHMARKS.md: "a second opinion from
the champion"). Only new images: the champion learned the others, its scores for them are in sample.

Never a reason for validate to fail: no store, no registered model, no champion alias, a champion that
does not know one of the scored classes, or a model that will not load all mean "not used", said in one
line. An image re-added after it left the data counts as new although the champion may have seen it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from tasks.common import tracking
from tasks.common.images import DecodeError, decode, to_array
from tasks.common.store import ImageStore

log = logging.getLogger(__name__)
# tasks.judging.registry.CHAMPION, not imported: validate's DVC deps would then take in tasks/judging, and
# every change to promotion's code would run the costly validate stage again
CHAMPION = "champion"


def champion_probabilities(
    model_name: str, image_ids: Sequence[str], store: str, classes: Sequence[str]
) -> tuple[np.ndarray | None, str]:
    """(the champion of the registered model `model_name` applied to the stored images `image_ids`:
    probabilities [n, len(classes)] in `classes` order, renormalised over them; or None) and one line
    saying which model scored them, or why a registered champion could not ("" when there is none)."""
    uri = tracking.tracking_uri()
    db = tracking.sqlite_file(uri)
    if db is not None and not db.is_file():  # opening it would create it: a first run, nothing to say
        return None, ""
    try:
        import mlflow
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        try:
            version = mlflow.MlflowClient(uri).get_registered_model(model_name).aliases.get(CHAMPION)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None, ""  # not registered yet
        if version is None:
            return None, ""  # registered, but nothing promoted yet
        tracking.use(uri)  # models:/ URIs resolve in the registry of the tracking store
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
        predictor = model.unwrap_python_model().predictor
    except Exception as exc:  # a foreign or broken model, an unreachable server: validate goes on without it
        log.warning("champion not used: %s", exc)
        return None, f"champion not used: {model_name} could not be loaded ({type(exc).__name__})"
    unknown = sorted(set(classes) - set(predictor.classes))
    if unknown:
        return None, f"champion not used: {model_name} v{version} does not know {', '.join(map(repr, unknown))}"
    images = ImageStore(store)
    try:  # validate's own decode of these images went first: a failure here is a store that changed since
        arrays = [
            to_array(decode(source), predictor.image_size, predictor.channels)
            for _, source in images.sources(list(image_ids), check=False)
        ]
    except (DecodeError, OSError) as exc:
        return None, f"champion not used: an image did not decode ({exc})"
    probs = predictor.predict_proba(np.stack(arrays)).astype(np.float64)
    probs = probs[:, [list(predictor.classes).index(c) for c in classes]]
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    return probs, f"champion {model_name} v{version}"
